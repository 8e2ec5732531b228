package credsource_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/sidecar/credsource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var decl = datasets.Declaration{Inputs: []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}}}

const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

// dispatcher answers with status, headers and body, and records requests.
type dispatcher struct {
	mu     sync.Mutex // guards bodies
	bodies []string
	status int
	header map[string]string
	body   string
}

func (d *dispatcher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	d.mu.Lock()
	d.bodies = append(d.bodies, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type")+" "+string(b))
	d.mu.Unlock()
	for k, v := range d.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(d.status)
	io.WriteString(w, d.body)
}

func TestCredentials(t *testing.T) {
	exp := time.Date(2026, 11, 23, 21, 0, 0, 0, time.UTC)
	good := `{"access_key_id":"ASIAEXAMPLE","secret_access_key":"` + secret + `","session_token":"tok","expiration":"2026-11-23T21:00:00Z","role_arn":"arn:aws:sts::123456789012:assumed-role/r/s"}`
	for _, tc := range []struct {
		name        string
		status      int
		header      map[string]string
		body        string
		wantRefused string // reason of a *RefusedError
		wantUnavail bool
		wantRetry   time.Duration
		wantPII     bool
	}{
		{name: "issued", status: 200, body: good},
		{name: "PII refusal", status: 403, body: `{"error":"job acme/alerts has no PII grant for s3://trace-data/acme/users/","reason":"pii_grant_missing","missing":["s3://trace-data/acme/users/"]}`,
			wantRefused: "pii_grant_missing", wantPII: true},
		{name: "not confined", status: 403, body: `{"error":"outside","reason":"not_confined"}`, wantRefused: "not_confined"},
		{name: "STS refused is permanent", status: 502, body: `{"error":"STS refused","reason":"sts_refused"}`, wantRefused: "sts_refused"},
		{name: "unavailable with Retry-After", status: 503, header: map[string]string{"Retry-After": "2"},
			body: `{"error":"retry","reason":"audit_unavailable"}`, wantUnavail: true, wantRetry: 2 * time.Second},
		{name: "too many requests", status: 429, header: map[string]string{"Retry-After": "1"},
			body: `{"error":"retry","reason":"too_many_requests"}`, wantUnavail: true, wantRetry: time.Second},
		{name: "HTML error page", status: 500, body: `<html>oops</html>`, wantUnavail: true},
		{name: "unreadable 400", status: 400, body: `nope`, wantRefused: "unknown"},
		{name: "missing token", status: 200, body: `{"access_key_id":"A","secret_access_key":"` + secret + `","expiration":"2026-11-23T21:00:00Z"}`, wantUnavail: true},
		{name: "unknown field", status: 200, body: strings.TrimSuffix(good, "}") + `,"extra":1}`, wantUnavail: true},
		{name: "no expiration", status: 200, body: `{"access_key_id":"A","secret_access_key":"` + secret + `","session_token":"t"}`, wantUnavail: true},
		{name: "huge answer", status: 200, body: strings.Repeat(" ", 20<<10) + good, wantUnavail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &dispatcher{status: tc.status, header: tc.header, body: tc.body}
			srv := httptest.NewTLSServer(d)
			defer srv.Close()
			client := srv.Client()
			defer client.CloseIdleConnections()
			src, err := credsource.New(credsource.Config{URL: srv.URL, RunID: "run-1", Declaration: decl, HTTPClient: client})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := src.Credentials(ctx)

			d.mu.Lock()
			sent := d.bodies[0]
			d.mu.Unlock()
			if want := `POST /v1/credentials application/json {"run_id":"run-1","datasets":{"inputs":[{"location":"s3://trace-data/acme/blocks/"}],"outputs":null}}`; sent != want {
				t.Fatalf("request: got %s, want %s", sent, want)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Fatalf("the error quotes the secret: %v", err)
			}
			var refused *credsource.RefusedError
			var unavail *credsource.UnavailableError
			switch {
			case tc.wantRefused != "":
				if !errors.As(err, &refused) || refused.Reason != tc.wantRefused || refused.Status != tc.status || refused.PIIGrantMissing() != tc.wantPII {
					t.Fatalf("got %v, want a %d %s refusal", err, tc.status, tc.wantRefused)
				}
			case tc.wantUnavail:
				if !errors.As(err, &unavail) || unavail.RetryAfter != tc.wantRetry {
					t.Fatalf("got %v, want unavailable with Retry-After %s", err, tc.wantRetry)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if c.AccessKeyID != "ASIAEXAMPLE" || c.SecretAccessKey != secret || c.SessionToken != "tok" || !c.Expiration.Equal(exp) ||
					c.RoleARN != "arn:aws:sts::123456789012:assumed-role/r/s" {
					t.Fatalf("got %s, want the answer's credentials", c)
				}
			}
		})
	}
}

func TestUnreachableIsUnavailable(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	client := srv.Client()
	url := srv.URL
	srv.Close()
	src, err := credsource.New(credsource.Config{URL: url, RunID: "run-1", Declaration: decl, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Credentials(context.Background())
	var unavail *credsource.UnavailableError
	if !errors.As(err, &unavail) || unavail.Status != 0 {
		t.Fatalf("got %v, want *UnavailableError without a status", err)
	}
}

func TestNewRefuses(t *testing.T) {
	tooMany := datasets.Declaration{}
	for range datasets.MaxInputs + 1 {
		tooMany.Inputs = append(tooMany.Inputs, datasets.Dataset{Location: "s3://trace-data/acme/x/"})
	}
	for _, tc := range []struct {
		name string
		cfg  credsource.Config
	}{
		{"plain http", credsource.Config{URL: "http://dispatcher:8443", RunID: "r", Declaration: decl, HTTPClient: http.DefaultClient}},
		{"URL with credentials", credsource.Config{URL: "https://u:p@dispatcher:8443", RunID: "r", Declaration: decl, HTTPClient: http.DefaultClient}},
		{"no host", credsource.Config{URL: "https:///x", RunID: "r", Declaration: decl, HTTPClient: http.DefaultClient}},
		{"no run ID", credsource.Config{URL: "https://dispatcher:8443", Declaration: decl, HTTPClient: http.DefaultClient}},
		{"no datasets", credsource.Config{URL: "https://dispatcher:8443", RunID: "r", HTTPClient: http.DefaultClient}},
		{"bad location", credsource.Config{URL: "https://dispatcher:8443", RunID: "r", HTTPClient: http.DefaultClient,
			Declaration: datasets.Declaration{Inputs: []datasets.Dataset{{Location: "s3://trace-data/acme/*"}}}}},
		{"too many datasets", credsource.Config{URL: "https://dispatcher:8443", RunID: "r", HTTPClient: http.DefaultClient, Declaration: tooMany}},
		{"no TLS and no client", credsource.Config{URL: "https://dispatcher:8443", RunID: "r", Declaration: decl}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := credsource.New(tc.cfg); err == nil {
				t.Fatal("New: got nil error, want a refusal")
			}
		})
	}
}

// The request body is what credapi.DecodeRequest expects; the dispatcher's
// tests decode it for real (dispatcher/credapi e2e_test.go).
func TestRequestBodyShape(t *testing.T) {
	d := &dispatcher{status: 503, body: `{}`}
	srv := httptest.NewTLSServer(d)
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()
	src, err := credsource.New(credsource.Config{URL: srv.URL + "/", RunID: "run-2", Declaration: decl, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = src.Credentials(context.Background())
	d.mu.Lock()
	defer d.mu.Unlock()
	if !strings.HasPrefix(d.bodies[0], "POST /v1/credentials ") {
		t.Fatalf("got %q, want POST /v1/credentials (a base URL's trailing slash is dropped)", d.bodies[0])
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal([]byte(d.bodies[0][strings.Index(d.bodies[0], "{"):]), &body); err != nil {
		t.Fatal(err)
	}
	if len(body) != 2 || body["run_id"] == nil || body["datasets"] == nil {
		t.Fatalf("got keys %v, want exactly run_id and datasets", body)
	}
}
