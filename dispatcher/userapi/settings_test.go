package userapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/dispatcher/alerts"
	"github.com/cordon-dev/cordon/internal/audit"
)

// request sends method path with token and body and returns the answer.
func request(t *testing.T, base, method, token, path, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// fakeSettings records calls; fail, when set, is returned by every setter.
type fakeSettings struct {
	mu    sync.Mutex
	calls []string
	fail  error
}

func (f *fakeSettings) record(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	return f.fail
}
func (f *fakeSettings) SetQuota(_ context.Context, org string, c, h int) error {
	return f.record(org + " quota " + itoa(c) + " " + itoa(h))
}
func (f *fakeSettings) SetBudget(_ context.Context, org string, usd float64, th []int) error {
	return f.record(org + " budget")
}
func (f *fakeSettings) SetWebhook(_ context.Context, org, url string) ([]byte, error) {
	if err := f.record(org + " webhook " + url); err != nil {
		return nil, err
	}
	return []byte("0123456789abcdef0123456789abcdef"), nil
}
func (f *fakeSettings) SetPolicy(_ context.Context, org, p string) error {
	return f.record(org + " policy " + p)
}

func itoa(i int) string { return strconv.Itoa(i) }

func mustMarshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

type auditRecorder struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (r *auditRecorder) Emit(ev audit.Event) { r.mu.Lock(); r.evs = append(r.evs, ev); r.mu.Unlock() }
func (r *auditRecorder) last() (audit.Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) == 0 {
		return audit.Event{}, 0
	}
	return r.evs[len(r.evs)-1], len(r.evs)
}

