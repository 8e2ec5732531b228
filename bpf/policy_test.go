package bpf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPolicyValidate(t *testing.T) {
	proxy := netip.MustParseAddrPort("127.0.0.1:3128")
	dns := netip.MustParseAddrPort("10.0.0.2:53")
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	many := make([]netip.Prefix, MaxCIDRs+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	eps := func(s ...string) []netip.AddrPort {
		var out []netip.AddrPort
		for _, e := range s {
			out = append(out, netip.MustParseAddrPort(e))
		}
		return out
	}
	manyEndpoints := func(n int) []netip.AddrPort {
		out := make([]netip.AddrPort, n)
		for i := range out {
			out[i] = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(8000+i))
		}
		return out
	}
	for _, c := range []struct {
		name    string
		p       Policy
		wantErr string // substring; "" means valid
	}{
		{"minimal", Policy{Proxy: proxy}, ""},
		{"full", Policy{Proxy: proxy, DNS: dns, AllowCIDRs: pfx("10.20.0.0/16", "2001:db8::/32")}, ""},
		{"v4-mapped proxy is its IPv4 form", Policy{Proxy: netip.MustParseAddrPort("[::ffff:127.0.0.1]:3128")}, ""},
		{"no proxy", Policy{DNS: dns}, "proxy address is missing"},
		{"proxy port 0", Policy{Proxy: netip.MustParseAddrPort("127.0.0.1:0")}, "port 0"},
		{"proxy unspecified", Policy{Proxy: netip.MustParseAddrPort("0.0.0.0:3128")}, "not a unicast"},
		{"proxy v6 unspecified", Policy{Proxy: netip.MustParseAddrPort("[::]:3128")}, "not a unicast"},
		{"proxy mapped unspecified", Policy{Proxy: netip.MustParseAddrPort("[::ffff:0.0.0.0]:3128")}, "not a unicast"},
		{"proxy multicast", Policy{Proxy: netip.MustParseAddrPort("224.0.0.1:3128")}, "not a unicast"},
		{"proxy with zone", Policy{Proxy: netip.MustParseAddrPort("[fe80::1%eth0]:3128")}, "zone"},
		{"proxy is metadata", Policy{Proxy: netip.MustParseAddrPort("169.254.169.254:80")}, "metadata"},
		{"dns is metadata", Policy{Proxy: proxy, DNS: netip.MustParseAddrPort("169.254.170.2:53")}, "metadata"},
		{"dns port 0", Policy{Proxy: proxy, DNS: netip.MustParseAddrPort("10.0.0.2:0")}, "port 0"},
		{"dns port without address", Policy{Proxy: proxy, DNS: netip.AddrPortFrom(netip.Addr{}, 53)}, "dns address is missing"},
		{"cidr host bits", Policy{Proxy: proxy, AllowCIDRs: pfx("10.1.2.3/8")}, "did you mean 10.0.0.0/8"},
		{"cidr v4-mapped", Policy{Proxy: proxy, AllowCIDRs: pfx("::ffff:10.0.0.0/104")}, "IPv4-mapped"},
		{"cidr zero value", Policy{Proxy: proxy, AllowCIDRs: []netip.Prefix{{}}}, "invalid"},
		{"too many cidrs", Policy{Proxy: proxy, AllowCIDRs: many}, "at most 1000"},
		{"endpoints", Policy{Proxy: proxy, AllowEndpoints: eps("127.0.0.1:8080", "[::1]:8080", "10.0.0.9:443")}, ""},
		{"endpoint on the proxy's address and port", Policy{Proxy: proxy, AllowEndpoints: eps(proxy.String())}, ""},
		{"endpoint v4-mapped is its IPv4 form", Policy{Proxy: proxy, AllowEndpoints: eps("[::ffff:127.0.0.1]:8080")}, ""},
		{"endpoints, as many as fit", Policy{Proxy: proxy, AllowCIDRs: many[:MaxCIDRs], AllowEndpoints: manyEndpoints(MaxEndpoints)}, ""},
		{"endpoint port 0", Policy{Proxy: proxy, AllowEndpoints: eps("127.0.0.1:0")}, "allowed endpoint #0 127.0.0.1:0 has port 0"},
		{"endpoint zero value", Policy{Proxy: proxy, AllowEndpoints: []netip.AddrPort{{}}}, "allowed endpoint #0 address is missing"},
		{"endpoint with zone", Policy{Proxy: proxy, AllowEndpoints: eps("[fe80::1%eth0]:8080")}, "zone"},
		{"endpoint unspecified", Policy{Proxy: proxy, AllowEndpoints: eps("0.0.0.0:8080")}, "not a unicast"},
		{"endpoint mapped unspecified", Policy{Proxy: proxy, AllowEndpoints: eps("[::ffff:0.0.0.0]:8080")}, "not a unicast"},
		{"endpoint multicast", Policy{Proxy: proxy, AllowEndpoints: eps("[ff02::1]:8080")}, "not a unicast"},
		{"endpoint is ECS credentials", Policy{Proxy: proxy, AllowEndpoints: eps("169.254.170.2:80")}, "metadata"},
		{"endpoint is IMDS, v4-mapped", Policy{Proxy: proxy, AllowEndpoints: eps("[::ffff:169.254.169.254]:80")}, "metadata"},
		{"endpoint is IMDS over IPv6", Policy{Proxy: proxy, AllowEndpoints: eps("[fd00:ec2::254]:80")}, "metadata"},
		{"endpoint listed twice", Policy{Proxy: proxy, AllowEndpoints: eps("127.0.0.1:8080", "[::1]:8080", "127.0.0.1:8080")}, "#0 (127.0.0.1:8080) and #2 (127.0.0.1:8080) are the same endpoint; remove one"},
		{"endpoint listed twice, once v4-mapped", Policy{Proxy: proxy, AllowEndpoints: eps("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080")}, "are the same endpoint"},
		{"same address, other ports", Policy{Proxy: proxy, AllowEndpoints: eps("127.0.0.1:8080", "127.0.0.1:8081")}, ""},
		{"too many endpoints", Policy{Proxy: proxy, AllowEndpoints: manyEndpoints(MaxEndpoints + 1)}, "65 allowed endpoints, at most 64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.p.Validate()
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("got %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}

func TestPolicyEntries(t *testing.T) {
	key := func(s string) enforceLpmKey { return lpmKey(netip.MustParsePrefix(s)) }
	p := Policy{
		Proxy: netip.MustParseAddrPort("[::ffff:10.0.0.5]:3128"),
		DNS:   netip.MustParseAddrPort("10.0.0.5:53"),
		AllowCIDRs: []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("10.0.0.0/8"), // duplicate merges
			netip.MustParsePrefix("169.254.0.0/16"),
			netip.MustParsePrefix("::/0"),
		},
	}
	got, err := p.entries()
	if err != nil {
		t.Fatal(err)
	}
	want := map[enforceLpmKey]enforceLpmVal{
		key("10.0.0.0/8"):     {Flags: allowCIDR},
		key("169.254.0.0/16"): {Flags: allowCIDR},
		key("::/0"):           {Flags: allowCIDR},
		// Proxy and resolver share an address inside an allowed CIDR.
		key("10.0.0.5/32"):        {Flags: allowProxy | allowDNS | allowCIDR, ProxyPort: 3128, DnsPort: 53},
		key("169.254.169.254/32"): {},
		key("169.254.170.2/32"):   {},
		key("fd00:ec2::254/128"):  {},
	}
	checkEntries(t, got, want)
	// Families never share keys: ::/0 covers no IPv4 address.
	if k4, k6 := key("0.0.0.0/0"), key("::/0"); k4 == k6 {
		t.Errorf("IPv4 and IPv6 default routes share key %+v", k4)
	}
}

func TestPolicyEntriesEndpoints(t *testing.T) {
	host := func(s string) enforceLpmKey { return lpmKey(netip.MustParsePrefix(s)) }
	ep := func(s string) enforceLpmKey { return endpointKey(netip.MustParseAddrPort(s)) }
	p := Policy{
		Proxy:      netip.MustParseAddrPort("127.0.0.1:3128"),
		DNS:        netip.MustParseAddrPort("10.0.0.2:53"),
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		AllowEndpoints: []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:8080"),
			netip.MustParseAddrPort("[::ffff:127.0.0.1]:9090"),
			netip.MustParseAddrPort("10.0.0.2:443"),
			netip.MustParseAddrPort("[::1]:8080"),
			// Validate refuses this; entries must not open it either.
			netip.MustParseAddrPort("169.254.170.2:80"),
		},
	}
	got, err := p.entries()
	if err != nil {
		t.Fatal(err)
	}
	want := map[enforceLpmKey]enforceLpmVal{
		host("10.0.0.0/8"):   {Flags: allowCIDR},
		host("127.0.0.1/32"): {Flags: allowProxy, ProxyPort: 3128},
		host("10.0.0.2/32"):  {Flags: allowDNS | allowCIDR, DnsPort: 53},
		// Endpoints carry what their host's entry allows, for the one
		// port they match (see entries).
		ep("127.0.0.1:8080"): {Flags: allowEndpoint | allowProxy, ProxyPort: 3128},
		ep("127.0.0.1:9090"): {Flags: allowEndpoint | allowProxy, ProxyPort: 3128},
		ep("10.0.0.2:443"):   {Flags: allowEndpoint | allowDNS | allowCIDR, DnsPort: 53},
		ep("[::1]:8080"):     {Flags: allowEndpoint},
		// Metadata: host entries that allow nothing, and no endpoint.
		host("169.254.169.254/32"): {},
		host("169.254.170.2/32"):   {},
		host("fd00:ec2::254/128"):  {},
	}
	checkEntries(t, got, want)

	// The key layout cgroup_enforce.c looks up: every bit counts, the port
	// big-endian after the 16 address bytes.
	k := ep("127.0.0.1:8080")
	if k.Prefixlen != 32+128+16 || k.Family != familyV4 || k.Addr != [16]byte{127, 0, 0, 1} || k.Port != [2]byte{0x1f, 0x90} || k.Pad != [2]byte{} {
		t.Errorf("endpoint key of 127.0.0.1:8080: got %+v", k)
	}
}

// checkEntries compares a trie's contents, as entries built them, to want.
func checkEntries(t *testing.T, got, want map[enforceLpmKey]enforceLpmVal) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d entries, want %d: %v", len(got), len(want), got)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("entry %d/%v/%v/%v: got %+v (present %v), want %+v", k.Family, k.Addr, k.Port, k.Prefixlen, g, ok, w)
		}
	}
}

