// Package anomaly flags runs whose resource use is far outside their job's
// recent baseline (seeds/000 "Anomaly detection: unusual resource
// consumption ... Abuse response: automatic job termination, org
// notification"), records each flag once as an ANOMALY_DETECTED audit
// event, and, when the org's policy says terminate, orders a running run to
// stop through dispatcher/admission.
//
// The baseline of a run is the final usage reports of the last Window
// (default 50) finished runs of the same org and job, the run itself
// excluded. For each metric Detector computes the median and the median
// absolute deviation (MAD) and scores the run with a robust z-score,
// z = (x - median) / (1.4826 * max(MAD, 5% of the median, the metric's
// floor)). 1.4826 scales the MAD to a standard deviation for normal data;
// the floors keep a perfectly regular job (MAD 0) from flagging on noise:
// 1 CPU-second, 16 MiB of RSS, 1 MiB of egress, 1 denial. A run is flagged
// when some metric's z exceeds Threshold (default 6). Only the high side
// counts: a run using less than usual is not abuse. With fewer than MinRuns
// (default 10) runs in the baseline nothing is flagged: a median of three
// runs says little.
//
// Metrics: finished runs are scored on CPU seconds (user + system), max RSS,
// egress bytes sent (the sum of bytes_out over destinations) and denials.
// Running runs are scored on their latest periodic report, on egress bytes
// and denials only: those counters are cumulative, so a running run already
// far above what whole runs usually reach is anomalous now, whereas CPU
// and memory of a young run say little about the whole.
//
// It is not the usage ingest (dispatcher/ingest) and does not deliver
// notifications (dispatcher/alerts delivers webhooks; this package only
// writes the audit event).
package anomaly

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	DefaultWindow    = 50
	DefaultMinRuns   = 10
	DefaultThreshold = 6.0
)

// EventAnomalyDetected is the audit event of a flag.
const EventAnomalyDetected = "ANOMALY_DETECTED"

// Policies an org may choose.
const (
	PolicyNotify    = "notify"
	PolicyTerminate = "terminate"
)

// Metric names.
const (
	MetricCPU     = "cpu_seconds"
	MetricRSS     = "max_rss_bytes"
	MetricEgress  = "egress_bytes"
	MetricDenials = "denials"
)

// floors are the least MAD each metric is scored with.
var floors = map[string]float64{
	MetricCPU:     1,
	MetricRSS:     16 << 20,
	MetricEgress:  1 << 20,
	MetricDenials: 1,
}

// Appender stores audit events; *auditstore.Store implements it.
type Appender interface {
	Append(ctx context.Context, org string, events []audit.Event, reports []usage.Report) (auditstore.AppendResult, error)
}

// Terminator records termination orders; *admission.Service implements it.
type Terminator interface {
	OrderTermination(ctx context.Context, org, runID, orderedBy, reason string, metadata map[string]any) (bool, error)
}

var (
	_ Appender   = (*auditstore.Store)(nil)
	_ Terminator = (*admission.Service)(nil)
)

// Config configures a Detector.
type Config struct {
	// DB is a pool acting as cordon_service. Required.
	DB *pgxpool.Pool
	// Audit receives ANOMALY_DETECTED events. Required.
	Audit Appender
	// Terminator receives termination orders. If nil, the terminate policy
	// acts as notify (and Detector logs that it could not terminate).
	Terminator Terminator
	// Window is how many finished runs make the baseline. If zero, 50.
	Window int
	// MinRuns is the smallest baseline that can flag. If zero, 10.
	MinRuns int
	// Threshold is the robust z-score above which a metric is anomalous.
	// If zero, 6.
	Threshold float64
	// TrustDomain names the dispatcher in audit actors. If empty, "cordon".
	TrustDomain string
	// Registry receives the metrics. If nil, they are not registered.
	Registry prometheus.Registerer
	// Log receives logs. If nil, discarded.
	Log *slog.Logger
}

// Detector scores runs against their baseline.
type Detector struct {
	cfg   Config
	actor audit.Actor
	log   *slog.Logger
	flags *prometheus.CounterVec
}

