package anomaly_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/anomaly"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type env struct {
	t     *testing.T
	url   string
	store *auditstore.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	store, err := auditstore.Open(ctxT(t), url, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return &env{t: t, url: url, store: store}
}

func (e *env) pool() *pgxpool.Pool {
	t := e.t
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	p, err := pgxpool.NewWithConfig(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// replica is one dispatcher's detector and admission service.
func (e *env) replica() (*anomaly.Detector, *admission.Service) {
	p := e.pool()
	adm, err := admission.New(admission.Config{DB: p, Audit: e.store})
	if err != nil {
		e.t.Fatal(err)
	}
	det, err := anomaly.New(anomaly.Config{DB: p, Audit: e.store, Terminator: adm, MinRuns: 10})
	if err != nil {
		e.t.Fatal(err)
	}
	return det, adm
}

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

type use struct {
	cpu     float64
	rss     int64
	egress  int64
	denials int64
}

// report stores a usage report of run.
func (e *env) report(org, job, run string, final bool, u use) {
	e.t.Helper()
	now := time.Now()
	exit := 0
	r := usage.Report{
		ReportID: "usg_" + uuid.NewString(), Org: org, Job: job, RunID: run, Final: final,
		StartedAt: now.Add(-time.Minute), EndedAt: now,
		CPUUserSeconds: u.cpu * 0.8, CPUSystemSeconds: u.cpu * 0.2, MaxRSSBytes: u.rss, WallSeconds: 60,
		Egress: map[string]usage.Egress{
			"api.example.com:443": {BytesOut: u.egress / 2, Requests: 3},
			"s3.example.com:443":  {BytesOut: u.egress - u.egress/2, Requests: 1},
		},
		Denials: u.denials, Enforcement: "cgroup-ebpf",
	}
	if final {
		r.ExitCode = &exit
	}
	if _, err := e.store.Append(ctxT(e.t), org, nil, []usage.Report{r}); err != nil {
		e.t.Fatal(err)
	}
}

// seed stores n finished runs of job with usage near a typical value.
func (e *env) seed(org, job string, n int) {
	for i := range n {
		jitter := float64(i%5) - 2 // -2..2
		e.report(org, job, fmt.Sprintf("base-%d", i), true, use{
			cpu: 30 + jitter, rss: (200 + int64(jitter)*5) << 20, egress: (50 + int64(jitter)) << 20, denials: int64(i % 2),
		})
	}
}

func TestCheckFinished(t *testing.T) {
	e := newEnv(t)
	det, _ := e.replica()
	ctx := ctxT(t)
	e.seed("acme", "etl", 12)
	e.seed("small", "etl", 5)
	tests := []struct {
		name, org, run string
		u              use
		wantFlag       bool
		wantAnomalous  []string
	}{
		{"typical run", "acme", "ok", use{31, 205 << 20, 51 << 20, 1}, false, nil},
		{"exfiltration", "acme", "exfil", use{31, 205 << 20, 5 << 30, 0}, true, []string{anomaly.MetricEgress}},
		{"probing", "acme", "probe", use{30, 200 << 20, 50 << 20, 400}, true, []string{anomaly.MetricDenials}},
		{"cryptominer", "acme", "miner", use{3000, 2 << 30, 50 << 20, 0}, true, []string{anomaly.MetricCPU, anomaly.MetricRSS}},
		{"light run is not abuse", "acme", "light", use{1, 10 << 20, 0, 0}, false, nil},
		{"too little history", "small", "exfil", use{31, 205 << 20, 5 << 30, 0}, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.report(tc.org, "etl", tc.run, true, tc.u)
			res, err := det.CheckFinished(ctx, tc.org, tc.run)
			if err != nil {
				t.Fatal(err)
			}
			if res.Flagged != tc.wantFlag {
				t.Fatalf("got flagged %v, want %v (scores %+v, baseline %d)", res.Flagged, tc.wantFlag, res.Scores, res.BaselineRuns)
			}
			var got []string
			for _, s := range res.Scores {
				if s.Anomalous {
					got = append(got, s.Metric)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantAnomalous) {
				t.Fatalf("got anomalous metrics %v, want %v", got, tc.wantAnomalous)
			}
			want := 0
			if tc.wantFlag {
				want = 1
			}
			if n := e.count(`SELECT count(*) FROM audit_events WHERE org_id = $1 AND event_type = 'ANOMALY_DETECTED' AND resource_id = $2`, tc.org, tc.run); n != want {
				t.Fatalf("got %d ANOMALY_DETECTED events for the run, want %d", n, want)
			}
		})
	}
	if res, _ := det.CheckFinished(ctx, "small", "exfil"); res.BaselineRuns != 5 || len(res.Scores) != 0 {
		t.Fatalf("small baseline: got %d runs and %d scores, want 5 and none", res.BaselineRuns, len(res.Scores))
	}
}

// TestFlagOnceAcrossReplicas: two replicas checking the same run at once
// record one flag and one audit event.
func TestFlagOnceAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	a, _ := e.replica()
	b, _ := e.replica()
	e.seed("acme", "etl", 12)
	e.report("acme", "etl", "exfil", true, use{31, 205 << 20, 5 << 30, 0})
	var wg sync.WaitGroup
	news := make(chan bool, 8)
	for i := range 8 {
		det := a
		if i%2 == 1 {
			det = b
		}
		wg.Go(func() {
			res, err := det.CheckFinished(ctxT(t), "acme", "exfil")
			if err != nil {
				t.Error(err)
			}
			news <- res.NewFlag
		})
	}
	wg.Wait()
	close(news)
	n := 0
	for v := range news {
		if v {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("got %d new flags, want 1", n)
	}
	if got := e.count(`SELECT count(*) FROM audit_events WHERE event_type = 'ANOMALY_DETECTED'`); got != 1 {
		t.Fatalf("got %d ANOMALY_DETECTED events, want 1", got)
	}
}

// TestTerminateRunning: with policy terminate, a running run whose live
// egress is far above its job's baseline gets a termination order, which
// its next heartbeat carries; with notify it is only flagged.
func TestTerminateRunning(t *testing.T) {
	e := newEnv(t)
	det, adm := e.replica()
	ctx := ctxT(t)
	for _, org := range []string{"acme", "calm"} {
		e.seed(org, "etl", 12)
		if d, err := adm.Admit(ctx, org, "etl", "live-1"); err != nil || !d.Admitted {
			t.Fatalf("admit: %+v, %v", d, err)
		}
		e.report(org, "etl", "live-1", false, use{5, 100 << 20, 3 << 30, 0})
	}
	if err := det.SetPolicy(ctx, "acme", anomaly.PolicyTerminate); err != nil {
		t.Fatal(err)
	}
	if err := det.SetPolicy(ctx, "acme", "kill-everything"); err == nil {
		t.Fatal("got an unknown policy accepted, want an error")
	}
	// An open run without any usage report yet is skipped.
	if d, err := adm.Admit(ctx, "acme", "etl", "young"); err != nil || !d.Admitted {
		t.Fatalf("admit: %+v, %v", d, err)
	}
	ordered, err := det.Sweep(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if ordered != 1 {
		t.Fatalf("got %d termination orders from the sweep, want 1 (acme only)", ordered)
	}
	if again, err := det.Sweep(ctx, 1000); err != nil || again != 0 {
		t.Fatalf("second sweep: got %d orders, %v; want 0", again, err)
	}
	hb, err := adm.Heartbeat(ctx, "acme", "etl", "live-1")
	if err != nil {
		t.Fatal(err)
	}
	if hb.Terminate == nil || hb.Terminate.Grace != admission.TerminationGrace {
		t.Fatalf("heartbeat: got order %+v, want a termination order", hb.Terminate)
	}
	if hb, err := adm.Heartbeat(ctx, "calm", "etl", "live-1"); err != nil || hb.Terminate != nil {
		t.Fatalf("notify org heartbeat: got %+v, %v; want no order", hb, err)
	}
	for _, tc := range []struct {
		org, typ string
		want     int
	}{
		{"acme", anomaly.EventAnomalyDetected, 1},
		{"acme", admission.EventRunTerminationOrdered, 1},
		{"calm", anomaly.EventAnomalyDetected, 1},
		{"calm", admission.EventRunTerminationOrdered, 0},
	} {
		if got := e.count(`SELECT count(*) FROM audit_events WHERE org_id = $1 AND event_type = $2`, tc.org, tc.typ); got != tc.want {
			t.Errorf("org %s: got %d %s events, want %d", tc.org, got, tc.typ, tc.want)
		}
	}
	if err := adm.Finish(ctx, "acme", "live-1", admission.FinishReport{Terminated: true, Signal: "SIGKILL"}); err != nil {
		t.Fatal(err)
	}
	if got := e.count(`SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'RUN_TERMINATED'`); got != 1 {
		t.Fatalf("got %d RUN_TERMINATED events, want 1", got)
	}
	rep, err := auditstore.Verify(ctx, e.url, "")
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify: %v, %v", err, rep.Problems)
	}
}

// TestRunLoop: the background loop scores a run that finished (once its
// final report is in) and stops a running one, and returns when its
// context ends.
func TestRunLoop(t *testing.T) {
	e := newEnv(t)
	det, adm := e.replica()
	ctx := ctxT(t)
	e.seed("acme", "etl", 12)
	if err := det.SetPolicy(ctx, "acme", anomaly.PolicyTerminate); err != nil {
		t.Fatal(err)
	}
	for _, run := range []string{"finished", "running", "no-report"} {
		if d, err := adm.Admit(ctx, "acme", "etl", run); err != nil || !d.Admitted {
			t.Fatalf("admit %s: %+v, %v", run, d, err)
		}
	}
	e.report("acme", "etl", "finished", true, use{3000, 200 << 20, 50 << 20, 0})
	for _, run := range []string{"finished", "no-report"} {
		if err := adm.Finish(ctx, "acme", run, admission.FinishReport{}); err != nil {
			t.Fatal(err)
		}
	}
	e.report("acme", "etl", "running", false, use{1, 100 << 20, 0, 500})

	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- det.Run(loopCtx, 50*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		flags := e.count(`SELECT count(*) FROM audit_events WHERE event_type = 'ANOMALY_DETECTED'`)
		orders := e.count(`SELECT count(*) FROM termination_orders WHERE run_id = 'running'`)
		if flags == 2 && orders == 1 {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("after 10s: got %d flags and %d orders, want 2 and 1", flags, orders)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of its context ending")
	}
	for _, tc := range []struct {
		run  string
		want int
	}{{"finished", 1}, {"no-report", 0}, {"running", 0}} {
		if got := e.count(`SELECT count(*) FROM run_admissions WHERE run_id = $1 AND anomaly_scored_at IS NOT NULL`, tc.run); got != tc.want {
			t.Errorf("run %s: got scored %d, want %d", tc.run, got, tc.want)
		}
	}
}
