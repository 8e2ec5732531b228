package confine

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
