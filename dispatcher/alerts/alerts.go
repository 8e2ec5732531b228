// Package alerts raises per-org cost alerts (seeds/000 "Cost alerts:
// automated alerts when org approaches spend thresholds") and delivers them:
// an audit event COST_ALERT in the org's hash chain and a signed POST to the
// org's pre-approved webhook.
//
// Spend is computed from usage_reports for the current UTC month, with
// each run counted once from its latest report (counters are cumulative)
// and attributed to the month it started in:
//
//	spend = CPU-seconds (user + system) × Prices.CPUSecondUSD
//	      + GB-seconds of memory (max RSS in GiB × wall seconds) × Prices.GBSecondUSD
//	      + egress GB sent (bytes_out, 10^9 bytes) × Prices.EgressGBUSD
//
// Max RSS × wall time over-counts a run whose memory peaked briefly: it
// errs towards alerting early, which is the safe side for a budget alert.
//
// Exactly once: crossing a threshold inserts a cost_alerts row whose primary
// key is (org, month, threshold), so of two replicas evaluating at once one
// inserts and the other finds it; the same transaction writes an
// alert_outbox row. A deliverer (any replica) claims due outbox rows by
// moving their next attempt ahead (a lease), appends the audit event (its
// event ID is fixed by the row, so a repeat is stored once) and posts the
// webhook with retries (cenkalti/backoff), recording the outcome. A crash
// between commit and delivery leaves the row due: delivery is at least
// once, and every request carries the same Idempotency-Key.
//
// Webhooks go only to a URL the org configured (org_webhooks) that its
// allowlist file also lists under webhooks: (checked at every delivery), are
// signed with HMAC-SHA256 (see Sign and Verify, for receivers), follow no
// redirects, and by default dial only public unicast addresses.
//
// It is not the usage ingest and does not decide budgets: SetBudget and
// SetWebhook are for the admin API to call.
package alerts

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// EventCostAlert is the audit event type of an alert.
const EventCostAlert = "COST_ALERT"

// Prices is the price model. Defaults are AWS Fargate's us-east-1 Linux/x86
// on-demand rates and its internet egress rate.
type Prices struct {
	// CPUSecondUSD is the price of one CPU-second. If zero, 0.04048/3600
	// (Fargate's per vCPU-hour).
	CPUSecondUSD float64
	// GBSecondUSD is the price of one GiB of memory for one second. If
	// zero, 0.004445/3600 (Fargate's per GB-hour).
	GBSecondUSD float64
	// EgressGBUSD is the price of 10^9 bytes sent. If zero, 0.09.
	EgressGBUSD float64
}

func (p Prices) withDefaults() Prices {
	if p.CPUSecondUSD == 0 {
		p.CPUSecondUSD = 0.04048 / 3600
	}
	if p.GBSecondUSD == 0 {
		p.GBSecondUSD = 0.004445 / 3600
	}
	if p.EgressGBUSD == 0 {
		p.EgressGBUSD = 0.09
	}
	return p
}

// Appender stores audit events; *auditstore.Store implements it.
type Appender interface {
	Append(ctx context.Context, org string, events []audit.Event, reports []usage.Report) (auditstore.AppendResult, error)
}

var _ Appender = (*auditstore.Store)(nil)

// Config configures an Alerter.
type Config struct {
	// DB is a pool acting as cordon_service. Required.
	DB *pgxpool.Pool
	// Audit receives COST_ALERT events. Required.
	Audit Appender
	// Allowlist returns the org's allowlist file, or nil. Required.
	Allowlist func(org string) *allowlist.File
	// Prices is the price model; zero fields take the defaults.
	Prices Prices
	// Client posts webhooks. If nil, a client with a 10s timeout that
	// follows no redirects and dials only public unicast addresses.
	Client *http.Client
	// Retry shapes the attempts within one delivery. If nil, exponential
	// from 500ms, at most 5 tries.
	Retry func() backoff.BackOff
	// Tries is the number of attempts within one delivery. If zero, 5.
	Tries uint
	// Claim is how long a deliverer owns an outbox row before another may
	// take it over. If zero, 2 minutes.
	Claim time.Duration
	// MaxDeliveries is how many deliveries (each of Tries attempts) an
	// alert gets before its webhook state is failed. If zero, 12; they are
	// spaced 1, 2, 4, ... minutes apart, capped at an hour.
	MaxDeliveries int
	// TrustDomain names the dispatcher in audit actors. If empty, "cordon".
	TrustDomain string
	// Registry receives the metrics. If nil, they are not registered.
	Registry prometheus.Registerer
	// Log receives logs; secrets are never logged. If nil, discarded.
	Log *slog.Logger
	// Now is the clock that picks the month. If nil, time.Now.
	Now func() time.Time
}

