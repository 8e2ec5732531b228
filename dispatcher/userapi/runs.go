package userapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Run is a run's latest known state.
type Run struct {
	Job          string    `json:"job"`
	RunID        string    `json:"run_id"`
	StartedAt    time.Time `json:"started_at"`
	LastReportAt time.Time `json:"last_report_at"`
	Final        bool      `json:"final"`
	ExitCode     *int      `json:"exit_code"`
}

// RunPage is a page of runs, most recently started first.
type RunPage struct {
	Items      []Run  `json:"items"`
	NextCursor string `json:"next_cursor"`
}

var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// RunQuery selects runs started in [From, To).
type RunQuery struct {
	From, To time.Time
	Job      string // if empty, every job
	Limit    int    // if zero, DefaultLimit
	Cursor   *cursorPos
}

// ParseRunQuery validates a runs request for org.
func (a *API) ParseRunQuery(r *http.Request, org string) (RunQuery, string, error) {
	q, err := parseQuery(r, "from", "to", "job", "limit", "cursor")
	if err != nil {
		return RunQuery{}, "", err
	}
	var rq RunQuery
	if rq.From, rq.To, err = q.timeRange(a.now()); err != nil {
		return rq, "", err
	}
	if rq.Job, err = q.slug("job"); err != nil {
		return rq, "", err
	}
	if rq.Limit, err = q.limit(false); err != nil {
		return rq, "", err
	}
	filters := q.filterKey()
	if rq.Cursor, err = a.parseCursor("runs", org, filters, q.str("cursor")); err != nil {
		return rq, "", err
	}
	if rq.Cursor != nil {
		rq.From, rq.To = time.UnixMicro(rq.Cursor.F).UTC(), time.UnixMicro(rq.Cursor.U).UTC()
	}
	return rq, filters, nil
}

// Runs returns a page of org's runs, keyset-paginated on (started_at,
// run_id).
func (a *API) Runs(ctx context.Context, org string, q RunQuery, filters string) (RunPage, error) {
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	where := []string{"started_at >= $1", "started_at < $2"}
	args := []any{q.From, q.To}
	if q.Job != "" {
		args = append(args, q.Job)
		where = append(where, "job_id = $"+strconv.Itoa(len(args)))
	}
	if q.Cursor != nil {
		args = append(args, q.Cursor.time(), q.Cursor.ID)
		where = append(where, fmt.Sprintf("(started_at, run_id) < ($%d, $%d)", len(args)-1, len(args)))
	}
	args = append(args, q.Limit+1)
	sql := `SELECT job_id, run_id, started_at, last_report_at, final, exit_code FROM runs WHERE ` +
		strings.Join(where, " AND ") + ` ORDER BY started_at DESC, run_id DESC LIMIT $` + strconv.Itoa(len(args))
	page := RunPage{Items: []Run{}}
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Run
			if err := rows.Scan(&r.Job, &r.RunID, &r.StartedAt, &r.LastReportAt, &r.Final, &r.ExitCode); err != nil {
				return err
			}
			r.StartedAt, r.LastReportAt = r.StartedAt.UTC(), r.LastReportAt.UTC()
			page.Items = append(page.Items, r)
		}
		return rows.Err()
	})
	if err != nil {
		return RunPage{}, fmt.Errorf("query runs: %w", err)
	}
	if len(page.Items) > q.Limit {
		page.Items = page.Items[:q.Limit]
		last := page.Items[q.Limit-1]
		page.NextCursor = a.signCursor("runs", org, filters, cursorPos{T: last.StartedAt.UnixMicro(), ID: last.RunID,
			F: q.From.UnixMicro(), U: q.To.UnixMicro()})
	}
	return page, nil
}

// errNotFound is a run that does not exist in the caller's org.
var errNotFound = errors.New("not found")

// RunByID returns one run of org.
func (a *API) RunByID(ctx context.Context, org, runID string) (Run, error) {
	var r Run
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT job_id, run_id, started_at, last_report_at, final, exit_code FROM runs WHERE run_id = $1`,
			runID).Scan(&r.Job, &r.RunID, &r.StartedAt, &r.LastReportAt, &r.Final, &r.ExitCode)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return r, errNotFound
	}
	if err != nil {
		return r, fmt.Errorf("query run: %w", err)
	}
	r.StartedAt, r.LastReportAt = r.StartedAt.UTC(), r.LastReportAt.UTC()
	return r, nil
}

func (a *API) serveRuns(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q, filters, err := a.ParseRunQuery(r, org)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page, err := a.Runs(r.Context(), org, q, filters)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (a *API) serveRun(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := parseQuery(r); err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("run_id")
	if !runIDPattern.MatchString(id) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "invalid_parameter", Parameter: "run_id",
			Message: "run_id: want 1 to 128 letters, digits, '.', '_', ':' or '-'"})
		return
	}
	run, err := a.RunByID(r.Context(), org, id)
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, "not_found", "no run with that ID in your org")
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}
