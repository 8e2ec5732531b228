package ingest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/ingest"
	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

const td = "cordon.test"

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is one database, a dev CA and any number of dispatcher replicas.
type env struct {
	t      *testing.T
	ca     *spiffedev.CA
	dbURL  string
	server spiffeid.ID
}

func newEnv(t *testing.T, cluster *pgtest.Cluster) *env {
	t.Helper()
	ca, err := spiffedev.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	url := cluster.NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ca: ca, dbURL: url, server: spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")}
}

// replica is one running dispatcher.
type replica struct {
	logs  *syncBuffer
	srv   *ingest.Server
	store *auditstore.Store
	base  string
	reg   *prometheus.Registry
	done  chan error
}

func (e *env) startReplica(cfg ingest.Config, wrap func(ingest.Appender) ingest.Appender) *replica {
	t := e.t
	t.Helper()
	store, err := auditstore.Open(ctxT(t), e.dbURL, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = store
	if wrap != nil {
		cfg.Store = wrap(store)
	}
	cfg.TrustDomain = e.ca.TrustDomain()
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	logs := &syncBuffer{}
	cfg.Log = slog.New(slog.NewJSONHandler(logs, nil))
	srv, err := ingest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := e.ca.MintX509SVID(e.server, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{logs: logs, srv: srv, store: store, base: "https://" + l.Addr().String(), reg: reg, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(l, mtls.ServerConfig(svid, e.ca.Bundle(), e.ca.TrustDomain())) }()
	t.Cleanup(func() { r.stop(true) })
	return r
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent logging.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var stopMu sync.Mutex

// stop shuts the replica down, gracefully or as a crash. Idempotent.
func (r *replica) stop(graceful bool) {
	stopMu.Lock()
	defer stopMu.Unlock()
	if r.done == nil {
		return
	}
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r.srv.Shutdown(ctx)
		cancel()
	} else {
		r.srv.Close()
	}
	<-r.done
	r.done = nil
	r.store.Close()
}

func (e *env) tlsFor(id spiffeid.ID) *tls.Config {
	svid, err := e.ca.MintX509SVID(id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return mtls.ClientConfig(svid, e.ca.Bundle(), e.server)
}

func (e *env) client(r *replica, org, job string) *ingestclient.Client {
	id, err := e.ca.JobID(org, job)
	if err != nil {
		e.t.Fatal(err)
	}
	c := ingestclient.New(r.base, e.tlsFor(id), ingestclient.WithTimeout(15*time.Second))
	e.t.Cleanup(c.Close)
	return c
}

func (e *env) conn() *pgx.Conn {
	c, err := pgx.Connect(ctxT(e.t), e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.conn().QueryRow(ctxT(e.t), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) verifyOK() {
	e.t.Helper()
	rep, err := auditstore.Verify(ctxT(e.t), e.dbURL, "")
	if err != nil {
		e.t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		e.t.Fatalf("verify: %d problems, want 0: %v", len(rep.Problems), rep.Problems)
	}
}

func jobEvent(org, job string) audit.Event {
	return audit.Event{
		Timestamp: time.Now(),
		EventType: "EGRESS_ALLOWED",
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: "spiffe://" + td + "/org/" + org + "/job/" + job},
		Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: org},
		Action:    "CONNECT",
		Result:    audit.ResultSuccess,
		Metadata:  map[string]any{"host": "api.example.com", "port": 443},
	}
}

func jobEvents(org, job string, n int) []audit.Event {
	evs := make([]audit.Event, n)
	for i := range evs {
		evs[i] = jobEvent(org, job)
	}
	return evs
}

func usageReport(org, job string) usage.Report {
	return usage.Report{
		ReportID: "usg_" + strings.TrimPrefix(audit.NewID(), "evt_"), Org: org, Job: job, RunID: "run-1",
		StartedAt: time.Now().Add(-time.Minute), EndedAt: time.Now(), WallSeconds: 60, Enforcement: "cgroup-ebpf",
	}
}

func TestIngestStoresOnceOverMTLS(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	r := e.startReplica(ingest.Config{}, nil)
	c := e.client(r, "acme", "etl")
	ctx := ctxT(t)

	evs := jobEvents("acme", "etl", 30)
	res, err := c.SendEvents(ctx, evs[:20])
	if err != nil {
		t.Fatal(err)
	}
	if res != (ingestclient.Result{Stored: 20}) {
		t.Errorf("first delivery: got %+v, want 20 stored", res)
	}
	// Redelivery, out of order, overlapping new events, with a duplicate inside.
	again := append([]audit.Event{evs[25], evs[3], evs[3]}, evs[10:30]...)
	res, err = c.SendEvents(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if res != (ingestclient.Result{Stored: 10, Duplicates: 13}) {
		t.Errorf("redelivery: got %+v, want 10 stored 13 duplicates", res)
	}
	rep := usageReport("acme", "etl")
	for want := range []ingestclient.Result{{Stored: 1}, {Duplicates: 1}} {
		res, err := c.SendUsage(ctx, []usage.Report{rep})
		if err != nil {
			t.Fatal(err)
		}
		if (want == 0 && res.Stored != 1) || (want == 1 && res.Duplicates != 1) {
			t.Errorf("usage delivery %d: got %+v", want+1, res)
		}
	}
	if n := e.count("SELECT count(*) FROM audit_events"); n != 30 {
		t.Errorf("got %d audit rows, want 30", n)
	}
	if n := e.count("SELECT count(*) FROM usage_reports"); n != 1 {
		t.Errorf("got %d usage rows, want 1", n)
	}
	if got := counterValue(t, r.reg, "cordon_dispatcher_ingest_events_total", "stored"); got != 30 {
		t.Errorf("events_total{result=stored} = %v, want 30", got)
	}
	e.verifyOK()
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestIngestRefusesOtherOrgsAndJobsAndAuditsIt(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	r := e.startReplica(ingest.Config{}, nil)
	c := e.client(r, "acme", "etl")
	other := func(mut func(*audit.Event)) []audit.Event {
		evs := jobEvents("acme", "etl", 3)
		mut(&evs[1])
		return evs
	}
	cases := []struct {
		name   string
		events []audit.Event
		usage  []usage.Report
	}{
		{"event for another org", other(func(ev *audit.Event) { ev.Resource.TenantID = "globex" }), nil},
		{"event of another job", other(func(ev *audit.Event) { ev.Actor.ID = "spiffe://" + td + "/org/acme/job/billing" }), nil},
		{"event with a user actor about another job", other(func(ev *audit.Event) {
			ev.Actor = audit.Actor{Type: audit.ActorUser, ID: "mallory@example.com"}
			ev.Resource = audit.Resource{Type: "JOB", ID: "billing", TenantID: "acme"}
		}), nil},
		{"usage of another org", nil, []usage.Report{usageReport("acme", "etl"), usageReport("globex", "etl")}},
		{"usage of another job", nil, []usage.Report{usageReport("acme", "billing")}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.events != nil {
				_, err = c.SendEvents(ctxT(t), tc.events)
			} else {
				_, err = c.SendUsage(ctxT(t), tc.usage)
			}
			var perm *ingestclient.PermanentError
			if !errors.As(err, &perm) || perm.Status != http.StatusForbidden {
				t.Fatalf("got %v, want a permanent 403", err)
			}
			if n := e.count("SELECT count(*) FROM audit_events WHERE event_type = 'AUTHZ_DENIED' AND org_id = 'acme' AND retention_class = 'security'"); n != i+1 {
				t.Errorf("got %d AUTHZ_DENIED events in acme's security chain, want %d", n, i+1)
			}
		})
	}
	logs := r.logs.String()
	if strings.Contains(logs, "mallory@example.com") || !strings.Contains(logs, "mall***@example.com") {
		t.Errorf("logs hold the email unmasked or not at all, want it masked:\n%s", logs)
	}
	if n := e.count("SELECT count(*) FROM audit_events WHERE event_type <> 'AUTHZ_DENIED'"); n != 0 {
		t.Errorf("got %d events stored from refused batches, want 0", n)
	}
	if n := e.count("SELECT count(*) FROM audit_events WHERE org_id <> 'acme'") + e.count("SELECT count(*) FROM usage_reports"); n != 0 {
		t.Errorf("got %d rows outside acme or usage stored, want 0", n)
	}
	e.verifyOK()
}

func TestIngestRejectsMalformedRequests(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	r := e.startReplica(ingest.Config{Limits: ingest.Limits{MaxBodyBytes: 64 << 10, MaxItems: 100}}, nil)
	id, _ := e.ca.JobID("acme", "etl")
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsFor(id)}}
	t.Cleanup(hc.CloseIdleConnections)
	good := `{"timestamp":"` + time.Now().UTC().Format(time.RFC3339Nano) + `","event_type":"JOB_STARTED","event_id":"` + audit.NewID() +
		`","actor":{"type":"JOB","id":"etl"},"resource":{"type":"JOB","id":"etl","tenant_id":"acme"},"action":"START","result":"SUCCESS"}`
	cases := []struct {
		name     string
		path     string
		body     string
		wantCode int
		wantMsg  string
	}{
		{"unknown top-level field", ingest.EventsPath, `{"events":[` + good + `],"extra":1}`, 400, `unknown field "extra"`},
		{"unknown event field", ingest.EventsPath, `{"events":[` + strings.Replace(good, `"action"`, `"evil":1,"action"`, 1) + `]}`, 400, `unknown field "evil"`},
		{"trailing data", ingest.EventsPath, `{"events":[` + good + `]} {}`, 400, "data after"},
		{"not JSON", ingest.EventsPath, `events=1`, 400, "malformed JSON"},
		{"empty batch", ingest.EventsPath, `{"events":[]}`, 400, "missing or empty"},
		{"bad event id", ingest.EventsPath, `{"events":[` + strings.Replace(good, `"evt_`, `"evt_x`, 1) + `]}`, 400, "event_id"},
		{"future timestamp", ingest.EventsPath, `{"events":[` + strings.Replace(good, time.Now().UTC().Format("2006"), "2099", 1) + `]}`, 400, "future"},
		{"control characters", ingest.EventsPath, `{"events":[` + strings.Replace(good, `"id":"etl"}`, `"id":"etl\u0000"}`, 1) + `]}`, 400, "control characters"},
		{"too many events", ingest.EventsPath, `{"events":[` + strings.Repeat(good+",", 100) + good + `]}`, 400, "limit is 100"},
		{"body too large", ingest.EventsPath, `{"events":[` + strings.Repeat(" ", 70<<10) + good + `]}`, 413, "larger than"},
		{"bad usage", ingest.UsagePath, `{"reports":[{"report_id":"usg_1"}]}`, 400, "report_id"},
		{"get", ingest.EventsPath, "", 405, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodPost
			if tc.name == "get" {
				method = http.MethodGet
			}
			req, _ := http.NewRequestWithContext(ctxT(t), method, r.base+tc.path, strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			var body ingest.ErrorResponse
			_ = json.Unmarshal(b, &body)
			if resp.StatusCode != tc.wantCode || !strings.Contains(body.Error, tc.wantMsg) {
				t.Errorf("got %d %s, want %d containing %q", resp.StatusCode, b, tc.wantCode, tc.wantMsg)
			}
		})
	}
	t.Run("service identity is not a job", func(t *testing.T) {
		c := ingestclient.New(r.base, e.tlsFor(spiffeid.RequireFromSegments(e.ca.TrustDomain(), "xds")))
		defer c.Close()
		_, err := c.SendEvents(ctxT(t), jobEvents("acme", "etl", 1))
		var perm *ingestclient.PermanentError
		if !errors.As(err, &perm) || perm.Status != http.StatusForbidden {
			t.Errorf("got %v, want a permanent 403", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		cfg := tlsconfig.TLSClientConfig(e.ca.Bundle(), tlsconfig.AuthorizeID(e.server))
		c := ingestclient.New(r.base, cfg)
		defer c.Close()
		_, err := c.SendEvents(ctxT(t), jobEvents("acme", "etl", 1))
		if err == nil {
			t.Error("got nil, want the TLS handshake to fail")
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := e.tlsFor(id)
		cfg.MaxVersion = tls.VersionTLS12
		c := ingestclient.New(r.base, cfg)
		defer c.Close()
		if _, err := c.SendEvents(ctxT(t), jobEvents("acme", "etl", 1)); err == nil {
			t.Error("got nil, want TLS 1.2 refused")
		}
	})
	if n := e.count("SELECT count(*) FROM audit_events"); n != 0 {
		t.Errorf("got %d rows stored, want 0", n)
	}
}

func TestIngestRedactsSecretsInMetadata(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	r := e.startReplica(ingest.Config{}, nil)
	c := e.client(r, "acme", "etl")
	ev := jobEvent("acme", "etl")
	ev.Metadata = map[string]any{
		"password": "hunter2",
		"nested":   map[string]any{"api_key": "k-123", "note": "key AKIAIOSFODNN7EXAMPLE used"},
		"url":      "https://bob:s3cr3t@db.example.com/x",
		"host":     "api.example.com",
	}
	if _, err := c.SendEvents(ctxT(t), []audit.Event{ev}); err != nil {
		t.Fatal(err)
	}
	var md string
	if err := e.conn().QueryRow(ctxT(t), "SELECT metadata::text FROM audit_events").Scan(&md); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2", "k-123", "AKIAIOSFODNN7EXAMPLE", "s3cr3t"} {
		if strings.Contains(md, secret) {
			t.Errorf("stored metadata %s contains %q", md, secret)
		}
	}
	if !strings.Contains(md, "api.example.com") {
		t.Errorf("stored metadata %s lost the non-secret host", md)
	}
	e.verifyOK()
}

func TestTwoReplicasIngestOneOrgConcurrently(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	replicas := []*replica{e.startReplica(ingest.Config{}, nil), e.startReplica(ingest.Config{}, nil)}
	var wg sync.WaitGroup
	var sent atomic.Int64
	errs := make(chan error, 100)
	var dups atomic.Int64
	for i := range 8 {
		job := fmt.Sprintf("job-%d", i%3)
		c := e.client(replicas[i%2], "acme", job)
		redeliver := e.client(replicas[(i+1)%2], "acme", job)
		wg.Go(func() {
			for range 4 {
				evs := jobEvents("acme", job, 25)
				res, err := c.SendEvents(ctxT(t), evs)
				if err != nil {
					errs <- err
					return
				}
				sent.Add(int64(res.Stored))
				// The same batch again through the other replica.
				res, err = redeliver.SendEvents(ctxT(t), evs)
				if err != nil {
					errs <- err
					return
				}
				dups.Add(int64(res.Duplicates))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if sent.Load() != 800 || dups.Load() != 800 {
		t.Errorf("stored %d and %d duplicates, want 800 and 800", sent.Load(), dups.Load())
	}
	if n := e.count("SELECT count(DISTINCT event_id) FROM audit_events"); n != 800 {
		t.Errorf("got %d distinct rows, want 800", n)
	}
	if n := e.count("SELECT max(seq)::int FROM audit_events"); n != 800 {
		t.Errorf("got max seq %d in acme's single chain, want 800", n)
	}
	e.verifyOK()
}

// gated delays every Append until open is closed, to fill the queue.
type gated struct {
	ingest.Appender
	open chan struct{}
}

func (g *gated) AppendBatches(ctx context.Context, batches []auditstore.OrgBatch) ([]auditstore.AppendResult, error) {
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Appender.AppendBatches(ctx, batches)
}

func TestIngestFullQueueAnswers429(t *testing.T) {
	cases := []struct {
		name string
		cfg  ingest.Config
	}{
		{"queue full", ingest.Config{Writers: 1, MaxQueuedItems: 10, MaxBatchItems: 10}},
		{"too many in flight", ingest.Config{Writers: 1, MaxInFlight: 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testThrottling(t, tc.cfg) })
	}
}

func testThrottling(t *testing.T, cfg ingest.Config) {
	e := newEnv(t, pgtest.Shared(t))
	g := &gated{open: make(chan struct{})}
	r := e.startReplica(cfg, func(a ingest.Appender) ingest.Appender { g.Appender = a; return g })
	c := e.client(r, "acme", "etl")
	var wg sync.WaitGroup
	results := make(chan error, 5)
	for range 5 {
		wg.Go(func() {
			_, err := c.SendEvents(ctxT(t), jobEvents("acme", "etl", 10))
			results <- err
		})
	}
	time.Sleep(500 * time.Millisecond)
	close(g.open)
	wg.Wait()
	close(results)
	var throttled, ok int
	for err := range results {
		var re *ingestclient.RetryableError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &re) && re.Status == http.StatusTooManyRequests && re.After > 0:
			throttled++
		default:
			t.Errorf("got %v, want success or 429 with Retry-After", err)
		}
	}
	if throttled == 0 || ok == 0 {
		t.Errorf("got %d stored and %d throttled, want some of each", ok, throttled)
	}
	if n := e.count("SELECT count(*) FROM audit_events"); n != ok*10 {
		t.Errorf("got %d rows, want %d (the acknowledged ones)", n, ok*10)
	}
}

// sender delivers batches of fresh events one after the other, retrying
// each until it is acknowledged, as a sidecar spool does, until stop is
// closed. clients says where to send.
type sender struct {
	org, job string
	clients  func() *ingestclient.Client
	stop     chan struct{}

	mu       sync.Mutex // guards the following
	acked    []string
	sent     int // events generated
	retries  int
	retry503 int
}

func (s *sender) run(ctx context.Context) error {
	for {
		select {
		case <-s.stop:
			return nil
		default:
		}
		b := jobEvents(s.org, s.job, 50)
		s.mu.Lock()
		s.sent += len(b)
		s.mu.Unlock()
		for {
			res, err := s.clients().SendEvents(ctx, b)
			if err == nil {
				if res.Stored+res.Duplicates != len(b) {
					return fmt.Errorf("ack for %d events says %+v", len(b), res)
				}
				s.mu.Lock()
				for _, ev := range b {
					s.acked = append(s.acked, ev.EventID)
				}
				s.mu.Unlock()
				break
			}
			var re *ingestclient.RetryableError
			if !errors.As(err, &re) {
				return err
			}
			s.mu.Lock()
			s.retries++
			if re.Status == http.StatusServiceUnavailable && re.After > 0 {
				s.retry503++
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(re.After, 100*time.Millisecond)):
			}
		}
	}
}

// waitFor polls cond (under s.mu) for up to 20s.
func (s *sender) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func (e *env) assertStoredOnce(acked []string, total int) {
	e.t.Helper()
	var rows, distinct int
	if err := e.conn().QueryRow(ctxT(e.t), "SELECT count(*), count(DISTINCT event_id) FROM audit_events WHERE event_id = ANY($1)", acked).Scan(&rows, &distinct); err != nil {
		e.t.Fatal(err)
	}
	if rows != len(acked) || distinct != len(acked) {
		e.t.Errorf("acknowledged %d events; stored %d rows of %d distinct ids, want each exactly once", len(acked), rows, distinct)
	}
	if n := e.count("SELECT count(*) FROM audit_events"); n != total {
		e.t.Errorf("got %d rows in total, want %d", n, total)
	}
	e.verifyOK()
}

func TestPostgresOutageMidIngest(t *testing.T) {
	cluster := pgtest.Start(t)
	e := newEnv(t, cluster)
	r := e.startReplica(ingest.Config{CommitTimeout: 2 * time.Second}, nil)
	c := e.client(r, "acme", "etl")
	s := &sender{org: "acme", job: "etl", clients: func() *ingestclient.Client { return c }, stop: make(chan struct{})}
	done := make(chan error, 1)
	ctx := ctxT(t)
	go func() { done <- s.run(ctx) }()

	s.waitFor(t, "acks before the outage", func() bool { return len(s.acked) >= 500 })
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	s.waitFor(t, "a 503 during the outage", func() bool { return s.retry503 > 0 })
	time.Sleep(500 * time.Millisecond)
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	before := len(s.acked)
	s.mu.Unlock()
	s.waitFor(t, "acks after the restart", func() bool { return len(s.acked) >= before+500 })
	close(s.stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.assertStoredOnce(s.acked, s.sent)
}

func TestDispatcherKilledMidBatch(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	var cur atomic.Pointer[ingestclient.Client]
	r1 := e.startReplica(ingest.Config{}, nil)
	cur.Store(e.client(r1, "acme", "etl"))
	s := &sender{org: "acme", job: "etl", clients: cur.Load, stop: make(chan struct{})}
	// A second sidecar hammers the same org so the crash lands mid-batch.
	s2 := &sender{org: "acme", job: "etl", clients: cur.Load, stop: s.stop}
	done := make(chan error, 2)
	ctx := ctxT(t)
	go func() { done <- s.run(ctx) }()
	go func() { done <- s2.run(ctx) }()

	s.waitFor(t, "acks before the crash", func() bool { return len(s.acked) >= 500 })
	r1.stop(false) // crash: connections cut, transactions rolled back
	s.waitFor(t, "a failed send after the crash", func() bool { return s.retries > 0 })
	r2 := e.startReplica(ingest.Config{}, nil)
	cur.Store(e.client(r2, "acme", "etl"))
	s.mu.Lock()
	before := len(s.acked)
	s.mu.Unlock()
	s.waitFor(t, "acks after the restart", func() bool { return len(s.acked) >= before+500 })
	close(s.stop)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	e.assertStoredOnce(append(s.acked, s2.acked...), s.sent+s2.sent)
}

func TestGracefulShutdownAnswersInFlight(t *testing.T) {
	e := newEnv(t, pgtest.Shared(t))
	r := e.startReplica(ingest.Config{}, nil)
	c := e.client(r, "acme", "etl")
	var acked atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				res, err := c.SendEvents(ctxT(t), jobEvents("acme", "etl", 20))
				if err != nil {
					return
				}
				acked.Add(int64(res.Stored))
			}
		})
	}
	time.Sleep(150 * time.Millisecond)
	r.stop(true)
	wg.Wait()
	if n := e.count("SELECT count(*) FROM audit_events"); int64(n) < acked.Load() {
		t.Errorf("acknowledged %d events, stored %d: an acknowledged event was lost", acked.Load(), n)
	}
	e.verifyOK()
}
