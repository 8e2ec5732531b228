// Package addrclass classifies IP addresses against the IANA IPv4 and IPv6
// special-purpose address registries, the private and shared (CGNAT)
// ranges, and the well-known cloud metadata endpoints, so the egress proxy
// can refuse to dial anything that is not plainly on the public internet.
//
// It sees through IPv4-embedded IPv6 (IPv4-mapped, IPv4-compatible, NAT64
// 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32): the
// embedding itself is never public, and a metadata address hidden inside one
// is still reported as Metadata.
//
// It does not decide policy (a job's cidr rules may allow a private class;
// that is egress-proxy/policy) and it does not parse address spellings (that
// is egress-proxy/authority).
package addrclass

import "net/netip"

// Class is the kind of address. Only Public may be dialled without an
// explicit cidr rule; Metadata may never be dialled.
type Class uint8

const (
	// Invalid is the zero netip.Addr.
	Invalid Class = iota
	// Public is globally reachable unicast.
	Public
	// Unspecified is 0.0.0.0/8 ("this network") and ::.
	Unspecified
	// Loopback is 127.0.0.0/8 and ::1.
	Loopback
	// Private is RFC 1918 and IPv6 unique-local fc00::/7.
	Private
	// SharedCGNAT is 100.64.0.0/10 (RFC 6598).
	SharedCGNAT
	// LinkLocal is 169.254.0.0/16 and fe80::/10.
	LinkLocal
	// Multicast is 224.0.0.0/4 and ff00::/8.
	Multicast
	// Broadcast is 255.255.255.255.
	Broadcast
	// Documentation is TEST-NET-1/2/3, 2001:db8::/32 and 3fff::/20.
	Documentation
	// Benchmarking is 198.18.0.0/15 and 2001:2::/48.
	Benchmarking
	// Reserved is the rest of the special-purpose registries: protocol
	// assignments, 240.0.0.0/4, discard-only, site-local, SRv6 SIDs, AS112
	// relays, and IPv6 space outside 2000::/3.
	Reserved
	// IPv4Mapped is ::ffff:0:0/96.
	IPv4Mapped
	// IPv4Compatible is the deprecated ::/96 embedding.
	IPv4Compatible
	// NAT64 is 64:ff9b::/96 and the local-use 64:ff9b:1::/48.
	NAT64
	// SixToFour is 2002::/16.
	SixToFour
	// Teredo is 2001::/32.
	Teredo
	// Metadata is a cloud instance metadata or credentials endpoint. It is
	// never allowed, not even by a cidr rule.
	Metadata
)

var classNames = [...]string{
	Invalid:        "invalid",
	Public:         "public",
	Unspecified:    "unspecified",
	Loopback:       "loopback",
	Private:        "private",
	SharedCGNAT:    "shared_cgnat",
	LinkLocal:      "link_local",
	Multicast:      "multicast",
	Broadcast:      "broadcast",
	Documentation:  "documentation",
	Benchmarking:   "benchmarking",
	Reserved:       "reserved",
	IPv4Mapped:     "ipv4_mapped",
	IPv4Compatible: "ipv4_compatible",
	NAT64:          "nat64",
	SixToFour:      "6to4",
	Teredo:         "teredo",
	Metadata:       "metadata",
}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "unknown"
}

// metadata lists cloud metadata and credential endpoints: AWS IMDS (IPv4 and
// the Nitro IPv6 address), the ECS task credentials endpoint, the EKS Pod
// Identity agent, GCP and Azure (which share 169.254.169.254), Alibaba Cloud
// and Oracle Cloud.
var metadata = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("169.254.170.23"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("fd00:ec2::23"),
	netip.MustParseAddr("100.100.100.200"),
	netip.MustParseAddr("192.0.0.192"),
}

// MetadataAddrs returns the cloud metadata addresses (a fresh slice).
func MetadataAddrs() []netip.Addr { return append([]netip.Addr(nil), metadata...) }

type entry struct {
	prefix netip.Prefix
	class  Class
}

// v4 is the IPv4 table. Order matters only where prefixes nest: the more
// specific entry comes first.
var v4 = []entry{
	{pfx("0.0.0.0/8"), Unspecified},
	{pfx("10.0.0.0/8"), Private},
	{pfx("100.64.0.0/10"), SharedCGNAT},
	{pfx("127.0.0.0/8"), Loopback},
	{pfx("169.254.0.0/16"), LinkLocal},
	{pfx("172.16.0.0/12"), Private},
	{pfx("192.0.0.0/24"), Reserved},      // IETF protocol assignments
	{pfx("192.0.2.0/24"), Documentation}, // TEST-NET-1
	{pfx("192.31.196.0/24"), Reserved},   // AS112-v4
	{pfx("192.52.193.0/24"), Reserved},   // AMT
	{pfx("192.88.99.0/24"), Reserved},    // deprecated 6to4 relay anycast
	{pfx("192.168.0.0/16"), Private},
	{pfx("192.175.48.0/24"), Reserved}, // direct delegation AS112
	{pfx("198.18.0.0/15"), Benchmarking},
	{pfx("198.51.100.0/24"), Documentation}, // TEST-NET-2
	{pfx("203.0.113.0/24"), Documentation},  // TEST-NET-3
	{pfx("224.0.0.0/4"), Multicast},
	{pfx("255.255.255.255/32"), Broadcast},
	{pfx("240.0.0.0/4"), Reserved},
}

