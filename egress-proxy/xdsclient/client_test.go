package xdsclient

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/cordon-dev/cordon/xds/reload"
	"github.com/cordon-dev/cordon/xds/server"
	"github.com/cordon-dev/cordon/xds/translate"
)

var _ Applier = (*policy.Store)(nil)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recordingApplier records every Apply and refuses policies that allow
// reject (to exercise NACKs on the proxy's side).
type recordingApplier struct {
	mu     sync.Mutex
	calls  [][]*allowlist.JobPolicy
	reject string
}

func (a *recordingApplier) Apply(ps []*allowlist.JobPolicy) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range ps {
		for _, r := range p.Rules {
			if a.reject != "" && r.Host == a.reject {
				return errors.New("policy store refuses " + r.Host)
			}
		}
	}
	a.calls = append(a.calls, ps)
	return nil
}

func (a *recordingApplier) snapshot() [][]*allowlist.JobPolicy {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([][]*allowlist.JobPolicy(nil), a.calls...)
}

type controlPlane struct {
	srv     *server.Server
	metrics *server.Metrics
	cancel  context.CancelFunc
	done    chan error
}

type fixture struct {
	t    *testing.T
	ca   *spiffedev.CA
	addr string
}

func newFixture(t *testing.T) *fixture {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return &fixture{t: t, ca: ca, addr: addr}
}

// start runs a control plane on the fixture's address as serverID.
func (f *fixture) start(serverID string) *controlPlane {
	f.t.Helper()
	svid, err := f.ca.MintX509SVID(spiffeid.RequireFromString(serverID), 0)
	if err != nil {
		f.t.Fatal(err)
	}
	m := server.NewMetrics(prometheus.NewRegistry())
	srv, err := server.New(server.Config{TrustDomain: f.ca.TrustDomain(), SVID: svid, Bundles: f.ca.Bundle(), Metrics: m})
	if err != nil {
		f.t.Fatal(err)
	}
	var lis net.Listener
	for i := 0; ; i++ { // the previous control plane may still hold the port briefly
		if lis, err = net.Listen("tcp", f.addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &controlPlane{srv: srv, metrics: m, cancel: cancel, done: make(chan error, 1)}
	go func() { cp.done <- srv.Serve(ctx, lis) }()
	f.t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) stop() {
	if cp.cancel == nil {
		return
	}
	cp.cancel()
	<-cp.done
	cp.cancel = nil
}

func (cp *controlPlane) publish(t *testing.T, v uint64, ps ...*allowlist.JobPolicy) {
	t.Helper()
	var routes []*routev3.RouteConfiguration
	for _, p := range ps {
		rc, err := translate.ToRouteConfiguration(p)
		if err != nil {
			t.Fatal(err)
		}
		routes = append(routes, rc)
	}
	if err := cp.srv.Publish(context.Background(), v, routes); err != nil {
		t.Fatal(err)
	}
}

// client starts a Client as id; it stops at test cleanup.
func (f *fixture) client(id string, gateway bool, a Applier) *Client {
	f.t.Helper()
	svid, err := f.ca.MintX509SVID(spiffeid.RequireFromString(id), 0)
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := New(Config{Addr: f.addr, SVID: svid, Bundles: f.ca.Bundle(), Gateway: gateway,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}, a)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	f.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("Run: %v", err)
		}
	})
	return c
}

func pol(job string, hosts ...string) *allowlist.JobPolicy {
	p := &allowlist.JobPolicy{Org: "acme", Job: job, Class: allowlist.ClassPlatform, Mode: allowlist.ModeEnforce}
	for _, h := range hosts {
		p.Rules = append(p.Rules, allowlist.Rule{Host: h, Ports: []uint16{443}, Source: "endpoint_set:s"})
	}
	return p
}

const (
	jobA     = "spiffe://cordon.test/org/acme/job/a"
	xdsID    = "spiffe://cordon.test/cordon/xds"
	gatewayI = "spiffe://cordon.test/cordon/egress-gateway"
)

