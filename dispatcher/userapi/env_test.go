package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/jwks"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is a migrated database with the orgs acme and globex, the real
// writer (auditstore.Store), a loopback OIDC issuer with real keys, and the
// API over HTTP. Its pool logs in as the superuser: the API's own
// SET LOCAL ROLE cordon_service is what subjects it to row-level security.
type env struct {
	url   string
	store *auditstore.Store
	is    *jwks.Issuer
	api   *API
	srv   *httptest.Server
	now   time.Time
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ctx := ctxT(t)
	e := &env{now: time.Now().UTC().Truncate(time.Second)}
	e.url = pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctx, e.url, nil); err != nil {
		t.Fatal(err)
	}
	su, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := su.Exec(ctx, "INSERT INTO orgs (org_id) VALUES ('acme'), ('globex')"); err != nil {
		t.Fatal(err)
	}
	su.Close(ctx)
	if e.store, err = auditstore.Open(ctx, e.url, auditstore.Options{MaxConns: 4}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.store.Close)

	if e.is, err = jwks.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.is.Close)
	v, err := oidc.New(ctx, oidc.Config{Issuer: e.is.URL(), Audiences: []string{jwks.DefaultAudience}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	auth, err := authn.New(authn.Options{Validator: v, Users: authn.NewPGUsers(pool)})
	if err != nil {
		t.Fatal(err)
	}
	set := &allowlist.Set{Files: map[string]*allowlist.File{
		"acme":   testAllowFile("acme", "block_follower", "api.example.com"),
		"globex": testAllowFile("globex", "secret_job", "globex-internal.example"),
	}}
	e.api, err = New(Config{Pool: pool, Auth: auth, Allowlists: func() *allowlist.Set { return set },
		Now: func() time.Time { return e.now.Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.api.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

func testAllowFile(org, job, host string) *allowlist.File {
	return &allowlist.File{
		Org: org,
		EndpointSets: map[string]*allowlist.EndpointSet{
			"main": {Name: "main", Entries: []allowlist.Entry{
				{Host: host, Ports: []uint16{443}},
				{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Ports: []uint16{5432}},
			}},
		},
		Jobs: map[string]*allowlist.Job{job: {Name: job, Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce, Allow: []string{"main"}}},
	}
}

func (e *env) token(t *testing.T, sub, org, role string) string {
	t.Helper()
	tok, err := e.is.Mint(e.is.Claims(sub, org, role), jwks.MintOptions{Alg: jwks.ES256})
	if err != nil {
		tok, err = e.is.Mint(e.is.Claims(sub, org, role), jwks.MintOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// get requests path with token (none when empty) and returns the answer.
func (e *env) get(t *testing.T, token, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), "GET", e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func (e *env) getJSON(t *testing.T, token, path string, into any) {
	t.Helper()
	resp, body := e.get(t, token, path)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: got %d %s, want 200", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, into); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// event is an audit event of org at ts.
func event(org, typ, job, dest string, ts time.Time) audit.Event {
	ev := audit.Event{
		Timestamp: ts, EventType: typ, EventID: audit.NewID(),
		Actor:    audit.Actor{Type: audit.ActorJob, ID: fmt.Sprintf("spiffe://cordon.test/org/%s/job/%s", org, job)},
		Resource: audit.Resource{Type: "EGRESS", ID: dest, TenantID: org},
		Action:   "CONNECT", Result: audit.ResultSuccess,
		Metadata: map[string]any{"job": job},
	}
	if typ == EventEgressDenied {
		ev.Result = audit.ResultDenied
	}
	return ev
}

func (e *env) append(t *testing.T, org string, evs []audit.Event, reps []usage.Report) {
	t.Helper()
	if _, err := e.store.Append(ctxT(t), org, evs, reps); err != nil {
		t.Fatalf("append %s: %v", org, err)
	}
}

// seed stores, for each org, n events spread over the last hours, two
// denials of distinct destinations, and a run with two usage reports.
func (e *env) seed(t *testing.T, org, job string, n int) []audit.Event {
	t.Helper()
	var evs []audit.Event
	for i := range n {
		evs = append(evs, event(org, "EGRESS_ALLOWED", job, "api.example.com:443", e.now.Add(-time.Duration(i)*7*time.Minute)))
	}
	evs = append(evs,
		event(org, EventEgressDenied, job, "evil-"+org+".example:443", e.now.Add(-90*time.Minute)),
		event(org, EventEgressDenied, job, "evil-"+org+".example:443", e.now.Add(-30*time.Minute)),
		event(org, EventEgressDenied, job, "other-"+org+".example:80", e.now.Add(-30*time.Minute)),
	)
	exit := 0
	start := e.now.Add(-2 * time.Hour)
	reps := []usage.Report{
		{ReportID: "usg_" + org + "_1", Org: org, Job: job, RunID: "run-" + org, StartedAt: start, EndedAt: start.Add(time.Minute),
			CPUUserSeconds: 1, WallSeconds: 60, MaxRSSBytes: 100, Denials: 1, Enforcement: "network-only",
			Egress: map[string]usage.Egress{"api.example.com:443": {BytesOut: 10, BytesIn: 20, Requests: 1}}},
		{ReportID: "usg_" + org + "_2", Org: org, Job: job, RunID: "run-" + org, Final: true, StartedAt: start, EndedAt: start.Add(time.Hour),
			ExitCode: &exit, CPUUserSeconds: 30, CPUSystemSeconds: 5, WallSeconds: 3600, MaxRSSBytes: 4096, Denials: 3, Redactions: 2,
			StdoutBytes: 7, StderrBytes: 3, Enforcement: "network-only",
			Egress: map[string]usage.Egress{"api.example.com:443": {BytesOut: 1000, BytesIn: 2000, Requests: 5},
				"denied": {Denials: 3}}},
	}
	e.append(t, org, evs, reps)
	return evs
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }
