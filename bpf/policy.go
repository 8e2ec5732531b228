package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Policy is what a job's cgroup may reach. Every decision is by address
// and port; see the package documentation for the rules.
type Policy struct {
	// Proxy is the egress proxy the job's HTTP_PROXY points at: TCP to this
	// exact address and port is allowed. Required. An IPv4-mapped address is
	// stored as its IPv4 form.
	Proxy netip.AddrPort
	// DNS is the resolver the job may query: UDP and TCP to this exact
	// address and port. Production uses port 53; any port is accepted so
	// that tests can run a resolver on a free port. If zero (invalid), the
	// job may send no UDP at all.
	DNS netip.AddrPort
	// AllowCIDRs are networks the job may reach directly over TCP on any
	// port (the allowlist's cidr entries). Each prefix must be in canonical
	// form (no host bits set) and IPv4 prefixes must be written as IPv4, not
	// as ::ffff:0:0/96 sub-prefixes. If nil, none.
	AllowCIDRs []netip.Prefix
}

// MaxCIDRs is the most AllowCIDRs entries a Policy may hold: the trie holds
// MaxCIDRs plus the proxy, the resolver and the metadata entries.
const MaxCIDRs = 1000

// policyTrieSize is MAX_POLICY_ENTRIES in cgroup_enforce.c.
const policyTrieSize = 1024

// Flags of lpm_val, as in cgroup_enforce.c.
const (
	allowProxy = 1
	allowDNS   = 2
	allowCIDR  = 4
)

// Address family tags of lpm_key, as in cgroup_enforce.c.
const (
	familyV4 = 4
	familyV6 = 6
)

// metadataAddrs are never reachable, whatever the CIDRs say (DESIGN.md:
// cloud metadata is denied, "metadata never"). Each is a host entry with no
// allow flags, which wins over any shorter allowed prefix in the trie.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"), // EC2 instance metadata (IMDS)
	netip.MustParseAddr("169.254.170.2"),   // ECS task metadata and credentials
	netip.MustParseAddr("fd00:ec2::254"),   // IMDS over IPv6
}

// Validate reports the first thing wrong with p.
func (p Policy) Validate() error {
	if err := checkEndpoint("proxy", p.Proxy); err != nil {
		return err
	}
	if p.DNS.IsValid() || p.DNS.Port() != 0 {
		if err := checkEndpoint("dns", p.DNS); err != nil {
			return err
		}
	}
	if len(p.AllowCIDRs) > MaxCIDRs {
		return fmt.Errorf("bpf policy: %d allowed CIDRs, at most %d fit the kernel map; merge adjacent prefixes", len(p.AllowCIDRs), MaxCIDRs)
	}
	for i, c := range p.AllowCIDRs {
		switch {
		case !c.IsValid():
			return fmt.Errorf("bpf policy: allowed CIDR #%d is invalid (zero prefix or bad length)", i)
		case c.Addr().Zone() != "":
			return fmt.Errorf("bpf policy: allowed CIDR %s has an IPv6 zone; zones cannot be matched in the kernel, remove it", c)
		case c.Addr().Is4In6():
			return fmt.Errorf("bpf policy: allowed CIDR %s is IPv4-mapped IPv6; write the IPv4 prefix instead (mapped destinations are checked as IPv4)", c)
		case c.Masked() != c:
			return fmt.Errorf("bpf policy: allowed CIDR %s has host bits set; did you mean %s", c, c.Masked())
		}
	}
	return nil
}

func checkEndpoint(what string, ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	switch {
	case !ap.IsValid():
		return fmt.Errorf("bpf policy: %s address is missing or invalid; set it to the address:port the job must use", what)
	case ap.Port() == 0:
		return fmt.Errorf("bpf policy: %s %s has port 0; set the port the job connects to", what, ap)
	case a.Zone() != "":
		return fmt.Errorf("bpf policy: %s %s has an IPv6 zone; zones cannot be matched in the kernel", what, ap)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("bpf policy: %s %s is not a unicast address", what, ap)
	case slices.Contains(metadataAddrs, a):
		return fmt.Errorf("bpf policy: %s %s is a cloud metadata address, which a job may never reach", what, ap)
	}
	return nil
}

// errTooManyEntries is returned by entries when the policy does not fit.
var errTooManyEntries = errors.New("too many entries")

// entries turns a validated policy into the trie's contents. Keys that
// appear twice are merged; a host entry (proxy, resolver, metadata) inside
// an allowed CIDR carries allowCIDR itself, because a trie lookup returns only
// the longest matching prefix.
func (p Policy) entries() (map[enforceLpmKey]enforceLpmVal, error) {
	out := make(map[enforceLpmKey]enforceLpmVal, len(p.AllowCIDRs)+2+len(metadataAddrs))
	for _, c := range p.AllowCIDRs {
		k := lpmKey(c)
		v := out[k]
		v.Flags |= allowCIDR
		out[k] = v
	}
	inCIDR := func(a netip.Addr) bool {
		return slices.ContainsFunc(p.AllowCIDRs, func(c netip.Prefix) bool { return c.Contains(a) })
	}
	host := func(a netip.Addr) (enforceLpmKey, enforceLpmVal) {
		k := lpmKey(netip.PrefixFrom(a, a.BitLen()))
		v := out[k]
		if inCIDR(a) {
			v.Flags |= allowCIDR
		}
		return k, v
	}
	proxy := p.Proxy.Addr().Unmap()
	k, v := host(proxy)
	v.Flags |= allowProxy
	v.ProxyPort = p.Proxy.Port()
	out[k] = v
	if p.DNS.IsValid() {
		k, v := host(p.DNS.Addr().Unmap())
		v.Flags |= allowDNS
		v.DnsPort = p.DNS.Port()
		out[k] = v
	}
	for _, a := range metadataAddrs {
		// Overrides any allow flags: metadata is never reachable.
		out[lpmKey(netip.PrefixFrom(a, a.BitLen()))] = enforceLpmVal{}
	}
	if len(out) > policyTrieSize {
		return nil, errTooManyEntries
	}
	return out, nil
}

// lpmKey encodes a prefix the way cgroup_enforce.c looks it up: 32 bits of
// family tag, then the address bits.
func lpmKey(c netip.Prefix) enforceLpmKey {
	a := c.Addr()
	k := enforceLpmKey{Prefixlen: uint32(32 + c.Bits())}
	if a.Is4() {
		k.Family = familyV4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = familyV6
		k.Addr = a.As16()
	}
	return k
}
