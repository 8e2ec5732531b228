package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
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
	deadline := time.Now().Add(15 * time.Second)
	for exec.Command(bin, "health", "--addr", a.health).Run() != nil {
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent exited before it was healthy: %v\n%s", err, a.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not healthy in 15s:\n%s", a.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return a
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
