package main

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/test/spiffedev"
)

// TestAgentAndRunEndToEnd runs the agent binary against the dev Workload
// API, then the wrapper binary it copied into the shared directory, the way
// the two containers of a task do.
func TestAgentAndRunEndToEnd(t *testing.T) {
	dir := t.TempDir()
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	wsrv, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{
		CA: ca, ID: spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/block_follower"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "spire.sock")
	ln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() { wdone <- wsrv.Serve(wctx, ln) }()
	defer func() { wcancel(); <-wdone }()

	file := secretsFile(t, `{"monad_rpc_key": "`+rpcKey+`"}`)
	shared := filepath.Join(dir, "cordon")
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := hl.Addr().String()
	hl.Close()
	agent := exec.Command(bin, "agent", "--provider", "file", "--secrets-file", file, "--secrets", "monad_rpc_key",
		"--shared-dir", shared, "--health-addr", health)
	agent.Env = []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + sock}
	stderr, err := agent.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		logs <- b.String()
	}()
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Wait() }()
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-agentDone:
		case <-time.After(10 * time.Second):
			agent.Process.Kill()
			<-agentDone
		}
	}()

	deadline := time.Now().Add(15 * time.Second)
	for exec.Command(bin, "health", "--addr", health).Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("agent not healthy in 15s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rss := vmRSS(t, agent.Process.Pid); rss > 0 {
		t.Logf("agent RSS when ready and idle: %.1f MiB", float64(rss)/(1<<20))
		if rss > 20<<20 {
			t.Errorf("agent RSS %.1f MiB, want <= 20 MiB", float64(rss)/(1<<20))
		}
	}

	wrapper := filepath.Join(shared, "bin", "cordon-sidecar")
	job := exec.Command(wrapper, "run", "--agent-socket", filepath.Join(shared, "run", "agent.sock"), "--",
		"/bin/sh", "-c", `echo "key=$MONAD_RPC_KEY"; [ "$MONAD_RPC_KEY" = "`+rpcKey+`" ] && echo injected; echo "$HTTP_PROXY"`)
	job.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := job.Output()
	if err != nil {
		t.Fatalf("job through the copied wrapper: %v", err)
	}
	got := string(out)
	if strings.Contains(got, rpcKey) || !strings.Contains(got, "key=[REDACTED:MONAD_RPC_KEY]") ||
		!strings.Contains(got, "injected") || !strings.Contains(got, "http://127.0.0.1:3128") {
		t.Fatalf("job output %q: want the secret injected, redacted, and the proxy set", got)
	}

	again := exec.Command(wrapper, "run", "--agent-socket", filepath.Join(shared, "run", "agent.sock"), "--", "/bin/true")
	var errb strings.Builder
	again.Stderr = &errb
	if err := again.Run(); err == nil || !strings.Contains(errb.String(), "already handed out") {
		t.Fatalf("second run: %v, stderr %q; want a refusal", err, errb.String())
	}

	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-agentDone:
		if err != nil {
			t.Fatalf("agent exit: %v", err)
		}
		agentDone <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	l := <-logs
	if strings.Contains(l, rpcKey) {
		t.Fatalf("agent logs contain the secret value:\n%s", l)
	}
	// The wrapper reported the run's usage to the agent.
	if !strings.Contains(l, `"msg":"job finished","exit_code":0`) || !strings.Contains(l, `"redactions":1`) {
		t.Fatalf("agent logs lack the wrapper's usage report:\n%s", l)
	}
}

// vmRSS reads a process's resident set size from /proc.
func vmRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Logf("no /proc: %v", err)
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
