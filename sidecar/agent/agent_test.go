package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/handoff"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

func TestParseJobID(t *testing.T) {
	tests := []struct {
		name, id, org, job string
		wantErr            bool
	}{
		{name: "job", id: "spiffe://cordon.test/org/acme/job/block_follower", org: "acme", job: "block_follower"},
		{name: "service", id: "spiffe://cordon.test/service/xds", wantErr: true},
		{name: "extra segment", id: "spiffe://cordon.test/org/acme/job/x/y", wantErr: true},
		{name: "swapped", id: "spiffe://cordon.test/job/x/org/acme", wantErr: true},
		{name: "upper org", id: "spiffe://cordon.test/org/ACME/job/x", wantErr: true},
		{name: "dot org", id: "spiffe://cordon.test/org/a.b/job/x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(tt.id)
			got, err := ParseJobID(id)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil || got.Org != tt.org || got.Job != tt.job {
				t.Fatalf("got %+v, %v; want org %s job %s", got, err, tt.org, tt.job)
			}
		})
	}
}

// recorder is an audit.Emitter that keeps events.
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

// usageRecorder is a UsageSink that keeps reports.
type usageRecorder struct {
	mu      sync.Mutex // guards reports
	reports []usage.Report
}

func (u *usageRecorder) Emit(r usage.Report) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reports = append(u.reports, r)
}

type fixture struct {
	shared, health, proxy string
	audit                 *recorder
	proxyOrg              string
	usage                 *usageRecorder
	done                  chan error
	cancel                context.CancelFunc
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startAgent serves a dev Workload API for id and runs the agent with a
// secrets file.
// fakeProxy is an EgressProxy that answers every request with 418, to see
// that the agent serves what NewProxy built on ProxyAddr. Its policy is
// ready when policy is closed; nil means at once.
type fakeProxy struct {
	srv    *http.Server
	policy chan struct{}
}

func (p *fakeProxy) Serve(ctx context.Context, ln net.Listener) error {
	if err := p.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
func (p *fakeProxy) Shutdown(ctx context.Context) error { return p.srv.Shutdown(ctx) }
func (p *fakeProxy) PolicyReady() <-chan struct{} {
	if p.policy == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.policy
}

func startAgent(t *testing.T, id string, secretsJSON string, names []string, opts ...func(*Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	wsrv, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: ca, ID: spiffeid.RequireFromString(id), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "spire.sock")
	ln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() { wdone <- wsrv.Serve(wctx, ln) }()
	t.Cleanup(func() { wcancel(); <-wdone })

	file := filepath.Join(dir, "secrets.json")
	if err := os.WriteFile(file, []byte(secretsJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	provider, err := NewProvider(ProviderConfig{Kind: "file", File: file})
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "fake-binary")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho i am the wrapper\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fixture{shared: filepath.Join(dir, "shared"), health: freeAddr(t), proxy: freeAddr(t), audit: &recorder{}, usage: &usageRecorder{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	cfg := Config{
		WorkloadAPIAddr: "unix://" + sock,
		Secrets:         names,
		Provider:        provider,
		SharedDir:       f.shared,
		JobUID:          -1,
		HealthAddr:      f.health,
		ProxyAddr:       f.proxy,
		NewProxy: func(ctx context.Context, id Identity) (EgressProxy, error) {
			if id.Source == nil {
				return nil, errors.New("no SVID source")
			}
			f.proxyOrg = id.Org
			return &fakeProxy{srv: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusTeapot)
			})}}, nil
		},
		Audit:      f.audit,
		Usage:      f.usage,
		RunID:      "run-1",
		Executable: exe,
	}
	for _, o := range opts {
		o(&cfg)
	}
	go func() { f.done <- Run(ctx, cfg) }()
	return f
}

func healthStatus(addr string) int {
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAgentHandsOutSecretsOnce(t *testing.T) {
	leakCheck(t)
	const value = "file-secret-value-42"
	f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower",
		`{"monad_rpc_key": "`+value+`", "unused": "other-value-77"}`, []string{"monad_rpc_key"})

	deadline := time.Now().Add(10 * time.Second)
	for healthStatus(f.health) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("agent not healthy in 10s")
		}
		select {
		case err := <-f.done:
			t.Fatalf("agent stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := CheckHealth(ctx, f.health); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(BinaryPath(f.shared))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary copy: %v, mode %v; want 0755", err, fi)
	}
	env, err := handoff.Fetch(ctx, SocketPath(f.shared))
	if err != nil {
		t.Fatal(err)
	}
	if len(env.Secrets) != 1 || env.Secrets["monad_rpc_key"] != value || env.ProxyURL != "http://"+f.proxy {
		t.Fatalf("got %d secrets (names %v), proxy %q; want only monad_rpc_key and the proxy", len(env.Secrets), keys(env.Secrets), env.ProxyURL)
	}
	if resp, err := http.Get("http://" + f.proxy + "/"); err != nil || resp.StatusCode != http.StatusTeapot {
		t.Fatalf("proxy address: got %v, %v; want the proxy NewProxy built", resp, err)
	} else {
		resp.Body.Close()
	}
	if f.proxyOrg != "acme" {
		t.Fatalf("NewProxy saw org %q, want acme", f.proxyOrg)
	}
	if _, err := handoff.Fetch(ctx, SocketPath(f.shared)); !errors.Is(err, handoff.ErrRefused) {
		t.Fatalf("second fetch: got %v, want ErrRefused", err)
	}

	if err := handoff.Report(ctx, SocketPath(f.shared), env.ReportToken, jobrun.Result{ExitCode: 3, WallSeconds: 2, Redactions: 5, StdoutBytes: 10}); err != nil {
		t.Fatal(err)
	}
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	f.usage.mu.Lock()
	reports := f.usage.reports
	f.usage.mu.Unlock()
	if len(reports) != 1 {
		t.Fatalf("got %d usage reports, want 1", len(reports))
	}
	r := reports[0]
	if r.Org != "acme" || r.Job != "block_follower" || r.RunID != "run-1" || !r.Final || r.ExitCode == nil || *r.ExitCode != 3 ||
		r.Redactions != 5 || r.StdoutBytes != 10 || !strings.HasPrefix(r.ReportID, "usg_") || r.EndedAt.Sub(r.StartedAt) != 2*time.Second {
		t.Fatalf("got report %+v, want acme/block_follower run-1 final exit 3, 5 redactions, 10 stdout bytes, 2s", r)
	}
	types := map[string]int{}
	for _, ev := range f.audit.all() {
		types[ev.EventType]++
		b, _ := json.Marshal(ev)
		if strings.Contains(string(b), value) || strings.Contains(string(b), "other-value") {
			t.Fatalf("audit event carries a value: %s", b)
		}
		if ev.Resource.TenantID != "acme" || !strings.HasPrefix(ev.EventID, "evt_") {
			t.Errorf("event %s: tenant %q id %q, want acme and evt_...", ev.EventType, ev.Resource.TenantID, ev.EventID)
		}
	}
	if types["SECRETS_ACCESSED"] != 1 || types["SECRETS_HANDED_OFF"] != 1 || types["SECRETS_HANDOFF_REFUSED"] != 1 {
		t.Fatalf("audit events %v, want one each of accessed, handed off, refused", types)
	}
}

