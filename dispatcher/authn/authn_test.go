package authn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/test/jwks"
	"github.com/cordon-dev/cordon/test/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recorder is an audit.Emitter that keeps what it is given.
type recorder struct {
	mu     sync.Mutex // guards events
	events []audit.Event
}

func (r *recorder) Emit(ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

// fakeUsers is an in-memory Users for the middleware's own tests; the
// Postgres implementation has its tests in pgusers_test.go.
type fakeUsers struct {
	mu    sync.Mutex // guards the following
	calls int
	orgs  map[string]bool
	rows  map[string]authn.User
	err   error
}

func (f *fakeUsers) EnsureUser(ctx context.Context, id oidc.Identity) (authn.User, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return authn.User{}, false, f.err
	}
	if !f.orgs[id.OrgID] {
		return authn.User{}, false, authn.ErrUnknownOrg
	}
	k := id.OrgID + "/" + id.Subject
	u, ok := f.rows[k]
	prev := u.Role
	uid := u.ID
	if !ok {
		uid = fmt.Sprintf("user-%d", len(f.rows)+1)
	}
	u = authn.User{ID: uid, OrgID: id.OrgID, ExternalID: id.Subject, Email: id.Email, Role: id.Role}
	if ok && prev != id.Role {
		u.PreviousRole = prev
	}
	f.rows[k] = u
	return u, !ok, nil
}

type env struct {
	is    *jwks.Issuer
	auth  *authn.Authenticator
	audit *recorder
	users *fakeUsers
	srv   *httptest.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	f := &fakeUsers{orgs: map[string]bool{"acme": true}, rows: map[string]authn.User{}}
	e := newEnvWith(t, f)
	e.users = f
	return e
}

func newEnvWith(t *testing.T, users authn.Users) *env {
	t.Helper()
	is, err := jwks.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(is.Close)
	v, err := oidc.New(ctxT(t), oidc.Config{Issuer: is.URL(), Audiences: []string{jwks.DefaultAudience}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	e := &env{is: is, audit: &recorder{}}
	e.auth, err = authn.New(authn.Options{Validator: v, Users: users, Audit: e.audit})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := authn.IdentityFrom(r.Context())
		u, _ := authn.UserFrom(r.Context())
		io.WriteString(w, "hello "+id.Subject+" "+string(id.Role)+" "+u.ID)
	})
	mux.Handle("GET /runs", e.auth.Authenticate(e.auth.Require(rbac.View, rbac.Runs)(ok)))
	mux.Handle("POST /runs/cancel", e.auth.Authenticate(e.auth.Require(rbac.Cancel, rbac.Runs)(ok)))
	mux.Handle("GET /audit", e.auth.Authenticate(e.auth.Require(rbac.View, rbac.AuditEvents)(ok)))
	mux.Handle("GET /unguarded", e.auth.Require(rbac.View, rbac.Runs)(ok))
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	t.Cleanup(e.srv.Client().CloseIdleConnections)
	return e
}

func (e *env) token(t *testing.T, sub, org, role string, mod func(map[string]any)) string {
	t.Helper()
	c := e.is.Claims(sub, org, role)
	if mod != nil {
		mod(c)
	}
	tok, err := e.is.Mint(c, jwks.MintOptions{Alg: jwks.ES256})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *env) do(t *testing.T, method, path string, headers map[string][]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestAuthenticate(t *testing.T) {
	e := newEnv(t)
	good := e.token(t, "u1", "acme", "reader", nil)
	expired := e.token(t, "u1", "acme", "admin", func(c map[string]any) {
		c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
		c["exp"] = time.Now().Add(-time.Hour).Unix()
	})
	for _, tc := range []struct {
		name       string
		auth       []string
		wantStatus int
		wantChall  string
		wantBody   string
	}{
		{"no header", nil, 401, `Bearer realm="cordon"`, "unauthorized"},
		{"basic auth", []string{"Basic dTpw"}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"bearer without token", []string{"Bearer "}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"two headers", []string{"Bearer " + good, "Bearer " + good}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"token with a space", []string{"Bearer " + good + " x"}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"expired token", []string{"Bearer " + expired}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"alg none", []string{"Bearer " + e.is.MintNone(e.is.Claims("u1", "acme", "admin"), e.is.Kid(jwks.RS256))}, 401, `Bearer realm="cordon", error="invalid_token"`, "invalid_token"},
		{"org not provisioned", []string{"Bearer " + e.token(t, "u1", "globex", "admin", nil)}, 403, "", "forbidden"},
		{"valid", []string{"Bearer " + good}, 200, "", "hello u1 reader"},
		{"lower-case scheme", []string{"bearer " + good}, 200, "", "hello u1 reader"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(t, "GET", "/runs", map[string][]string{"Authorization": tc.auth})
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status: got %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != tc.wantChall {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tc.wantChall)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("body: got %q, want it to contain %q", body, tc.wantBody)
			}
			for _, leak := range []string{"expired", "signature", "alg", good[len(good)-16:]} {
				if tc.wantStatus != 200 && strings.Contains(body, leak) {
					t.Errorf("body %q leaks %q", body, leak)
				}
			}
		})
	}
}

