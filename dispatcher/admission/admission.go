// Package admission decides, before a job's process starts, whether its org
// may start another run (issue 6, "Quotas, alerts, abuse response"; seeds/000
// "Rate limits: max concurrent jobs and jobs-per-hour per org"). It records
// each admitted run with a lease the sidecar renews by heartbeat, ends runs
// (finished, terminated, or lease expired) and hands out termination orders
// through the heartbeat answer.
//
// Every decision is serialised in Postgres, never in process memory: Admit
// locks the org's org_quotas row (SELECT ... FOR UPDATE) in the same
// transaction that counts the org's open runs and its runs of the last hour
// and inserts the new run, so two replicas racing for the last slot cannot
// both take it. Times come from the database clock.
//
// Leases: a run holds a slot while it has not ended and its lease (Config.
// LeaseTTL, 2 minutes by default) has not expired; each heartbeat moves the
// lease LeaseTTL ahead of now. A sidecar that dies without Finish stops
// holding its slot once its lease expires; the next Admit of the org marks
// it ended with reason lease_expired and an audit event RUN_LEASE_EXPIRED.
// A heartbeat that arrives after its lease expired takes a slot again if one
// is free, and otherwise answers with a termination order (the run is over
// its org's limit).
//
// It is not the HTTP transport's authentication (the handler trusts the
// verified client certificate it is given) and not anomaly detection
// (dispatcher/anomaly decides which runs to terminate and calls
// OrderTermination).
package admission

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults. DefaultMaxConcurrentRuns is seeds/002's "max_concurrent_executions:
// 100". seeds/002 gives no hourly limit: DefaultMaxRunsPerHour is 1,200, a
// full concurrency budget of 100 turned over every 5 minutes, which no
// legitimate cron-style workload of the seeds comes near, while it stops a
// crash-looping or abusive job from starting thousands of tasks an hour.
const (
	DefaultMaxConcurrentRuns = 100
	DefaultMaxRunsPerHour    = 1200
	DefaultLeaseTTL          = 2 * time.Minute
)

// Audit event types this package writes.
const (
	EventRunAdmitted            = "RUN_ADMITTED"
	EventRunRefused             = "RUN_REFUSED"
	EventRunFinished            = "RUN_FINISHED"
	EventRunLeaseExpired        = "RUN_LEASE_EXPIRED"
	EventRunTerminationOrdered  = "RUN_TERMINATION_ORDERED"
	EventRunTerminated          = "RUN_TERMINATED"
	resourceRun                 = "RUN"
	reasonLeaseExpiredOverLimit = "lease expired and the org is at its concurrency limit"
)

// Appender stores audit events in the org's hash chain;
// *auditstore.Store implements it.
type Appender interface {
	Append(ctx context.Context, org string, events []audit.Event, reports []usage.Report) (auditstore.AppendResult, error)
}

var _ Appender = (*auditstore.Store)(nil)

// Config configures a Service.
type Config struct {
	// DB is a pool whose connections act as cordon_service (see
	// auditstore.Open for the role setup). Required.
	DB *pgxpool.Pool
	// Audit receives the audit events. Required.
	Audit Appender
	// LeaseTTL is how long a run holds its slot without a heartbeat. If
	// zero, DefaultLeaseTTL.
	LeaseTTL time.Duration
	// TrustDomain names the dispatcher in audit actors
	// ("spiffe://TD/dispatcher"). If empty, "cordon".
	TrustDomain string
	// Registry receives the metrics. If nil, they are not registered.
	Registry prometheus.Registerer
	// Log receives logs. If nil, discarded.
	Log *slog.Logger
}

