package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/jackc/pgx/v5"
)

// Webhook states of an outbox row.
const (
	StatePending    = "pending"
	StateDelivered  = "delivered"
	StateNoWebhook  = "no_webhook"
	StateNotAllowed = "not_allowed"
	StateFailed     = "failed"
)

type claimed struct {
	org, eventID, eventType string
	payload                 []byte
	createdAt               time.Time
	auditDone               bool
	state                   string
	attempts                int
}

// DeliverDue works through up to max due outbox rows of every org: appends
// each alert's audit event and delivers its webhook. It returns how many
// webhooks it delivered. Replicas may run it at once: a row is worked on by
// the replica that claimed it.
func (a *Alerter) DeliverDue(ctx context.Context, max int) (int, error) {
	rows, err := a.cfg.DB.Query(ctx, "SELECT org_id, event_id FROM cordon_due_alerts($1)", max)
	if err != nil {
		return 0, fmt.Errorf("deliver alerts: list due: %w", err)
	}
	var org, id string
	var due [][2]string
	if _, err := pgx.ForEachRow(rows, []any{&org, &id}, func() error { due = append(due, [2]string{org, id}); return nil }); err != nil {
		return 0, fmt.Errorf("deliver alerts: list due: %w", err)
	}
	n := 0
	var errs []error
	for _, d := range due {
		ok, err := a.deliverOne(ctx, d[0], d[1])
		if ok {
			n++
		}
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return n, errors.Join(errs...)
}

func (a *Alerter) claim(ctx context.Context, org, eventID string) (*claimed, error) {
	var c *claimed
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		r := claimed{org: org, eventID: eventID}
		err := tx.QueryRow(ctx, `UPDATE alert_outbox SET next_attempt_at = now() + $3::interval
			WHERE org_id = $1 AND event_id = $2 AND next_attempt_at <= now() AND (webhook_state = 'pending' OR NOT audit_done)
			RETURNING event_type, payload::text, created_at, audit_done, webhook_state, attempts`, org, eventID, a.cfg.Claim).
			Scan(&r.eventType, &r.payload, &r.createdAt, &r.auditDone, &r.state, &r.attempts)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // another replica has it, or it is done
		}
		c = &r
		return err
	})
	return c, err
}

func (a *Alerter) deliverOne(ctx context.Context, org, eventID string) (bool, error) {
	c, err := a.claim(ctx, org, eventID)
	if err != nil || c == nil {
		if err != nil {
			err = fmt.Errorf("claim alert %s of org %s: %w", eventID, org, err)
		}
		return false, err
	}
	if !c.auditDone {
		if err := a.appendAudit(ctx, c); err != nil {
			return false, err // the claim expires and a deliverer tries again
		}
	}
	if c.state != StatePending {
		return false, nil
	}
	var hookURL string
	var secret []byte
	err = a.inOrg(ctx, org, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT url, secret FROM org_webhooks WHERE org_id = $1`, org).Scan(&hookURL, &secret)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, a.finish(ctx, c, StateNoWebhook, 0, "the org has no alert webhook configured", false)
	}
	if err != nil {
		return false, fmt.Errorf("read webhook of org %s: %w", org, err)
	}
	if err := CheckWebhook(a.cfg.Allowlist(org), hookURL); err != nil {
		a.log.Warn("alert webhook not allowed", "org", org, "event_id", eventID, "error", err.Error())
		return false, a.finish(ctx, c, StateNotAllowed, 0, err.Error(), false)
	}
	status, err := a.post(ctx, c, hookURL, secret)
	if err == nil {
		a.log.Info("alert delivered", "org", org, "event_id", eventID, "status", status)
		return true, a.finish(ctx, c, StateDelivered, status, "", false)
	}
	permanent := errors.Is(err, errRejected)
	a.log.Warn("alert delivery failed", "org", org, "event_id", eventID, "status", status, "error", err.Error())
	state := StatePending
	if permanent || c.attempts+1 >= a.cfg.MaxDeliveries {
		state = StateFailed
	}
	return false, a.finish(ctx, c, state, status, err.Error(), true)
}

func (a *Alerter) appendAudit(ctx context.Context, c *claimed) error {
	var md map[string]any
	if err := json.Unmarshal(c.payload, &md); err != nil {
		return fmt.Errorf("decode alert %s of org %s: %w", c.eventID, c.org, err)
	}
	delete(md, "event_id")
	ev := audit.Event{
		Timestamp: c.createdAt,
		EventType: c.eventType,
		EventID:   c.eventID,
		Actor:     a.actor,
		Resource:  audit.Resource{Type: "BUDGET", ID: fmt.Sprintf("%v/%v%%", md["month"], md["threshold_pct"]), TenantID: c.org},
		Action:    "ALERT",
		Result:    audit.ResultSuccess,
		Metadata:  md,
	}
	if _, err := a.cfg.Audit.Append(ctx, c.org, []audit.Event{ev}, nil); err != nil {
		return fmt.Errorf("append audit event of alert %s of org %s: %w", c.eventID, c.org, err)
	}
	err := a.inOrg(ctx, c.org, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE alert_outbox SET audit_done = true WHERE org_id = $1 AND event_id = $2`, c.org, c.eventID)
		return err
	})
	if err != nil {
		return fmt.Errorf("mark alert %s of org %s audited: %w", c.eventID, c.org, err)
	}
	return nil
}