// Alerter evaluates budgets and delivers alerts.
type Alerter struct {
	cfg   Config
	actor audit.Actor
	log   *slog.Logger
	m     *metrics
}

// New returns an Alerter.
func New(cfg Config) (*Alerter, error) {
	if cfg.DB == nil || cfg.Audit == nil || cfg.Allowlist == nil {
		return nil, errors.New("alerts: Config.DB, Config.Audit and Config.Allowlist are required")
	}
	cfg.Prices = cfg.Prices.withDefaults()
	if cfg.Client == nil {
		cfg.Client = PublicClient(10 * time.Second)
	}
	if cfg.Retry == nil {
		cfg.Retry = func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = 500 * time.Millisecond
			return b
		}
	}
	if cfg.Tries == 0 {
		cfg.Tries = 5
	}
	if cfg.Claim == 0 {
		cfg.Claim = 2 * time.Minute
	}
	if cfg.MaxDeliveries == 0 {
		cfg.MaxDeliveries = 12
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cordon"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Alerter{cfg: cfg, log: log, m: newMetrics(cfg.Registry),
		actor: audit.Actor{Type: audit.ActorService, ID: "spiffe://" + cfg.TrustDomain + "/dispatcher"}}, nil
}

// ErrNotPublic is returned by PublicClient's dialer for an address that is
// not public unicast (loopback, private, link-local, CGNAT, ...).
var ErrNotPublic = errors.New("webhook address is not a public unicast address")

// PublicClient returns an HTTP client for webhooks: it dials only public
// unicast addresses (checked on the resolved address, at connect time, so
// DNS rebinding does not get around it), follows no redirects, and bounds
// each request by timeout.
func PublicClient(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %q", ErrNotPublic, address)
		}
		if !isPublic(ap.Addr().Unmap()) {
			return fmt.Errorf("%w: %s", ErrNotPublic, ap.Addr())
		}
		return nil
	}}
	tr := &http.Transport{DialContext: d.DialContext, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute, Proxy: nil}
	return &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("240.0.0.0/4"), netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("2002::/16"), netip.MustParsePrefix("2001::/32"),
}

func isPublic(a netip.Addr) bool {
	if !a.IsGlobalUnicast() || a.IsPrivate() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// SetBudget sets org's monthly budget and thresholds (percent of the
// budget; nil for 50, 80, 100).
func (a *Alerter) SetBudget(ctx context.Context, org string, monthlyUSD float64, thresholdsPct []int) error {
	if thresholdsPct == nil {
		thresholdsPct = []int{50, 80, 100}
	}
	if !(monthlyUSD > 0) || math.IsInf(monthlyUSD, 0) {
		return fmt.Errorf("set budget of org %s: budget %g must be a positive number of dollars", org, monthlyUSD)
	}
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, org); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO org_budgets (org_id, monthly_budget_usd, thresholds_pct) VALUES ($1, $2, $3)
			ON CONFLICT (org_id) DO UPDATE SET monthly_budget_usd = $2, thresholds_pct = $3, updated_at = now()`,
			org, monthlyUSD, thresholdsPct)
		return err
	})
	if err != nil {
		return fmt.Errorf("set budget of org %s: %w", org, err)
	}
	return nil
}

// SetWebhook sets where org's alerts go and returns the signing secret
// (32 random bytes) to hand to the receiver. The URL must be allowed by the
// org's allowlist now (and still is checked at every delivery).
func (a *Alerter) SetWebhook(ctx context.Context, org, url string) ([]byte, error) {
	if err := CheckWebhook(a.cfg.Allowlist(org), url); err != nil {
		return nil, fmt.Errorf("set webhook of org %s: %w", org, err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, org); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO org_webhooks (org_id, url, secret) VALUES ($1, $2, $3)
			ON CONFLICT (org_id) DO UPDATE SET url = $2, secret = $3, updated_at = now()`, org, url, secret)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set webhook of org %s: %w", org, err)
	}
	return secret, nil
}

func (a *Alerter) inOrg(ctx context.Context, org string, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, a.cfg.DB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
			return err
		}
		return fn(tx)
	})
}

// Usage is an org's usage in a month, the inputs of the price model.
type Usage struct {
	CPUSeconds  float64 `json:"cpu_seconds"`
	GBSeconds   float64 `json:"gb_seconds"`
	EgressBytes float64 `json:"egress_bytes"`
	Runs        int     `json:"runs"`
}

// Cost prices u.
func (p Prices) Cost(u Usage) float64 {
	p = p.withDefaults()
	return u.CPUSeconds*p.CPUSecondUSD + u.GBSeconds*p.GBSecondUSD + u.EgressBytes/1e9*p.EgressGBUSD
}