// Service admits and tracks runs.
type Service struct {
	db    *pgxpool.Pool
	audit Appender
	ttl   time.Duration
	actor audit.Actor
	log   *slog.Logger
	m     *metrics
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.DB == nil || cfg.Audit == nil {
		return nil, errors.New("admission: Config.DB and Config.Audit are required")
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 0 {
		return nil, fmt.Errorf("admission: LeaseTTL %s is negative", cfg.LeaseTTL)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cordon"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{
		db: cfg.DB, audit: cfg.Audit, ttl: cfg.LeaseTTL, log: log, m: newMetrics(cfg.Registry),
		actor: audit.Actor{Type: audit.ActorService, ID: "spiffe://" + cfg.TrustDomain + "/dispatcher"},
	}, nil
}

// LeaseTTL is the lease a heartbeat renews; sidecars heartbeat at a third of it.
func (s *Service) LeaseTTL() time.Duration { return s.ttl }

// Decision is Admit's answer.
type Decision struct {
	Admitted bool
	// Reason says why a run was refused, in words the job's output shows
	// ("org acme has 100 runs running, the limit is 100; retry later").
	// Empty when admitted.
	Reason string
	// LeaseExpiresAt is when the slot is released without a heartbeat.
	// Zero when refused.
	LeaseExpiresAt time.Time
	// Running and Limit describe the org's concurrency at the decision.
	Running, Limit int
}

var (
	slugRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)
	runIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
)

// ErrInvalid marks an argument that can never be accepted (a malformed org,
// job or run ID). Retrying does not help.
var ErrInvalid = errors.New("invalid admission request")

// ErrUnknownRun means the run was never admitted in that org.
var ErrUnknownRun = errors.New("unknown run")

// ErrRunEnded means a heartbeat came for a run that finished or was
// terminated.
var ErrRunEnded = errors.New("run ended")

func validate(org, job, runID string) error {
	switch {
	case !slugRE.MatchString(org):
		return fmt.Errorf("%w: org %q is not a slug", ErrInvalid, org)
	case job != "" && !slugRE.MatchString(job):
		return fmt.Errorf("%w: job %q is not a slug", ErrInvalid, job)
	case !runIDRE.MatchString(runID):
		return fmt.Errorf("%w: run ID %q must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit", ErrInvalid, runID)
	}
	return nil
}

// inOrg runs fn in a transaction confined by row-level security to org.
func inOrg(ctx context.Context, db *pgxpool.Pool, org string, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
			return err
		}
		return fn(tx)
	})
}