// New returns a Detector.
func New(cfg Config) (*Detector, error) {
	if cfg.DB == nil || cfg.Audit == nil {
		return nil, errors.New("anomaly: Config.DB and Config.Audit are required")
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MinRuns == 0 {
		cfg.MinRuns = DefaultMinRuns
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = DefaultThreshold
	}
	if cfg.MinRuns < 3 || cfg.Window < cfg.MinRuns || cfg.Threshold < 0 {
		return nil, fmt.Errorf("anomaly: want 3 <= MinRuns (%d) <= Window (%d) and Threshold (%g) >= 0", cfg.MinRuns, cfg.Window, cfg.Threshold)
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cordon"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	flags := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cordon_dispatcher_anomaly_flags_total",
		Help: "Runs flagged as anomalous (once per run and phase across replicas), by phase (live, final) and action (notify, terminate).",
	}, []string{"phase", "action"})
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(flags)
	}
	return &Detector{cfg: cfg, log: log, flags: flags,
		actor: audit.Actor{Type: audit.ActorService, ID: "spiffe://" + cfg.TrustDomain + "/dispatcher"}}, nil
}

// Score is one metric of a run against its baseline.
type Score struct {
	Metric    string  `json:"metric"`
	Value     float64 `json:"value"`
	Median    float64 `json:"median"`
	MAD       float64 `json:"mad"`
	Z         float64 `json:"z"`
	Anomalous bool    `json:"anomalous"`
}

// Result is the outcome of checking one run.
type Result struct {
	// Job is the run's job.
	Job string
	// BaselineRuns is how many finished runs the baseline holds.
	BaselineRuns int
	// Scores are empty when the baseline is too small to score.
	Scores []Score
	// Flagged is true when some score is anomalous.
	Flagged bool
	// NewFlag is true when this call recorded the flag (false when an
	// earlier call or another replica did).
	NewFlag bool
	// TerminationOrdered is true when this call ordered the run to stop.
	TerminationOrdered bool
}

// ErrNoUsage means the run has no (final, for CheckFinished) usage report.
var ErrNoUsage = errors.New("no usage report for the run")

type sample struct {
	job     string
	metrics map[string]float64
}

const sampleColumns = `job_id, cpu_user_seconds + cpu_system_seconds, max_rss_bytes::float8,
	coalesce((SELECT sum((v->>'bytes_out')::float8) FROM jsonb_each(coalesce(egress, '{}'::jsonb)) AS e(k, v)), 0),
	denials::float8`

func scanSample(row pgx.Row) (sample, error) {
	var s sample
	var cpu, rss, egress, denials float64
	if err := row.Scan(&s.job, &cpu, &rss, &egress, &denials); err != nil {
		return s, err
	}
	s.metrics = map[string]float64{MetricCPU: cpu, MetricRSS: rss, MetricEgress: egress, MetricDenials: denials}
	return s, nil
}

// CheckFinished scores a finished run on its final usage report.
func (d *Detector) CheckFinished(ctx context.Context, org, runID string) (Result, error) {
	return d.check(ctx, org, runID, "final", []string{MetricCPU, MetricRSS, MetricEgress, MetricDenials})
}

// CheckRunning scores a running run on its latest usage report and, when
// it is anomalous and the org's policy is terminate, orders it to stop.
func (d *Detector) CheckRunning(ctx context.Context, org, runID string) (Result, error) {
	return d.check(ctx, org, runID, "live", []string{MetricEgress, MetricDenials})
}

