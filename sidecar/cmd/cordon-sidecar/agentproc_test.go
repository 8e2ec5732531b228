package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/test/spiffedev"
)

const testTD = "cordon.test"

// devWorkloadAPI serves the dev Workload API for id on a unix socket under
// dir and returns its SPIFFE_ENDPOINT_SOCKET value.
func devWorkloadAPI(t *testing.T, ca *spiffedev.CA, id, dir string) string {
	t.Helper()
	wsrv, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{
		CA: ca, ID: spiffeid.RequireFromString(id), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "spire.sock")
	ln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- wsrv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return "unix://" + sock
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

// agentProc is a running `cordon-sidecar agent`.
type agentProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	health string
	done   chan error

	mu   sync.Mutex // guards logs
	logs strings.Builder
	eof  chan struct{} // stderr fully read

	stopOnce sync.Once
	stopErr  error
}

// startAgent starts the agent with args plus --health-addr, and waits
// until it is healthy. It is stopped (SIGTERM) at cleanup.
func startAgent(t *testing.T, endpoint string, args ...string) *agentProc {
	t.Helper()
	a := launchAgent(t, endpoint, args...)
	a.waitHealth(t, "healthy", func(code int, _ string) bool { return code == http.StatusOK })
	// What the container health check runs agrees.
	if err := exec.Command(bin, "health", "--addr", a.health).Run(); err != nil {
		t.Fatalf("cordon-sidecar health: %v", err)
	}
	return a
}

// launchAgent starts the agent with args plus --health-addr and returns at
// once; waitHealth waits for the state a test needs. It is stopped
// (SIGTERM) at cleanup.
func launchAgent(t *testing.T, endpoint string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, health: freeAddr(t), done: make(chan error, 1), eof: make(chan struct{})}
	a.cmd = exec.Command(bin, append([]string{"agent", "--health-addr", a.health}, args...)...)
	a.cmd.Env = []string{"SPIFFE_ENDPOINT_SOCKET=" + endpoint}
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.eof)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			a.mu.Lock()
			a.logs.WriteString(sc.Text() + "\n")
			a.mu.Unlock()
		}
	}()
	go func() { <-a.eof; a.done <- a.cmd.Wait() }()
	t.Cleanup(func() { a.stop() })
	return a
}

// waitHealth polls GET /healthz until ok accepts its status and body,
// failing after 15s or when the agent exits.
func (a *agentProc) waitHealth(t *testing.T, what string, ok func(code int, body string) bool) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := 0, ""
		if resp, err := c.Get("http://" + a.health + "/healthz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, strings.TrimSpace(string(b))
		}
		if ok(code, body) {
			return
		}
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent exited before it was %s: %v\n%s", what, err, a.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not %s in 15s (health: %d %q):\n%s", what, code, body, a.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *agentProc) Logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.logs.String()
}

// stop sends SIGTERM and waits (killing it after 15s); it returns the
// agent's exit error. Idempotent.
func (a *agentProc) stop() error {
	a.stopOnce.Do(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case a.stopErr = <-a.done:
		case <-time.After(15 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
			a.stopErr = fmt.Errorf("agent did not stop on SIGTERM in 15s")
		}
	})
	return a.stopErr
}

// writeAllowlist writes an allowlist letting acme/block_follower reach
// localhost on the given ports.
func writeAllowlist(t *testing.T, ports ...int) string {
	t.Helper()
	dir := t.TempDir()
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = fmt.Sprint(p)
	}
	yaml := `version: 1
org: acme
endpoint_sets:
  local_upstream:
    entries:
      - host: localhost
        ports: [` + strings.Join(ps, ", ") + `]
jobs:
  block_follower:
    class: platform
    allow: [local_upstream]
`
	if err := os.WriteFile(filepath.Join(dir, "acme.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