// lockQuota ensures the org has an orgs and org_quotas row and locks the
// latter for the rest of tx. It returns the org's limits.
func lockQuota(ctx context.Context, tx pgx.Tx, org string) (maxConc, maxHour int, err error) {
	if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING;`, org); err != nil {
		return 0, 0, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO org_quotas (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, org); err != nil {
		return 0, 0, err
	}
	err = tx.QueryRow(ctx, `SELECT max_concurrent_runs, max_runs_per_hour FROM org_quotas WHERE org_id = $1 FOR UPDATE`, org).
		Scan(&maxConc, &maxHour)
	return maxConc, maxHour, err
}

// expireLeases ends the org's runs whose lease ran out and returns their IDs
// and jobs. tx must hold the org's quota lock.
func expireLeases(ctx context.Context, tx pgx.Tx, org string) ([][2]string, error) {
	rows, err := tx.Query(ctx, `UPDATE run_admissions SET ended_at = lease_expires_at, end_reason = 'lease_expired'
		WHERE org_id = $1 AND ended_at IS NULL AND lease_expires_at <= now()
		RETURNING run_id, job_id`, org)
	if err != nil {
		return nil, err
	}
	var out [][2]string
	var run, job string
	_, err = pgx.ForEachRow(rows, []any{&run, &job}, func() error { out = append(out, [2]string{run, job}); return nil })
	return out, err
}

// Admit decides whether run runID of job may start in org and, if so,
// records it holding a slot. Admitting a run that is already admitted and
// open renews its lease and admits it again (a sidecar retrying after a
// lost answer); a run that already ended is refused. Every refusal is an
// audit event RUN_REFUSED. A non-nil error means no decision was taken.
func (s *Service) Admit(ctx context.Context, org, job, runID string) (Decision, error) {
	if err := validate(org, job, runID); err != nil {
		return Decision{}, err
	}
	var d Decision
	var expired [][2]string
	var fresh bool
	var kind string
	err := inOrg(ctx, s.db, org, func(tx pgx.Tx) error {
		d, expired, fresh, kind = Decision{}, nil, false, decisionAdmitted
		maxConc, maxHour, err := lockQuota(ctx, tx, org)
		if err != nil {
			return fmt.Errorf("lock quota: %w", err)
		}
		if expired, err = expireLeases(ctx, tx, org); err != nil {
			return fmt.Errorf("expire leases: %w", err)
		}
		var ended *time.Time
		var lease time.Time
		err = tx.QueryRow(ctx, `SELECT ended_at, lease_expires_at FROM run_admissions WHERE org_id = $1 AND run_id = $2`, org, runID).Scan(&ended, &lease)
		switch {
		case err == nil && ended != nil:
			kind = decisionEnded
			d.Reason = fmt.Sprintf("run %s of org %s already ended; start the job again with a new run ID", runID, org)
			return nil
		case err == nil:
			err = tx.QueryRow(ctx, `UPDATE run_admissions SET lease_expires_at = now() + $3::interval
				WHERE org_id = $1 AND run_id = $2 RETURNING lease_expires_at`, org, runID, s.ttl).Scan(&d.LeaseExpiresAt)
			// A retry after a lost answer: the audit event is re-sent too, in
			// case the first append failed (its event ID makes it stored once).
			d.Admitted, fresh = err == nil, err == nil
			return err
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("look up run: %w", err)
		}
		var hour int
		if err := tx.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE ended_at IS NULL AND lease_expires_at > now()),
				count(*) FILTER (WHERE admitted_at > now() - interval '1 hour')
			FROM run_admissions WHERE org_id = $1 AND (ended_at IS NULL OR admitted_at > now() - interval '1 hour')`, org).
			Scan(&d.Running, &hour); err != nil {
			return fmt.Errorf("count runs: %w", err)
		}
		d.Limit = maxConc
		switch {
		case d.Running >= maxConc:
			kind = decisionConcurrency
			d.Reason = fmt.Sprintf("org %s has %d runs running, the limit is %d; retry later", org, d.Running, maxConc)
			return nil
		case hour >= maxHour:
			kind = decisionHourly
			d.Reason = fmt.Sprintf("org %s started %d runs in the last hour, the limit is %d an hour; retry later", org, hour, maxHour)
			return nil
		}
		if _, err := tx.Exec(ctx, `INSERT INTO jobs (org_id, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, org, job); err != nil {
			return fmt.Errorf("record job: %w", err)
		}
		if err := tx.QueryRow(ctx, `INSERT INTO run_admissions (org_id, run_id, job_id, lease_expires_at)
			VALUES ($1, $2, $3, now() + $4::interval) RETURNING lease_expires_at`, org, runID, job, s.ttl).Scan(&d.LeaseExpiresAt); err != nil {
			return fmt.Errorf("record run: %w", err)
		}
		d.Admitted, fresh = true, true
		d.Running++
		return nil
	})
	if err != nil {
		return Decision{}, fmt.Errorf("admit run %s of %s/%s: %w", runID, org, job, err)
	}
	s.m.decisions.WithLabelValues(kind).Inc()
	s.m.expired.Add(float64(len(expired)))
	var evs []audit.Event
	for _, e := range expired {
		ev := s.event(org, e[0], EventRunLeaseExpired, "EXPIRE", audit.ResultSuccess, map[string]any{"job": e[1]})
		ev.EventID = audit.NewID() // a revived run may expire again
		evs = append(evs, ev)
	}
	switch {
	case !d.Admitted:
		evs = append(evs, s.runEvent(org, job, runID, EventRunRefused, "START", audit.ResultDenied,
			map[string]any{"job": job, "reason": d.Reason, "running": d.Running, "limit": d.Limit}))
	case fresh:
		evs = append(evs, s.runEvent(org, job, runID, EventRunAdmitted, "START", audit.ResultSuccess,
			map[string]any{"job": job, "running": d.Running, "limit": d.Limit}))
	}
	if err := s.append(ctx, org, evs); err != nil {
		if !d.Admitted {
			// The refusal stands; only its record is missing, which the log says.
			return d, nil
		}
		return d, fmt.Errorf("admit run %s of %s/%s: %w", runID, org, job, err)
	}
	return d, nil
}

// Heartbeat is the answer to a run's heartbeat.
type Heartbeat struct {
	// LeaseExpiresAt is the renewed lease.
	LeaseExpiresAt time.Time
	// Terminate, when not nil, orders the sidecar to stop the job now.
	Terminate *TerminationOrder
}

// TerminationOrder tells a sidecar to end its job: SIGTERM to the job's
// process group, SIGKILL after Grace, then Finish with Terminated set.
type TerminationOrder struct {
	Reason    string
	OrderedAt time.Time
	Grace     time.Duration
}

// TerminationGrace is how long the sidecar waits between SIGTERM and SIGKILL.
const TerminationGrace = 5 * time.Second

// Heartbeat renews run runID's lease and returns any termination order.
// When job is not empty, the run must be one of job's (a sidecar acts on
// its own job's runs only); otherwise it is ErrUnknownRun.
func (s *Service) Heartbeat(ctx context.Context, org, job, runID string) (Heartbeat, error) {
	if err := validate(org, job, runID); err != nil {
		return Heartbeat{}, err
	}
	var hb Heartbeat
	var overLimit bool
	wantJob := job
	err := inOrg(ctx, s.db, org, func(tx pgx.Tx) error {
		hb, overLimit = Heartbeat{}, false
		var endReason *string
		var expired bool
		err := tx.QueryRow(ctx, `SELECT job_id, end_reason, lease_expires_at <= now() FROM run_admissions
			WHERE org_id = $1 AND run_id = $2 AND ($3 = '' OR job_id = $3)`, org, runID, wantJob).Scan(&job, &endReason, &expired)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrUnknownRun
		}
		if err != nil {
			return err
		}
		if endReason != nil && *endReason != "lease_expired" {
			return fmt.Errorf("%w: it ended (%s); stop sending heartbeats", ErrRunEnded, *endReason)
		}
		renew := true
		if endReason != nil || expired {
			// The slot may have been given away: take one again under the
			// org's lock, or order the run to stop.
			maxConc, _, err := lockQuota(ctx, tx, org)
			if err != nil {
				return err
			}
			var running int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM run_admissions
				WHERE org_id = $1 AND run_id <> $2 AND ended_at IS NULL AND lease_expires_at > now()`, org, runID).Scan(&running); err != nil {
				return err
			}
			if running >= maxConc {
				renew = false
				_, err := tx.Exec(ctx, `UPDATE run_admissions SET ended_at = lease_expires_at, end_reason = 'lease_expired'
					WHERE org_id = $1 AND run_id = $2 AND ended_at IS NULL`, org, runID)
				if err != nil {
					return err
				}
				ct, err := tx.Exec(ctx, `INSERT INTO termination_orders (org_id, run_id, reason, ordered_by)
					VALUES ($1, $2, $3, 'admission') ON CONFLICT DO NOTHING`, org, runID, reasonLeaseExpiredOverLimit)
				if err != nil {
					return err
				}
				overLimit = ct.RowsAffected() == 1
			} else if _, err := tx.Exec(ctx, `UPDATE run_admissions SET ended_at = NULL, end_reason = NULL
				WHERE org_id = $1 AND run_id = $2`, org, runID); err != nil {
				return err
			}
		}
		if renew {
			if err := tx.QueryRow(ctx, `UPDATE run_admissions SET lease_expires_at = now() + $3::interval, last_heartbeat_at = now()
				WHERE org_id = $1 AND run_id = $2 RETURNING lease_expires_at`, org, runID, s.ttl).Scan(&hb.LeaseExpiresAt); err != nil {
				return err
			}
		}
		var o TerminationOrder
		err = tx.QueryRow(ctx, `UPDATE termination_orders SET delivered_at = coalesce(delivered_at, now())
			WHERE org_id = $1 AND run_id = $2 RETURNING reason, ordered_at`, org, runID).Scan(&o.Reason, &o.OrderedAt)
		switch {
		case err == nil:
			o.Grace = TerminationGrace
			hb.Terminate = &o
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		return nil
	})
	if err != nil {
		return Heartbeat{}, fmt.Errorf("heartbeat of run %s of org %s: %w", runID, org, err)
	}
	if overLimit {
		s.m.orders.Inc()
		ev := s.runEvent(org, job, runID, EventRunTerminationOrdered, "TERMINATE", audit.ResultSuccess,
			map[string]any{"job": job, "reason": reasonLeaseExpiredOverLimit, "ordered_by": "admission"})
		if err := s.append(ctx, org, []audit.Event{ev}); err != nil {
			return hb, fmt.Errorf("heartbeat of run %s of org %s: %w", runID, org, err)
		}
	}
	return hb, nil
}

