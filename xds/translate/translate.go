// Package translate turns a resolved allowlist policy (allowlist.JobPolicy)
// into the standard Envoy v3 RouteConfiguration the control plane serves, and
// turns such a RouteConfiguration back into a JobPolicy for the egress
// proxy's xDS client.
//
// The mapping (DESIGN.md, "xDS"): one RouteConfiguration per job, named
// "egress/<org>/<job>". Each distinct allowed host becomes a virtual host
// whose domains are its "host:port" strings, routed to the egress cluster, so
// a stock Envoy gateway enforces the host:port part of the policy with its
// own domain matching: "*.example.com:443" is an Envoy suffix wildcard, which
// matches any non-empty prefix (any depth of subdomain) and never the apex,
// exactly the allowlist's "*." semantics. A final catch-all "*" virtual host
// answers 403. What Envoy domains cannot express (org, job, class, mode, CIDR
// rules, each rule's ports and source, and rule order) travels in metadata
// under the filter_metadata key "cordon".
//
// FromRouteConfiguration accepts only the exact form ToRouteConfiguration
// produces: it rebuilds the policy from the metadata, translates it again and
// requires the result to equal its input. Anything else (an extra field, a
// domain the metadata does not explain, a hand-edited route) is an error, so
// a client never enforces a policy that differs from what it was sent.
//
// It does not decide who gets which resource (xds/server) or compile the
// policy into a matcher (egress-proxy/policy).
package translate

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

const (
	// NamePrefix starts every RouteConfiguration name: "egress/<org>/<job>".
	NamePrefix = "egress/"
	// MetadataKey is the filter_metadata key of Cordon's extras.
	MetadataKey = "cordon"
	// Cluster is the cluster allowed traffic is routed to: the egress path
	// (on a stock Envoy gateway, a dynamic forward proxy cluster).
	Cluster = "cordon_egress"
	// DenyReasonHeader carries the machine-readable reason of a 403.
	DenyReasonHeader = "x-cordon-deny-reason"
	// DenyReason is the reason a request that matched no rule is denied.
	DenyReason = "not_allowlisted"

	denyVirtualHost = "deny"
	allowPrefix     = "allow:"
)

// ResourceName is the RouteConfiguration name of job in org.
func ResourceName(org, job string) string { return NamePrefix + org + "/" + job }

// ParseResourceName splits "egress/<org>/<job>" into org and job.
func ParseResourceName(name string) (org, job string, err error) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return "", "", fmt.Errorf("resource name %q: want %s<org>/<job>", name, NamePrefix)
	}
	org, job, ok = strings.Cut(rest, "/")
	if !ok || !validSlug(org) || !validSlug(job) {
		return "", "", fmt.Errorf("resource name %q: want %s<org>/<job> with lowercase slugs", name, NamePrefix)
	}
	return org, job, nil
}

// slugRE is what an org or job name may be in a resource name and a SPIFFE
// path: it keeps "/" and anything unprintable out of both.
var slugRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func validSlug(s string) bool { return slugRE.MatchString(s) }

// hostRE is a lowercase punycode host name, optionally with one leading "*."
// label. The allowlist parser is stricter (public suffixes, label lengths);
// this only keeps the translation's two directions honest.
var hostRE = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ToRouteConfiguration translates p. It errors when p cannot be represented
// (an empty org or job, an unknown class or mode, a rule with no ports, both
// or neither of host and CIDR) and when the result fails Envoy validation.
// An empty Mode is translated as enforce, the allowlist default.
func ToRouteConfiguration(p *allowlist.JobPolicy) (*routev3.RouteConfiguration, error) {
	rc, err := build(p)
	if err != nil {
		return nil, fmt.Errorf("translate policy %s: %w", p.ID(), err)
	}
	if err := rc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("translate policy %s: envoy validation: %w", p.ID(), err)
	}
	return rc, nil
}