func (d *Detector) check(ctx context.Context, org, runID, phase string, metrics []string) (Result, error) {
	var res Result
	var policy string
	err := pgx.BeginFunc(ctx, d.cfg.DB, func(tx pgx.Tx) error {
		res = Result{}
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
			return err
		}
		q := `SELECT ` + sampleColumns + ` FROM usage_reports WHERE org_id = $1 AND run_id = $2 AND ($3 = 'live' OR final)
			ORDER BY final DESC, ended_at DESC LIMIT 1`
		run, err := scanSample(tx.QueryRow(ctx, q, org, runID, phase))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoUsage
		}
		if err != nil {
			return fmt.Errorf("read the run's usage: %w", err)
		}
		res.Job = run.job
		rows, err := tx.Query(ctx, `SELECT `+sampleColumns+` FROM usage_reports
			WHERE org_id = $1 AND job_id = $2 AND final AND run_id <> $3
			ORDER BY ended_at DESC LIMIT $4`, org, run.job, runID, d.cfg.Window)
		if err != nil {
			return fmt.Errorf("read the baseline: %w", err)
		}
		var base []sample
		for rows.Next() {
			s, err := scanSample(rows)
			if err != nil {
				rows.Close()
				return err
			}
			base = append(base, s)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read the baseline: %w", err)
		}
		res.BaselineRuns = len(base)
		if len(base) < d.cfg.MinRuns {
			return nil
		}
		for _, m := range metrics {
			vals := make([]float64, len(base))
			for i, s := range base {
				vals[i] = s.metrics[m]
			}
			sc := score(m, run.metrics[m], vals, d.cfg.Threshold)
			res.Scores = append(res.Scores, sc)
			res.Flagged = res.Flagged || sc.Anomalous
		}
		if !res.Flagged {
			return nil
		}
		ct, err := tx.Exec(ctx, `INSERT INTO anomaly_flags (org_id, run_id, phase, job_id, metrics)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, org, runID, phase, run.job, res.Scores)
		if err != nil {
			return fmt.Errorf("record the flag: %w", err)
		}
		res.NewFlag = ct.RowsAffected() == 1
		err = tx.QueryRow(ctx, `SELECT action FROM anomaly_policies WHERE org_id = $1`, org).Scan(&policy)
		if errors.Is(err, pgx.ErrNoRows) {
			policy, err = PolicyNotify, nil
		}
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("check run %s of org %s for anomalies: %w", runID, org, err)
	}
	if !res.NewFlag {
		return res, nil
	}
	md := map[string]any{"job": res.Job, "phase": phase, "baseline_runs": res.BaselineRuns, "policy": policy,
		"threshold": d.cfg.Threshold, "scores": res.Scores}
	ev := audit.Event{
		Timestamp: time.Now(),
		EventType: EventAnomalyDetected,
		EventID:   "evt_" + uuid.NewSHA1(eventNS, []byte(org+"\x00"+runID+"\x00"+phase)).String(),
		Actor:     d.actor,
		Resource:  audit.Resource{Type: "RUN", ID: runID, TenantID: org},
		Action:    "DETECT",
		Result:    audit.ResultSuccess,
		Metadata:  md,
	}
	// The flag is committed; if this append fails, the flag row shows it
	// and the error is returned for the caller to log. A retry does not
	// re-emit (the flag exists), which is why the event ID is derived from
	// the run: a redelivery path can re-append it idempotently.
	if _, err := d.cfg.Audit.Append(ctx, org, []audit.Event{ev}, nil); err != nil {
		return res, fmt.Errorf("check run %s of org %s for anomalies: append audit event: %w", runID, org, err)
	}
	d.log.Info("anomaly detected", "org", org, "run", runID, "phase", phase, "policy", policy)
	d.flags.WithLabelValues(phase, policy).Inc()
	if phase != "live" || policy != PolicyTerminate {
		return res, nil
	}
	if d.cfg.Terminator == nil {
		d.log.Error("anomaly policy is terminate but no terminator is configured", "org", org, "run", runID)
		return res, nil
	}
	var names []string
	for _, s := range res.Scores {
		if s.Anomalous {
			names = append(names, fmt.Sprintf("%s %.0f is %.1f robust z above the median %.0f of %d runs", s.Metric, s.Value, s.Z, s.Median, res.BaselineRuns))
		}
	}
	reason := "anomalous usage: " + strings.Join(names, "; ")
	ordered, err := d.cfg.Terminator.OrderTermination(ctx, org, runID, "anomaly", reason, map[string]any{"scores": res.Scores})
	if err != nil {
		return res, fmt.Errorf("check run %s of org %s for anomalies: %w", runID, org, err)
	}
	res.TerminationOrdered = ordered
	return res, nil
}

// SetPolicy sets org's response to anomalous running runs.
func (d *Detector) SetPolicy(ctx context.Context, org, policy string) error {
	if policy != PolicyNotify && policy != PolicyTerminate {
		return fmt.Errorf("set anomaly policy of org %s: policy %q is not %q or %q", org, policy, PolicyNotify, PolicyTerminate)
	}
	err := pgx.BeginFunc(ctx, d.cfg.DB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, org); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO anomaly_policies (org_id, action) VALUES ($1, $2)
			ON CONFLICT (org_id) DO UPDATE SET action = $2, updated_at = now()`, org, policy)
		return err
	})
	if err != nil {
		return fmt.Errorf("set anomaly policy of org %s: %w", org, err)
	}
	return nil
}

