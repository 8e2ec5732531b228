package alerts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/cordon-dev/cordon/dispatcher/alerts"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/allowlist"
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

// receiver is an org's webhook endpoint on loopback: it answers the
// statuses in plan in turn (200 once the plan is used up) and keeps what
// it received.
type receiver struct {
	srv  *httptest.Server
	plan []int

	mu   sync.Mutex // guards the following
	reqs []received
}

type received struct {
	status         int
	body           []byte
	sig, key, kind string
}

func newReceiver(t *testing.T, plan ...int) *receiver {
	r := &receiver{plan: plan}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		status := http.StatusOK
		if n := len(r.reqs); n < len(r.plan) {
			status = r.plan[n]
		}
		r.reqs = append(r.reqs, received{status: status, body: body, sig: req.Header.Get(alerts.SignatureHeader),
			key: req.Header.Get(alerts.IdempotencyHeader), kind: req.Header.Get(alerts.EventTypeHeader)})
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.reqs...)
}

// port is the receiver's port; its certificate is for example.com, which
// the test client resolves to the receiver.
func (r *receiver) port() uint16 {
	_, ps, _ := net.SplitHostPort(r.srv.Listener.Addr().String())
	p, _ := strconv.Atoi(ps)
	return uint16(p)
}

func (r *receiver) url(path string) string {
	return fmt.Sprintf("https://example.com:%d%s", r.port(), path)
}