func build(p *allowlist.JobPolicy) (*routev3.RouteConfiguration, error) {
	if !validSlug(p.Org) || !validSlug(p.Job) {
		return nil, fmt.Errorf("org %q and job %q must be lowercase slugs", p.Org, p.Job)
	}
	if p.Class != allowlist.ClassPlatform && p.Class != allowlist.ClassUser {
		return nil, fmt.Errorf("class %q: want %q or %q", p.Class, allowlist.ClassPlatform, allowlist.ClassUser)
	}
	mode := p.Mode
	if mode == "" {
		mode = allowlist.ModeEnforce
	}
	if mode != allowlist.ModeEnforce && mode != allowlist.ModeReport {
		return nil, fmt.Errorf("mode %q: want %q or %q", p.Mode, allowlist.ModeEnforce, allowlist.ModeReport)
	}

	// Group host rules by host, in order of first appearance: Envoy wants
	// every domain in exactly one virtual host.
	type hostGroup struct {
		host    string
		domains []string
		rules   []any
	}
	var groups []*hostGroup
	byHost := map[string]*hostGroup{}
	var cidrRules []any
	for i, r := range p.Rules {
		if err := checkRule(r); err != nil {
			return nil, fmt.Errorf("rule %d (%s): %w", i, r.Source, err)
		}
		ports := make([]any, len(r.Ports))
		for j, port := range r.Ports {
			ports[j] = float64(port)
		}
		if r.Host == "" {
			cidrRules = append(cidrRules, map[string]any{
				"index": float64(i), "cidr": r.CIDR.String(), "ports": ports, "source": r.Source,
			})
			continue
		}
		g := byHost[r.Host]
		if g == nil {
			g = &hostGroup{host: r.Host}
			byHost[r.Host] = g
			groups = append(groups, g)
		}
		for _, port := range r.Ports {
			d := r.Host + ":" + strconv.Itoa(int(port))
			if !slices.Contains(g.domains, d) {
				g.domains = append(g.domains, d)
			}
		}
		g.rules = append(g.rules, map[string]any{"index": float64(i), "ports": ports, "source": r.Source})
	}

	rcMeta, err := metadata(map[string]any{
		"org": p.Org, "job": p.Job, "class": string(p.Class), "mode": string(mode),
		"cidr_rules": orEmpty(cidrRules),
	})
	if err != nil {
		return nil, err
	}
	rc := &routev3.RouteConfiguration{
		Name:     ResourceName(p.Org, p.Job),
		Metadata: rcMeta,
	}
	for _, g := range groups {
		md, err := metadata(map[string]any{"host": g.host, "rules": g.rules})
		if err != nil {
			return nil, err
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:     allowPrefix + g.host,
			Domains:  g.domains,
			Routes:   allowRoutes(),
			Metadata: md,
		})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, denyAll())
	return rc, nil
}

func orEmpty(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

func checkRule(r allowlist.Rule) error {
	switch {
	case r.Host != "" && r.CIDR.IsValid():
		return errors.New("has both a host and a cidr")
	case r.Host == "" && !r.CIDR.IsValid():
		return errors.New("has neither a host nor a cidr")
	case r.Host != "" && !hostRE.MatchString(r.Host):
		return fmt.Errorf("host %q is not a lowercase host name or *. pattern", r.Host)
	case r.CIDR.IsValid() && r.CIDR != r.CIDR.Masked():
		return fmt.Errorf("cidr %s has host bits set", r.CIDR)
	case len(r.Ports) == 0:
		return errors.New("lists no ports")
	}
	for i, p := range r.Ports {
		if p == 0 {
			return errors.New("lists port 0")
		}
		if slices.Contains(r.Ports[:i], p) {
			return fmt.Errorf("lists port %d twice", p)
		}
	}
	return nil
}

func metadata(fields map[string]any) (*corev3.Metadata, error) {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, fmt.Errorf("build metadata: %w", err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s}}, nil
}

// allowRoutes sends CONNECT tunnels and plain HTTP requests to the egress
// cluster.
func allowRoutes() []*routev3.Route {
	return []*routev3.Route{
		{
			Name:  "connect",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: Cluster},
				UpgradeConfigs: []*routev3.RouteAction_UpgradeConfig{{
					UpgradeType:   "CONNECT",
					ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
				}},
			}},
		},
		{
			Name:   "http",
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: Cluster}}},
		},
	}
}

// denyAll is the catch-all: whatever no allow virtual host matched is a 403.
func denyAll() *routev3.VirtualHost {
	deny := func(name string, m *routev3.RouteMatch) *routev3.Route {
		return &routev3.Route{
			Name:  name,
			Match: m,
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
				Status: 403,
				Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "cordon: destination not in the job's allowlist\n"}},
			}},
		}
	}
	return &routev3.VirtualHost{
		Name:    denyVirtualHost,
		Domains: []string{"*"},
		Routes: []*routev3.Route{
			deny("connect", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}}),
			deny("http", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}),
		},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: DenyReasonHeader, Value: DenyReason},
		}},
	}
}

// FromRouteConfiguration rebuilds the policy rc was translated from. It
// errors on anything that is not exactly what ToRouteConfiguration produces,
// saying what is wrong; the xDS client NACKs with that message.
func FromRouteConfiguration(rc *routev3.RouteConfiguration) (*allowlist.JobPolicy, error) {
	if rc == nil {
		return nil, errors.New("decode route configuration: nil")
	}
	p, err := decode(rc)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration %q: %w", rc.GetName(), err)
	}
	again, err := build(p)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration %q: %w", rc.GetName(), err)
	}
	if !proto.Equal(again, rc) {
		return nil, fmt.Errorf("decode route configuration %q: not in the exact form cordon generates (extra fields, or domains and routes that disagree with the %q metadata)", rc.GetName(), MetadataKey)
	}
	return p, nil
}

