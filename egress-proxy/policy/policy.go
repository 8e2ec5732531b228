// Package policy compiles a job's allowlist policy (allowlist.JobPolicy)
// into a matcher the egress proxy consults on every request, and holds every
// job's compiled policy in a Store that the control plane swaps atomically.
//
// A Compiled policy answers three questions, allocation-free:
//   - MatchName: may this canonical host name be reached on this port
//     (exact hosts, and "*." wildcards that match any depth of subdomain
//     but never the apex)?
//   - CheckAddr: may a name that matched be dialled at this resolved
//     address (public addresses yes; non-public only under a cidr rule of
//     the job or an operator's unsafe-allow prefix; metadata never)?
//   - CheckLiteral: may this IP literal be reached (only under a cidr rule;
//     metadata never)?
//
// It does not parse request targets (egress-proxy/authority), classify
// addresses (egress-proxy/addrclass), resolve names or speak HTTP
// (egress-proxy/proxy).
package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/egress-proxy/addrclass"
	"github.com/cordon-dev/cordon/egress-proxy/authority"
	"github.com/cordon-dev/cordon/internal/allowlist"
)

// port is one allowed port of a rule, with the rule's key precomputed so
// that matching does not allocate.
type port struct {
	port uint16
	key  string // "host:port" or "cidr:port", the rule's usage key
}

type ports []port

func (ps ports) find(p uint16) (string, bool) {
	for i := range ps {
		if ps[i].port == p {
			return ps[i].key, true
		}
	}
	return "", false
}

type cidrRule struct {
	prefix netip.Prefix
	ports  ports
}

// Compiled is one job's policy in matching form. It is immutable and safe
// for concurrent use.
type Compiled struct {
	org, job string
	mode     allowlist.Mode
	class    allowlist.Class
	// exact maps a host to its ports.
	exact map[string]ports
	// wildcard maps the suffix after "*." to its ports.
	wildcard map[string]ports
	cidrs    []cidrRule
}

// Compile checks p and builds its matcher. It refuses what the allowlist
// parser should already have refused (hosts not in canonical form, empty
// port lists, metadata CIDRs), so a bad policy from any source is an error
// rather than a hole.
func Compile(p *allowlist.JobPolicy) (*Compiled, error) {
	if p == nil {
		return nil, fmt.Errorf("compile policy: nil policy")
	}
	if p.Org == "" || p.Job == "" {
		return nil, fmt.Errorf("compile policy %q: org and job are required", p.ID())
	}
	c := &Compiled{
		org:      p.Org,
		job:      p.Job,
		mode:     p.Mode,
		class:    p.Class,
		exact:    make(map[string]ports),
		wildcard: make(map[string]ports),
	}
	switch p.Mode {
	case "":
		c.mode = allowlist.ModeEnforce
	case allowlist.ModeEnforce, allowlist.ModeReport:
	default:
		return nil, fmt.Errorf("compile policy %s: unknown mode %q (want enforce or report)", p.ID(), p.Mode)
	}
	for i, r := range p.Rules {
		if err := c.add(r); err != nil {
			return nil, fmt.Errorf("compile policy %s: rule %d (%s): %w", p.ID(), i, r.Source, err)
		}
	}
	return c, nil
}

func (c *Compiled) add(r allowlist.Rule) error {
	hasHost, hasCIDR := r.Host != "", r.CIDR.IsValid()
	if hasHost == hasCIDR {
		return fmt.Errorf("want exactly one of host and cidr")
	}
	if len(r.Ports) == 0 {
		return fmt.Errorf("no ports: a rule must list the ports it allows")
	}
	if hasCIDR {
		pfx := r.CIDR.Masked()
		if pfx != r.CIDR {
			return fmt.Errorf("cidr %s has host bits set", r.CIDR)
		}
		if coversMetadata(pfx) {
			return fmt.Errorf("cidr %s covers a cloud metadata address, which is never allowed", pfx)
		}
		ps, err := makePorts(pfx.String(), r.Ports)
		if err != nil {
			return err
		}
		c.cidrs = append(c.cidrs, cidrRule{prefix: pfx, ports: ps})
		return nil
	}
	host := r.Host
	wild := strings.HasPrefix(host, "*.")
	if wild {
		host = host[2:]
	}
	canon, err := canonicalRuleHost(host)
	if err != nil {
		return err
	}
	if canon != host {
		return fmt.Errorf("host %q is not canonical (want %q)", r.Host, canon)
	}
	ps, err := makePorts(r.Host, r.Ports)
	if err != nil {
		return err
	}
	m := c.exact
	if wild {
		m = c.wildcard
	}
	m[host] = append(m[host], ps...)
	return nil
}