// finish records a delivery's outcome; retry schedules the next delivery.
func (a *Alerter) finish(ctx context.Context, c *claimed, state string, status int, msg string, counted bool) error {
	attempts := c.attempts
	if counted || state == StateDelivered {
		attempts++
	}
	next := time.Duration(0)
	if state == StatePending {
		next = min(time.Minute<<min(attempts-1, 6), time.Hour)
	}
	var st any
	if status != 0 {
		st = status
	}
	var lastErr any
	if msg != "" {
		lastErr = msg
	}
	a.m.deliveries.WithLabelValues(state).Inc()
	err := a.inOrg(ctx, c.org, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE alert_outbox SET webhook_state = $3, attempts = $4, last_status = $5, last_error = $6,
			delivered_at = CASE WHEN $3 = 'delivered' THEN now() END, next_attempt_at = now() + $7::interval
			WHERE org_id = $1 AND event_id = $2`, c.org, c.eventID, state, attempts, st, lastErr, next)
		return err
	})
	if err != nil {
		return fmt.Errorf("record delivery of alert %s of org %s: %w", c.eventID, c.org, err)
	}
	return nil
}

// errRejected is a non-retryable answer (a 4xx other than 408 and 429).
var errRejected = errors.New("webhook rejected the alert")

// post sends the alert, retrying 5xx, 408, 429 and transport errors; any
// other non-2xx answer is permanent. Errors never include the URL, whose
// path may be a credential (Slack's are).
func (a *Alerter) post(ctx context.Context, c *claimed, hookURL string, secret []byte) (int, error) {
	status := 0
	op := func() (struct{}, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, hookURL, bytes.NewReader(c.payload))
		if err != nil {
			return struct{}{}, backoff.Permanent(errors.New("build request: invalid webhook URL"))
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "cordon-dispatcher")
		req.Header.Set(IdempotencyHeader, c.eventID)
		req.Header.Set(EventTypeHeader, c.eventType)
		req.Header.Set(SignatureHeader, Sign(secret, c.payload, time.Now()))
		resp, err := a.cfg.Client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return struct{}{}, fmt.Errorf("post webhook: %w", err)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		status = resp.StatusCode
		switch {
		case status >= 200 && status < 300:
			return struct{}{}, nil
		case status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests:
			return struct{}{}, fmt.Errorf("webhook answered %d", status)
		default:
			return struct{}{}, backoff.Permanent(fmt.Errorf("%w: it answered %d; check the receiver", errRejected, status))
		}
	}
	_, err := backoff.Retry(ctx, op, backoff.WithBackOff(a.cfg.Retry()), backoff.WithMaxTries(a.cfg.Tries),
		backoff.WithMaxElapsedTime(a.cfg.Claim/2))
	return status, err
}
