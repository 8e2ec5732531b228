package routeconfig

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/jobid"
)

// Build maps p to its RouteConfiguration. It errors when p cannot be
// represented (an org or job that is not a slug, an unknown class or mode,
// a rule with no ports, both or neither of host and CIDR). An empty Mode is
// built as enforce, the allowlist default.
func Build(p *allowlist.JobPolicy) (*RouteConfiguration, error) {
	if !jobid.IsSlug(p.Org) || !jobid.IsSlug(p.Job) {
		return nil, fmt.Errorf("org %q and job %q must be lowercase slugs: %s", p.Org, p.Job, jobid.SlugRule)
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
		rules   []*Value
	}
	var groups []*hostGroup
	byHost := map[string]*hostGroup{}
	cidrRules := []*Value{}
	for i, r := range p.Rules {
		if err := checkRule(r); err != nil {
			return nil, fmt.Errorf("rule %d (%s): %w", i, r.Source, err)
		}
		ports := make([]*Value, len(r.Ports))
		for j, port := range r.Ports {
			ports[j] = NumberValue(float64(port))
		}
		if r.Host == "" {
			cidrRules = append(cidrRules, StructValue(map[string]*Value{
				"index": NumberValue(float64(i)), "cidr": StringValue(r.CIDR.String()),
				"ports": ListValue(ports), "source": StringValue(r.Source),
			}))
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
		g.rules = append(g.rules, StructValue(map[string]*Value{
			"index": NumberValue(float64(i)), "ports": ListValue(ports), "source": StringValue(r.Source),
		}))
	}

	rc := &RouteConfiguration{
		Name: ResourceName(p.Org, p.Job),
		Metadata: metadata(map[string]*Value{
			"org": StringValue(p.Org), "job": StringValue(p.Job),
			"class": StringValue(string(p.Class)), "mode": StringValue(string(mode)),
			"cidr_rules": ListValue(cidrRules),
		}),
	}
	for _, g := range groups {
		rc.VirtualHosts = append(rc.VirtualHosts, &VirtualHost{
			Name:     allowPrefix + g.host,
			Domains:  g.domains,
			Routes:   allowRoutes(),
			Metadata: metadata(map[string]*Value{"host": StringValue(g.host), "rules": ListValue(g.rules)}),
		})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, denyAll())
	return rc, nil
}

func checkRule(r allowlist.Rule) error {
	switch {
	case r.Host != "" && r.CIDR.IsValid():
		return errors.New("has both a host and a cidr")
	case r.Host == "" && !r.CIDR.IsValid():
		return errors.New("has neither a host nor a cidr")
	case r.Host != "" && !ValidHost(r.Host):
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

func metadata(fields map[string]*Value) *Metadata {
	return &Metadata{FilterMetadata: map[string]*Struct{MetadataKey: {Fields: fields}}}
}

func ptr(s string) *string { return &s }

// allowRoutes sends CONNECT tunnels and plain HTTP requests to the egress
// cluster.
func allowRoutes() []*Route {
	return []*Route{
		{
			Name:  "connect",
			Match: &RouteMatch{ConnectMatcher: true},
			Route: &RouteAction{
				Cluster:        ptr(Cluster),
				UpgradeConfigs: []*UpgradeConfig{{UpgradeType: "CONNECT", ConnectConfig: true}},
			},
		},
		{
			Name:  "http",
			Match: &RouteMatch{Prefix: ptr("/")},
			Route: &RouteAction{Cluster: ptr(Cluster)},
		},
	}
}

// denyAll is the catch-all: whatever no allow virtual host matched is a 403.
func denyAll() *VirtualHost {
	deny := func(name string, m *RouteMatch) *Route {
		return &Route{
			Name:           name,
			Match:          m,
			DirectResponse: &DirectResponseAction{Status: 403, Body: &DataSource{InlineString: ptr(DenyBody)}},
		}
	}
	return &VirtualHost{
		Name:    denyVirtualHost,
		Domains: []string{"*"},
		Routes: []*Route{
			deny("connect", &RouteMatch{ConnectMatcher: true}),
			deny("http", &RouteMatch{Prefix: ptr("/")}),
		},
		ResponseHeadersToAdd: []*HeaderValueOption{{Header: &HeaderValue{Key: DenyReasonHeader, Value: DenyReason}}},
	}
}