// Sweep checks every open run (admitted, lease live) that has a usage
// report, at most max of them, and returns how many it ordered to stop.
// The dispatcher runs it every few seconds on each replica; flags and
// orders are recorded once whichever replica finds them.
func (d *Detector) Sweep(ctx context.Context, max int) (int, error) {
	rows, err := d.cfg.DB.Query(ctx, "SELECT org_id, run_id FROM cordon_open_runs($1)", max)
	if err != nil {
		return 0, fmt.Errorf("anomaly sweep: list open runs: %w", err)
	}
	var org, run string
	var open [][2]string
	if _, err := pgx.ForEachRow(rows, []any{&org, &run}, func() error { open = append(open, [2]string{org, run}); return nil }); err != nil {
		return 0, fmt.Errorf("anomaly sweep: list open runs: %w", err)
	}
	ordered := 0
	var errs []error
	for _, r := range open {
		res, err := d.CheckRunning(ctx, r[0], r[1])
		switch {
		case errors.Is(err, ErrNoUsage):
		case err != nil:
			errs = append(errs, err)
		case res.TerminationOrdered:
			ordered++
		}
		if ctx.Err() != nil {
			break
		}
	}
	return ordered, errors.Join(errs...)
}

// SweepFinished scores each run that ended in the last day and was not
// scored yet, once its final usage report is in, and returns how many it
// flagged. A run is marked scored in its org's transaction, so replicas
// sweeping at once score a run at most a few times and flag it once.
func (d *Detector) SweepFinished(ctx context.Context, max int) (int, error) {
	rows, err := d.cfg.DB.Query(ctx, "SELECT org_id, run_id FROM cordon_unscored_runs($1)", max)
	if err != nil {
		return 0, fmt.Errorf("anomaly sweep: list finished runs: %w", err)
	}
	var org, run string
	var ended [][2]string
	if _, err := pgx.ForEachRow(rows, []any{&org, &run}, func() error { ended = append(ended, [2]string{org, run}); return nil }); err != nil {
		return 0, fmt.Errorf("anomaly sweep: list finished runs: %w", err)
	}
	flagged := 0
	var errs []error
	for _, r := range ended {
		res, err := d.CheckFinished(ctx, r[0], r[1])
		if errors.Is(err, ErrNoUsage) {
			continue // the final report may still come
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if res.NewFlag {
			flagged++
		}
		err = pgx.BeginFunc(ctx, d.cfg.DB, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", r[0]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `UPDATE run_admissions SET anomaly_scored_at = now() WHERE org_id = $1 AND run_id = $2`, r[0], r[1])
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("mark run %s of org %s scored: %w", r[1], r[0], err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return flagged, errors.Join(errs...)
}

// Run sweeps running and finished runs every interval until ctx ends, then
// returns nil. Errors are logged, not returned: the next sweep retries.
func (d *Detector) Run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := d.Sweep(ctx, 10000); err != nil && ctx.Err() == nil {
			d.log.Error("anomaly sweep of running runs failed", "error", err.Error())
		}
		if _, err := d.SweepFinished(ctx, 10000); err != nil && ctx.Err() == nil {
			d.log.Error("anomaly sweep of finished runs failed", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

var eventNS = uuid.MustParse("9d3f6a52-2c1b-4b7e-9a0e-5f1e2d3c4b5a")

// score scores x against base for metric m.
func score(m string, x float64, base []float64, threshold float64) Score {
	med := median(base)
	dev := make([]float64, len(base))
	for i, v := range base {
		dev[i] = math.Abs(v - med)
	}
	mad := median(dev)
	scale := max(mad, 0.05*math.Abs(med), floors[m])
	z := (x - med) / (1.4826 * scale)
	return Score{Metric: m, Value: x, Median: med, MAD: mad, Z: z, Anomalous: z > threshold}
}

// median of vs (not empty); vs is not modified.
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
