package admission_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is one migrated database.
type env struct {
	t   testing.TB
	url string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: url}
}

// replica is one dispatcher's admission service with its own pools, as a
// separate process would have.
func (e *env) replica(ttl time.Duration) *admission.Service { return e.replicaWith(ttl, nil) }

func (e *env) replicaWith(ttl time.Duration, reg prometheus.Registerer) *admission.Service {
	t := e.t
	t.Helper()
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := auditstore.Open(ctxT(t), e.url, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	svc, err := admission.New(admission.Config{DB: pool, Audit: store, LeaseTTL: ttl, TrustDomain: "cordon.test", Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// count runs sql as the superuser (no row-level security).
func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	c, err := pgx.Connect(ctxT(e.t), e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctxT(e.t), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) events(org, typ string) int {
	return e.count("SELECT count(*) FROM audit_events WHERE org_id = $1 AND event_type = $2", org, typ)
}

func (e *env) verifyChains() {
	e.t.Helper()
	rep, err := auditstore.Verify(ctxT(e.t), e.url, "")
	if err != nil {
		e.t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		e.t.Fatalf("verify: got %d problems, want 0: %v", len(rep.Problems), rep.Problems)
	}
}

// TestAdmitRaceAcrossReplicas has goroutines on two replicas (separate
// pools) race for an org's last slot, many times: exactly one wins each
// time, and every loser's refusal is in the org's audit log.
func TestAdmitRaceAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	a, b := e.replica(0), e.replica(0)
	const rounds, racers, limit = 15, 12, 3
	for round := range rounds {
		org := fmt.Sprintf("race-%d", round)
		if err := a.SetQuota(ctxT(t), org, limit, 1000); err != nil {
			t.Fatal(err)
		}
		for i := range limit - 1 {
			if d, err := a.Admit(ctxT(t), org, "etl", fmt.Sprintf("pre-%d", i)); err != nil || !d.Admitted {
				t.Fatalf("pre-admit %d: got %+v, %v; want admitted", i, d, err)
			}
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			svc := a
			if i%2 == 1 {
				svc = b
			}
			wg.Go(func() {
				<-start
				d, err := svc.Admit(ctxT(t), org, "etl", fmt.Sprintf("racer-%d", i))
				if err != nil {
					t.Errorf("racer %d: %v", i, err)
					return
				}
				if d.Admitted {
					wins.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if got := wins.Load(); got != 1 {
			t.Fatalf("round %d: got %d winners of the last slot, want 1", round, got)
		}
		if got := e.count("SELECT count(*) FROM run_admissions WHERE org_id = $1 AND ended_at IS NULL", org); got != limit {
			t.Fatalf("round %d: got %d open runs, want %d", round, got, limit)
		}
		if got := e.events(org, admission.EventRunRefused); got != racers-1 {
			t.Fatalf("round %d: got %d RUN_REFUSED events, want %d", round, got, racers-1)
		}
	}
	e.verifyChains()
}

func TestQuotaRefusal(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	svc := e.replicaWith(0, reg)
	ctx := ctxT(t)
	tests := []struct {
		name             string
		maxConc, maxHour int
		finishFirst      bool
		wantReason       string
	}{
		{"concurrency", 2, 100, false, "org %s has 2 runs running, the limit is 2; retry later"},
		{"hourly", 100, 2, true, "org %s started 2 runs in the last hour, the limit is 2 an hour; retry later"},
		{"zero concurrency", 0, 100, false, "org %s has 0 runs running, the limit is 0; retry later"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			org := fmt.Sprintf("quota-%d", i)
			if err := svc.SetQuota(ctx, org, tc.maxConc, tc.maxHour); err != nil {
				t.Fatal(err)
			}
			for j := range min(tc.maxConc, tc.maxHour) {
				run := fmt.Sprintf("run-%d", j)
				if d, err := svc.Admit(ctx, org, "etl", run); err != nil || !d.Admitted {
					t.Fatalf("admit %s: got %+v, %v; want admitted", run, d, err)
				}
				if tc.finishFirst {
					if err := svc.Finish(ctx, org, run, admission.FinishReport{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			d, err := svc.Admit(ctx, org, "etl", "one-too-many")
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf(tc.wantReason, org); d.Admitted || d.Reason != want {
				t.Fatalf("got admitted=%v reason %q, want refused with %q", d.Admitted, d.Reason, want)
			}
			if got := e.count(`SELECT count(*) FROM audit_events WHERE org_id = $1 AND event_type = 'RUN_REFUSED'
				AND resource_id = 'one-too-many' AND result = 'DENIED' AND metadata->>'reason' = $2`, org, d.Reason); got != 1 {
				t.Fatalf("got %d RUN_REFUSED events with the reason, want 1", got)
			}
		})
	}
	for _, tc := range []struct {
		decision string
		want     float64
	}{{"admitted", 4}, {"refused_concurrency", 2}, {"refused_hourly", 1}} {
		got := decisionsMetric(t, reg, tc.decision)
		if got != tc.want {
			t.Errorf("cordon_dispatcher_admission_decisions_total{decision=%q}: got %g, want %g", tc.decision, got, tc.want)
		}
	}
}

// decisionsMetric reads the decisions counter of one label from reg.
func decisionsMetric(t *testing.T, reg *prometheus.Registry, decision string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cordon_dispatcher_admission_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "decision" && l.GetValue() == decision {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no cordon_dispatcher_admission_decisions_total{decision=%q}", decision)
	return 0
}

func TestAdmitIdempotentAndValidation(t *testing.T) {
	e := newEnv(t)
	svc := e.replica(0)
	ctx := ctxT(t)
	if err := svc.SetQuota(ctx, "acme", 1, 10); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d, err := svc.Admit(ctx, "acme", "etl", "r1")
		if err != nil || !d.Admitted {
			t.Fatalf("admit #%d of the same run: got %+v, %v; want admitted (a retry)", i, d, err)
		}
	}
	if got := e.events("acme", admission.EventRunAdmitted); got != 1 {
		t.Fatalf("got %d RUN_ADMITTED events, want 1", got)
	}
	if err := svc.Finish(ctx, "acme", "r1", admission.FinishReport{}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Finish(ctx, "acme", "r1", admission.FinishReport{}); err != nil {
		t.Fatalf("second finish: got %v, want nil", err)
	}
	if d, _ := svc.Admit(ctx, "acme", "etl", "r1"); d.Admitted {
		t.Fatal("got a finished run admitted again, want refused")
	}
	for _, tc := range []struct{ name, org, job, run string }{
		{"bad org", "ACME", "etl", "r2"},
		{"bad job", "acme", "../x", "r2"},
		{"bad run", "acme", "etl", "r 2"},
		{"empty run", "acme", "etl", ""},
		{"long run", "acme", "etl", string(make([]byte, 200))},
	} {
		if _, err := svc.Admit(ctx, tc.org, tc.job, tc.run); !errors.Is(err, admission.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tc.name, err)
		}
	}
}

// TestLeaseExpiry: a run whose sidecar stopped heartbeating gives its slot
// back once the lease expires; its late heartbeat then finds the org full
// and gets a termination order.
func TestLeaseExpiry(t *testing.T) {
	e := newEnv(t)
	const ttl = 400 * time.Millisecond
	svc := e.replica(ttl)
	ctx := ctxT(t)
	if err := svc.SetQuota(ctx, "acme", 1, 100); err != nil {
		t.Fatal(err)
	}
	if d, err := svc.Admit(ctx, "acme", "etl", "dead"); err != nil || !d.Admitted {
		t.Fatalf("got %+v, %v; want admitted", d, err)
	}
	// Heartbeats keep the slot past the first lease.
	for range 3 {
		time.Sleep(ttl / 2)
		hb, err := svc.Heartbeat(ctx, "acme", "etl", "dead")
		if err != nil || hb.Terminate != nil {
			t.Fatalf("heartbeat: got %+v, %v; want renewed lease", hb, err)
		}
	}
	if d, _ := svc.Admit(ctx, "acme", "etl", "next"); d.Admitted {
		t.Fatal("got a second run admitted while the first heartbeats, want refused")
	}
	time.Sleep(ttl + 100*time.Millisecond) // the sidecar died
	if d, err := svc.Admit(ctx, "acme", "etl", "next"); err != nil || !d.Admitted {
		t.Fatalf("after the lease expired: got %+v, %v; want admitted", d, err)
	}
	if got := e.count("SELECT count(*) FROM run_admissions WHERE run_id = 'dead' AND end_reason = 'lease_expired'"); got != 1 {
		t.Fatalf("got %d expired rows for the dead run, want 1", got)
	}
	if got := e.events("acme", admission.EventRunLeaseExpired); got != 1 {
		t.Fatalf("got %d RUN_LEASE_EXPIRED events, want 1", got)
	}
	hb, err := svc.Heartbeat(ctx, "acme", "etl", "dead")
	if err != nil {
		t.Fatal(err)
	}
	if hb.Terminate == nil {
		t.Fatal("late heartbeat with the org full: got no termination order, want one")
	}
	if got := e.events("acme", admission.EventRunTerminationOrdered); got != 1 {
		t.Fatalf("got %d RUN_TERMINATION_ORDERED events, want 1", got)
	}
	// With a free slot, a late heartbeat takes it again.
	if err := svc.Finish(ctx, "acme", "next", admission.FinishReport{}); err != nil {
		t.Fatal(err)
	}
	if d, err := svc.Admit(ctx, "acme", "etl", "revived"); err != nil || !d.Admitted {
		t.Fatalf("got %+v, %v", d, err)
	}
	time.Sleep(ttl + 100*time.Millisecond)
	if hb, err := svc.Heartbeat(ctx, "acme", "etl", "revived"); err != nil || hb.Terminate != nil {
		t.Fatalf("late heartbeat with a free slot: got %+v, %v; want a renewed lease", hb, err)
	}
	if _, err := svc.Heartbeat(ctx, "acme", "etl", "next"); !errors.Is(err, admission.ErrRunEnded) {
		t.Fatalf("heartbeat of a finished run: got %v, want ErrRunEnded", err)
	}
	e.verifyChains()
}

// TestHTTP drives the sidecar API over mTLS with job SVIDs.
func TestHTTP(t *testing.T) {
	e := newEnv(t)
	svc := e.replica(0)
	ctx := ctxT(t)
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")
	svid, err := ca.MintX509SVID(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		Handler:           admission.NewHandler(svc, ca.TrustDomain(), nil),
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig:         mtls.ServerConfig(svid, ca.Bundle(), ca.TrustDomain()), // as the ingest API
	}
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(l, "", "") }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
		<-done
	})
	base := "https://" + l.Addr().String()
	client := func(org, job string) *admit.Client {
		id, err := ca.JobID(org, job)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ca.MintX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := admit.New(base, mtls.ClientConfig(s, ca.Bundle(), serverID), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	etl, other, evil := client("acme", "etl"), client("acme", "report"), client("evil", "etl")
	if err := svc.SetQuota(ctx, "acme", 1, 100); err != nil {
		t.Fatal(err)
	}
	a, err := etl.Admit(ctx, "run-1")
	if err != nil || !a.Admitted || a.HeartbeatSeconds <= 0 {
		t.Fatalf("admit: got %+v, %v; want admitted with a heartbeat interval", a, err)
	}
	r, err := other.Admit(ctx, "run-2")
	if err != nil || r.Admitted || r.Reason != "org acme has 1 runs running, the limit is 1; retry later" {
		t.Fatalf("second admit: got %+v, %v; want refused with the reason", r, err)
	}
	var se *admit.StatusError
	if _, err := other.Heartbeat(ctx, "run-1"); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("heartbeat of another job's run: got %v, want 404", err)
	}
	if _, err := evil.Heartbeat(ctx, "run-1"); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("heartbeat of another org's run: got %v, want 404", err)
	}
	if err := evil.Finish(ctx, "run-1", admit.FinishRequest{}); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("finish of another org's run: got %v, want 404", err)
	}
	if _, err := etl.Admit(ctx, "bad id with spaces"); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("bad run ID: got %v, want 400", err)
	}
	hb, err := etl.Heartbeat(ctx, "run-1")
	if err != nil || hb.Terminate != nil {
		t.Fatalf("heartbeat: got %+v, %v; want no order", hb, err)
	}
	created, err := svc.OrderTermination(ctx, "acme", "run-1", "anomaly", "egress bytes far above baseline", map[string]any{"z": 12.5})
	if err != nil || !created {
		t.Fatalf("order: got %v, %v", created, err)
	}
	if again, _ := svc.OrderTermination(ctx, "acme", "run-1", "anomaly", "again", nil); again {
		t.Fatal("second order: got created, want the first to stand")
	}
	hb, err = etl.Heartbeat(ctx, "run-1")
	if err != nil || hb.Terminate == nil || hb.Terminate.Reason != "egress bytes far above baseline" || hb.Terminate.GraceSeconds != 5 {
		t.Fatalf("heartbeat after the order: got %+v, %v; want the order with a 5s grace", hb, err)
	}
	if err := etl.Finish(ctx, "run-1", admit.FinishRequest{Terminated: true, Signal: "SIGTERM"}); err != nil {
		t.Fatal(err)
	}
	if got := e.count(`SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'RUN_TERMINATED'
		AND metadata->>'order_reason' = 'egress bytes far above baseline' AND metadata->>'signal' = 'SIGTERM'`); got != 1 {
		t.Fatalf("got %d RUN_TERMINATED events, want 1", got)
	}
	if got := e.events("acme", admission.EventRunTerminationOrdered); got != 1 {
		t.Fatalf("got %d RUN_TERMINATION_ORDERED events, want 1", got)
	}
	if got := e.count("SELECT count(*) FROM audit_events WHERE org_id = 'evil'"); got != 0 {
		t.Fatalf("got %d events under org evil, want 0", got)
	}
	if a, err := other.Admit(ctx, "run-2"); err != nil || !a.Admitted {
		t.Fatalf("admit after the slot freed: got %+v, %v", a, err)
	}
	e.verifyChains()
}

// TestHandlerRefusesNonJobCallers: the caller's identity comes only from a
// job SVID of the configured trust domain.
func TestHandlerRefusesNonJobCallers(t *testing.T) {
	e := newEnv(t)
	svc := e.replica(0)
	ours, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := spiffedev.NewCA("other.test")
	if err != nil {
		t.Fatal(err)
	}
	h := admission.NewHandler(svc, ours.TrustDomain(), nil)
	certOf := func(ca *spiffedev.CA, id spiffeid.ID) *tls.ConnectionState {
		s, err := ca.MintX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.ConnectionState{PeerCertificates: s.Certificates}
	}
	job, _ := theirs.JobID("acme", "etl")
	tests := []struct {
		name  string
		state *tls.ConnectionState
		want  int
	}{
		{"no TLS", nil, http.StatusForbidden},
		{"no client certificate", &tls.ConnectionState{}, http.StatusForbidden},
		{"other trust domain", certOf(theirs, job), http.StatusForbidden},
		{"dispatcher, not a job", certOf(ours, spiffeid.RequireFromSegments(ours.TrustDomain(), "dispatcher")), http.StatusForbidden},
		{"job path with extra segment", certOf(ours, spiffeid.RequireFromSegments(ours.TrustDomain(), "org", "acme", "job", "etl", "x")), http.StatusForbidden},
		{"job", certOf(ours, spiffeid.RequireFromSegments(ours.TrustDomain(), "org", "acme", "job", "etl")), http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, admit.AdmitPath, strings.NewReader(`{"run_id":"r1"}`))
			req.TLS = tc.state
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("got %d (%s), want %d", rec.Code, rec.Body, tc.want)
			}
		})
	}
	ok := certOf(ours, spiffeid.RequireFromSegments(ours.TrustDomain(), "org", "acme", "job", "etl"))
	for _, body := range []string{`{"run_id":"r2","org":"evil"}`, `{"run_id":`, strings.Repeat(" ", 5000) + `{"run_id":"r3"}`} {
		req := httptest.NewRequest(http.MethodPost, admit.AdmitPath, strings.NewReader(body))
		req.TLS = ok
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("body %.40q: got %d, want 400", body, rec.Code)
		}
	}
}

// TestRowLevelSecurity: as the service role, one org's transaction sees
// none of another org's runs or termination orders.
func TestRowLevelSecurity(t *testing.T) {
	e := newEnv(t)
	svc := e.replica(0)
	ctx := ctxT(t)
	if d, err := svc.Admit(ctx, "acme", "etl", "r1"); err != nil || !d.Admitted {
		t.Fatalf("%+v, %v", d, err)
	}
	if _, err := svc.OrderTermination(ctx, "acme", "r1", "test", "stop", nil); err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for _, table := range []string{"run_admissions", "termination_orders", "org_quotas"} {
		for _, org := range []string{"acme", "evil", ""} {
			var n int
			err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL ROLE cordon_service"); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
					return err
				}
				return tx.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := 0; (org == "acme") != (n > 0) {
				if org == "acme" {
					want = 1
				}
				t.Errorf("%s as org %q: got %d rows, want %d", table, org, n, want)
			}
		}
	}
	if _, err := svc.Heartbeat(ctx, "evil", "", "r1"); !errors.Is(err, admission.ErrUnknownRun) {
		t.Fatalf("heartbeat of acme's run as evil: got %v, want ErrUnknownRun", err)
	}
}
