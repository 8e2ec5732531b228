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
	if len(got) != len(want) {
		t.Errorf("got %d entries, want %d: %v", len(got), len(want), got)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("entry %d/%v/%v: got %+v (present %v), want %+v", k.Family, k.Addr, k.Prefixlen, g, ok, w)
		}
	}
	// Families never share keys: ::/0 covers no IPv4 address.
	if k4, k6 := key("0.0.0.0/0"), key("::/0"); k4 == k6 {
		t.Errorf("IPv4 and IPv6 default routes share key %+v", k4)
	}
}
