package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditQuery selects audit events of the caller's org. The zero value of
// each filter matches everything.
type AuditQuery struct {
	From, To  time.Time // ts in [From, To); both required
	EventType string    // exact event_type
	Job       string    // metadata.job, or the job of a JOB actor's SPIFFE ID
	Result    string    // SUCCESS, FAILURE, DENIED or WOULD_DENY
	Actor     string    // exact actor.id
	Limit     int       // rows per page; if zero, DefaultLimit
	// Cursor continues after a previous page; nil starts at the newest row.
	Cursor *cursorPos
}

// AuditEvent is one stored event, in the seeds/002 audit log format plus
// the time the dispatcher received it.
type AuditEvent struct {
	Timestamp  time.Time       `json:"timestamp"`
	EventType  string          `json:"event_type"`
	EventID    string          `json:"event_id"`
	Actor      AuditActor      `json:"actor"`
	Resource   AuditResource   `json:"resource"`
	Action     string          `json:"action"`
	Result     string          `json:"result"`
	Metadata   json.RawMessage `json:"metadata"`
	RequestID  string          `json:"request_id"`
	ReceivedAt time.Time       `json:"received_at"`
	class      string
}

// AuditActor is AuditEvent's actor.
type AuditActor struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	IPAddress string `json:"ip_address"`
	UserAgent string `json:"user_agent"`
}

// AuditResource is AuditEvent's resource; TenantID is the org.
type AuditResource struct {
	Type     string `json:"type"`
	ID       string `json:"id"`
	TenantID string `json:"tenant_id"`
}

// AuditPage is one page of audit events, newest first. NextCursor is
// empty on the last page.
type AuditPage struct {
	Items      []AuditEvent `json:"items"`
	NextCursor string       `json:"next_cursor"`
}

var auditParams = []string{"from", "to", "event_type", "job", "result", "actor", "limit", "cursor", "format"}

// ParseAuditQuery validates an audit-events request's parameters for org
// (the cursor is bound to org and to the filters).
func (a *API) ParseAuditQuery(r *http.Request, org string) (AuditQuery, bool, error) {
	q, err := parseQuery(r, auditParams...)
	if err != nil {
		return AuditQuery{}, false, err
	}
	csv, err := q.wantCSV(r)
	if err != nil {
		return AuditQuery{}, false, err
	}
	var aq AuditQuery
	if aq.From, aq.To, err = q.timeRange(a.now()); err != nil {
		return aq, csv, err
	}
	if aq.EventType = q.str("event_type"); aq.EventType != "" && !eventTypePattern.MatchString(aq.EventType) {
		return aq, csv, paramErr("event_type", "want an UPPER_SNAKE_CASE event type such as EGRESS_DENIED")
	}
	if aq.Result = q.str("result"); aq.Result != "" && !slices.Contains(results, aq.Result) {
		return aq, csv, paramErr("result", "want one of %s", strings.Join(results, ", "))
	}
	if aq.Job, err = q.slug("job"); err != nil {
		return aq, csv, err
	}
	aq.Actor = q.str("actor")
	if aq.Limit, err = q.limit(csv); err != nil {
		return aq, csv, err
	}
	if aq.Cursor, err = a.parseCursor("audit_events", org, q.filterKey(), q.str("cursor")); err != nil {
		return aq, csv, err
	}
	if aq.Cursor != nil {
		aq.From, aq.To = time.UnixMicro(aq.Cursor.F).UTC(), time.UnixMicro(aq.Cursor.U).UTC()
	}
	return aq, csv, nil
}

// auditSQL builds the page query. Every value is a bind parameter. The
// chain_month bounds let Postgres prune the monthly partitions.
func auditSQL(q AuditQuery, selectCols string) (string, []any) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	where = append(where, "ts >= "+arg(q.From), "ts < "+arg(q.To))
	where = append(where,
		"chain_month >= date_trunc('month', "+arg(q.From)+"::timestamptz AT TIME ZONE 'UTC')::date",
		"chain_month <= date_trunc('month', "+arg(q.To)+"::timestamptz AT TIME ZONE 'UTC')::date")
	if q.EventType != "" {
		where = append(where, "event_type = "+arg(q.EventType))
	}
	if q.Result != "" {
		where = append(where, "result = "+arg(q.Result))
	}
	if q.Actor != "" {
		where = append(where, "actor_id = "+arg(q.Actor))
	}
	if q.Job != "" {
		j := arg(q.Job)
		where = append(where, fmt.Sprintf("(metadata->>'job' = %s OR (actor_type = 'JOB' AND right(actor_id, length(%s) + 5) = '/job/' || %s))", j, j, j))
	}
	if c := q.Cursor; c != nil {
		where = append(where, fmt.Sprintf("(ts, event_id, retention_class) < (%s, %s, %s)", arg(c.time()), arg(c.ID), arg(c.C)))
	}
	sql := "SELECT " + selectCols + " FROM audit_events WHERE " + strings.Join(where, " AND ") +
		" ORDER BY ts DESC, event_id DESC, retention_class DESC LIMIT " + arg(q.Limit)
	return sql, args
}

