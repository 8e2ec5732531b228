package bpf

import (
	"encoding/binary"
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
	// AllowEndpoints are services the job may reach directly over TCP on
	// exactly this address and port, and on no other port of that address:
	// the agent's credentials endpoint on loopback (sidecar/credserver),
	// which the AWS SDKs call without the proxy. The rules are the
	// proxy's: an IPv4-mapped address is stored as its IPv4 form; port 0,
	// zones, unspecified, multicast and metadata addresses are errors, and
	// so is an endpoint listed twice. No UDP: UDP goes to DNS only. At most
	// MaxEndpoints. If nil, none.
	AllowEndpoints []netip.AddrPort
}

// MaxCIDRs is the most AllowCIDRs entries a Policy may hold, and
// MaxEndpoints the most AllowEndpoints entries: the trie holds these, the
// proxy, the resolver and the metadata entries.
const (
	MaxCIDRs     = 1000
	MaxEndpoints = 64
)

// policyTrieSize is MAX_POLICY_ENTRIES in cgroup_enforce.c.
const policyTrieSize = 1088

// The largest valid policy fits the trie (a compile error otherwise): one
// entry per CIDR and per endpoint, the proxy, the resolver and the
// metadata addresses.
const _ = uint(policyTrieSize - (MaxCIDRs + MaxEndpoints + 2 + len(metadataAddrs)))

// Flags of lpm_val, as in cgroup_enforce.c.
const (
	allowProxy    = 1
	allowDNS      = 2
	allowCIDR     = 4
	allowEndpoint = 8
)

// keyPrefixLen is KEY_PREFIXLEN in cgroup_enforce.c: family, address and
// port bits, the length of every lookup key and of every endpoint entry.
const keyPrefixLen = 32 + 128 + 16

// Address family tags of lpm_key, as in cgroup_enforce.c.
const (
	familyV4 = 4
	familyV6 = 6
)

// metadataAddrs are never reachable, whatever the CIDRs say (DESIGN.md:
// cloud metadata is denied, "metadata never"). Each is a host entry with no
// allow flags, which wins over any shorter allowed prefix in the trie. An
// array, so that its length is a constant.
var metadataAddrs = [...]netip.Addr{
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
	if len(p.AllowEndpoints) > MaxEndpoints {
		return fmt.Errorf("bpf policy: %d allowed endpoints, at most %d fit the kernel map; reach the rest through the proxy, or allow their network as a CIDR", len(p.AllowEndpoints), MaxEndpoints)
	}
	seen := make(map[netip.AddrPort]int, len(p.AllowEndpoints))
	for i, ep := range p.AllowEndpoints {
		if err := checkEndpoint(fmt.Sprintf("allowed endpoint #%d", i), ep); err != nil {
			return err
		}
		u := netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		if j, dup := seen[u]; dup {
			return fmt.Errorf("bpf policy: allowed endpoints #%d (%s) and #%d (%s) are the same endpoint; remove one", j, p.AllowEndpoints[j], i, ep)
		}
		seen[u] = i
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
		return fmt.Errorf("bpf policy: %s %s has an IPv6 zone; zones cannot be matched in the kernel, remove it", what, ap)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("bpf policy: %s %s is not a unicast address", what, ap)
	case slices.Contains(metadataAddrs[:], a):
		return fmt.Errorf("bpf policy: %s %s is a cloud metadata address, which a job may never reach", what, ap)
	}
	return nil
}

// errTooManyEntries is returned by entries when the policy does not fit.
var errTooManyEntries = errors.New("too many entries")

// entries turns a validated policy into the trie's contents. Keys that
// appear twice are merged. A trie lookup returns only the longest matching
// prefix, so a longer entry carries what the shorter ones covering it
// allow: a host entry (proxy, resolver) inside an allowed CIDR carries
// allowCIDR, and an endpoint entry carries its host's entry besides
// allowEndpoint (an endpoint that is also the resolver still takes UDP).
// An endpoint entry only ever matches its own port: the address's other
// ports, the proxy's among them, fall through to the host entry.
func (p Policy) entries() (map[enforceLpmKey]enforceLpmVal, error) {
	out := make(map[enforceLpmKey]enforceLpmVal, len(p.AllowCIDRs)+len(p.AllowEndpoints)+2+len(metadataAddrs))
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
	for _, ep := range p.AllowEndpoints {
		a := ep.Addr().Unmap()
		if slices.Contains(metadataAddrs[:], a) {
			// Validate refuses these; an endpoint entry would be longer
			// than the metadata host entry and win over it, so never make
			// one whatever the caller did.
			continue
		}
		// What the address allows on this port besides the endpoint:
		// its host entry (proxy, resolver) and any covering CIDR.
		_, v := host(a)
		v.Flags |= allowEndpoint
		out[endpointKey(netip.AddrPortFrom(a, ep.Port()))] = v
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

// endpointKey encodes an address and port as an endpoint entry: every bit
// of the key counts, so it matches that one port (see lpm_key in
// cgroup_enforce.c).
func endpointKey(ep netip.AddrPort) enforceLpmKey {
	k := lpmKey(netip.PrefixFrom(ep.Addr(), ep.Addr().BitLen()))
	k.Prefixlen = keyPrefixLen
	binary.BigEndian.PutUint16(k.Port[:], ep.Port())
	return k
}

// lpmKey encodes a prefix the way cgroup_enforce.c looks it up: 32 bits of
// family tag, then the address bits; the port bits are beyond its length.
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