// client dials the receiver whatever the URL's host, trusting its certificate.
func (r *receiver) client() *http.Client {
	tr := r.srv.Client().Transport.(*http.Transport).Clone()
	addr := r.srv.Listener.Addr().String()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

type env struct {
	t     *testing.T
	url   string
	store *auditstore.Store
	files sync.Map // org -> *allowlist.File
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

func (e *env) allow(org string, hooks ...allowlist.Webhook) {
	e.files.Store(org, &allowlist.File{Org: org, Webhooks: hooks})
}

// replica is one dispatcher's Alerter with its own pool.
func (e *env) replica(client *http.Client, tries uint) *alerts.Alerter {
	t := e.t
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	a, err := alerts.New(alerts.Config{
		DB: pool, Audit: e.store, Client: client, Tries: tries,
		Retry: func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) },
		Allowlist: func(org string) *allowlist.File {
			f, _ := e.files.Load(org)
			f2, _ := f.(*allowlist.File)
			return f2
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// spend stores a finished run of org costing about usd (egress only, at the
// default $0.09 per GB).
func (e *env) spend(org string, usd float64) {
	e.t.Helper()
	now := time.Now()
	exit := 0
	r := usage.Report{ReportID: "usg_" + uuid.NewString(), Org: org, Job: "etl", RunID: "run-" + uuid.NewString(), Final: true,
		StartedAt: now.Add(-time.Second), EndedAt: now, ExitCode: &exit, WallSeconds: 1, Enforcement: "cgroup-ebpf",
		Egress: map[string]usage.Egress{"s3.example.com:443": {BytesOut: int64(usd / 0.09 * 1e9)}}}
	if _, err := e.store.Append(ctxT(e.t), org, nil, []usage.Report{r}); err != nil {
		e.t.Fatal(err)
	}
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

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	c, err := pgx.Connect(ctxT(e.t), e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctxT(e.t), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func TestPriceModel(t *testing.T) {
	var p alerts.Prices
	tests := []struct {
		name string
		u    alerts.Usage
		want float64
	}{
		{"one vCPU hour", alerts.Usage{CPUSeconds: 3600}, 0.04048},
		{"one GB hour", alerts.Usage{GBSeconds: 3600}, 0.004445},
		{"ten GB out", alerts.Usage{EgressBytes: 10e9}, 0.9},
		{"nothing", alerts.Usage{}, 0},
	}
	for _, tc := range tests {
		if got := p.Cost(tc.u); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("%s: got %g, want %g", tc.name, got, tc.want)
		}
	}
}

// TestAlertOnceAcrossReplicas: evaluators on two replicas racing over the
// same spend raise each crossed threshold once, and deliverers on both
// replicas append each alert's audit event once and deliver each webhook once.
func TestAlertOnceAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t)
	e.allow("acme", allowlist.Webhook{Host: "example.com", Port: rcv.port(), Path: "/alerts/"})
	a, b := e.replica(rcv.client(), 3), e.replica(rcv.client(), 3)
	ctx := ctxT(t)
	if err := a.SetBudget(ctx, "acme", 10, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetWebhook(ctx, "acme", rcv.url("/alerts/acme")); err != nil {
		t.Fatal(err)
	}
	e.spend("acme", 4) // 40%: nothing
	if n, err := a.Evaluate(ctx); err != nil || n != 0 {
		t.Fatalf("at 40%%: got %d alerts, %v; want 0", n, err)
	}
	e.spend("acme", 4.5) // 85%: 50 and 80
	var raised atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		al := a
		if i%2 == 1 {
			al = b
		}
		wg.Go(func() {
			got, err := al.EvaluateOrg(ctxT(t), "acme")
			if err != nil {
				t.Error(err)
			}
			raised.Add(int32(len(got)))
		})
	}
	wg.Wait()
	if got := raised.Load(); got != 2 {
		t.Fatalf("got %d alerts raised by 10 racing evaluators, want 2 (50%% and 80%%)", got)
	}
	// Delivery, from both replicas at once.
	var delivered atomic.Int32
	for i := range 4 {
		al := a
		if i%2 == 1 {
			al = b
		}
		wg.Go(func() {
			n, err := al.DeliverDue(ctxT(t), 100)
			if err != nil {
				t.Error(err)
			}
			delivered.Add(int32(n))
		})
	}
	wg.Wait()
	if got := delivered.Load(); got != 2 {
		t.Fatalf("got %d deliveries, want 2", got)
	}
	if got := len(rcv.received()); got != 2 {
		t.Fatalf("receiver got %d requests, want 2", got)
	}
	for _, tc := range []struct {
		sql  string
		want int
	}{
		{"SELECT count(*) FROM cost_alerts WHERE org_id = 'acme'", 2},
		{"SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'COST_ALERT'", 2},
		{"SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'COST_ALERT' AND (metadata->>'threshold_pct')::int IN (50, 80)", 2},
		{"SELECT count(*) FROM alert_outbox WHERE org_id = 'acme' AND webhook_state = 'delivered' AND audit_done AND attempts = 1", 2},
	} {
		if got := e.count(tc.sql); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.sql, got, tc.want)
		}
	}
	// Crossing 100% later raises only the new threshold.
	e.spend("acme", 2)
	if got, err := b.EvaluateOrg(ctx, "acme"); err != nil || len(got) != 1 || got[0].ThresholdPct != 100 {
		t.Fatalf("at 105%%: got %+v, %v; want the 100%% alert only", got, err)
	}
	rep, err := auditstore.Verify(ctx, e.url, "")
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify: %v, %v", err, rep.Problems)
	}
}