// v6 is the IPv6 table, most specific first.
var v6 = []entry{
	{pfx("::/128"), Unspecified},
	{pfx("::1/128"), Loopback},
	{pfx("::ffff:0:0/96"), IPv4Mapped},
	{pfx("::/96"), IPv4Compatible},
	{pfx("64:ff9b::/96"), NAT64},
	{pfx("64:ff9b:1::/48"), NAT64},
	{pfx("100::/64"), Reserved},       // discard-only
	{pfx("100:0:0:1::/64"), Reserved}, // dummy prefix
	{pfx("2001::/32"), Teredo},
	{pfx("2001:2::/48"), Benchmarking},
	{pfx("2001:db8::/32"), Documentation},
	{pfx("2001::/23"), Reserved}, // IETF protocol assignments (ORCHID, AMT, ...)
	{pfx("2002::/16"), SixToFour},
	{pfx("2620:4f:8000::/48"), Reserved}, // AS112-v6
	{pfx("3fff::/20"), Documentation},
	{pfx("5f00::/16"), Reserved}, // SRv6 SIDs
	{pfx("fc00::/7"), Private},
	{pfx("fe80::/10"), LinkLocal},
	{pfx("fec0::/10"), Reserved}, // deprecated site-local
	{pfx("ff00::/8"), Multicast},
}

var (
	globalUnicast = pfx("2000::/3")
	mapped        = pfx("::ffff:0:0/96")
	compatible    = pfx("::/96")
	nat64         = pfx("64:ff9b::/96")
	nat64Local    = pfx("64:ff9b:1::/48")
	sixToFour     = pfx("2002::/16")
	teredo        = pfx("2001::/32")
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Classify returns the class of a. An IPv4-embedding IPv6 address gets the
// embedding's class, except that an embedded metadata address makes the
// whole address Metadata.
func Classify(a netip.Addr) Class {
	if !a.IsValid() {
		return Invalid
	}
	if a.Zone() != "" {
		a = a.WithZone("")
	}
	if IsMetadata(a) {
		return Metadata
	}
	if a.Is4() {
		return classify4(a)
	}
	for _, e := range v6 {
		if e.prefix.Contains(a) {
			return e.class
		}
	}
	if !globalUnicast.Contains(a) {
		return Reserved
	}
	return Public
}

func classify4(a netip.Addr) Class {
	for _, e := range v4 {
		if e.prefix.Contains(a) {
			return e.class
		}
	}
	return Public
}

// IsMetadata reports whether a is a cloud metadata endpoint, directly or
// embedded in an IPv6 address.
func IsMetadata(a netip.Addr) bool {
	a = a.WithZone("")
	for _, m := range metadata {
		if a == m {
			return true
		}
	}
	for _, e := range Embedded(a) {
		for _, m := range metadata {
			if e == m {
				return true
			}
		}
	}
	return false
}

// Embedded returns the IPv4 addresses an IPv6 address carries, by the
// embedding its prefix says it uses: the low 32 bits for mapped,
// compatible and NAT64 /96; bits 40..71 around the u octet for the
// 64:ff9b:1::/48 local-use prefix (RFC 6052 /48 layout); bits 16..47 for
// 6to4; the server (bits 32..63) and de-obfuscated client (low 32 bits,
// inverted) for Teredo. It returns nil for anything else.
func Embedded(a netip.Addr) []netip.Addr {
	if !a.Is6() {
		return nil
	}
	b := a.As16()
	low := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case mapped.Contains(a), nat64.Contains(a):
		return []netip.Addr{low}
	case compatible.Contains(a):
		if a == netip.IPv6Unspecified() || a == netip.IPv6Loopback() {
			return nil
		}
		return []netip.Addr{low}
	case nat64Local.Contains(a):
		// RFC 6052 /48: v4 in bits 48..63 and, after the reserved u
		// octet (bits 64..71), bits 72..87. Also check the /96 layout,
		// since the local-use prefix may be used at any length.
		return []netip.Addr{netip.AddrFrom4([4]byte{b[6], b[7], b[9], b[10]}), low}
	case sixToFour.Contains(a):
		return []netip.Addr{netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})}
	case teredo.Contains(a):
		return []netip.Addr{
			netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}),
			netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}),
		}
	}
	return nil
}