func decode(rc *routev3.RouteConfiguration) (*allowlist.JobPolicy, error) {
	org, job, err := ParseResourceName(rc.GetName())
	if err != nil {
		return nil, err
	}
	md := rc.GetMetadata().GetFilterMetadata()[MetadataKey]
	if md == nil {
		return nil, fmt.Errorf("no %q metadata", MetadataKey)
	}
	f := fieldReader{where: "route configuration metadata", fields: md.GetFields()}
	p := &allowlist.JobPolicy{
		Org:   f.str("org"),
		Job:   f.str("job"),
		Class: allowlist.Class(f.str("class")),
		Mode:  allowlist.Mode(f.str("mode")),
	}
	if f.err == nil && (p.Org != org || p.Job != job) {
		return nil, fmt.Errorf("metadata names %s/%s, resource name %s/%s", p.Org, p.Job, org, job)
	}
	indexed := map[int]allowlist.Rule{}
	for _, v := range f.list("cidr_rules") {
		r := fieldReader{where: "cidr rule", fields: v.GetStructValue().GetFields()}
		i := r.index()
		rule := allowlist.Rule{Ports: r.ports(), Source: r.str("source")}
		if s := r.str("cidr"); r.err == nil {
			if rule.CIDR, r.err = netip.ParsePrefix(s); r.err != nil {
				r.err = fmt.Errorf("cidr rule: %w", r.err)
			}
		}
		if err := r.done(); err != nil {
			return nil, err
		}
		if err := addRule(indexed, i, rule); err != nil {
			return nil, err
		}
	}
	if err := f.done(); err != nil {
		return nil, err
	}
	for _, vh := range rc.GetVirtualHosts() {
		if vh.GetName() == denyVirtualHost {
			continue
		}
		vmd := vh.GetMetadata().GetFilterMetadata()[MetadataKey]
		if vmd == nil {
			return nil, fmt.Errorf("virtual host %q has no %q metadata", vh.GetName(), MetadataKey)
		}
		v := fieldReader{where: "virtual host " + strconv.Quote(vh.GetName()), fields: vmd.GetFields()}
		host := v.str("host")
		for _, rv := range v.list("rules") {
			r := fieldReader{where: "host rule of " + host, fields: rv.GetStructValue().GetFields()}
			i := r.index()
			rule := allowlist.Rule{Host: host, Ports: r.ports(), Source: r.str("source")}
			if err := r.done(); err != nil {
				return nil, err
			}
			if err := addRule(indexed, i, rule); err != nil {
				return nil, err
			}
		}
		if err := v.done(); err != nil {
			return nil, err
		}
	}
	for i := range len(indexed) {
		r, ok := indexed[i]
		if !ok {
			return nil, fmt.Errorf("rule indexes are not 0..%d: %d is missing", len(indexed)-1, i)
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

// maxRules bounds what a route configuration may claim, so a hostile index
// cannot make the decoder allocate.
const maxRules = 1 << 16

func addRule(m map[int]allowlist.Rule, i int, r allowlist.Rule) error {
	if i < 0 || i >= maxRules {
		return fmt.Errorf("rule index %d out of range", i)
	}
	if _, dup := m[i]; dup {
		return fmt.Errorf("rule index %d appears twice", i)
	}
	m[i] = r
	return nil
}

// fieldReader reads a metadata struct strictly: every field must have the
// expected kind, and done reports fields nobody read.
type fieldReader struct {
	where  string
	fields map[string]*structpb.Value
	read   []string
	err    error
}

func (f *fieldReader) get(key string) *structpb.Value {
	f.read = append(f.read, key)
	v, ok := f.fields[key]
	if !ok && f.err == nil {
		f.err = fmt.Errorf("%s: missing field %q", f.where, key)
	}
	return v
}

func (f *fieldReader) str(key string) string {
	v := f.get(key)
	if v == nil {
		return ""
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		if f.err == nil {
			f.err = fmt.Errorf("%s: field %q is not a string", f.where, key)
		}
		return ""
	}
	return s.StringValue
}

func (f *fieldReader) list(key string) []*structpb.Value {
	v := f.get(key)
	if v == nil {
		return nil
	}
	l, ok := v.GetKind().(*structpb.Value_ListValue)
	if !ok {
		if f.err == nil {
			f.err = fmt.Errorf("%s: field %q is not a list", f.where, key)
		}
		return nil
	}
	return l.ListValue.GetValues()
}

func (f *fieldReader) integer(v *structpb.Value, what string, lo, hi float64) int {
	n, ok := v.GetKind().(*structpb.Value_NumberValue)
	if !ok || n.NumberValue != float64(int64(n.NumberValue)) || n.NumberValue < lo || n.NumberValue > hi {
		if f.err == nil {
			f.err = fmt.Errorf("%s: %s is not an integer in [%v, %v]", f.where, what, lo, hi)
		}
		return -1
	}
	return int(n.NumberValue)
}

func (f *fieldReader) index() int {
	v := f.get("index")
	if v == nil {
		return -1
	}
	return f.integer(v, "index", 0, maxRules-1)
}

func (f *fieldReader) ports() []uint16 {
	var ports []uint16
	for _, v := range f.list("ports") {
		ports = append(ports, uint16(max(0, f.integer(v, "port", 1, 65535))))
	}
	return ports
}

func (f *fieldReader) done() error {
	if f.err != nil {
		return f.err
	}
	for k := range f.fields {
		if !slices.Contains(f.read, k) {
			return fmt.Errorf("%s: unknown field %q", f.where, k)
		}
	}
	return nil
}
