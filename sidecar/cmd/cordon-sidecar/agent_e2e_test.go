package main

import (
	"fmt"
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
	checkIdleRSS(t, agent.cmd.Process.Pid, "ready and idle")

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

// maxIdleRSS is issue 4's target for the agent: idle RSS <= 20 MB, in
// decimal megabytes (the stricter reading: 19.07 MiB).
const maxIdleRSS = 20_000_000

// checkIdleRSS holds the agent's resident set, anonymous and file-backed
// together, to maxIdleRSS. The file-backed part is the binary's pages that
// start-up touched; the kernel maps them in 64 KiB windows (fault-around),
// so it grows with how much of the binary runs at start-up and how big the
// binary is, which is what keeping go-control-plane and gRPC's tracing out
// of the binary bought (sidecar/cmd/cordon-sidecar/main.go).
func checkIdleRSS(t *testing.T, pid int, when string) {
	t.Helper()
	m, err := memOf(pid)
	if err != nil {
		t.Errorf("agent %s: %v", when, err)
		return
	}
	t.Logf("agent %s: RSS %.1f MiB (%.1f MB) = anon %.1f MiB + file %.1f MiB", when, mib(m.rss), float64(m.rss)/1e6, mib(m.anon), mib(m.file))
	if m.rss > maxIdleRSS {
		t.Errorf("agent %s: RSS %.1f MB (anon %.1f MiB + file %.1f MiB), want <= %.0f MB",
			when, float64(m.rss)/1e6, mib(m.anon), mib(m.file), float64(maxIdleRSS)/1e6)
	}
}

// mem is a process's resident memory from /proc/PID/status.
type mem struct{ rss, anon, file int64 }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// memOf reads a process's resident set size and its anonymous and
// file-backed parts from /proc.
func memOf(pid int) (mem, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return mem{}, fmt.Errorf("read resident memory: %w", err)
	}
	var m mem
	for _, line := range strings.Split(string(b), "\n") {
		for key, dst := range map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file} {
			if v, ok := strings.CutPrefix(line, key); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				*dst = kb << 10
			}
		}
	}
	if m.rss == 0 {
		return mem{}, fmt.Errorf("read resident memory: no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}
