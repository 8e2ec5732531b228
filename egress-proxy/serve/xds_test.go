package serve

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/egress-proxy/internal/dnstest"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/cordon-dev/cordon/xds/reload"
	"github.com/cordon-dev/cordon/xds/server"
)

// env is a trust domain with a Workload API per identity, a DNS server
// and an upstream on 127.0.0.2, shared by the xDS and gateway tests.
type env struct {
	t        *testing.T
	ca       *spiffedev.CA
	dns      *dnstest.Server
	upPort   int
	allowDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream") }))
	up.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	up.Listener = ln
	up.Start()
	t.Cleanup(up.Close)
	e := &env{t: t, ca: ca, dns: dnstest.Start(t), upPort: ln.Addr().(*net.TCPAddr).Port, allowDir: t.TempDir()}
	for _, h := range []string{"allowed.test", "allowed2.test", "gwdenied.test"} {
		e.dns.Set(h, "127.0.0.2")
	}
	return e
}

// writeAllowlist makes the job acme/block_follower allowed to hosts on
// the upstream's port.
func (e *env) writeAllowlist(hosts ...string) {
	e.t.Helper()
	var entries strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&entries, "      - host: %s\n        ports: [%d]\n", h, e.upPort)
	}
	yaml := fmt.Sprintf("version: 1\norg: acme\nendpoint_sets:\n  test_upstream:\n    entries:\n%sjobs:\n  block_follower:\n    class: platform\n    allow: [test_upstream]\n", entries.String())
	// Write and rename, so a reload never sees half a file.
	tmp := filepath.Join(e.allowDir, ".acme.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(e.allowDir, "acme.yaml")); err != nil {
		e.t.Fatal(err)
	}
}

// workloadAPI serves id's SVID on a Unix socket until the test ends and
// returns its address.
func (e *env) workloadAPI(id string) string {
	e.t.Helper()
	ws, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: e.ca, ID: spiffeid.RequireFromString(id)})
	if err != nil {
		e.t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ws.Serve(ctx, ln) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("workload API: %v", err)
		}
	})
	return "unix://" + sock
}

// controlPlane is a real cordon-xds (server + reloader) on addr.
type controlPlane struct {
	srv    *server.Server
	rl     *reload.Reloader
	cancel context.CancelFunc
	done   chan error
}

func (e *env) startControlPlane(addr, stateDir string) *controlPlane {
	e.t.Helper()
	svid, err := e.ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds"), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	srv, err := server.New(server.Config{TrustDomain: e.ca.TrustDomain(), SVID: svid, Bundles: e.ca.Bundle(), ShutdownGrace: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	rl, err := reload.New(reload.Config{Dir: e.allowDir, StateDir: stateDir}, srv)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := rl.Reload(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	var lis net.Listener
	for i := 0; ; i++ { // a previous control plane may hold the port briefly
		if lis, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &controlPlane{srv: srv, rl: rl, cancel: cancel, done: make(chan error, 1)}
	go func() { cp.done <- srv.Serve(ctx, lis) }()
	e.t.Cleanup(cp.stop)
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

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type running struct {
	listen, tlsListen, metrics net.Addr
	cancel                     context.CancelFunc
	done                       chan error
}

// run starts Run(cfg) and stops it at cleanup, checking it drained.
func run(t *testing.T, cfg Config) *running {
	t.Helper()
	r := &running{done: make(chan error, 1)}
	ready := make(chan struct{})
	cfg.Ready = func(l, tl, m net.Addr) { r.listen, r.tlsListen, r.metrics = l, tl, m; close(ready) }
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- Run(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run after cancel: got %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within the drain bound")
		}
	})
	return r
}

// get sends one plain HTTP request for host through the proxy at proxyAddr
// and returns the status and the deny reason.
func get(t *testing.T, proxyAddr string, host string, port int) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://%s:%d/ HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", host, port, host, port)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s through %s: %v", host, proxyAddr, err)
	}
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Cordon-Deny-Reason")
}

// eventually polls get until it answers want, for at most 10s.
func eventually(t *testing.T, proxyAddr, host string, port, want int, why string) {
	t.Helper()
	var code int
	var reason string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, reason = get(t, proxyAddr, host, port); code == want {
			return
		}
	}
	t.Fatalf("%s: GET %s got %d (%s), want %d", why, host, code, reason, want)
}

