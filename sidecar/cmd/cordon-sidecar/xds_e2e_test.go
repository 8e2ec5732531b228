package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/cordon-dev/cordon/xds/reload"
	"github.com/cordon-dev/cordon/xds/server"
)

// startControlPlane runs a real cordon-xds (server and reloader of the
// allowlist dir) on addr until the returned stop.
func startControlPlane(t *testing.T, ca *spiffedev.CA, addr, allowDir string) (stop func()) {
	t.Helper()
	svid, err := ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds"), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{TrustDomain: ca.TrustDomain(), SVID: svid, Bundles: ca.Bundle(), ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := reload.New(reload.Config{Dir: allowDir, StateDir: t.TempDir()}, srv)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestAgentWithXDSPolicy: with --xds the embedded proxy denies everything
// until the control plane's first policy, and the agent is not healthy (the
// job does not start) until then; then it serves the policy, turns healthy,
// and keeps the policy when the control plane goes away.
func TestAgentWithXDSPolicy(t *testing.T) {
	dir := t.TempDir()
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := devWorkloadAPI(t, ca, "spiffe://cordon.test/org/acme/job/block_follower", dir)
	upLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })}
	go up.Serve(upLn)
	defer up.Close()
	upPort := upLn.Addr().(*net.TCPAddr).Port
	resolver := dnsServer(t, map[string]string{"allowed.test": "127.0.0.2"})
	allow := t.TempDir()
	if err := os.WriteFile(filepath.Join(allow, "acme.yaml"), []byte(`version: 1
org: acme
endpoint_sets:
  up:
    entries:
      - host: allowed.test
        ports: [`+strconv.Itoa(upPort)+`]
jobs:
  block_follower:
    class: platform
    allow: [up]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, proxyAddr := freeAddr(t), freeAddr(t)
	agent := launchAgent(t, endpoint, "--provider", "file", "--secrets-file", secretsFile(t, `{}`),
		"--shared-dir", filepath.Join(dir, "cordon"), "--xds", xdsAddr, "--dns", resolver,
		"--unsafe-allow-cidr", "127.0.0.0/8", "--proxy-addr", proxyAddr)
	// Set up (the proxy listens) but not healthy: no policy yet.
	agent.waitHealth(t, "set up and waiting for its policy", func(code int, body string) bool {
		return code == http.StatusServiceUnavailable && body == "waiting for the egress policy"
	})
	c := proxyClient(proxyAddr)
	url := "http://allowed.test:" + strconv.Itoa(upPort) + "/"
	status := func() (int, string) {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Cordon-Deny-Reason")
	}

	if code, reason := status(); code != http.StatusForbidden || reason == "" {
		t.Fatalf("before any policy: got %d %q, want 403 with a reason (deny-all)", code, reason)
	}
	if err := exec.Command(bin, "health", "--addr", agent.health).Run(); err == nil {
		t.Fatal("cordon-sidecar health succeeded before the agent had a policy")
	}
	stop := startControlPlane(t, ca, xdsAddr, allow)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, _ := status()
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy from the control plane not applied in 20s: got %d", code)
		}
	}
	agent.waitHealth(t, "healthy once its policy was applied", func(code int, _ string) bool { return code == http.StatusOK })
	// The way it runs in a task: policy from xDS, and a few requests served.
	checkIdleRSS(t, agent.cmd.Process.Pid, "with its xDS policy, idle")
	stop()
	time.Sleep(200 * time.Millisecond)
	if code, reason := status(); code != http.StatusOK {
		t.Fatalf("control plane gone: got %d %q, want 200 (last good policy kept)", code, reason)
	}
}
