package credserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

// jobEnv set in the environment makes this test binary act as a job (see
// runJob) instead of running tests.
const jobEnv = "CREDSERVER_TEST_JOB_FOR"

func TestMain(m *testing.M) {
	if d := os.Getenv(jobEnv); d != "" {
		os.Exit(runJob(d))
	}
	goleak.VerifyTestMain(m)
}

// runJob is an ordinary AWS SDK program with no Cordon code: the default
// credential chain, an STS client, GetCallerIdentity every 100ms for the
// given duration. It prints each caller ARN and fails on the first error.
func runJob(duration string) int {
	d, err := time.ParseDuration(duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, "job: bad duration:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+20*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "job: load config:", err)
		return 2
	}
	client := sts.NewFromConfig(cfg)
	end := time.Now().Add(d)
	for n := 0; ; n++ {
		out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			fmt.Fprintf(os.Stderr, "job: call %d: %v\n", n, err)
			return 1
		}
		fmt.Println(*out.Arn)
		if !time.Now().Before(end) {
			return 0
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stubSource hands out numbered credentials living `life`, or err.
type stubSource struct {
	mu   sync.Mutex // guards the following
	life time.Duration
	err  error
	n    int
}

func (s *stubSource) Credentials(context.Context) (Credentials, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return Credentials{}, s.err
	}
	s.n++
	return Credentials{
		AccessKeyID:     "ASIASTUB" + string(rune('A'+s.n)),
		SecretAccessKey: "stub-secret",
		SessionToken:    "stub-token",
		Expiration:      time.Now().Add(s.life),
		RoleARN:         "arn:aws:sts::123456789012:assumed-role/cordon-data-acme/s",
	}, nil
}

func (s *stubSource) set(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// start serves srv on a loopback port and returns its URL; the server is
// shut down at cleanup.
func start(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("second Shutdown: got %v, want nil", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, client *http.Client, url, auth string) (int, map[string]string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func TestRefreshAt(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		life time.Duration
		want time.Duration
	}{
		{name: "15 minutes: 5 minutes before", life: 15 * time.Minute, want: 10 * time.Minute},
		{name: "1 hour: at 80%", life: time.Hour, want: 48 * time.Minute},
		{name: "20 minutes: both equal", life: 25 * time.Minute, want: 20 * time.Minute},
		{name: "4 seconds: half, not immediately", life: 4 * time.Second, want: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := refreshAt(t0, t0.Add(tt.life)).Sub(t0); got != tt.want {
				t.Fatalf("refreshAt: got %s after fetch, want %s", got, tt.want)
			}
		})
	}
}

func TestAuthorization(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	srv, err := New(Config{Source: &stubSource{life: time.Hour}, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.token) < 43 {
		t.Fatalf("token is %d characters, want 32 random bytes (43 base64 characters)", len(srv.token))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Prime(ctx); err != nil {
		t.Fatal(err)
	}
	base := start(t, srv)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	tests := []struct {
		name, path, auth string
		want             int
	}{
		{name: "no token", path: "/creds", want: 401},
		{name: "wrong token", path: "/creds", auth: strings.Repeat("A", 43), want: 401},
		{name: "token prefix", path: "/creds", auth: srv.token[:42], want: 401},
		{name: "token with suffix", path: "/creds", auth: srv.token + "x", want: 401},
		{name: "bearer scheme", path: "/creds", auth: "Bearer " + srv.token, want: 401},
		{name: "other path", path: "/creds/x", auth: srv.token, want: 404},
		{name: "right token", path: "/creds", auth: srv.token, want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, client, base+tt.path, tt.auth)
			if code != tt.want {
				t.Fatalf("GET %s: got status %d, want %d", tt.path, code, tt.want)
			}
			if code != 200 && body["SecretAccessKey"] != "" {
				t.Fatalf("refused request got credentials")
			}
			if code == 200 {
				exp, err := time.Parse(time.RFC3339, body["Expiration"])
				if err != nil || body["AccessKeyId"] == "" || body["Token"] != "stub-token" || body["SecretAccessKey"] != "stub-secret" {
					t.Fatalf("got body %v, want AccessKeyId, SecretAccessKey, Token and RFC 3339 Expiration", body)
				}
				if d := time.Until(exp); d > 59*time.Minute || d < 58*time.Minute {
					t.Fatalf("served expiry in %s, want the real one (1h) minus the 1m margin", d)
				}
			}
		})
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/creds", nil)
	req.Header.Set("Authorization", srv.token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: got %d, want 405", resp.StatusCode)
	}
	if got := counterValue(t, srv.requests.WithLabelValues("unauthorized")); got != 5 {
		t.Fatalf("unauthorized counter: got %v, want 5", got)
	}
	if strings.Contains(logs.String(), srv.token[:20]) || strings.Contains(logs.String(), "stub-secret") {
		t.Fatalf("logs contain the token or a secret:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "without the run's token") {
		t.Fatalf("logs do not record the refused requests:\n%s", logs.String())
	}
}

// TestNeverServesExpired: when refreshing fails, the current credentials
// are served until their (margin-adjusted) expiry, then 503, and service
// resumes once the source recovers.
func TestNeverServesExpired(t *testing.T) {
	src := &stubSource{life: 2500 * time.Millisecond}
	srv, err := New(Config{Source: src, ExpiryMargin: 500 * time.Millisecond, RetryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Prime(ctx); err != nil {
		t.Fatal(err)
	}
	src.set(errors.New("dispatcher unreachable"))
	base := start(t, srv)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	sawOK, saw503 := false, false
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) && !saw503 {
		code, body := get(t, client, base+"/creds", srv.token)
		switch code {
		case 200:
			sawOK = true
			exp, _ := time.Parse(time.RFC3339, body["Expiration"])
			if !time.Now().Before(exp) {
				t.Fatalf("served credentials with expiry %s, already past", exp)
			}
		case 503:
			saw503 = true
		default:
			t.Fatalf("got status %d, want 200 or 503", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawOK || !saw503 {
		t.Fatalf("got ok=%v unavailable=%v, want both (served until expiry, then 503)", sawOK, saw503)
	}
	src.set(nil)
	for time.Now().Before(deadline.Add(3 * time.Second)) {
		if code, _ := get(t, client, base+"/creds", srv.token); code == 200 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("service did not resume after the source recovered")
}

func TestConfigAndEnv(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a Source: got nil error")
	}
	srv, err := New(Config{Source: &stubSource{life: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New(Config{Source: &stubSource{life: time.Hour}})
	if srv.token == other.token {
		t.Fatal("two servers got the same token")
	}
	if _, err := srv.Env(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 80}); err == nil {
		t.Fatal("Env for a non-loopback address: got nil error")
	}
	env, err := srv.Env(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4567})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{EnvFullURI + "=http://127.0.0.1:4567/creds", EnvAuthToken + "=" + srv.token}
	if len(env) != 2 || env[0] != want[0] || env[1] != want[1] {
		t.Fatalf("Env: got %q, want %q", env, want)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Serve: got %v, want nil", err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