func scrape(t *testing.T, addr net.Addr) string {
	t.Helper()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestRunXDSSidecar(t *testing.T) {
	e := newEnv(t)
	e.writeAllowlist("allowed.test")
	wl := e.workloadAPI("spiffe://cordon.test/org/acme/job/block_follower")
	cpAddr := freeAddr(t)
	stateDir := t.TempDir()

	// The proxy starts before the control plane exists: deny-all.
	r := run(t, Config{
		Listen: "127.0.0.1:0", Metrics: "127.0.0.1:0",
		XDS: cpAddr, WorkloadAPIAddr: wl, XDSMaxBackoff: 100 * time.Millisecond,
		DNSServer:        e.dns.Addr,
		UnsafeAllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	})
	defer http.DefaultClient.CloseIdleConnections()
	px := r.listen.String()
	if code, reason := get(t, px, "allowed.test", e.upPort); code != 403 || reason != "no_policy" {
		t.Fatalf("before the first policy: got %d (%s), want 403 (no_policy)", code, reason)
	}

	cp := e.startControlPlane(cpAddr, stateDir)
	eventually(t, px, "allowed.test", e.upPort, 200, "after the control plane pushed the policy")
	// The client records the version just after it applied the policy.
	want := fmt.Sprintf("cordon_egress_policy_version %g\n", float64(cp.rl.Version()))
	var m string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m = scrape(t, r.metrics); strings.Contains(m, want) {
			break
		}
	}
	if !strings.Contains(m, want) {
		t.Errorf("metrics: want %q in:\n%s", want, m)
	}

	// An allowlist edit changes the next decision.
	e.writeAllowlist("allowed2.test")
	if err := cp.rl.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, px, "allowed.test", e.upPort, 403, "after allowed.test was removed")
	if code, _ := get(t, px, "allowed2.test", e.upPort); code != 200 {
		t.Errorf("after allowed2.test was added: got %d, want 200", code)
	}

	// The control plane goes away: the last policy stays in force.
	cp.stop()
	time.Sleep(300 * time.Millisecond) // the client notices and starts backing off
	if code, _ := get(t, px, "allowed2.test", e.upPort); code != 200 {
		t.Errorf("control plane gone, allowed host: got %d, want 200", code)
	}
	if code, reason := get(t, px, "allowed.test", e.upPort); code != 403 || reason != "not_allowed" {
		t.Errorf("control plane gone, removed host: got %d (%s), want 403 (not_allowed)", code, reason)
	}
}

func TestRunXDSRefusesJobDisagreeingWithSVID(t *testing.T) {
	e := newEnv(t)
	wl := e.workloadAPI("spiffe://cordon.test/org/acme/job/block_follower")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, Config{Listen: "127.0.0.1:0", XDS: freeAddr(t), WorkloadAPIAddr: wl, Job: "acme/other"})
	if err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Errorf("--job acme/other with the SVID of acme/block_follower: got %v, want an error saying they disagree", err)
	}
}

// TestRunTwoHopOverXDS runs the Fargate setup: a sidecar and the gateway,
// both fed by one control plane; the sidecar sends through the gateway.
func TestRunTwoHopOverXDS(t *testing.T) {
	e := newEnv(t)
	e.writeAllowlist("allowed.test")
	cpAddr := freeAddr(t)
	e.startControlPlane(cpAddr, t.TempDir())
	unsafe := []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}

	gw := run(t, Config{
		TLSListen: "127.0.0.1:0", XDS: cpAddr, XDSMaxBackoff: 100 * time.Millisecond,
		WorkloadAPIAddr: e.workloadAPI("spiffe://cordon.test/cordon/egress-gateway"),
		DNSServer:       e.dns.Addr, UnsafeAllowCIDRs: unsafe,
	})
	sc := run(t, Config{
		Listen: "127.0.0.1:0", XDS: cpAddr, XDSMaxBackoff: 100 * time.Millisecond,
		WorkloadAPIAddr: e.workloadAPI("spiffe://cordon.test/org/acme/job/block_follower"),
		Gateway:         gw.tlsListen.String(),
	})
	defer http.DefaultClient.CloseIdleConnections()
	px := sc.listen.String()
	eventually(t, px, "allowed.test", e.upPort, 200, "through sidecar and gateway")
	if code, reason := get(t, px, "allowed2.test", e.upPort); code != 403 || reason != "not_allowed" {
		t.Errorf("host on no allowlist: got %d (%s), want 403 (not_allowed)", code, reason)
	}
}
