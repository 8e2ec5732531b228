package loadgen

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testProxy is a small filtering forward proxy for the tests: it allows one
// host:port, resolves names through the given DNS server, and serves both
// absolute-form requests and CONNECT.
type testProxy struct {
	allow    string // host:port
	resolver *net.Resolver
	srv      *http.Server
	ln       net.Listener
	tr       *http.Transport
	tunnels  sync.WaitGroup
	connects atomic.Int64
	requests atomic.Int64
}

func startTestProxy(t *testing.T, allow string, dnsAddr netip.AddrPort) *testProxy {
	t.Helper()
	p := &testProxy{allow: allow}
	p.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr.String())
	}}
	p.tr = &http.Transport{DialContext: p.dial, MaxIdleConnsPerHost: 64}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	p.srv = &http.Server{Handler: p}
	go p.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.srv.Shutdown(ctx)
		p.tr.CloseIdleConnections()
		p.tunnels.Wait()
	})
	return p
}

func (p *testProxy) addr() string { return p.ln.Addr().String() }

func (p *testProxy) dial(ctx context.Context, network, hostport string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	ips, err := p.resolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(ips) == 0 {
		return nil, errors.Join(errors.New("resolve "+host), err)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort(ips[0].String(), port))
}

func (p *testProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Host != p.allow {
		http.Error(w, "denied", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect {
		p.connects.Add(1)
		up, err := p.dial(r.Context(), "tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		p.tunnels.Add(1)
		go func() {
			defer p.tunnels.Done()
			done := make(chan struct{})
			go func() { io.Copy(up, conn); up.(*net.TCPConn).CloseWrite(); close(done) }()
			io.Copy(conn, up)
			conn.Close()
			<-done
			up.Close()
		}()
		return
	}
	p.requests.Add(1)
	out := r.Clone(r.Context())
	out.RequestURI = ""
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

type benchEnv struct {
	up  *Upstream
	dns *DNSServer
}

func startBenchEnv(t *testing.T) benchEnv {
	t.Helper()
	up := startUpstream(t, UpstreamConfig{BigSize: 8 << 20})
	return benchEnv{up: up, dns: startDNS(t, "upstream.bench.test", up.Addr().Addr())}
}

func (e benchEnv) config(name, proxy string) Config {
	return Config{
		Name:        name,
		Target:      Target{Proxy: proxy, Host: "upstream.bench.test", Upstream: e.up.Addr()},
		Clients:     4,
		Warmup:      50 * time.Millisecond,
		Duration:    300 * time.Millisecond,
		BigSize:     8 << 20,
		IdleTunnels: 50,
		SettleTime:  10 * time.Millisecond,
	}
}

func checkClean(t *testing.T, r Result, cfg Config) {
	t.Helper()
	for name, rr := range map[string]RateResult{"keep-alive": r.KeepAlive, "paced": r.Paced, "tunnels": r.Tunnels} {
		if rr.Errors != 0 || rr.Requests == 0 || rr.P50 <= 0 || rr.P99 < rr.P50 || rr.PerSecond <= 0 {
			t.Errorf("%s: got %d requests, %d errors (%s), p50 %v, p99 %v; want requests, no errors, 0 < p50 <= p99",
				name, rr.Requests, rr.Errors, rr.FirstError, rr.P50, rr.P99)
		}
	}
	if r.KeepAlive.Connects > uint64(cfg.Clients) {
		t.Errorf("keep-alive: got %d connections, want at most one per client (%d)", r.KeepAlive.Connects, cfg.Clients)
	}
	if r.Tunnels.Connects < r.Tunnels.Requests {
		t.Errorf("tunnels: got %d connections for %d requests, want one per request", r.Tunnels.Connects, r.Tunnels.Requests)
	}
	if r.Bulk.Error != "" || r.Bulk.Bytes != cfg.BigSize || r.Bulk.GBPerSecond <= 0 {
		t.Errorf("bulk: got %d bytes at %.2f GB/s, error %q; want %d bytes", r.Bulk.Bytes, r.Bulk.GBPerSecond, r.Bulk.Error, cfg.BigSize)
	}
	// BulkRuns downloads (the default unless set), and the figure is their
	// median.
	d := cfg
	d.setDefaults()
	if runs := slices.Sorted(slices.Values(r.Bulk.Runs)); len(runs) != d.BulkRuns || runs[len(runs)/2] != r.Bulk.GBPerSecond {
		t.Errorf("bulk runs: got %v with %.3f GB/s reported, want %d runs and their median", r.Bulk.Runs, r.Bulk.GBPerSecond, d.BulkRuns)
	}
	if r.Idle.Opened != cfg.IdleTunnels || r.Idle.Alive != r.Idle.Checked || r.Idle.Checked == 0 {
		t.Errorf("idle: got %d opened, %d of %d alive, error %q; want %d opened, all alive", r.Idle.Opened, r.Idle.Alive, r.Idle.Checked, r.Idle.Error, cfg.IdleTunnels)
	}
}

func TestRunDirect(t *testing.T) {
	e := startBenchEnv(t)
	cfg := e.config("direct", "")
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, r, cfg)
	if r.Idle.RSS != 0 {
		t.Errorf("direct: got RSS %d, want none measured without a PID", r.Idle.RSS)
	}
}

func TestRunThroughProxy(t *testing.T) {
	e := startBenchEnv(t)
	p := startTestProxy(t, "upstream.bench.test:"+itoa(e.up.Addr().Port()), e.dns.Addr())
	cfg := e.config("testproxy", p.addr())
	cfg.ProxyPID = os.Getpid()
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, r, cfg)
	// Everything went through the proxy: every tunnel and every keep-alive
	// request was seen there (plus warm-up and the other phases).
	if got, want := uint64(p.connects.Load()), r.Tunnels.Requests+uint64(cfg.IdleTunnels)+1; got < want {
		t.Errorf("proxy saw %d CONNECTs, want at least %d", got, want)
	}
	if got := uint64(p.requests.Load()); got < r.KeepAlive.Requests {
		t.Errorf("proxy saw %d requests, want at least %d", got, r.KeepAlive.Requests)
	}
	if r.Idle.RSS <= 0 || r.Idle.BaselineRSS <= 0 {
		t.Errorf("idle: got RSS %d (baseline %d), want both measured", r.Idle.RSS, r.Idle.BaselineRSS)
	}
}

func TestRunCountsDenials(t *testing.T) {
	e := startBenchEnv(t)
	p := startTestProxy(t, "other.bench.test:1", e.dns.Addr())
	cfg := e.config("denying", p.addr())
	cfg.Duration = 100 * time.Millisecond
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if r.KeepAlive.Requests != 0 || r.KeepAlive.Errors == 0 || r.KeepAlive.FirstError != "got status 403, want 200" {
		t.Errorf("keep-alive: got %d ok, %d errors, first %q; want only 403 errors", r.KeepAlive.Requests, r.KeepAlive.Errors, r.KeepAlive.FirstError)
	}
	if r.Tunnels.Requests != 0 || r.Tunnels.FirstError != "CONNECT answered 403, want 200" {
		t.Errorf("tunnels: got %d ok, first error %q; want none ok, a 403", r.Tunnels.Requests, r.Tunnels.FirstError)
	}
	if r.Bulk.Error == "" || r.Idle.Opened != 0 || r.Idle.Failed == 0 {
		t.Errorf("got bulk error %q, idle opened %d failed %d; want failures", r.Bulk.Error, r.Idle.Opened, r.Idle.Failed)
	}
	v := Verdicts(Result{KeepAlive: RateResult{PerSecond: 1, Requests: 1, P99: 1}, Bulk: BulkResult{Bytes: 1, GBPerSecond: 1}}, r)
	for _, x := range v {
		if x.Pass {
			t.Errorf("verdict %q: got PASS for a proxy that denied everything", x.Goal)
		}
	}
}

// closingServer answers each request and then closes the connection without
// saying so, as tinyproxy does.
func closingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			c.Read(buf)
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + string(make([]byte, 100))))
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func TestKeepAliveRetriesSilentlyClosedConnection(t *testing.T) {
	addr := closingServer(t)
	c := newClient(newPlan(Config{Target: Target{Proxy: addr, Host: "h", Upstream: netip.MustParseAddrPort("127.0.0.1:1")}, SmallSize: 100}))
	defer c.close()
	for i := range 20 {
		if err := c.keepAliveOnce(context.Background()); err != nil {
			t.Fatalf("request %d: got %v, want the silently closed connection retried", i, err)
		}
	}
	if c.connects < 20 {
		t.Errorf("got %d connections for 20 requests, want 20", c.connects)
	}
}

func TestKeepAliveDoesNotAllocate(t *testing.T) {
	e := startBenchEnv(t)
	cfg := e.config("direct", "")
	cfg.setDefaults()
	c := newClient(newPlan(cfg))
	defer c.close()
	ctx := context.Background()
	if err := c.keepAliveOnce(ctx); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(200, func() {
		if err := c.keepAliveOnce(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per keep-alive request, want 0", allocs)
	}
}

func TestRunRefusesNonLoopbackTargets(t *testing.T) {
	tests := []struct {
		name   string
		target Target
	}{
		{"public upstream", Target{Host: "x", Upstream: netip.MustParseAddrPort("93.184.216.34:80")}},
		{"public proxy", Target{Proxy: "8.8.8.8:3128", Host: "x", Upstream: netip.MustParseAddrPort("127.0.0.1:80")}},
		{"proxy by name", Target{Proxy: "proxy.example:3128", Host: "x", Upstream: netip.MustParseAddrPort("127.0.0.1:80")}},
		{"no host", Target{Upstream: netip.MustParseAddrPort("127.0.0.1:80")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Run(context.Background(), Config{Target: tt.target}); err == nil {
				t.Errorf("got no error, want a refusal")
			}
		})
	}
}