func makePorts(host string, in []uint16) (ports, error) {
	out := make(ports, 0, len(in))
	for _, p := range in {
		if p == 0 {
			return nil, fmt.Errorf("port 0 is not a port")
		}
		out = append(out, port{port: p, key: host + ":" + strconv.Itoa(int(p))})
	}
	return out, nil
}

// Org is the policy's org slug.
func (c *Compiled) Org() string { return c.org }

// Job is the policy's job name.
func (c *Compiled) Job() string { return c.job }

// Report reports whether the policy is in report mode: denials the mode
// may override are allowed and recorded as would_deny.
func (c *Compiled) Report() bool { return c.mode == allowlist.ModeReport }

// MatchName reports whether the canonical name may be reached on port, and
// the matching rule's key ("host:port" as written in the allowlist). The
// name must come from authority.CanonicalName.
func (c *Compiled) MatchName(name string, p uint16) (rule string, ok bool) {
	if ps, found := c.exact[name]; found {
		if key, ok := ps.find(p); ok {
			return key, true
		}
	}
	// "*.example.com" matches every strict subdomain: try each suffix that
	// follows a dot, never the name itself (the apex).
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		if ps, found := c.wildcard[name[i+1:]]; found {
			if key, ok := ps.find(p); ok {
				return key, true
			}
		}
	}
	return "", false
}

// matchCIDR returns the key of the first cidr rule covering a on port.
func (c *Compiled) matchCIDR(a netip.Addr, p uint16) (string, bool) {
	for i := range c.cidrs {
		if c.cidrs[i].prefix.Contains(a) {
			if key, ok := c.cidrs[i].ports.find(p); ok {
				return key, true
			}
		}
	}
	return "", false
}

// CheckAddr decides whether a name that matched may be dialled at a, one of
// its resolved addresses. unsafeAllow are operator prefixes treated as
// public (--unsafe-allow-cidr, for tests). It returns the cidr rule's key
// when one allowed a non-public address, and ReasonNone when allowed.
func (c *Compiled) CheckAddr(a netip.Addr, p uint16, unsafeAllow []netip.Prefix) (rule string, reason Reason) {
	a = a.Unmap()
	class := addrclass.Classify(a)
	switch class {
	case addrclass.Metadata:
		return "", ReasonMetadata
	case addrclass.Invalid:
		return "", ReasonNonPublicAddress
	case addrclass.Public:
		return "", ReasonNone
	}
	if key, ok := c.matchCIDR(a, p); ok {
		return key, ReasonNone
	}
	for _, u := range unsafeAllow {
		if u.Contains(a) {
			return "", ReasonNone
		}
	}
	return "", ReasonNonPublicAddress
}

// CheckLiteral decides whether an IP literal destination may be reached:
// only a cidr rule of the job allows one (an operator's unsafe-allow
// prefixes do not), and a metadata address never.
func (c *Compiled) CheckLiteral(a netip.Addr, p uint16) (rule string, reason Reason) {
	a = a.Unmap()
	if addrclass.IsMetadata(a) {
		return "", ReasonMetadata
	}
	if key, ok := c.matchCIDR(a, p); ok {
		return key, ReasonNone
	}
	return "", ReasonIPLiteral
}

// coversMetadata reports whether any metadata address lies in pfx.
func coversMetadata(pfx netip.Prefix) bool {
	for _, m := range addrclass.MetadataAddrs() {
		if pfx.Contains(m) {
			return true
		}
	}
	return false
}

// canonicalRuleHost canonicalises the part of a rule host after any "*.".
func canonicalRuleHost(h string) (string, error) {
	host, err := authority.ParseHost(h)
	if err != nil {
		return "", err
	}
	if host.IsLiteral() {
		return "", fmt.Errorf("host %q is an IP address: use a cidr rule", h)
	}
	return host.Name, nil
}