// TestWebhookRetriesAndSignature: the receiver fails twice with 500; the
// third try succeeds; every request carries the same idempotency key and a
// valid signature over the same body; one delivery is recorded.
func TestWebhookRetriesAndSignature(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t, 500, 503)
	e.allow("acme", allowlist.Webhook{Host: "example.com", Port: rcv.port(), Path: "/alerts/"})
	a := e.replica(rcv.client(), 5)
	ctx := ctxT(t)
	if err := a.SetBudget(ctx, "acme", 1, []int{100}); err != nil {
		t.Fatal(err)
	}
	secret, err := a.SetWebhook(ctx, "acme", rcv.url("/alerts/acme"))
	if err != nil {
		t.Fatal(err)
	}
	e.spend("acme", 1.5)
	raised, err := a.EvaluateOrg(ctx, "acme")
	if err != nil || len(raised) != 1 {
		t.Fatalf("got %v, %v; want one alert", raised, err)
	}
	// A fresh replica delivers what the first one committed (as after a
	// crash between commit and delivery).
	b := e.replica(rcv.client(), 5)
	if n, err := b.DeliverDue(ctx, 10); err != nil || n != 1 {
		t.Fatalf("deliver: got %d, %v; want 1", n, err)
	}
	reqs := rcv.received()
	if len(reqs) != 3 {
		t.Fatalf("receiver got %d requests, want 3 (500, 503, 200)", len(reqs))
	}
	for i, r := range reqs {
		if err := alerts.Verify(secret, r.sig, r.body, time.Now(), 0); err != nil {
			t.Errorf("request %d: signature: %v", i, err)
		}
		if err := alerts.Verify([]byte("not the secret, but 32 bytes long"), r.sig, r.body, time.Now(), 0); !errors.Is(err, alerts.ErrSignatureMismatch) {
			t.Errorf("request %d: got %v with the wrong secret, want a mismatch", i, err)
		}
		if r.key != raised[0].EventID || r.kind != alerts.EventCostAlert || string(r.body) != string(reqs[0].body) {
			t.Errorf("request %d: got key %q kind %q, want %q %q and the same body", i, r.key, r.kind, raised[0].EventID, alerts.EventCostAlert)
		}
	}
	var body alerts.Alert
	if err := json.Unmarshal(reqs[0].body, &body); err != nil || body.Org != "acme" || body.ThresholdPct != 100 || body.SpendUSD < 1.49 {
		t.Fatalf("body: got %+v, %v", body, err)
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE webhook_state = 'delivered' AND last_status = 200 AND attempts = 1`); got != 1 {
		t.Fatalf("got %d delivered outbox rows, want 1", got)
	}
	if n, err := a.DeliverDue(ctx, 10); err != nil || n != 0 || len(rcv.received()) != 3 {
		t.Fatalf("second pass: got %d deliveries, %v, %d requests; want nothing more", n, err, len(rcv.received()))
	}
}

// TestWebhookOutboxKeepsFailures: a receiver that keeps failing leaves the
// alert pending for a later delivery, which succeeds once it recovers; a
// 4xx is final; a webhook the allowlist no longer lists gets nothing.
func TestWebhookOutboxKeepsFailures(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t, 500, 500)
	e.allow("acme", allowlist.Webhook{Host: "example.com", Port: rcv.port(), Path: "/alerts/"})
	a := e.replica(rcv.client(), 2)
	ctx := ctxT(t)
	if err := a.SetBudget(ctx, "acme", 1, []int{50, 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetWebhook(ctx, "acme", rcv.url("/alerts/acme")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetWebhook(ctx, "acme", "https://evil.example/collect"); !errors.Is(err, alerts.ErrWebhookNotAllowed) {
		t.Fatalf("unlisted webhook: got %v, want ErrWebhookNotAllowed", err)
	}
	e.spend("acme", 0.6)
	if _, err := a.EvaluateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if n, err := a.DeliverDue(ctx, 10); err != nil || n != 0 {
		t.Fatalf("got %d, %v; want 0 delivered", n, err)
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE webhook_state = 'pending' AND audit_done AND attempts = 1
		AND last_status = 500 AND next_attempt_at > now() + interval '50 seconds'`); got != 1 {
		t.Fatalf("got %d pending rows scheduled about a minute ahead, want 1", got)
	}
	if got := e.count(`SELECT count(*) FROM audit_events WHERE event_type = 'COST_ALERT'`); got != 1 {
		t.Fatalf("got %d COST_ALERT events, want 1 (the audit event does not wait for the webhook)", got)
	}
	e.exec(`UPDATE alert_outbox SET next_attempt_at = now()`) // time passes
	if n, err := a.DeliverDue(ctx, 10); err != nil || n != 1 {
		t.Fatalf("after recovery: got %d, %v; want 1", n, err)
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE webhook_state = 'delivered' AND attempts = 2`); got != 1 {
		t.Fatalf("got %d delivered rows after two deliveries, want 1", got)
	}

	// The org removes the webhook from its allowlist: the next alert is not sent.
	e.allow("acme")
	e.spend("acme", 0.6)
	if _, err := a.EvaluateOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	before := len(rcv.received())
	if n, err := a.DeliverDue(ctx, 10); err != nil || n != 0 || len(rcv.received()) != before {
		t.Fatalf("unlisted: got %d, %v, %d new requests; want nothing sent", n, err, len(rcv.received())-before)
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE webhook_state = 'not_allowed' AND audit_done`); got != 1 {
		t.Fatalf("got %d not_allowed rows, want 1", got)
	}

	// A 4xx is final.
	rej := newReceiver(t, 403)
	e.allow("beta", allowlist.Webhook{Host: "example.com", Port: rej.port(), Path: "/"})
	r := e.replica(rej.client(), 5)
	if err := r.SetBudget(ctx, "beta", 1, []int{10}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetWebhook(ctx, "beta", rej.url("/hook")); err != nil {
		t.Fatal(err)
	}
	e.spend("beta", 0.2)
	if _, err := r.EvaluateOrg(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
	if n, err := r.DeliverDue(ctx, 10); err != nil || n != 0 || len(rej.received()) != 1 {
		t.Fatalf("403: got %d, %v, %d requests; want 0 and 1 request", n, err, len(rej.received()))
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE org_id = 'beta' AND webhook_state = 'failed' AND last_status = 403`); got != 1 {
		t.Fatalf("got %d failed rows, want 1", got)
	}
	if got := e.count(`SELECT count(*) FROM alert_outbox WHERE last_error LIKE '%/alerts/acme%' OR last_error LIKE '%/hook%'`); got != 0 {
		t.Fatalf("got %d outbox errors quoting the webhook URL, want 0", got)
	}
}

// TestPublicClientRefusesLoopback: the default client does not reach a
// loopback receiver, whatever name resolves to it.
func TestPublicClientRefusesLoopback(t *testing.T) {
	rcv := newReceiver(t)
	c := alerts.PublicClient(2 * time.Second)
	defer c.CloseIdleConnections()
	for _, u := range []string{rcv.srv.URL, fmt.Sprintf("https://localhost:%d/", rcv.port())} {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		if !errors.Is(err, alerts.ErrNotPublic) {
			t.Errorf("GET %s: got %v, want ErrNotPublic", u, err)
		}
	}
	if n := len(rcv.received()); n != 0 {
		t.Fatalf("receiver got %d requests, want 0", n)
	}
}

// TestRunLoop: the background loop raises and delivers an alert, and
// returns when its context ends.
func TestRunLoop(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t)
	e.allow("acme", allowlist.Webhook{Host: "example.com", Port: rcv.port(), Path: "/"})
	a := e.replica(rcv.client(), 2)
	ctx := ctxT(t)
	if err := a.SetBudget(ctx, "acme", 1, []int{80}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetWebhook(ctx, "acme", rcv.url("/hook")); err != nil {
		t.Fatal(err)
	}
	e.spend("acme", 0.9)
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(loopCtx, 50*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(rcv.received()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a few more rounds: nothing more is sent
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of its context ending")
	}
	if got := len(rcv.received()); got != 1 {
		t.Fatalf("receiver got %d requests, want 1", got)
	}
}

// TestRowLevelSecurity: as the service role, another org's transaction sees
// none of an org's budget, webhook (and its secret), alerts or outbox.
func TestRowLevelSecurity(t *testing.T) {
	e := newEnv(t)
	rcv := newReceiver(t)
	e.allow("acme", allowlist.Webhook{Host: "example.com", Port: rcv.port(), Path: "/"})
	a := e.replica(rcv.client(), 1)
	ctx := ctxT(t)
	if err := a.SetBudget(ctx, "acme", 1, []int{10}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetWebhook(ctx, "acme", rcv.url("/hook")); err != nil {
		t.Fatal(err)
	}
	e.spend("acme", 0.5)
	if got, err := a.EvaluateOrg(ctx, "acme"); err != nil || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	c, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for _, table := range []string{"org_budgets", "org_webhooks", "cost_alerts", "alert_outbox"} {
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
			if want := map[bool]int{true: 1, false: 0}[org == "acme"]; n != want {
				t.Errorf("%s as org %q: got %d rows, want %d", table, org, n, want)
			}
		}
	}
}