func TestRequire(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, role, method, path string
		wantStatus               int
	}{
		{"reader views runs", "reader", "GET", "/runs", 200},
		{"reader cancels a run", "reader", "POST", "/runs/cancel", 403},
		{"writer cancels a run", "writer", "POST", "/runs/cancel", 200},
		{"writer views audit events", "writer", "GET", "/audit", 403},
		{"admin views audit events", "admin", "GET", "/audit", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.audit.all())
			tok := e.token(t, "user-"+tc.role, "acme", tc.role, func(c map[string]any) { c["email"] = "secret.person@example.com" })
			resp, body := e.do(t, tc.method, tc.path, map[string][]string{
				"Authorization": {"Bearer " + tok}, "X-Request-Id": {"req-" + tc.role}, "User-Agent": {"cordon-test/1"},
			})
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status: got %d, want %d (body %q)", resp.StatusCode, tc.wantStatus, body)
			}
			var denials []audit.Event
			for _, ev := range e.audit.all()[before:] {
				if ev.EventType == authn.EventAuthzDenied {
					denials = append(denials, ev)
				}
			}
			if tc.wantStatus == 200 {
				if len(denials) != 0 {
					t.Fatalf("denial events for an allowed request: got %d, want 0", len(denials))
				}
				return
			}
			if len(denials) != 1 {
				t.Fatalf("denial events: got %d, want 1", len(denials))
			}
			ev := denials[0]
			if ev.Actor.Type != audit.ActorUser || ev.Actor.ID != "user-"+tc.role {
				t.Errorf("actor: got %+v, want USER user-%s", ev.Actor, tc.role)
			}
			if ev.Actor.IPAddress != "127.0.0.1" || ev.Actor.UserAgent != "cordon-test/1" {
				t.Errorf("actor ip/ua: got %q %q, want 127.0.0.1 cordon-test/1", ev.Actor.IPAddress, ev.Actor.UserAgent)
			}
			if ev.Resource.TenantID != "acme" || ev.Result != audit.ResultDenied || ev.RequestID != "req-"+tc.role {
				t.Errorf("event: got tenant %q result %q request %q, want acme DENIED req-%s", ev.Resource.TenantID, ev.Result, ev.RequestID, tc.role)
			}
			if ev.Metadata["role"] != tc.role || ev.Metadata["reason"] == "" {
				t.Errorf("metadata: got %v, want role %s and a reason", ev.Metadata, tc.role)
			}
			if got := resp.Header.Get("X-Request-Id"); got != "req-"+tc.role {
				t.Errorf("X-Request-Id: got %q, want req-%s", got, tc.role)
			}
		})
	}
	for _, ev := range e.audit.all() {
		if strings.Contains(eventString(ev), "secret.person") {
			t.Errorf("audit event holds an unmasked email: %+v", ev)
		}
	}
}

func eventString(ev audit.Event) string {
	var b strings.Builder
	b.WriteString(ev.Actor.ID + ev.Actor.UserAgent + ev.Resource.ID + ev.RequestID)
	for k, v := range ev.Metadata {
		b.WriteString(k)
		if s, ok := v.(string); ok {
			b.WriteString(s)
		}
	}
	return b.String()
}