func TestAgentFailsClosed(t *testing.T) {
	tests := []struct {
		name, id, secrets string
		names             []string
		wantErr           string
	}{
		{name: "missing secret", id: "spiffe://cordon.test/org/acme/job/x", secrets: `{"a_key": "value-aaaaaaaa"}`,
			names: []string{"a_key", "b_key"}, wantErr: `secret "b_key"`},
		{name: "not a job identity", id: "spiffe://cordon.test/service/xds", secrets: `{}`, wantErr: "is not a job identity: want spiffe://cordon.test/org/ORG/job/JOB"},
		{name: "secret too short to scrub", id: "spiffe://cordon.test/org/acme/job/x", secrets: `{"pin": "1234"}`,
			names: []string{"pin"}, wantErr: `"PIN"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leakCheck(t)
			f := startAgent(t, tt.id, tt.secrets, tt.names)
			defer f.cancel()
			var err error
			select {
			case err = <-f.done:
			case <-time.After(15 * time.Second):
				t.Fatal("agent did not fail in 15s")
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %s", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "value-") || strings.Contains(err.Error(), "1234") {
				t.Fatalf("error leaks a value: %v", err)
			}
			if _, serr := os.Stat(SocketPath(f.shared)); serr == nil {
				t.Fatal("handoff socket exists although the agent failed")
			}
		})
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// leakCheck registers a goroutine-leak check that runs after every other
// cleanup (cleanups run last-in first-out).
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// TestAgentUsageReports: interim reports carry the proxy's counters so
// far and stop at the final one, which merges them with the wrapper's
// measurements and its enforcement level; the job's start and end are
// audited with that level.
func TestAgentUsageReports(t *testing.T) {
	leakCheck(t)
	var mu sync.Mutex
	denials := int64(1)
	f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower", `{}`, nil, func(c *Config) {
		c.UsageInterval = 20 * time.Millisecond
		c.Egress = func() (map[string]usage.Egress, int64) {
			mu.Lock()
			defer mu.Unlock()
			return map[string]usage.Egress{"api.example.com:443": {BytesOut: 100, Requests: 2}, "denied": {Requests: denials, Denials: denials}}, denials
		}
	})
	reports := func() []usage.Report {
		f.usage.mu.Lock()
		defer f.usage.mu.Unlock()
		return append([]usage.Report(nil), f.usage.reports...)
	}
	for deadline := time.Now().Add(10 * time.Second); len(reports()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("got %d interim reports in 10s, want 2", len(reports()))
		}
	}
	mu.Lock()
	denials = 3
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	env, err := handoff.Fetch(ctx, SocketPath(f.shared))
	if err != nil {
		t.Fatal(err)
	}
	if err := handoff.Report(ctx, SocketPath(f.shared), env.ReportToken, jobrun.Result{ExitCode: 0, WallSeconds: 1, Enforcement: "cgroup-ebpf"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // interim reports would come now
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	all := reports()
	last := all[len(all)-1]
	ids := map[string]bool{}
	for i, r := range all {
		if ids[r.ReportID] {
			t.Errorf("report %d: ID %s reused", i, r.ReportID)
		}
		ids[r.ReportID] = true
		if r.Final != (i == len(all)-1) {
			t.Errorf("report %d of %d: final %v, want only the last final", i+1, len(all), r.Final)
		}
		if r.RunID != "run-1" || r.Egress["api.example.com:443"].BytesOut != 100 {
			t.Errorf("report %d: run %q egress %v, want run-1 and the proxy's counters", i, r.RunID, r.Egress)
		}
	}
	if last.Denials != 3 || last.Enforcement != "cgroup-ebpf" || last.ExitCode == nil {
		t.Fatalf("final report: denials %d enforcement %q exit %v, want 3, cgroup-ebpf, 0", last.Denials, last.Enforcement, last.ExitCode)
	}
	levels := map[string]any{}
	for _, ev := range f.audit.all() {
		if ev.Resource.Type == "JOB" {
			levels[ev.EventType] = ev.Metadata["enforcement"]
		}
	}
	if levels["JOB_STARTED"] != "cgroup-ebpf" || levels["JOB_FINISHED"] != "cgroup-ebpf" {
		t.Fatalf("job events' enforcement: %v, want cgroup-ebpf on JOB_STARTED and JOB_FINISHED", levels)
	}
}

// TestAgentUnhealthyUntilProxyListens: the job container starts when the
// agent is healthy, so health must wait for the egress proxy.
func TestAgentUnhealthyUntilProxyListens(t *testing.T) {
	leakCheck(t)
	release := make(chan struct{})
	building := make(chan struct{})
	f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower", `{}`, nil, func(c *Config) {
		next := c.NewProxy
		c.NewProxy = func(ctx context.Context, id Identity) (EgressProxy, error) {
			close(building)
			<-release
			return next(ctx, id)
		}
	})
	select {
	case <-building:
	case err := <-f.done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not build its proxy in 10s")
	}
	if got := healthStatus(f.health); got != http.StatusServiceUnavailable {
		t.Fatalf("health while the proxy is being built: got %d, want 503", got)
	}
	close(release)
	for deadline := time.Now().Add(10 * time.Second); healthStatus(f.health) != http.StatusOK; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("agent not healthy in 10s after its proxy was built")
		}
	}
	if resp, err := http.Get("http://" + f.proxy + "/"); err != nil || resp.StatusCode != http.StatusTeapot {
		t.Fatalf("proxy once healthy: got %v, %v; want it listening", resp, err)
	} else {
		resp.Body.Close()
	}
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestAgentUnhealthyUntilPolicyApplied: with a policy from xDS the proxy
// denies everything until the first one arrives, so the job must not start
// (the agent must not be healthy) before.
func TestAgentUnhealthyUntilPolicyApplied(t *testing.T) {
	leakCheck(t)
	policy := make(chan struct{})
	f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower", `{}`, nil, func(c *Config) {
		next := c.NewProxy
		c.NewProxy = func(ctx context.Context, id Identity) (EgressProxy, error) {
			p, err := next(ctx, id)
			if err == nil {
				p.(*fakeProxy).policy = policy
			}
			return p, err
		}
	})
	health := func() (int, string) {
		resp, err := http.Get("http://" + f.health + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	// Set up, serving the proxy, but waiting for the policy.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, body := health()
		if code == http.StatusServiceUnavailable && body == "waiting for the egress policy" {
			break
		}
		if code == http.StatusOK {
			t.Fatal("agent healthy before its egress policy was applied")
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not set up in 10s: health %d %q", code, body)
		}
	}
	if resp, err := http.Get("http://" + f.proxy + "/"); err != nil || resp.StatusCode != http.StatusTeapot {
		t.Fatalf("proxy while waiting for the policy: got %v, %v; want it listening (and denying)", resp, err)
	} else {
		resp.Body.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := CheckHealth(ctx, f.health); err == nil {
		t.Fatal("CheckHealth: got nil before the policy was applied")
	}
	close(policy)
	if code, body := health(); code != http.StatusOK {
		t.Fatalf("health once the policy is applied: got %d %q, want 200", code, body)
	}
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