func waitVersion(t *testing.T, c *Client, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Version() != want {
		if time.Now().After(deadline) {
			t.Fatalf("got applied version %q, want %q (last NACK %q)", c.Version(), want, c.LastNACK())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitCounter(t *testing.T, c prometheus.Counter, want float64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var m dto.Metric
		c.Write(&m)
		if m.GetCounter().GetValue() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %s %v, want %v", what, m.GetCounter().GetValue(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hostsOf lists the hosts the single policy of an Apply call allows.
func hostsOf(call []*allowlist.JobPolicy) string {
	var hs []string
	for _, p := range call {
		for _, r := range p.Rules {
			hs = append(hs, r.Host)
		}
	}
	return strings.Join(hs, ",")
}

func TestStartsDenyAllThenAppliesAndACKs(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	a := &recordingApplier{}
	c := f.client(jobA, false, a)

	time.Sleep(300 * time.Millisecond)
	if calls := a.snapshot(); len(calls) != 0 {
		t.Fatalf("got %d Apply calls before any policy was published, want 0 (deny-all)", len(calls))
	}
	select {
	case <-c.Ready():
		t.Fatal("Ready closed before any policy was applied")
	default:
	}
	cp.publish(t, 1, pol("a", "a.example.com"), pol("b", "b.example.com"))
	waitVersion(t, c, "v1")
	select {
	case <-c.Ready():
	default:
		t.Fatal("Ready not closed after the first policy was applied")
	}
	waitCounter(t, cp.metrics.ACKs, 1, "ACKs")
	cp.publish(t, 2, pol("a", "a.example.com", "a2.example.com"), pol("b", "b.example.com"))
	waitVersion(t, c, "v2")
	waitCounter(t, cp.metrics.ACKs, 2, "ACKs")

	calls := a.snapshot()
	if len(calls) != 2 || hostsOf(calls[0]) != "a.example.com" || hostsOf(calls[1]) != "a.example.com,a2.example.com" {
		t.Fatalf("got Apply calls %v, want exactly job a's policy at v1 then v2", calls)
	}
}

func TestNACKKeepsLastGood(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	a := &recordingApplier{reject: "refused.example.com"}
	c := f.client(jobA, false, a)
	cp.publish(t, 1, pol("a", "a.example.com"))
	waitVersion(t, c, "v1")

	t.Run("applier refuses", func(t *testing.T) {
		cp.publish(t, 2, pol("a", "refused.example.com"))
		waitCounter(t, cp.metrics.NACKs, 1, "NACKs")
		if got := c.LastNACK(); !strings.Contains(got, "policy store refuses refused.example.com") {
			t.Errorf("got NACK reason %q, want the store's error", got)
		}
	})
	t.Run("route not in cordon's form", func(t *testing.T) {
		rc, err := translate.ToRouteConfiguration(pol("a", "a.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		rc.VirtualHosts[0].Domains = append(rc.VirtualHosts[0].Domains, "evil.example:443")
		if err := cp.srv.Publish(context.Background(), 3, []*routev3.RouteConfiguration{rc}); err != nil {
			t.Fatal(err)
		}
		waitCounter(t, cp.metrics.NACKs, 2, "NACKs")
		if got := c.LastNACK(); !strings.Contains(got, "not in the exact form") {
			t.Errorf("got NACK reason %q, want the decoder's error", got)
		}
	})
	if got := c.Version(); got != "v1" {
		t.Errorf("got applied version %q, want v1 kept", got)
	}
	if got := c.NACKs(); got != 2 {
		t.Errorf("got %d NACKs counted by the client, want 2", got)
	}
	if calls := a.snapshot(); len(calls) != 1 {
		t.Errorf("got %d Apply calls, want 1 (nothing after the NACKs)", len(calls))
	}
	// A good version after the NACKs is applied again.
	cp.publish(t, 4, pol("a", "a4.example.com"))
	waitVersion(t, c, "v4")
}

func TestControlPlaneRestart(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	a := &recordingApplier{}
	c := f.client(jobA, false, a)
	cp.publish(t, 1, pol("a", "a.example.com"))
	waitVersion(t, c, "v1")

	cp.stop()
	// The control plane is gone: the client keeps v1 and applies nothing.
	time.Sleep(500 * time.Millisecond)
	if calls := a.snapshot(); len(calls) != 1 || c.Version() != "v1" {
		t.Fatalf("while the control plane was down: got %d Apply calls and version %q, want 1 and v1", len(calls), c.Version())
	}

	cp2 := f.start(xdsID)
	// Before the new control plane has a snapshot, the client still holds v1.
	time.Sleep(300 * time.Millisecond)
	if c.Version() != "v1" {
		t.Fatalf("got version %q before the restarted control plane published, want v1", c.Version())
	}
	cp2.publish(t, 2, pol("a", "a.example.com", "b.example.com"))
	waitVersion(t, c, "v2")

	for i, call := range a.snapshot() {
		if len(call) != 1 || len(call[0].Rules) == 0 || call[0].Mode != allowlist.ModeEnforce {
			t.Errorf("Apply call %d: got %+v, want one enforcing policy with rules (never empty or allow-all)", i, call)
		}
	}
}

func TestJobRemovedAppliesDenyAll(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	a := &recordingApplier{}
	c := f.client(jobA, false, a)
	cp.publish(t, 1, pol("a", "a.example.com"), pol("b", "b.example.com"))
	waitVersion(t, c, "v1")
	cp.publish(t, 2, pol("b", "b.example.com"))
	waitVersion(t, c, "v2")
	calls := a.snapshot()
	last := calls[len(calls)-1]
	if len(last) != 1 || last[0].ID() != "acme/a" || len(last[0].Rules) != 0 || last[0].Mode != allowlist.ModeEnforce {
		t.Fatalf("got %+v, want an enforcing acme/a policy with no rules", last)
	}
}

func TestGatewayGetsEveryJob(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	a := &recordingApplier{}
	c := f.client(gatewayI, true, a)
	cp.publish(t, 1, pol("a", "a.example.com"), pol("b", "b.example.com"), pol("c", "c.example.com"))
	waitVersion(t, c, "v1")
	if calls := a.snapshot(); len(calls) != 1 || len(calls[0]) != 3 {
		t.Fatalf("got %v, want one Apply with 3 jobs", calls)
	}
	// An empty set is refused: the gateway keeps its jobs.
	cp.publish(t, 2)
	waitCounter(t, cp.metrics.NACKs, 1, "NACKs")
	if c.Version() != "v1" {
		t.Errorf("got version %q, want v1 kept", c.Version())
	}
}

func TestWrongServerIdentityIsNeverTrusted(t *testing.T) {
	f := newFixture(t)
	// A job's SVID pretending to be the control plane.
	cp := f.start("spiffe://cordon.test/org/evil/job/mitm")
	cp.publish(t, 1, pol("a", "a.example.com"))
	a := &recordingApplier{}
	f.client(jobA, false, a)
	time.Sleep(500 * time.Millisecond)
	if calls := a.snapshot(); len(calls) != 0 {
		t.Fatalf("got %d Apply calls from an impostor control plane, want 0", len(calls))
	}
}

// TestNewJobIdentity: without Gateway, New takes the job from its SVID
// (spiffe://TD/org/ORG/job/JOB, internal/jobid's rule) and refuses any
// other identity.
func TestNewJobIdentity(t *testing.T) {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, org, job string
		ok             bool
	}{
		{"/org/acme/job/block_follower", "acme", "block_follower", true},
		{"/org/acme/job/j/x", "", "", false},
		{"/org/a/b/job/j", "", "", false},
		{"/cordon/xds", "", "", false},
		{"/cordon/dispatcher", "", "", false},
		{"/org/acme/jobs/j", "", "", false},
		{"/org/ACME/job/j", "", "", false},
	}
	for _, tt := range tests {
		svid, err := ca.MintX509SVID(spiffeid.RequireFromPath(ca.TrustDomain(), tt.path), 0)
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(Config{Addr: "127.0.0.1:1", SVID: svid, Bundles: ca.Bundle()}, &recordingApplier{})
		if (err == nil) != tt.ok {
			t.Errorf("New with %s: got error %v, want ok=%v", tt.path, err, tt.ok)
			continue
		}
		if err == nil && (c.org != tt.org || c.job != tt.job) {
			t.Errorf("New with %s: got job %s/%s, want %s/%s", tt.path, c.org, c.job, tt.org, tt.job)
		}
	}
	// An empty org or job cannot reach New: it is not a SPIFFE ID.
	for _, p := range []string{"/org/acme/job/", "/org//job/j"} {
		if _, err := spiffeid.FromPath(ca.TrustDomain(), p); err == nil {
			t.Errorf("spiffeid.FromPath(%q): got nil error", p)
		}
	}
}

// TestBadEditKeepsOldPolicy runs the whole path: files, reload, server,
// client, and the proxy's real policy store.
func TestBadEditKeepsOldPolicy(t *testing.T) {
	f := newFixture(t)
	cp := f.start(xdsID)
	dir := t.TempDir()
	file := filepath.Join(dir, "acme.yaml")
	good := "version: 1\norg: acme\nendpoint_sets:\n  s:\n    entries:\n      - host: a.example.com\n        ports: [443]\njobs:\n  a:\n    class: platform\n    allow: [s]\n"
	if err := os.WriteFile(file, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := reload.New(reload.Config{Dir: dir, StateDir: t.TempDir()}, cp.srv)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	store := policy.NewStore()
	c := f.client(jobA, false, store)
	waitVersion(t, c, "v1")
	if _, ok := store.Lookup("acme", "a"); !ok {
		t.Fatal("store has no policy for acme/a after v1")
	}

	bad := strings.Replace(good, "a.example.com", "*.com", 1)
	if err := os.WriteFile(file, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err == nil {
		t.Fatal("reload of *.com: got nil error")
	}
	time.Sleep(200 * time.Millisecond)
	if c.Version() != "v1" {
		t.Fatalf("got version %q after a bad edit, want v1", c.Version())
	}
	if _, ok := store.Lookup("acme", "a"); !ok {
		t.Fatal("store lost acme/a after a bad edit")
	}
}