// Alert is one threshold crossed.
type Alert struct {
	Org          string    `json:"org"`
	Month        string    `json:"month"` // "2026-11"
	ThresholdPct int       `json:"threshold_pct"`
	SpendUSD     float64   `json:"spend_usd"`
	BudgetUSD    float64   `json:"budget_usd"`
	Usage        Usage     `json:"usage"`
	EventID      string    `json:"event_id"`
	RaisedAt     time.Time `json:"raised_at"`
}

// EvaluateOrg computes org's spend this month and raises an alert for each
// threshold crossed for the first time this month. It returns the alerts
// this call raised (none when another replica raised them first).
func (a *Alerter) EvaluateOrg(ctx context.Context, org string) ([]Alert, error) {
	now := a.cfg.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	var raised []Alert
	err := a.inOrg(ctx, org, func(tx pgx.Tx) error {
		raised = nil
		var budget float64
		var thresholds []int32
		err := tx.QueryRow(ctx, `SELECT monthly_budget_usd::float8, thresholds_pct FROM org_budgets WHERE org_id = $1`, org).Scan(&budget, &thresholds)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read budget: %w", err)
		}
		var u Usage
		err = tx.QueryRow(ctx, `SELECT count(*), coalesce(sum(cpu_user_seconds + cpu_system_seconds), 0),
				coalesce(sum(max_rss_bytes::float8 / 1073741824 * wall_seconds), 0),
				coalesce(sum((SELECT sum((v->>'bytes_out')::float8) FROM jsonb_each(coalesce(egress, '{}'::jsonb)) AS e(k, v))), 0)
			FROM (SELECT DISTINCT ON (run_id) * FROM usage_reports
				WHERE org_id = $1 AND started_at >= $2 AND started_at < $3
				ORDER BY run_id, final DESC, ended_at DESC) latest`, org, month, month.AddDate(0, 1, 0)).
			Scan(&u.Runs, &u.CPUSeconds, &u.GBSeconds, &u.EgressBytes)
		if err != nil {
			return fmt.Errorf("compute spend: %w", err)
		}
		spend := a.cfg.Prices.Cost(u)
		for _, th := range thresholds {
			if spend < float64(th)/100*budget {
				continue
			}
			al := Alert{Org: org, Month: month.Format("2006-01"), ThresholdPct: int(th), SpendUSD: round4(spend),
				BudgetUSD: budget, Usage: u, RaisedAt: now.Truncate(time.Microsecond),
				EventID: "evt_" + uuid.NewSHA1(eventNS, []byte(org+"\x00"+month.Format("2006-01")+"\x00"+strconv.Itoa(int(th)))).String()}
			ct, err := tx.Exec(ctx, `INSERT INTO cost_alerts (org_id, month, threshold_pct, spend_usd, budget_usd, event_id)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, org, month, th, al.SpendUSD, budget, al.EventID)
			if err != nil {
				return fmt.Errorf("record alert: %w", err)
			}
			if ct.RowsAffected() == 0 {
				continue // raised before, here or by another replica
			}
			if _, err := tx.Exec(ctx, `INSERT INTO alert_outbox (org_id, event_id, event_type, payload, created_at)
				VALUES ($1, $2, $3, $4, $5)`, org, al.EventID, EventCostAlert, al, al.RaisedAt); err != nil {
				return fmt.Errorf("queue alert: %w", err)
			}
			raised = append(raised, al)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("evaluate cost alerts of org %s: %w", org, err)
	}
	a.m.raised.Add(float64(len(raised)))
	for _, al := range raised {
		a.log.Info("cost alert raised", "org", org, "threshold_pct", al.ThresholdPct, "month", al.Month)
	}
	return raised, nil
}

func round4(f float64) float64 { return math.Round(f*1e4) / 1e4 }

var eventNS = uuid.MustParse("0f2a7c1e-6d4b-4e8a-b1c3-7a9e5d2f4c60")

// Evaluate runs EvaluateOrg for every org with a budget and returns how
// many alerts it raised.
func (a *Alerter) Evaluate(ctx context.Context) (int, error) {
	rows, err := a.cfg.DB.Query(ctx, "SELECT * FROM cordon_budgeted_orgs()")
	if err != nil {
		return 0, fmt.Errorf("evaluate cost alerts: list orgs: %w", err)
	}
	orgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("evaluate cost alerts: list orgs: %w", err)
	}
	n := 0
	var errs []error
	for _, org := range orgs {
		al, err := a.EvaluateOrg(ctx, org)
		n += len(al)
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return n, errors.Join(errs...)
}

// Run evaluates every budgeted org and delivers due alerts every interval
// (a minute is plenty: thresholds are monthly) until ctx ends, then
// returns nil. Errors are logged, not returned: the next round retries.
func (a *Alerter) Run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := a.Evaluate(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("cost alert evaluation failed", "error", err.Error())
		}
		if _, err := a.DeliverDue(ctx, 1000); err != nil && ctx.Err() == nil {
			a.log.Error("cost alert delivery failed", "error", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
