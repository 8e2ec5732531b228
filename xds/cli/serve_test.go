package cli

import (
	"context"
	"io"
	"log/slog"
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

	"github.com/cordon-dev/cordon/egress-proxy/xdsclient"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type lastApplied struct {
	mu sync.Mutex
	ps []*allowlist.JobPolicy
}

func (a *lastApplied) Apply(ps []*allowlist.JobPolicy) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ps = ps
	return nil
}

// TestServe runs the real serve path: SVID from a Workload API socket,
// initial load, ADS, the directory watch, /metrics and the state dir.
func TestServe(t *testing.T) {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	sock := filepath.Join(tmp, "agent.sock")
	ws, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: ca, ID: spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds")})
	if err != nil {
		t.Fatal(err)
	}
	wln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); ws.Serve(ctx, wln) }()

	dir, state := filepath.Join(tmp, "allowlists"), filepath.Join(tmp, "state")
	os.MkdirAll(dir, 0o755)
	src, err := os.ReadFile("testdata/lint/clean/acme.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "acme.yaml"), src, 0o644)

	mlis, _ := net.Listen("tcp", "127.0.0.1:0")
	metricsAddr := mlis.Addr().String()
	mlis.Close()
	addrc := make(chan string, 1)
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr <- Serve(ctx, ServeConfig{
			Allowlists: dir, Listen: "127.0.0.1:0", StateDir: state, MetricsAddr: metricsAddr,
			WorkloadAPI: "unix://" + sock, Logger: slog.New(slog.DiscardHandler),
			OnListening: func(a net.Addr) { addrc <- a.String() },
		})
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-serveErr:
		t.Fatalf("Serve: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not start")
	}

	svid, _ := ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/price_alert"), 0)
	a := &lastApplied{}
	c, err := xdsclient.New(xdsclient.Config{Addr: addr, SVID: svid, Bundles: ca.Bundle()}, a)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); c.Run(ctx) }()
	waitVersion := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for c.Version() != want {
			if time.Now().After(deadline) {
				t.Fatalf("got version %q, want %q", c.Version(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitVersion("v1")

	// Edit: price_alert gains port 8443 on storage.
	os.WriteFile(filepath.Join(dir, "acme.yaml"), []byte(strings.Replace(string(src), "ports: [443]", "ports: [443, 8443]", 1)), 0o644)
	waitVersion("v2")
	a.mu.Lock()
	if len(a.ps) != 1 || len(a.ps[0].Rules) != 1 || len(a.ps[0].Rules[0].Ports) != 2 {
		t.Errorf("got applied %+v, want price_alert with ports 443 and 8443", a.ps)
	}
	a.mu.Unlock()
	if b, _ := os.ReadFile(filepath.Join(state, "version")); strings.TrimSpace(string(b)) != "2" {
		t.Errorf("got persisted version %q, want 2", b)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"cordon_xds_streams 1", "cordon_xds_config_version 2", "cordon_xds_acks_total 2", "cordon_xds_reload_seconds_count"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	cancel()
	if err := <-serveErr; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestServeRefusesBrokenAllowlists(t *testing.T) {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ws, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: ca, ID: spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds")})
	if err != nil {
		t.Fatal(err)
	}
	wln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ws.Serve(ctx, wln) }()
	defer func() { cancel(); <-done }()

	err = Serve(ctx, ServeConfig{Allowlists: "testdata/lint/syntax_error", Listen: "127.0.0.1:0",
		WorkloadAPI: "unix://" + sock, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "initial load") || !strings.Contains(err.Error(), "acme.yaml:19:5") {
		t.Fatalf("got %v, want the initial load error with its position", err)
	}
	if err := Serve(ctx, ServeConfig{Allowlists: "x", Listen: "127.0.0.1:0"}); os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" &&
		(err == nil || !strings.Contains(err.Error(), "no Workload API")) {
		t.Errorf("without a Workload API: got %v, want an error naming it", err)
	}
}