func TestRequireWithoutAuthenticateFailsClosed(t *testing.T) {
	e := newEnv(t)
	resp, _ := e.do(t, "GET", "/unguarded", map[string][]string{"Authorization": {"Bearer " + e.token(t, "u1", "acme", "admin", nil)}})
	if resp.StatusCode != 401 {
		t.Fatalf("status: got %d, want 401", resp.StatusCode)
	}
}

func TestFirstLoginEventsAndCache(t *testing.T) {
	e := newEnv(t)
	tok := e.token(t, "newbie", "acme", "reader", func(c map[string]any) { c["email"] = "newbie.person@example.com" })
	for range 3 {
		if resp, body := e.do(t, "GET", "/runs", map[string][]string{"Authorization": {"Bearer " + tok}}); resp.StatusCode != 200 {
			t.Fatalf("status: got %d, want 200 (%s)", resp.StatusCode, body)
		}
	}
	if e.users.calls != 1 {
		t.Errorf("EnsureUser calls for three requests with one token: got %d, want 1 (cached)", e.users.calls)
	}
	promoted := e.token(t, "newbie", "acme", "admin", func(c map[string]any) { c["email"] = "newbie.person@example.com" })
	if resp, _ := e.do(t, "GET", "/audit", map[string][]string{"Authorization": {"Bearer " + promoted}}); resp.StatusCode != 200 {
		t.Fatalf("promoted user: got %d, want 200", resp.StatusCode)
	}
	var types []string
	for _, ev := range e.audit.all() {
		types = append(types, ev.EventType)
		if ev.EventType == authn.EventUserCreated && ev.Metadata["email"] != "n***@example.com" {
			t.Errorf("USER_CREATED email: got %v, want masked n***@example.com", ev.Metadata["email"])
		}
	}
	if got, want := strings.Join(types, ","), "USER_CREATED,ROLE_CHANGED"; got != want {
		t.Errorf("events: got %s, want %s", got, want)
	}
}

func TestUsersStoreDown(t *testing.T) {
	e := newEnv(t)
	e.users.err = errors.New("connection refused")
	resp, body := e.do(t, "GET", "/runs", map[string][]string{"Authorization": {"Bearer " + e.token(t, "u1", "acme", "admin", nil)}})
	if resp.StatusCode != 503 || strings.Contains(body, "refused") {
		t.Fatalf("users store down: got %d %q, want 503 without detail", resp.StatusCode, body)
	}
}

func TestDenialEvent(t *testing.T) {
	id := oidc.Identity{Subject: "sub-1", Email: "alice@example.com", OrgID: "acme", Role: rbac.Reader}
	ev := authn.DenialEvent(id, rbac.Cancel, rbac.Runs, "req-1")
	want := audit.Event{
		EventType: "AUTHZ_DENIED",
		Actor:     audit.Actor{Type: "USER", ID: "sub-1"},
		Resource:  audit.Resource{Type: "RUNS", ID: "runs", TenantID: "acme"},
		Action:    "CANCEL",
		Result:    "DENIED",
		RequestID: "req-1",
	}
	got := ev
	got.Timestamp, got.EventID, got.Metadata = time.Time{}, "", nil
	if got.EventType != want.EventType || got.Actor != want.Actor || got.Resource != want.Resource ||
		got.Action != want.Action || got.Result != want.Result || got.RequestID != want.RequestID {
		t.Fatalf("DenialEvent: got %+v, want %+v", got, want)
	}
	if !strings.HasPrefix(ev.EventID, "evt_") || ev.Timestamp.IsZero() {
		t.Errorf("id/time: got %q %v, want evt_ and a timestamp", ev.EventID, ev.Timestamp)
	}
	if r, _ := ev.Metadata["reason"].(string); !strings.Contains(r, "reader may not cancel runs") {
		t.Errorf("reason: got %q, want the matrix's reason", r)
	}
	if strings.Contains(eventString(ev), "alice") {
		t.Errorf("event holds the email: %+v", ev)
	}
}
