package confine

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/bpf"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
)

func TestProxyAddr(t *testing.T) {
	for _, tc := range []struct {
		name, url, want, err string
	}{
		{"ipv4", "http://127.0.0.1:3128", "127.0.0.1:3128", ""},
		{"ipv6", "http://[::1]:3128", "[::1]:3128", ""},
		{"v4-mapped is stored as v4", "http://[::ffff:127.0.0.1]:3128", "127.0.0.1:3128", ""},
		{"default port", "http://10.0.0.1", "10.0.0.1:80", ""},
		{"a name cannot be matched by the hooks", "http://localhost:3128", "", "not a name"},
		{"garbage", "::", "", "want http://IP:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proxyAddr(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != netip.MustParseAddrPort(tc.want) {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestResolver(t *testing.T) {
	for _, tc := range []struct {
		name, conf, want string
	}{
		{"first nameserver", "search x\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n", "10.0.0.2:53"},
		{"scoped v6 skipped", "nameserver fe80::1%eth0\nnameserver 127.0.0.11\n", "127.0.0.11:53"},
		{"none", "search x\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "resolv.conf")
			os.WriteFile(p, []byte(tc.conf), 0o644)
			got, err := resolver(p)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestModes(t *testing.T) {
	for _, m := range []string{"", ModeAuto, ModeRequire, ModeOff} {
		if _, err := New(Config{Mode: m}); err != nil {
			t.Errorf("mode %q: %v", m, err)
		}
	}
	if _, err := New(Config{Mode: "sometimes"}); err == nil {
		t.Error(`mode "sometimes": got nil, want an error`)
	}
}

func TestAllowLoopbackEndpoint(t *testing.T) {
	c, err := New(Config{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, addr, err string
	}{
		{"ipv4", "127.0.0.1:8090", ""},
		{"again: no second entry", "127.0.0.1:8090", ""},
		{"v4-mapped is its IPv4 form: no second entry", "[::ffff:127.0.0.1]:8090", ""},
		{"another port", "127.0.0.1:8091", ""},
		{"ipv6", "[::1]:8090", ""},
		{"not loopback", "10.0.0.1:8090", "not a loopback address"},
		{"ECS credentials endpoint", "169.254.170.2:80", "not a loopback address"},
		{"no port", "127.0.0.1:0", "has no port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.AllowLoopbackEndpoint(netip.MustParseAddrPort(tc.addr))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("got %v, want error %q", err, tc.err)
			}
		})
	}
	// Exact endpoints, not the hosts: the job must not reach the agent's
	// other loopback ports.
	p := c.policy(netip.MustParseAddrPort("127.0.0.1:3128"), netip.MustParseAddrPort("10.0.0.2:53"))
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:8090"),
		netip.MustParseAddrPort("127.0.0.1:8091"),
		netip.MustParseAddrPort("[::1]:8090"),
	}
	if !slices.Equal(p.AllowEndpoints, want) {
		t.Errorf("policy endpoints: got %v, want %v", p.AllowEndpoints, want)
	}
	if wantCIDRs := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}; !slices.Equal(p.AllowCIDRs, wantCIDRs) {
		t.Errorf("policy CIDRs: got %v, want only the configured %v", p.AllowCIDRs, wantCIDRs)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("policy: %v", err)
	}
}

// TestSetupAllowsOnlyTheEndpointPort confines a real job (root, a kernel
// that runs bpf/'s programs): it reaches the credentials endpoint, and no
// other port of the endpoint's address, like the agent's health endpoint.
func TestSetupAllowsOnlyTheEndpointPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a cgroup and attach eBPF programs; CI runs as root")
	}
	if err := bpf.Probe(); err != nil {
		t.Skipf("this kernel cannot run the cgroup programs: %v", err)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash for its /dev/tcp connects")
	}
	listen := func() (netip.AddrPort, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln.Addr().(*net.TCPAddr).AddrPort(), func() { ln.Close() }
	}
	proxy, closeProxy := listen()
	defer closeProxy()
	cred, closeCred := listen()
	defer closeCred()
	health, closeHealth := listen()
	defer closeHealth()

	c, err := New(Config{Mode: ModeRequire, DNS: netip.MustParseAddrPort("127.0.0.11:53")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AllowLoopbackEndpoint(cred); err != nil {
		t.Fatal(err)
	}
	if err := c.Setup("http://" + proxy.String()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	var res jobrun.Result
	defer c.Finish(&res)
	if c.Level() != bpf.LevelCgroupEBPF {
		t.Fatalf("level: got %q, want %q", c.Level(), bpf.LevelCgroupEBPF)
	}
	script := fmt.Sprintf(`for port in %d %d %d; do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && echo $port=ok || echo $port=refused; done`,
		proxy.Port(), cred.Port(), health.Port())
	cmd := exec.Command(bash, "-c", script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	// Only the cgroup half of Apply: its privilege restriction needs a
	// binary built without cgo, which test binaries are not by default,
	// and is not what this test is about.
	c.cg.Apply(cmd)
	if err := cmd.Run(); err != nil {
		t.Fatalf("job: %v\n%s", err, out.String())
	}
	want := fmt.Sprintf("%d=ok\n%d=ok\n%d=refused\n", proxy.Port(), cred.Port(), health.Port())
	if out.String() != want {
		t.Errorf("job output: got %q, want %q", out.String(), want)
	}
	c.Finish(&res)
	if res.DeniedConnects != 1 {
		t.Errorf("denied connects: got %d, want 1 (the health port)", res.DeniedConnects)
	}
}