// TestPolicyTrieSize: policyTrieSize, which entries and the compile-time
// fit check use, is the trie's max_entries in the committed object
// (MAX_POLICY_ENTRIES in cgroup_enforce.c).
func TestPolicyTrieSize(t *testing.T) {
	spec, err := loadEnforce()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[enforceMapPolicy].InnerMap.MaxEntries; got != policyTrieSize {
		t.Errorf("policy trie max_entries: got %d, want policyTrieSize %d", got, policyTrieSize)
	}
}

// TestPolicyEntriesFit: the largest policy Validate accepts fits the trie.
func TestPolicyEntriesFit(t *testing.T) {
	p := Policy{
		Proxy: netip.MustParseAddrPort("127.0.0.1:3128"),
		DNS:   netip.MustParseAddrPort("127.0.0.11:53"),
	}
	for i := range MaxCIDRs {
		p.AllowCIDRs = append(p.AllowCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	for i := range MaxEndpoints {
		p.AllowEndpoints = append(p.AllowEndpoints, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 443))
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := p.entries()
	if err != nil {
		t.Fatalf("entries of the largest valid policy: %v", err)
	}
	if want := MaxCIDRs + MaxEndpoints + 2 + len(metadataAddrs); len(got) != want {
		t.Errorf("got %d entries, want %d", len(got), want)
	}
}
