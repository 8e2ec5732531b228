package allowlist

import (
	"fmt"
	"net/netip"
	"strings"
)

// metadataRange is a range a cidr entry may never cover, with why.
type metadataRange struct {
	prefix netip.Prefix
	why    string
}

// metadataRanges are the cloud metadata endpoints and every IPv6 form that
// embeds them. A job that reaches one reads the task role's credentials
// (seeds/000: "Tokens do not grant ... IAM role assumption"), so no allowlist
// may open them, however wide or however spelled. The IPv4-embedding forms
// matter because a NAT64, 6to4 or Teredo path would carry the connection to
// the IPv4 address.
var metadataRanges = []metadataRange{
	{netip.MustParsePrefix("169.254.169.254/32"), "the cloud metadata address 169.254.169.254"},
	{netip.MustParsePrefix("169.254.170.2/32"), "the ECS task metadata address 169.254.170.2"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "the IPv6 cloud metadata address fd00:ec2::254"},
	{netip.MustParsePrefix("::ffff:169.254.169.254/128"), "::ffff:169.254.169.254, the IPv4-mapped metadata address"},
	{netip.MustParsePrefix("::ffff:169.254.170.2/128"), "::ffff:169.254.170.2, the IPv4-mapped ECS metadata address"},
	{netip.MustParsePrefix("::169.254.169.254/128"), "::169.254.169.254, the IPv4-compatible metadata address"},
	{netip.MustParsePrefix("::169.254.170.2/128"), "::169.254.170.2, the IPv4-compatible ECS metadata address"},
	{netip.MustParsePrefix("64:ff9b::169.254.169.254/128"), "64:ff9b::a9fe:a9fe, the NAT64 form of the metadata address"},
	{netip.MustParsePrefix("64:ff9b::169.254.170.2/128"), "64:ff9b::a9fe:aa02, the NAT64 form of the ECS metadata address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "64:ff9b:1::/48, local-use NAT64, which can embed the metadata addresses"},
	{netip.MustParsePrefix("2002:a9fe:a9fe::/48"), "2002:a9fe:a9fe::/48, the 6to4 form of the metadata address"},
	{netip.MustParsePrefix("2002:a9fe:aa02::/48"), "2002:a9fe:aa02::/48, the 6to4 form of the ECS metadata address"},
	{netip.MustParsePrefix("2001::/32"), "2001::/32, Teredo, which embeds IPv4 addresses including metadata"},
}

// parseCIDR parses a cidr entry's value into its canonical prefix. It
// returns a message saying what to write instead when the value is refused.
func parseCIDR(s string) (netip.Prefix, string) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			return netip.Prefix{}, fmt.Sprintf("cidr %q has no prefix length: write %q for one address", s, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String())
		}
		reason := err.Error()
		if i := strings.LastIndex(reason, "): "); i >= 0 {
			reason = reason[i+3:]
		}
		return netip.Prefix{}, fmt.Sprintf("cidr %q is not an IP prefix (%s): write it as ADDRESS/BITS, like 10.20.0.0/16", s, reason)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Sprintf("cidr %q has host bits set: write %q", s, m.String())
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Sprintf("cidr %q mixes IPv4-mapped and IPv6 space: write IPv4 ranges in IPv4", s)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	for _, r := range metadataRanges {
		if p.Overlaps(r.prefix) {
			return netip.Prefix{}, fmt.Sprintf("cidr %s covers %s, which no job may reach: list narrower ranges that leave it out", p, r.why)
		}
	}
	return p, ""
}
