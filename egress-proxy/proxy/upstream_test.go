package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// serveOn starts an HTTP server on ln answering with its name and counts
// the connections it accepted.
func serveOn(t *testing.T, ln net.Listener, name string, idle time.Duration) *atomic.Int64 {
	t.Helper()
	var conns atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
		IdleTimeout: idle,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &conns
}

func TestUpstreamPool(t *testing.T) {
	e := newEnv(t, envOpts{unsafe: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}})
	lnA := listenOn(t, "127.0.0.2")
	port := portOf(lnA.Addr())
	lnB, err := net.Listen("tcp", "127.0.0.3:"+strconv.Itoa(int(port)))
	if err != nil {
		t.Skipf("127.0.0.3:%d is taken: %v", port, err)
	}
	connsA := serveOn(t, lnA, "A", 0)
	connsB := serveOn(t, lnB, "B", 0)
	lnC := listenOn(t, "127.0.0.2")
	connsC := serveOn(t, lnC, "C", 50*time.Millisecond) // closes idle connections fast
	portC := portOf(lnC.Addr())

	e.dns.Sequence("moving.test", []string{"127.0.0.2"}, []string{"127.0.0.2"}, []string{"127.0.0.3"})
	e.dns.Set("flaky.test", "127.0.0.2")
	if err := e.store.Apply([]*allowlist.JobPolicy{{Org: "acme", Job: "block_follower", Rules: []allowlist.Rule{
		{Host: "moving.test", Ports: []uint16{port}},
		{Host: "flaky.test", Ports: []uint16{portC}},
	}}}); err != nil {
		t.Fatal(err)
	}
	getBody := func(url string) string {
		t.Helper()
		n := len(e.logs.decisions())
		resp, body := e.roundTrip(get(url))
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: got %d %q", url, resp.StatusCode, resp.Header.Get(DenyReasonHeader))
		}
		// The connection goes back to the pool just before the decision
		// is recorded: wait for it so the next request can reuse it.
		e.logs.waitDecisions(t, n+1)
		return body
	}
	url := fmt.Sprintf("http://moving.test:%d/", port)
	// Two requests checked to 127.0.0.2 share one upstream connection; the
	// third, checked to 127.0.0.3, must not reuse it.
	got := getBody(url) + getBody(url) + getBody(url)
	if got != "AAB" {
		t.Errorf("answers: got %q, want AAB (the pool follows the checked address)", got)
	}
	if a, b := connsA.Load(), connsB.Load(); a != 1 || b != 1 {
		t.Errorf("upstream connections: got A=%d B=%d, want 1 and 1 (keep-alive reuse)", a, b)
	}
	// An idle connection the upstream closed is detected and replaced.
	flaky := fmt.Sprintf("http://flaky.test:%d/", portC)
	getBody(flaky)
	time.Sleep(200 * time.Millisecond)
	if body := getBody(flaky); body != "C" {
		t.Errorf("after the upstream closed the idle connection: got %q, want C", body)
	}
	if n := connsC.Load(); n != 2 {
		t.Errorf("connections to the closing upstream: got %d, want 2", n)
	}
}

func TestUpstreamPoolSweep(t *testing.T) {
	p := newUpstreamPool()
	p.idleTimeout = 40 * time.Millisecond
	mk := func(port uint16) (*upConn, net.Conn) {
		a, b := net.Pipe()
		return &upConn{c: a, ap: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)}, b
	}
	old, oldPeer := mk(1)
	defer oldPeer.Close()
	p.put(old)
	time.Sleep(60 * time.Millisecond)
	fresh, freshPeer := mk(2)
	defer freshPeer.Close()
	p.put(fresh)
	p.mu.Lock()
	_, oldKept := p.idle[old.ap]
	_, freshKept := p.idle[fresh.ap]
	p.mu.Unlock()
	if oldKept || !freshKept {
		t.Errorf("after sweep: old kept %v, fresh kept %v, want false, true", oldKept, freshKept)
	}
	oldPeer.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := oldPeer.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("swept connection: peer read got %v, want EOF (closed)", err)
	}
	p.closeIdle(true)
}

// TestUpConnAlive checks the pool's liveness peek on real TCP: a quiet
// connection is reusable; one the upstream closed, or on which it sent
// bytes nobody asked for, is not.
func TestUpConnAlive(t *testing.T) {
	for _, tc := range []struct {
		name string
		peer func(c *net.TCPConn)
		want bool
	}{
		{"quiet", func(*net.TCPConn) {}, true},
		{"closed by the upstream", func(c *net.TCPConn) { c.Close() }, false},
		{"unsolicited bytes", func(c *net.TCPConn) { c.Write([]byte("HTTP/1.1 200 OK\r\n")) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := tcpPair(t)
			rc, err := ours.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			uc := &upConn{c: ours, br: bufio.NewReader(ours), rc: rc}
			tc.peer(peer)
			// The peer's FIN or bytes cross loopback asynchronously.
			got := uc.alive()
			for deadline := time.Now().Add(2 * time.Second); got != tc.want && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
				got = uc.alive()
			}
			if got != tc.want {
				t.Errorf("alive: got %v, want %v", got, tc.want)
			}
		})
	}
}
