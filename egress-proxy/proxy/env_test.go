package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/egress-proxy/internal/dnstest"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/egress-proxy/resolve"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logSink collects JSON log lines.
type logSink struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (l *logSink) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.lines = append(l.lines, m)
	l.mu.Unlock()
	return len(p), nil
}

func (l *logSink) decisions() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["msg"] == "egress decision" {
			out = append(out, m)
		}
	}
	return out
}

// waitDecisions waits until n decision lines exist and returns them.
func (l *logSink) waitDecisions(t *testing.T, n int) []map[string]any {
	t.Helper()
	return waitFor(t, "decision lines", n, l.decisions)
}

// waitFor polls get until it returns at least n items, for up to 5s, and
// fails unless it returns exactly n.
func waitFor[T any](t *testing.T, what string, n int, get func() []T) []T {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := get()
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("%s: got %d, want %d: %+v", what, len(got), n, got)
			}
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type auditSink struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (a *auditSink) Emit(ev audit.Event) {
	a.mu.Lock()
	a.evs = append(a.evs, ev)
	a.mu.Unlock()
}

// wait returns the events once n have been emitted: a decision's audit
// event follows its log line, so waiting for the line is not enough.
func (a *auditSink) wait(t *testing.T, n int) []audit.Event {
	t.Helper()
	return waitFor(t, "audit events", n, a.events)
}

func (a *auditSink) events() []audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]audit.Event(nil), a.evs...)
}

type env struct {
	t         testing.TB
	proxyAddr string
	proxyPort uint16
	httpPort  uint16 // plain HTTP upstream on 127.0.0.2
	tlsPort   uint16 // TLS upstream on 127.0.0.2
	dns       *dnstest.Server
	logs      *logSink
	audit     *auditSink
	srv       *Server
	store     *policy.Store
	attackHit atomic.Int64 // upstream requests whose path starts /attack
	lastHost  atomic.Value // Host header the upstream last saw
	lastHdr   atomic.Value // headers the upstream last saw
	tlsHits   atomic.Int64 // completed TLS handshakes at the TLS upstream
}

type envOpts struct {
	mode     allowlist.Mode
	limits   Limits
	observer Observer
	dnsCache time.Duration
	unsafe   []netip.Prefix // added to the default unsafe-allow prefixes
	jobActor string         // Config.JobActor
	// discardLogs encodes log lines as production does but keeps none
	// (benchmarks: the test sink's JSON parsing is not the proxy's cost).
	discardLogs bool
}

func listenOn(t testing.TB, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("listen %s: %v", ip, err)
	}
	return ln
}

