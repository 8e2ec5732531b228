package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/cordon-dev/cordon/bpf"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

// dnsServer answers A queries for names with addr, on a loopback UDP port.
func dnsServer(t *testing.T, names map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qu := range q.Question {
			if ip, ok := names[strings.TrimSuffix(qu.Name, ".")]; ok && qu.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qu.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return pc.LocalAddr().String()
}

// buildProbe builds test/cmd/cordon-probe, the hostile job.
func buildProbe(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cordon-probe")
	cmd := exec.Command("go", "build", "-o", p, "github.com/cordon-dev/cordon/test/cmd/cordon-probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build cordon-probe: %v\n%s", err, out)
	}
	// The job may run as another uid: let it in.
	os.Chmod(filepath.Dir(p), 0o755)
	return p
}

type probeResult struct {
	Probe, Target, Error string
	OK                   bool
	Status               int
}

// TestRunConfinesJobWithEBPF: on a host that can load the programs, the
// job runs in its own cgroup with the hooks attached: its request through
// the proxy works, while a direct TCP connect to anything else (IPv4,
// IPv6, v4-mapped) fails with EPERM before a packet leaves; it has
// no_new_privs and no CAP_NET_RAW; the usage line says cgroup-ebpf.
func TestRunConfinesJobWithEBPF(t *testing.T) {
	if err := bpf.Probe(); err != nil {
		t.Skipf("this host cannot load cgroup eBPF programs: %v", err)
	}
	dir := t.TempDir()
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := devWorkloadAPI(t, ca, "spiffe://cordon.test/org/acme/job/block_follower", dir)

	// The allowed destination, reached by name through the proxy.
	upLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	up.Listener.Close()
	up.Listener = upLn
	up.Start()
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
	proxyAddr := freeAddr(t)
	startAgent(t, endpoint, "--provider", "file", "--secrets-file", secretsFile(t, `{}`),
		"--shared-dir", filepath.Join(dir, "cordon"), "--allowlists", allow, "--dns", resolver,
		"--unsafe-allow-cidr", "127.0.0.0/8", "--proxy-addr", proxyAddr)

	// Listeners the job must not reach directly; nothing may arrive.
	var reached atomic.Int32
	listen := func(network, addr string) string {
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				reached.Add(1)
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	v4 := listen("tcp4", "127.0.0.1:0")
	_, v4port, _ := net.SplitHostPort(v4)
	v6 := ""
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l6.Close()
		v6 = listen("tcp6", "[::1]:0")
	}

	probe := buildProbe(t)
	args := []string{"run", "--secrets-file", secretsFile(t, `{}`), "--proxy", "http://" + proxyAddr, "--", probe, "--timeout", "3s",
		"http=http://allowed.test:" + strconv.Itoa(upPort) + "/",
		"direct=http://" + upLn.Addr().String() + "/",
		"tcp=" + v4,
		"tcp=[::ffff:127.0.0.1]:" + v4port,
	}
	if v6 != "" {
		args = append(args, "tcp="+v6)
	}
	res := run(t, nil, args...)
	if res.code != 0 {
		t.Fatalf("run: exit %d\nstdout %s\nstderr %s", res.code, res.stdout, res.stderr)
	}
	var got []probeResult
	sc := bufio.NewScanner(strings.NewReader(res.stdout))
	for sc.Scan() {
		var r probeResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("probe line %q: %v", sc.Text(), err)
		}
		got = append(got, r)
	}
	if len(got) != len(args)-9 {
		t.Fatalf("got %d probe results, want %d:\n%s", len(got), len(args)-9, res.stdout)
	}
	for _, r := range got {
		wantOK := r.Probe == "http"
		if r.OK != wantOK {
			t.Errorf("%s %s: got ok=%v (%d %s), want ok=%v", r.Probe, r.Target, r.OK, r.Status, r.Error, wantOK)
		}
		if !wantOK && !strings.Contains(r.Error, "operation not permitted") {
			t.Errorf("%s %s: got error %q, want EPERM (operation not permitted) from the connect hook", r.Probe, r.Target, r.Error)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("%d direct connections reached the listeners, want 0", n)
	}
	if res.usage["enforcement"] != bpf.LevelCgroupEBPF {
		t.Errorf("usage enforcement: got %v, want %s", res.usage["enforcement"], bpf.LevelCgroupEBPF)
	}
	if n, _ := res.usage["denied_connects"].(float64); n < 3 {
		t.Errorf("usage denied_connects: got %v, want >= 3", res.usage["denied_connects"])
	}
}

// TestRunJobHasNoRawSocketsNorPrivilegeGain: whatever the enforcement
// level, the job starts with no_new_privs and without CAP_NET_RAW in any
// capability set, even as root.
func TestRunJobHasNoRawSocketsNorPrivilegeGain(t *testing.T) {
	res := run(t, nil, "run", "--secrets-file", secretsFile(t, `{}`), "--", "/bin/sh", "-c",
		`grep -E '^(NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status`)
	if res.code != 0 {
		t.Fatalf("run: exit %d, stderr %s", res.code, res.stderr)
	}
	const netRaw = 13
	for _, line := range strings.Split(strings.TrimSpace(res.stdout), "\n") {
		name, val, _ := strings.Cut(line, ":")
		val = strings.TrimSpace(val)
		if name == "NoNewPrivs" {
			if val != "1" {
				t.Errorf("NoNewPrivs: got %s, want 1", val)
			}
			continue
		}
		caps, err := strconv.ParseUint(val, 16, 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if caps&(1<<netRaw) != 0 {
			t.Errorf("%s: got %s with CAP_NET_RAW, want it dropped", name, val)
		}
	}
	if !strings.Contains(res.stdout, "NoNewPrivs") || !strings.Contains(res.stdout, "CapBnd") {
		t.Fatalf("job output %q lacks the status lines", res.stdout)
	}
}