// FinishReport is what a sidecar says when its job ended.
type FinishReport struct {
	// Job, when not empty, must be the run's job; otherwise Finish returns
	// ErrUnknownRun. The HTTP handler sets it from the caller's SPIFFE ID.
	Job string
	// ExitCode is the job's exit status; nil when unknown (killed).
	ExitCode *int
	// Terminated is true when the sidecar ended the job on a termination
	// order; false for a job that exited by itself.
	Terminated bool
	// Signal names the last signal sent on termination ("SIGTERM",
	// "SIGKILL"); empty otherwise.
	Signal string
}

// Finish ends run runID and frees its slot. Finishing a run twice is not an
// error (the second call changes nothing).
func (s *Service) Finish(ctx context.Context, org, runID string, rep FinishReport) error {
	if err := validate(org, rep.Job, runID); err != nil {
		return err
	}
	if rep.Signal != "" && rep.Signal != "SIGTERM" && rep.Signal != "SIGKILL" {
		return fmt.Errorf("%w: signal %q is not SIGTERM or SIGKILL", ErrInvalid, rep.Signal)
	}
	var job string
	var changed bool
	var order *string
	err := inOrg(ctx, s.db, org, func(tx pgx.Tx) error {
		reason := "finished"
		if rep.Terminated {
			reason = "terminated"
		}
		var exit any
		if rep.ExitCode != nil {
			exit = *rep.ExitCode
		}
		err := tx.QueryRow(ctx, `UPDATE run_admissions SET ended_at = now(), end_reason = $3, exit_code = $4
			WHERE org_id = $1 AND run_id = $2 AND ($5 = '' OR job_id = $5) AND (ended_at IS NULL OR end_reason = 'lease_expired')
			RETURNING job_id`, org, runID, reason, exit, rep.Job).Scan(&job)
		if errors.Is(err, pgx.ErrNoRows) {
			err = tx.QueryRow(ctx, `SELECT job_id FROM run_admissions WHERE org_id = $1 AND run_id = $2 AND ($3 = '' OR job_id = $3)`,
				org, runID, rep.Job).Scan(&job)
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrUnknownRun
			}
			return err
		}
		if err != nil {
			return err
		}
		changed = true
		err = tx.QueryRow(ctx, `SELECT reason FROM termination_orders WHERE org_id = $1 AND run_id = $2`, org, runID).Scan(&order)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // no termination order
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("finish run %s of org %s: %w", runID, org, err)
	}
	if !changed {
		return nil
	}
	md := map[string]any{"job": job}
	if rep.ExitCode != nil {
		md["exit_code"] = *rep.ExitCode
	}
	ev := s.runEvent(org, job, runID, EventRunFinished, "FINISH", audit.ResultSuccess, md)
	if rep.Terminated {
		md["signal"] = rep.Signal
		if order != nil {
			md["order_reason"] = *order
		}
		ev = s.runEvent(org, job, runID, EventRunTerminated, "TERMINATE", audit.ResultSuccess, md)
	}
	if err := s.append(ctx, org, []audit.Event{ev}); err != nil {
		return fmt.Errorf("finish run %s of org %s: %w", runID, org, err)
	}
	return nil
}

