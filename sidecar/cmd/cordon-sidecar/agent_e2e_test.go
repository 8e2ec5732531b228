package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/test/spiffedev"
)

// TestAgentAndRunEndToEnd runs the agent binary against the dev Workload
// API, then the wrapper binary it copied into the shared directory, the way
// the two containers of a task do.
func TestAgentAndRunEndToEnd(t *testing.T) {
	dir := t.TempDir()
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := devWorkloadAPI(t, ca, "spiffe://cordon.test/org/acme/job/block_follower", dir)
	file := secretsFile(t, `{"monad_rpc_key": "`+rpcKey+`"}`)
	shared := filepath.Join(dir, "cordon")
	proxyAddr := freeAddr(t)
	agent := startAgent(t, endpoint, "--provider", "file", "--secrets-file", file, "--secrets", "monad_rpc_key",
		"--shared-dir", shared, "--allowlists", writeAllowlist(t, 1), "--proxy-addr", proxyAddr)
	if rss := vmRSS(t, agent.cmd.Process.Pid); rss > 0 {
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
		!strings.Contains(got, "injected") || !strings.Contains(got, "http://"+proxyAddr) {
		t.Fatalf("job output %q: want the secret injected, redacted, and the proxy set", got)
	}

	again := exec.Command(wrapper, "run", "--agent-socket", filepath.Join(shared, "run", "agent.sock"), "--", "/bin/true")
	var errb strings.Builder
	again.Stderr = &errb
	if err := again.Run(); err == nil || !strings.Contains(errb.String(), "already handed out") {
		t.Fatalf("second run: %v, stderr %q; want a refusal", err, errb.String())
	}

	if err := agent.stop(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	l := agent.Logs()
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
	if sm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps"); err == nil && os.Getenv("CORDON_DEBUG_SMAPS") != "" {
		t.Logf("%s", sm)
	}
	var rss int64
	for _, line := range strings.Split(string(b), "\n") {
		// Anonymous memory is the heap; file memory is mostly the
		// binary's own text and data pages.
		if strings.HasPrefix(line, "RssAnon:") || strings.HasPrefix(line, "RssFile:") {
			t.Log(strings.Join(strings.Fields(line), " "))
		}
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	return rss
}