func TestAdminSettings(t *testing.T) {
	e := newEnv(t)
	fake := &fakeSettings{}
	rec := &auditRecorder{}
	api, err := New(Config{Pool: e.api.pool, Auth: e.api.auth, Audit: rec,
		Settings: Settings{Quotas: fake, Budgets: fake, Webhooks: fake, AnomalyPolicy: fake, MaxConcurrentRuns: 20, MaxRunsPerHour: 200}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	admin, writer, reader := e.token(t, "alice", "acme", "admin"), e.token(t, "bob", "acme", "writer"), e.token(t, "carol", "acme", "reader")

	cases := []struct {
		name       string
		token      string
		path, body string
		fail       error
		wantCode   int
		wantCall   string // "" means the setter must not be called
		wantResult string // audit result; "" means no ORG_SETTINGS_CHANGED event
		wantBody   string
	}{
		{"admin sets quota", admin, "/api/v1/admin/quota", `{"max_concurrent_runs":10,"max_runs_per_hour":100}`, nil, 200, "acme quota 10 100", audit.ResultSuccess, `"max_concurrent_runs":10`},
		{"quota above the ceiling", admin, "/api/v1/admin/quota", `{"max_concurrent_runs":21,"max_runs_per_hour":100}`, nil, 400, "", audit.ResultFailure, "max_concurrent_runs"},
		{"negative quota", admin, "/api/v1/admin/quota", `{"max_concurrent_runs":1,"max_runs_per_hour":-1}`, nil, 400, "", audit.ResultFailure, "max_runs_per_hour"},
		{"unknown field", admin, "/api/v1/admin/quota", `{"max_concurrent_runs":1,"max_runs_per_hour":1,"org":"globex"}`, nil, 400, "", audit.ResultFailure, "unknown field"},
		{"two objects", admin, "/api/v1/admin/anomaly-policy", `{"policy":"notify"}{"policy":"terminate"}`, nil, 400, "", audit.ResultFailure, "exactly one"},
		{"writer may not", writer, "/api/v1/admin/quota", `{"max_concurrent_runs":10,"max_runs_per_hour":100}`, nil, 403, "", "", ""},
		{"reader may not", reader, "/api/v1/admin/budget", `{"monthly_usd":10,"thresholds_pct":[50]}`, nil, 403, "", "", ""},
		{"no token", "", "/api/v1/admin/webhook", `{"url":"https://hooks.slack.com/services/T0/B0/x"}`, nil, 401, "", "", ""},
		{"admin sets budget", admin, "/api/v1/admin/budget", `{"monthly_usd":500,"thresholds_pct":[50,80,100]}`, nil, 200, "acme budget", audit.ResultSuccess, `"monthly_usd":500`},
		{"thresholds not increasing", admin, "/api/v1/admin/budget", `{"monthly_usd":500,"thresholds_pct":[80,50]}`, nil, 400, "", audit.ResultFailure, "thresholds_pct"},
		{"zero budget", admin, "/api/v1/admin/budget", `{"monthly_usd":0,"thresholds_pct":[50]}`, nil, 400, "", audit.ResultFailure, "monthly_usd"},
		{"admin sets webhook", admin, "/api/v1/admin/webhook", `{"url":"https://hooks.slack.com/services/T0/B0/tok3n"}`, nil, 200, "acme webhook https://hooks.slack.com/services/T0/B0/tok3n", audit.ResultSuccess, base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))},
		{"webhook over http", admin, "/api/v1/admin/webhook", `{"url":"http://hooks.slack.com/x"}`, nil, 400, "", audit.ResultFailure, "https"},
		{"webhook not in the allowlist", admin, "/api/v1/admin/webhook", `{"url":"https://evil.example/x"}`, alerts.ErrWebhookNotAllowed, 400, "acme webhook https://evil.example/x", audit.ResultFailure, "not allowed"},
		{"webhook to a private address", admin, "/api/v1/admin/webhook", `{"url":"https://10.0.0.1/x"}`, alerts.ErrNotPublic, 400, "acme webhook https://10.0.0.1/x", audit.ResultFailure, "public"},
		{"admin sets terminate", admin, "/api/v1/admin/anomaly-policy", `{"policy":"terminate"}`, nil, 200, "acme policy terminate", audit.ResultSuccess, "terminate"},
		{"policy off is not a policy", admin, "/api/v1/admin/anomaly-policy", `{"policy":"off"}`, nil, 400, "", audit.ResultFailure, "policy"},
		{"the database fails", admin, "/api/v1/admin/anomaly-policy", `{"policy":"notify"}`, errors.New("connection refused"), 500, "acme policy notify", audit.ResultFailure, "internal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake.mu.Lock()
			fake.calls, fake.fail = nil, tc.fail
			fake.mu.Unlock()
			_, before := rec.last()
			resp, body := request(t, srv.URL, "PUT", tc.token, tc.path, tc.body)
			if resp.StatusCode != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("got %d %s, want %d containing %q", resp.StatusCode, body, tc.wantCode, tc.wantBody)
			}
			fake.mu.Lock()
			calls := fake.calls
			fake.mu.Unlock()
			if tc.wantCall == "" && len(calls) > 0 || tc.wantCall != "" && (len(calls) != 1 || calls[0] != tc.wantCall) {
				t.Errorf("setter calls: got %q, want %q", calls, tc.wantCall)
			}
			ev, after := rec.last()
			if tc.wantResult == "" {
				if after != before && ev.EventType == EventSettingsChanged {
					t.Errorf("got audit event %+v, want none", ev)
				}
				return
			}
			if after != before+1 || ev.EventType != EventSettingsChanged || ev.Result != tc.wantResult || ev.Resource.TenantID != "acme" || ev.Actor.ID != "alice" {
				t.Errorf("audit: got %d new, last %+v; want one %s %s by alice in acme", after-before, ev, EventSettingsChanged, tc.wantResult)
			}
			if strings.Contains(mustMarshal(ev), "tok3n") || strings.Contains(mustMarshal(ev), "0123456789abcdef") {
				t.Errorf("audit event carries a secret: %s", mustMarshal(ev))
			}
		})
	}

	// The env's API has no setters: the routes exist and say so.
	resp, body := request(t, e.srv.URL, "PUT", admin, "/api/v1/admin/quota", `{"max_concurrent_runs":1,"max_runs_per_hour":1}`)
	if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(string(body), "not_configured") {
		t.Errorf("unconfigured: got %d %s, want 501 not_configured", resp.StatusCode, body)
	}
}
