// Package routeconfig is the mapping between a job's allowlist policy
// (allowlist.JobPolicy) and the Envoy v3 RouteConfiguration cordon-xds
// serves for it, written without go-control-plane so that the egress proxy
// and the sidecar, which only decode, carry none of Envoy's generated API
// (its protobuf registrations cost the sidecar several MiB of resident
// memory at start-up).
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
// The package has three parts:
//   - the RouteConfiguration type: the few fields of
//     envoy.config.route.v3.RouteConfiguration the mapping uses, with their
//     protobuf field numbers;
//   - Build, the one definition of the mapping (xds/translate turns its
//     result into go-control-plane types for the server);
//   - Decode, the strict decoder the proxies' xDS client uses: it parses the
//     protobuf wire form, rebuilds the policy from the metadata, builds it
//     again and requires the result to equal its input. Anything else (a
//     field cordon never sets, a domain the metadata does not explain, a
//     hand-edited route) is an error, so a proxy never enforces a policy
//     that differs from what it was sent.
//
// It does not talk xDS (egress-proxy/xdsclient, xds/server), validate
// against Envoy's rules (xds/translate does, with the generated
// ValidateAll), or compile the policy into a matcher (egress-proxy/policy).
package routeconfig

import (
	"fmt"
	"strings"

	"github.com/cordon-dev/cordon/internal/jobid"
)

const (
	// TypeURL is the Any type URL of a RouteConfiguration, the xDS
	// resource type cordon serves.
	TypeURL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
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
	// DenyBody is the body of the catch-all 403.
	DenyBody = "cordon: destination not in the job's allowlist\n"

	denyVirtualHost = "deny"
	allowPrefix     = "allow:"
)

// ResourceName is the RouteConfiguration name of job in org.
func ResourceName(org, job string) string { return NamePrefix + org + "/" + job }

// ParseResourceName splits "egress/<org>/<job>" into org and job, which
// must be slugs (jobid.IsSlug, the rule of the allowlist's names and of
// the jobs' SPIFFE IDs).
func ParseResourceName(name string) (org, job string, err error) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return "", "", fmt.Errorf("resource name %q: want %s<org>/<job>", name, NamePrefix)
	}
	org, job, ok = strings.Cut(rest, "/")
	if !ok || !jobid.IsSlug(org) || !jobid.IsSlug(job) {
		return "", "", fmt.Errorf("resource name %q: want %s<org>/<job> with lowercase slugs", name, NamePrefix)
	}
	return org, job, nil
}

// ValidHost reports whether s is a lowercase punycode host name, optionally
// with one leading "*." label: dot-separated labels of 1 to 63 of
// [a-z0-9-], none starting or ending with "-". The allowlist parser is
// stricter (public suffixes, total length); this only keeps the mapping's
// two directions honest.
func ValidHost(s string) bool {
	s = strings.TrimPrefix(s, "*.")
	for {
		label, rest, more := strings.Cut(s, ".")
		if !validLabel(label) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

func validLabel(l string) bool {
	if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !lowerAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

func lowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// RouteConfiguration is the part of envoy.config.route.v3.RouteConfiguration
// the mapping uses; the comments give each field's protobuf number. Other
// fields do not exist here: Unmarshal refuses them.
type RouteConfiguration struct {
	Name         string         // 1
	VirtualHosts []*VirtualHost // 2
	Metadata     *Metadata      // 17; nil when absent
}

// VirtualHost is the used part of envoy.config.route.v3.VirtualHost.
type VirtualHost struct {
	Name                 string               // 1
	Domains              []string             // 2
	Routes               []*Route             // 3
	ResponseHeadersToAdd []*HeaderValueOption // 10
	Metadata             *Metadata            // 24; nil when absent
}

// Route is the used part of envoy.config.route.v3.Route. At most one of
// Route and DirectResponse is set (the oneof action).
type Route struct {
	Match          *RouteMatch           // 1; nil when absent
	Route          *RouteAction          // 2
	DirectResponse *DirectResponseAction // 7
	Name           string                // 14
}

// RouteMatch is the used part of envoy.config.route.v3.RouteMatch: its
// path specifier (a oneof), either a prefix or a CONNECT matcher.
type RouteMatch struct {
	Prefix         *string // 1; nil when not the path specifier
	ConnectMatcher bool    // 12: an (empty) ConnectMatcher is the path specifier
}

// RouteAction is the used part of envoy.config.route.v3.RouteAction.
type RouteAction struct {
	Cluster        *string          // 1 (oneof cluster_specifier); nil when absent
	UpgradeConfigs []*UpgradeConfig // 25
}

// UpgradeConfig is the used part of RouteAction.UpgradeConfig.
type UpgradeConfig struct {
	UpgradeType   string // 1
	ConnectConfig bool   // 3: an (empty) ConnectConfig is present
}

// DirectResponseAction is the used part of
// envoy.config.route.v3.DirectResponseAction.
type DirectResponseAction struct {
	Status uint32      // 1
	Body   *DataSource // 2; nil when absent
}

// DataSource is the used part of envoy.config.core.v3.DataSource.
type DataSource struct {
	InlineString *string // 3 (oneof specifier); nil when absent
}

// HeaderValueOption is the used part of
// envoy.config.core.v3.HeaderValueOption.
type HeaderValueOption struct {
	Header *HeaderValue // 1; nil when absent
}

// HeaderValue is the used part of envoy.config.core.v3.HeaderValue.
type HeaderValue struct {
	Key   string // 1
	Value string // 2
}

// Metadata is the used part of envoy.config.core.v3.Metadata.
type Metadata struct {
	FilterMetadata map[string]*Struct // 1
}

// Struct is google.protobuf.Struct.
type Struct struct {
	Fields map[string]*Value // 1
}

// Kind says which member of google.protobuf.Value's oneof is set.
type Kind uint8

// The kinds of a Value, by protobuf field number.
const (
	KindNone   Kind = 0
	KindNull   Kind = 1
	KindNumber Kind = 2
	KindString Kind = 3
	KindBool   Kind = 4
	KindStruct Kind = 5
	KindList   Kind = 6
)

// Value is google.protobuf.Value: Kind says which one of the other fields
// holds it.
type Value struct {
	Kind   Kind
	Number float64
	String string
	Bool   bool
	Struct *Struct  // for KindStruct; never nil then
	List   []*Value // for KindList
}

// StringValue returns a Value holding s.
func StringValue(s string) *Value { return &Value{Kind: KindString, String: s} }

// NumberValue returns a Value holding n.
func NumberValue(n float64) *Value { return &Value{Kind: KindNumber, Number: n} }

// ListValue returns a Value holding the list vs.
func ListValue(vs []*Value) *Value { return &Value{Kind: KindList, List: vs} }

// StructValue returns a Value holding a Struct of fields.
func StructValue(fields map[string]*Value) *Value {
	return &Value{Kind: KindStruct, Struct: &Struct{Fields: fields}}
}