const auditCols = `ts, event_id, retention_class, event_type, actor_type, actor_id, actor_ip, actor_user_agent,
	resource_type, resource_id, org_id, action, result, metadata, request_id, received_at`

func scanAudit(rows pgx.Rows) (AuditEvent, error) {
	var e AuditEvent
	var md []byte
	err := rows.Scan(&e.Timestamp, &e.EventID, &e.class, &e.EventType, &e.Actor.Type, &e.Actor.ID, &e.Actor.IPAddress,
		&e.Actor.UserAgent, &e.Resource.Type, &e.Resource.ID, &e.Resource.TenantID, &e.Action, &e.Result, &md,
		&e.RequestID, &e.ReceivedAt)
	if len(md) == 0 {
		md = []byte("null")
	}
	e.Metadata = md
	e.Timestamp, e.ReceivedAt = e.Timestamp.UTC(), e.ReceivedAt.UTC()
	return e, err
}

// AuditEvents returns one page of org's audit events matching q, newest
// first. Pages are keyset-paginated on (ts, event_id, retention_class),
// unique per org: events inserted while a client pages never shift a
// later page, so no row is skipped or repeated.
func (a *API) AuditEvents(ctx context.Context, org string, q AuditQuery, filters string) (AuditPage, error) {
	page := AuditPage{Items: []AuditEvent{}}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	lq := q
	lq.Limit = q.Limit + 1
	sql, args := auditSQL(lq, auditCols)
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			e, err := scanAudit(rows)
			if err != nil {
				return err
			}
			page.Items = append(page.Items, e)
		}
		return rows.Err()
	})
	if err != nil {
		return AuditPage{}, fmt.Errorf("query audit events: %w", err)
	}
	if len(page.Items) > q.Limit {
		page.Items = page.Items[:q.Limit]
		last := page.Items[q.Limit-1]
		page.NextCursor = a.signCursor("audit_events", org, filters, cursorPos{
			T: last.Timestamp.UnixMicro(), ID: last.EventID, C: last.class, F: q.From.UnixMicro(), U: q.To.UnixMicro()})
	}
	return page, nil
}

// AuditFilterKey is the filter fingerprint a cursor of r is bound to.
func AuditFilterKey(r *http.Request) string {
	q, _ := parseQuery(r, auditParams...)
	return q.filterKey()
}

func (a *API) serveAuditEvents(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q, csv, err := a.ParseAuditQuery(r, org)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if csv {
		a.streamAuditCSV(w, r, org, q)
		return
	}
	page, err := a.AuditEvents(r.Context(), org, q, AuditFilterKey(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// streamAuditCSV writes one page as CSV, streamed from the database. The
// next page's cursor goes in the Cordon-Next-Cursor header, so it is found
// first: in the same REPEATABLE READ snapshot, the row at position Limit
// (if there is one after it) is the page's last row.
func (a *API) streamAuditCSV(w http.ResponseWriter, r *http.Request, org string, q AuditQuery) {
	ctx := r.Context()
	var out *csvOut
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		bq := q
		bq.Limit = 2
		bsql, bargs := auditSQL(bq, "ts, event_id, retention_class")
		bsql += " OFFSET " + strconv.Itoa(q.Limit-1)
		rows, err := tx.Query(ctx, bsql, bargs...)
		if err != nil {
			return err
		}
		var keys []cursorPos
		for rows.Next() {
			var t time.Time
			var p cursorPos
			if err := rows.Scan(&t, &p.ID, &p.C); err != nil {
				rows.Close()
				return err
			}
			p.T, p.F, p.U = t.UnixMicro(), q.From.UnixMicro(), q.To.UnixMicro()
			keys = append(keys, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(keys) == 2 {
			w.Header().Set("Cordon-Next-Cursor", a.signCursor("audit_events", org, AuditFilterKey(r), keys[0]))
		}
		sql, args := auditSQL(q, auditCols)
		rows, err = tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		out = newCSV(w, "audit-events.csv", "timestamp", "event_type", "event_id", "actor_type", "actor_id",
			"actor_ip", "actor_user_agent", "resource_type", "resource_id", "tenant_id", "action", "result",
			"metadata", "request_id", "received_at")
		for rows.Next() {
			e, err := scanAudit(rows)
			if err != nil {
				return err
			}
			if err := out.row(e.Timestamp.Format(time.RFC3339Nano), e.EventType, e.EventID, e.Actor.Type, e.Actor.ID,
				e.Actor.IPAddress, e.Actor.UserAgent, e.Resource.Type, e.Resource.ID, e.Resource.TenantID, e.Action,
				e.Result, string(e.Metadata), e.RequestID, e.ReceivedAt.Format(time.RFC3339Nano)); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		if out == nil {
			a.fail(w, r, err)
			return
		}
		// The status is sent; cut the body short so the client sees a
		// truncated download rather than a silently partial file.
		a.log.Error("audit CSV export failed mid-stream", "request_id", r.Header.Get("X-Request-Id"), "err", err)
		panic(http.ErrAbortHandler)
	}
	out.close()
}