// OrderTermination records an order to stop run runID, delivered with the
// run's next heartbeat, and the audit event RUN_TERMINATION_ORDERED. It
// reports false when the run already had an order (the first one stands) or
// has ended. orderedBy names the deciding component ("anomaly").
func (s *Service) OrderTermination(ctx context.Context, org, runID, orderedBy, reason string, metadata map[string]any) (bool, error) {
	if err := validate(org, "", runID); err != nil {
		return false, err
	}
	if reason == "" || orderedBy == "" {
		return false, fmt.Errorf("%w: a termination order needs a reason and who ordered it", ErrInvalid)
	}
	var job string
	var created bool
	err := inOrg(ctx, s.db, org, func(tx pgx.Tx) error {
		var open bool
		err := tx.QueryRow(ctx, `SELECT job_id, ended_at IS NULL FROM run_admissions WHERE org_id = $1 AND run_id = $2`, org, runID).Scan(&job, &open)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrUnknownRun
		}
		if err != nil || !open {
			return err
		}
		ct, err := tx.Exec(ctx, `INSERT INTO termination_orders (org_id, run_id, reason, ordered_by)
			VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, org, runID, reason, orderedBy)
		created = err == nil && ct.RowsAffected() == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("order termination of run %s of org %s: %w", runID, org, err)
	}
	if !created {
		return false, nil
	}
	s.m.orders.Inc()
	md := map[string]any{"job": job, "reason": reason, "ordered_by": orderedBy}
	for k, v := range metadata {
		if _, taken := md[k]; !taken {
			md[k] = v
		}
	}
	ev := s.runEvent(org, job, runID, EventRunTerminationOrdered, "TERMINATE", audit.ResultSuccess, md)
	if err := s.append(ctx, org, []audit.Event{ev}); err != nil {
		return true, fmt.Errorf("order termination of run %s of org %s: %w", runID, org, err)
	}
	return true, nil
}

// SetQuota sets org's limits.
func (s *Service) SetQuota(ctx context.Context, org string, maxConcurrent, maxPerHour int) error {
	if !slugRE.MatchString(org) {
		return fmt.Errorf("set quota: %w: org %q is not a slug", ErrInvalid, org)
	}
	if maxConcurrent < 0 || maxPerHour < 0 {
		return fmt.Errorf("set quota of org %s: %w: limits must not be negative", org, ErrInvalid)
	}
	err := inOrg(ctx, s.db, org, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, org); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO org_quotas (org_id, max_concurrent_runs, max_runs_per_hour) VALUES ($1, $2, $3)
			ON CONFLICT (org_id) DO UPDATE SET max_concurrent_runs = $2, max_runs_per_hour = $3, updated_at = now()`,
			org, maxConcurrent, maxPerHour)
		return err
	})
	if err != nil {
		return fmt.Errorf("set quota of org %s: %w", org, err)
	}
	return nil
}

