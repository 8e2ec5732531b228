package credapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/credsource"
	"github.com/cordon-dev/cordon/test/fakeaws"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

// memAudit is an Appender in memory that can be made to fail.
type memAudit struct {
	mu     sync.Mutex // guards the following
	fail   bool
	events map[string][]audit.Event // by org
}

func (m *memAudit) Append(_ context.Context, org string, evs []audit.Event, _ []usage.Report) (auditstore.AppendResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return auditstore.AppendResult{}, errors.New("connection refused")
	}
	m.events[org] = append(m.events[org], evs...)
	return auditstore.AppendResult{}, nil
}

func (m *memAudit) byOrg(org string) []audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]audit.Event(nil), m.events[org]...)
}

// mapGrants grants "org/job location" keys exactly.
type mapGrants map[string]string

func (g mapGrants) PIIGrant(_ context.Context, org, job, loc string) (string, bool, error) {
	id, ok := g[org+"/"+job+" "+loc]
	return id, ok, nil
}

type handlerEnv struct {
	h     *credapi.Handler
	fake  *fakeaws.STS
	audit *memAudit
	logs  *syncBuffer
	reg   *prometheus.Registry
	ca    *spiffedev.CA
}

func newHandlerEnv(t *testing.T) *handlerEnv {
	t.Helper()
	ca, err := spiffedev.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	fake := fakeaws.NewSTS()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	e := &handlerEnv{fake: fake, audit: &memAudit{events: map[string][]audit.Event{}}, logs: &syncBuffer{},
		reg: prometheus.NewRegistry(), ca: ca}
	e.h, err = credapi.New(credapi.Config{
		Minter: credentials.Config{
			RoleARNTemplate: roleARN,
			Confinement:     datasets.Confinement{RootTemplates: []string{datasetRoot}},
		},
		STS:         newSTSClient(t, srv.URL),
		Grants:      mapGrants{"acme/alerts s3://trace-data/acme/users/": "grant-1"},
		Audit:       e.audit,
		TrustDomain: ca.TrustDomain(),
		Registry:    e.reg,
		Log:         slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// peer is the TLS state of a client presenting an SVID for id.
func peer(t *testing.T, ca *spiffedev.CA, id spiffeid.ID) *tls.ConnectionState {
	t.Helper()
	svid, err := ca.MintX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.ConnectionState{PeerCertificates: svid.Certificates}
}

func body(run string, decl datasets.Declaration) string {
	b, _ := json.Marshal(map[string]any{"run_id": run, "datasets": decl})
	return string(b)
}

func TestHandlerAnswers(t *testing.T) {
	other, err := spiffedev.NewCA("other.test")
	if err != nil {
		t.Fatal(err)
	}
	acme := spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/alerts")
	piiDecl := datasets.Declaration{Inputs: []datasets.Dataset{{Location: "s3://trace-data/acme/users/", PII: true}}}
	for _, tc := range []struct {
		name       string
		method     string
		tls        func(e *handlerEnv) *tls.ConnectionState
		body       string
		stsFail    string // FailNextAssumeRole code
		auditFails bool
		wantCode   int
		wantReason string
		wantRetry  bool
		wantAudit  string // event type in acme's audit, or "" for none
	}{
		{name: "issued", body: body("r1", scoped), wantCode: 200, wantAudit: credentials.EventIssued},
		{name: "PII with grant", body: body("r1", piiDecl), wantCode: 200, wantAudit: credentials.EventIssued},
		{name: "no client certificate", tls: func(*handlerEnv) *tls.ConnectionState { return nil },
			body: body("r1", scoped), wantCode: 403, wantReason: credapi.ReasonUnauthenticated},
		{name: "not a job identity", tls: func(e *handlerEnv) *tls.ConnectionState {
			return peer(t, e.ca, spiffeid.RequireFromString("spiffe://cordon.test/dispatcher"))
		}, body: body("r1", scoped), wantCode: 403, wantReason: credapi.ReasonUnauthenticated},
		{name: "job of another trust domain", tls: func(*handlerEnv) *tls.ConnectionState {
			return peer(t, other, spiffeid.RequireFromString("spiffe://other.test/org/acme/job/alerts"))
		}, body: body("r1", scoped), wantCode: 403, wantReason: credapi.ReasonUnauthenticated},
		{name: "job path with extra segment", tls: func(e *handlerEnv) *tls.ConnectionState {
			return peer(t, e.ca, spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/alerts/x"))
		}, body: body("r1", scoped), wantCode: 403, wantReason: credapi.ReasonUnauthenticated},
		{name: "GET", method: http.MethodGet, wantCode: 405, wantReason: "method_not_allowed"},
		{name: "org in the body is refused, not used", body: `{"run_id":"r1","org":"beta","datasets":{"inputs":[{"location":"s3://trace-data/beta/x/"}]}}`,
			wantCode: 400, wantReason: credapi.ReasonBadRequest},
		{name: "duplicate run_id", body: `{"run_id":"r1","run_id":"r2","datasets":{"inputs":[{"location":"s3://trace-data/acme/x/"}]}}`,
			wantCode: 400, wantReason: credapi.ReasonBadRequest},
		{name: "trailing data", body: body("r1", scoped) + `{}`, wantCode: 400, wantReason: credapi.ReasonBadRequest},
		{name: "wildcard location", body: `{"run_id":"r1","datasets":{"inputs":[{"location":"s3://trace-data/acme/*"}]}}`,
			wantCode: 400, wantReason: credapi.ReasonBadRequest},
		{name: "too large", body: `{"run_id":"r1","datasets":{"inputs":[{"location":"` + strings.Repeat("a", 70<<10) + `"}]}}`,
			wantCode: 413, wantReason: credapi.ReasonBadRequest},
		{name: "invalid run ID", body: body("../r1", scoped), wantCode: 400, wantReason: credapi.ReasonInvalidRun,
			wantAudit: credentials.EventRefused},
		{name: "another org's prefix", body: body("r1", datasets.Declaration{Inputs: []datasets.Dataset{{Location: "s3://trace-data/beta/blocks/"}}}),
			wantCode: 403, wantReason: credapi.ReasonNotConfined, wantAudit: credentials.EventRefused},
		{name: "PII without grant", tls: func(e *handlerEnv) *tls.ConnectionState {
			return peer(t, e.ca, spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/other"))
		}, body: body("r1", piiDecl), wantCode: 403, wantReason: credapi.ReasonPIIGrantMissing, wantAudit: credentials.EventRefused},
		{name: "no datasets", body: `{"run_id":"r1","datasets":{}}`, wantCode: 422, wantReason: credapi.ReasonNoDatasets},
		{name: "STS access denied", body: body("r1", scoped), stsFail: "AccessDenied", wantCode: 502,
			wantReason: credapi.ReasonSTSRefused, wantAudit: credentials.EventRefused},
		{name: "STS throttling", body: body("r1", scoped), stsFail: "Throttling", wantCode: 503,
			wantReason: credapi.ReasonUnavailable, wantRetry: true, wantAudit: credentials.EventRefused},
		{name: "audit store down withholds credentials", body: body("r1", scoped), auditFails: true, wantCode: 503,
			wantReason: credapi.ReasonAuditUnavailable, wantRetry: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHandlerEnv(t)
			if tc.stsFail != "" {
				e.fake.FailNextAssumeRole(tc.stsFail, "nope")
			}
			e.audit.fail = tc.auditFails
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			r := httptest.NewRequest(method, credapi.Path, strings.NewReader(tc.body))
			r.TLS = peer(t, e.ca, acme)
			r.Header.Set("X-Request-Id", "req-1")
			if tc.tls != nil {
				r.TLS = tc.tls(e)
			}
			w := httptest.NewRecorder()
			e.h.ServeHTTP(w, r)

			if w.Code != tc.wantCode {
				t.Fatalf("status: got %d, want %d (body %s)", w.Code, tc.wantCode, w.Body)
			}
			if got := w.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if got := w.Header().Get("Retry-After") != ""; got != tc.wantRetry {
				t.Errorf("Retry-After present: got %v, want %v", got, tc.wantRetry)
			}
			var issued []fakeaws.IssuedCredentials
			if tc.wantCode == 200 {
				var resp credapi.Response
				dec := json.NewDecoder(w.Body)
				dec.DisallowUnknownFields()
				if err := dec.Decode(&resp); err != nil {
					t.Fatal(err)
				}
				c, ok := e.fake.Issued(resp.AccessKeyID)
				if !ok || c.SecretAccessKey != resp.SecretAccessKey || c.SessionToken != resp.SessionToken || !c.Expiration.Equal(resp.Expiration) {
					t.Fatalf("answer does not carry the credentials STS issued")
				}
				issued = append(issued, c)
				if got := counterValue(t, e.reg, "cordon_dispatcher_credentials_issued_total", ""); got != 1 {
					t.Errorf("issued counter: got %v, want 1", got)
				}
			} else {
				var er credapi.ErrorResponse
				if err := json.Unmarshal(w.Body.Bytes(), &er); err != nil {
					t.Fatal(err)
				}
				if got := counterValue(t, e.reg, "cordon_dispatcher_credentials_refused_total", tc.wantReason); got != 1 {
					t.Errorf("refused{reason=%q}: got %v, want 1", tc.wantReason, got)
				}
				if er.Reason != tc.wantReason || er.Error == "" {
					t.Fatalf("reason: got %q (%q), want %q", er.Reason, er.Error, tc.wantReason)
				}
				if bytes.Contains(w.Body.Bytes(), []byte("SecretAccessKey")) || bytes.Contains(w.Body.Bytes(), []byte("session_token")) {
					t.Fatalf("a refusal carries credentials: %s", w.Body)
				}
			}
			evs := e.audit.byOrg("acme")
			if tc.wantAudit == "" && len(evs) != 0 || tc.wantAudit != "" && (len(evs) != 1 || evs[0].EventType != tc.wantAudit) {
				t.Fatalf("acme audit: got %+v, want %q", evs, tc.wantAudit)
			}
			if len(evs) == 1 && evs[0].RequestID != "req-1" {
				t.Errorf("audit request ID: got %q, want req-1", evs[0].RequestID)
			}
			for org := range e.audit.events {
				if org != "acme" {
					t.Fatalf("an event landed in org %q's audit", org)
				}
			}
			// Issued credentials stay out of the logs.
			for _, c := range issued {
				if strings.Contains(e.logs.String(), c.SecretAccessKey) || strings.Contains(e.logs.String(), c.SessionToken) {
					t.Fatal("logs hold the issued credentials")
				}
			}
		})
	}
}

// counterValue is the counter name's value (with reason when not empty).
func counterValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
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
			match := reason == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == "reason" && l.GetValue() == reason
			}
			if match {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestPathsAgree: the sidecar's copy of the endpoint path is the
// dispatcher's.
func TestPathsAgree(t *testing.T) {
	if credsource.Path != credapi.Path {
		t.Fatalf("credsource.Path %q, credapi.Path %q", credsource.Path, credapi.Path)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	good := func() credapi.Config {
		return credapi.Config{
			Minter:      credentials.Config{RoleARNTemplate: roleARN, Confinement: datasets.Confinement{RootTemplates: []string{datasetRoot}}},
			STS:         newSTSClient(t, "http://127.0.0.1:1"),
			Grants:      mapGrants{},
			Audit:       &memAudit{},
			TrustDomain: spiffeid.RequireTrustDomainFromString(td),
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*credapi.Config)
	}{
		{"no STS", func(c *credapi.Config) { c.STS = nil }},
		{"no grants", func(c *credapi.Config) { c.Grants = nil }},
		{"no audit", func(c *credapi.Config) { c.Audit = nil }},
		{"no trust domain", func(c *credapi.Config) { c.TrustDomain = spiffeid.TrustDomain{} }},
		{"role template without {org}", func(c *credapi.Config) { c.Minter.RoleARNTemplate = "arn:aws:iam::123456789012:role/data" }},
		{"negative timeout", func(c *credapi.Config) { c.MintTimeout = -time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			tc.change(&cfg)
			if _, err := credapi.New(cfg); err == nil {
				t.Fatal("New: got nil error, want a refusal")
			}
		})
	}
	if _, err := credapi.New(good()); err != nil {
		t.Fatalf("New with a good config: %v", err)
	}
}

// blockingSTS holds every AssumeRole until release is closed.
type blockingSTS struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingSTS) AssumeRole(ctx context.Context, _ *sts.AssumeRoleInput, _ ...func(*sts.Options)) (*sts.AssumeRoleOutput, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return nil, errors.New("released")
}

// TestTooManyInFlightAnswers429: beyond MaxInFlight a request is answered
// at once with 429 and Retry-After, without reaching STS.
func TestTooManyInFlightAnswers429(t *testing.T) {
	ca, err := spiffedev.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	b := &blockingSTS{entered: make(chan struct{}, 1), release: make(chan struct{})}
	h, err := credapi.New(credapi.Config{
		Minter:      credentials.Config{RoleARNTemplate: roleARN, Confinement: datasets.Confinement{RootTemplates: []string{datasetRoot}}},
		STS:         b,
		Grants:      mapGrants{},
		Audit:       &memAudit{events: map[string][]audit.Event{}},
		TrustDomain: ca.TrustDomain(),
		MaxInFlight: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	state := peer(t, ca, spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/alerts"))
	request := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, credapi.Path, strings.NewReader(body("r1", scoped)))
		r.TLS = state
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- request() }()
	<-b.entered
	w := request()
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("second request: got %d (Retry-After %q), want 429 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	close(b.release)
	if w := <-first; w.Code != http.StatusServiceUnavailable {
		t.Fatalf("first request: got %d, want 503 (STS failed)", w.Code)
	}
}

// BenchmarkHandler is one issuance through the handler: strict decode,
// minting with the real SDK client against the fake STS on loopback,
// audit into memory.
func BenchmarkHandler(b *testing.B) {
	ca, err := spiffedev.NewCA(td)
	if err != nil {
		b.Fatal(err)
	}
	fake := fakeaws.NewSTS()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	client := sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: &srv.URL,
		Credentials: awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", "")})
	h, err := credapi.New(credapi.Config{
		Minter:      credentials.Config{RoleARNTemplate: roleARN, Confinement: datasets.Confinement{RootTemplates: []string{datasetRoot}}},
		STS:         client,
		Grants:      mapGrants{},
		Audit:       &memAudit{events: map[string][]audit.Event{}},
		TrustDomain: ca.TrustDomain(),
	})
	if err != nil {
		b.Fatal(err)
	}
	svid, err := ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/alerts"), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	state := &tls.ConnectionState{PeerCertificates: svid.Certificates}
	payload := body("r1", scoped)
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, credapi.Path, strings.NewReader(payload))
		r.TLS = state
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// TestRequestIDIsBounded: a hostile X-Request-Id never reaches the audit
// row.
func TestRequestIDIsBounded(t *testing.T) {
	for _, tc := range []struct{ name, header, want string }{
		{"plain", "req_01.a:b-c", "req_01.a:b-c"},
		{"too long", strings.Repeat("a", 129), ""},
		{"newline", "a\nb", ""},
		{"quote", `a"b`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newHandlerEnv(t)
			r := httptest.NewRequest(http.MethodPost, credapi.Path, strings.NewReader(body("r1", scoped)))
			r.TLS = peer(t, e.ca, spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/alerts"))
			r.Header.Set("X-Request-Id", tc.header)
			e.h.ServeHTTP(httptest.NewRecorder(), r)
			evs := e.audit.byOrg("acme")
			if len(evs) != 1 || evs[0].RequestID != tc.want {
				t.Fatalf("got %+v, want one event with request ID %q", evs, tc.want)
			}
		})
	}
}