func portOf(a net.Addr) uint16 { return uint16(a.(*net.TCPAddr).Port) }

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, logs: &logSink{}, audit: &auditSink{}, store: policy.NewStore()}
	e.lastHost.Store("")
	e.lastHdr.Store(http.Header{})

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/attack") {
			e.attackHit.Add(1)
		}
		e.lastHost.Store(r.Host)
		e.lastHdr.Store(r.Header.Clone())
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "ok %s %s %d", r.Method, r.URL.Path, len(body))
	})
	up := httptest.NewUnstartedServer(mux)
	up.Listener.Close()
	up.Listener = listenOn(t, "127.0.0.2")
	up.Start()
	t.Cleanup(up.Close)
	e.httpPort = portOf(up.Listener.Addr())

	tup := httptest.NewUnstartedServer(mux)
	tup.Listener.Close()
	tup.Listener = listenOn(t, "127.0.0.2")
	tup.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateActive {
			e.tlsHits.Add(1)
		}
	}
	tup.Config.ErrorLog = log.New(io.Discard, "", 0) // denied handshakes are expected
	tup.StartTLS()
	t.Cleanup(tup.Close)
	e.tlsPort = portOf(tup.Listener.Addr())

	e.dns = dnstest.Start(t)
	e.dns.Set("allowed.test", "127.0.0.2")
	e.dns.Set("other.test", "127.0.0.2")
	e.dns.Set("sub.wild.test", "127.0.0.2")
	e.dns.Set("wild.test", "127.0.0.2")
	e.dns.Set("internal.test", "10.0.0.1")
	e.dns.Set("mixed.test", "127.0.0.2", "10.0.0.1")
	e.dns.Set("metadata.test", "169.254.169.254")
	e.dns.Set("metadata6.test", "fd00:ec2::254")
	e.dns.Set("self.test", "127.0.0.1")
	e.dns.Set("tls443.test", "127.0.0.7")

	pln := listenOn(t, "127.0.0.1")
	e.proxyAddr = pln.Addr().String()
	e.proxyPort = portOf(pln.Addr())

	hp, tp, pp := e.httpPort, e.tlsPort, e.proxyPort
	pol := &allowlist.JobPolicy{
		Org: "acme", Job: "block_follower", Class: allowlist.ClassPlatform, Mode: o.mode,
		Rules: []allowlist.Rule{
			{Host: "allowed.test", Ports: []uint16{hp, tp, 443}, Source: "endpoint_set:test"},
			{Host: "*.wild.test", Ports: []uint16{hp}, Source: "endpoint_set:test"},
			{Host: "internal.test", Ports: []uint16{hp}, Source: "endpoint_set:test"},
			{Host: "mixed.test", Ports: []uint16{hp}, Source: "endpoint_set:test"},
			{Host: "metadata.test", Ports: []uint16{80, hp}, Source: "endpoint_set:test"},
			{Host: "metadata6.test", Ports: []uint16{80}, Source: "endpoint_set:test"},
			{Host: "self.test", Ports: []uint16{pp}, Source: "endpoint_set:test"},
			{Host: "flip.test", Ports: []uint16{hp}, Source: "endpoint_set:test"},
			{Host: "tls443.test", Ports: []uint16{443}, Source: "endpoint_set:test"},
			{CIDR: netip.MustParsePrefix("127.0.0.2/32"), Ports: []uint16{hp, tp}, Source: "endpoint_set:test"},
		},
	}
	if err := e.store.Apply([]*allowlist.JobPolicy{pol}); err != nil {
		t.Fatal(err)
	}
	r, err := resolve.NewDNS(e.dns.Addr, resolve.DNSOptions{Timeout: time.Second, CacheMaxTTL: o.dnsCache})
	if err != nil {
		t.Fatal(err)
	}
	lim := o.limits
	if lim.ClientHelloTimeout == 0 {
		lim.ClientHelloTimeout = 500 * time.Millisecond
	}
	logger := slog.New(slog.NewJSONHandler(e.logs, nil))
	if o.discardLogs {
		logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	e.srv, err = New(Config{
		Store:    e.store,
		Job:      JobRef{Org: "acme", Job: "block_follower"},
		JobActor: o.jobActor,
		Logger:   logger,
		Audit:    e.audit,
		Resolver: r,
		UnsafeAllowCIDRs: append([]netip.Prefix{
			netip.MustParsePrefix("127.0.0.1/32"), // so only the loop check stops self.test
			netip.MustParsePrefix("127.0.0.2/32"),
			netip.MustParsePrefix("127.0.0.7/32"),
			netip.MustParsePrefix("169.254.0.0/16"), // metadata must stay denied anyway
		}, o.unsafe...),
		Limits:   lim,
		Observer: o.observer,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(context.Background(), pln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: got %v, want ErrServerClosed", err)
		}
	})
	return e
}

// sub replaces $HP (HTTP upstream port), $TP (TLS upstream port) and $PP
// (proxy port) in a request template.
func (e *env) sub(s string) string {
	return strings.NewReplacer(
		"$HP", strconv.Itoa(int(e.httpPort)),
		"$TP", strconv.Itoa(int(e.tlsPort)),
		"$PP", strconv.Itoa(int(e.proxyPort)),
	).Replace(s)
}

func (e *env) dial() net.Conn {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.proxyAddr, 2*time.Second)
	if err != nil {
		e.t.Fatalf("dial proxy: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends a raw request and reads one response.
func (e *env) roundTrip(raw string) (*http.Response, string) {
	e.t.Helper()
	c := e.dial()
	if _, err := io.WriteString(c, e.sub(raw)); err != nil {
		e.t.Fatalf("write: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		e.t.Fatalf("read response to %q: %v", raw, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// connectTLS opens a CONNECT tunnel to target and runs a TLS handshake
// with serverName through it. It returns the handshake error.
func (e *env) connectTLS(target, serverName string) error {
	e.t.Helper()
	c := e.dial()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", e.sub(target), e.sub(target))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("CONNECT: status %d reason %q", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
	tc := tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		return err
	}
	fmt.Fprintf(tc, "GET /tunnel HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
	r2, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return fmt.Errorf("request through tunnel: %w", err)
	}
	r2.Body.Close()
	c.Close() // the tunnel, and its decision line, end when both sides close
	if r2.StatusCode != 200 {
		return fmt.Errorf("through tunnel: status %d", r2.StatusCode)
	}
	return nil
}