// eventNS derives deterministic event IDs, so that one fact retried is
// stored once (auditstore skips an event ID it already holds).
var eventNS = uuid.MustParse("5b0c3c3e-8f0e-4d55-a4c5-0c7a2f6e1a01")

func (s *Service) runEvent(org, job, runID, typ, action, result string, md map[string]any) audit.Event {
	ev := s.event(org, runID, typ, action, result, md)
	if typ == EventRunRefused {
		ev.EventID = audit.NewID() // each refusal is its own fact
	}
	return ev
}

func (s *Service) event(org, runID, typ, action, result string, md map[string]any) audit.Event {
	return audit.Event{
		Timestamp: time.Now(),
		EventType: typ,
		EventID:   "evt_" + uuid.NewSHA1(eventNS, []byte(org+"\x00"+runID+"\x00"+typ)).String(),
		Actor:     s.actor,
		Resource:  audit.Resource{Type: resourceRun, ID: runID, TenantID: org},
		Action:    action,
		Result:    result,
		Metadata:  md,
	}
}

func (s *Service) append(ctx context.Context, org string, evs []audit.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if _, err := s.audit.Append(ctx, org, evs, nil); err != nil {
		s.log.Error("audit append failed", "org", org, "events", len(evs), "error", err.Error())
		return fmt.Errorf("append audit events: %w", err)
	}
	return nil
}
