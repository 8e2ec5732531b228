package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startUpstream(t *testing.T, cfg UpstreamConfig) *Upstream {
	t.Helper()
	u, err := StartUpstream(cfg)
	if err != nil {
		t.Fatalf("StartUpstream: %v", err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("Upstream.Close: %v", err)
		}
		if err := u.Close(); err != nil {
			t.Errorf("second Upstream.Close: got %v, want nil", err)
		}
	})
	return u
}

func TestUpstreamServes(t *testing.T) {
	old := bigChunk
	bigChunk = 1000 // /big is then the file sent 3 times and a bit
	t.Cleanup(func() { bigChunk = old })
	u := startUpstream(t, UpstreamConfig{SmallSize: 100, BigSize: 3500})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	base := "http://" + u.Addr().String()

	tests := []struct {
		name       string
		method     string
		path       string
		wantStatus int
		wantLen    int
	}{
		{"small", "GET", "/small", 200, 100},
		{"big repeats the file", "GET", "/big", 200, 3500},
		{"unknown path", "GET", "/etc/passwd", 404, 0},
		{"post refused", "POST", "/small", 405, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, base+tt.path, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.method, tt.path, err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if resp.StatusCode != tt.wantStatus || len(body) != tt.wantLen {
				t.Errorf("got %d with %d bytes, want %d with %d", resp.StatusCode, len(body), tt.wantStatus, tt.wantLen)
			}
		})
	}
}

func TestUpstreamHonoursConnectionClose(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	c, err := net.Dial("tcp", u.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /small HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.0\r\n\r\n")
	br := bufio.NewReader(c)
	for i, wantClose := range []bool{false, true} {
		h, err := readResponseHead(br, false)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if _, err := discardBody(br, h); err != nil {
			t.Fatalf("response %d body: %v", i, err)
		}
		if h.close != wantClose {
			t.Errorf("response %d: got close=%v, want %v", i, h.close, wantClose)
		}
	}
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the HTTP/1.0 response: got %d bytes, %v; want EOF", n, err)
	}
}

func TestUpstreamRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "10.0.0.1:0", "localhost:0", ":0"} {
		if _, err := StartUpstream(UpstreamConfig{Listen: addr}); err == nil {
			t.Errorf("listen %q: got no error, want a loopback-only refusal", addr)
		}
	}
}

func startDNS(t *testing.T, name string, addr netip.Addr) *DNSServer {
	t.Helper()
	s, err := StartDNS(DNSConfig{Name: name, Addr: addr})
	if err != nil {
		t.Fatalf("StartDNS: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestDNSServer(t *testing.T) {
	s := startDNS(t, "Upstream.Bench.Test", netip.MustParseAddr("127.0.0.2"))
	tests := []struct {
		name      string
		net       string
		qname     string
		qtype     uint16
		wantRcode int
		wantA     string
	}{
		{"A over udp", "udp", "upstream.bench.test.", dns.TypeA, dns.RcodeSuccess, "127.0.0.2"},
		{"A over tcp, other case", "tcp", "UPSTREAM.bench.test.", dns.TypeA, dns.RcodeSuccess, "127.0.0.2"},
		{"AAAA is empty", "udp", "upstream.bench.test.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"other name", "udp", "evil.bench.test.", dns.TypeA, dns.RcodeNameError, ""},
		{"suffix of the name", "udp", "bench.test.", dns.TypeA, dns.RcodeNameError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tt.qname, tt.qtype)
			c := &dns.Client{Net: tt.net, Timeout: 5 * time.Second}
			r, _, err := c.Exchange(m, s.Addr().String())
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			var got string
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					got = a.A.String()
				}
			}
			if r.Rcode != tt.wantRcode || got != tt.wantA {
				t.Errorf("got rcode %d, A %q; want %d, %q", r.Rcode, got, tt.wantRcode, tt.wantA)
			}
		})
	}
}

func TestServeWritesEnvFileAndStops(t *testing.T) {
	env := t.TempDir() + "/env"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ServeConfig{Name: "upstream.bench.test", BigSize: 10, EnvFile: env}) }()
	deadline := time.Now().Add(10 * time.Second)
	var content string
	for time.Now().Before(deadline) {
		if b, err := readFileIfExists(env); err == nil && b != "" {
			content = b
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for _, key := range []string{"UPSTREAM_IP=127.0.0.1\n", "UPSTREAM_PORT=", "UPSTREAM_ADDR=127.0.0.1:", "DNS_ADDR=127.0.0.1:"} {
		if !strings.Contains(content, key) {
			t.Errorf("env file %q: want it to contain %q", content, key)
		}
	}
}

func readFileIfExists(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
