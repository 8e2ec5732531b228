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

	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/egress-proxy/internal/dnstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func writeAllowlist(t *testing.T, port int) string {
	t.Helper()
	dir := t.TempDir()
	yaml := fmt.Sprintf(`version: 1
org: acme
endpoint_sets:
  test_upstream:
    entries:
      - host: allowed.test
        ports: [%d]
jobs:
  block_follower:
    class: platform
    allow: [test_upstream]
`, port)
	if err := os.WriteFile(filepath.Join(dir, "acme.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRunStaticMode(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream") }))
	up.Listener.Close()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	up.Listener = ln
	up.Start()
	defer up.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	dns := dnstest.Start(t)
	dns.Set("allowed.test", "127.0.0.2")

	type addrs struct{ listen, metrics net.Addr }
	ready := make(chan addrs, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Listen: "127.0.0.1:0", Metrics: "127.0.0.1:0",
			Allowlists: writeAllowlist(t, port), Job: "acme/block_follower",
			DNSServer:        dns.Addr,
			UnsafeAllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
			DrainTimeout:     2 * time.Second,
			Ready:            func(l, _, m net.Addr) { ready <- addrs{l, m} },
		})
	}()
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	c, err := net.Dial("tcp", a.listen.String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET http://allowed.test:%d/ HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", port, port)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if resp.StatusCode != 200 || string(body) != "upstream" {
		t.Errorf("allowed request: got %d %q, want 200 upstream", resp.StatusCode, body)
	}
	// The decision is recorded just after the response is written: poll.
	want := `cordon_egress_requests_total{decision="allow",reason=""} 1`
	var mbody []byte
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mresp, err := http.Get("http://" + a.metrics.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		mbody, _ = io.ReadAll(mresp.Body)
		mresp.Body.Close()
		if strings.Contains(string(mbody), want) {
			break
		}
	}
	if !strings.Contains(string(mbody), want) {
		t.Errorf("metrics: want %s, got:\n%s", want, mbody)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within the drain bound")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no policy source", Config{Listen: "x:1", Job: "a/b"}, "--allowlists"},
		{"allowlists and xds", Config{Listen: "x:1", Job: "a/b", Allowlists: "d", XDS: "h:1"}, "mutually exclusive"},
		{"bad xds", Config{Listen: "x:1", XDS: "h"}, "--xds"},
		{"bad xds server id", Config{Listen: "x:1", XDS: "h:1", XDSServerID: "http://x"}, "--xds-server-id"},
		{"gateway without listen", Config{TLSListen: "x:2", XDS: "h:1", Gateway: "g:1"}, "--gateway is for sidecars"},
		{"gateway with tls-listen", Config{Listen: "x:1", Job: "a/b", TLSListen: "x:2", XDS: "h:1", Gateway: "g:1"}, "--gateway is for sidecars"},
		{"bad gateway", Config{Listen: "x:1", XDS: "h:1", Gateway: "g"}, "--gateway"},
		{"gateway and listen need job", Config{Listen: "x:1", TLSListen: "x:2", XDS: "h:1"}, "--job"},
		{"no listener", Config{Allowlists: "d"}, "--listen"},
		{"no job", Config{Allowlists: "d", Listen: "x:1"}, "--job"},
		{"bad job", Config{Allowlists: "d", Listen: "x:1", Job: "a/b/c"}, "ORG/JOB"},
		{"bad dns", Config{Allowlists: "d", Listen: "x:1", Job: "a/b", DNSServer: "1.1.1.1"}, "--dns-server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: got %v, want an error mentioning %s", err, tt.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	n, err := Check(writeAllowlist(t, 8080))
	if err != nil || n != 1 {
		t.Errorf("Check valid dir: got %d, %v, want 1 policy", n, err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "x.yaml"), []byte("version: 1\norg: x\nbogus: true\n"), 0o644)
	if _, err := Check(bad); err == nil || !strings.Contains(err.Error(), "x.yaml:3") {
		t.Errorf("Check invalid dir: got %v, want an error at x.yaml:3", err)
	}
}
