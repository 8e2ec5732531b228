// Package translate turns a resolved allowlist policy (allowlist.JobPolicy)
// into the standard Envoy v3 RouteConfiguration (go-control-plane's
// routev3) that the control plane serves, checked with Envoy's generated
// validation, and back.
//
// The mapping itself lives in xds/routeconfig, which has no go-control-plane
// dependency so that the proxies' xDS client stays small; this package only
// converts its result into go-control-plane types for the server, `lint` and
// `dump`. FromRouteConfiguration goes through the wire form and
// routeconfig.Decode, the very decoder the proxies use, so both sides of the
// mapping are tested through one implementation.
//
// It does not decide who gets which resource (xds/server) or compile the
// policy into a matcher (egress-proxy/policy).
package translate

import (
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/xds/routeconfig"
)

// ToRouteConfiguration translates p. It errors when p cannot be represented
// (an empty org or job, an unknown class or mode, a rule with no ports, both
// or neither of host and CIDR) and when the result fails Envoy validation.
// An empty Mode is translated as enforce, the allowlist default.
func ToRouteConfiguration(p *allowlist.JobPolicy) (*routev3.RouteConfiguration, error) {
	built, err := routeconfig.Build(p)
	if err != nil {
		return nil, fmt.Errorf("translate policy %s: %w", p.ID(), err)
	}
	rc := toEnvoy(built)
	if err := rc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("translate policy %s: envoy validation: %w", p.ID(), err)
	}
	return rc, nil
}

// FromRouteConfiguration rebuilds the policy rc was translated from, with
// routeconfig.Decode on rc's wire form. It errors on anything that is not
// exactly what ToRouteConfiguration produces, saying what is wrong.
func FromRouteConfiguration(rc *routev3.RouteConfiguration) (*allowlist.JobPolicy, error) {
	if rc == nil {
		return nil, errors.New("decode route configuration: nil")
	}
	wire, err := proto.Marshal(rc)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration %q: %w", rc.GetName(), err)
	}
	return routeconfig.Decode(wire)
}

// toEnvoy converts field by field; routeconfig's types name the fields
// they stand for.
func toEnvoy(rc *routeconfig.RouteConfiguration) *routev3.RouteConfiguration {
	out := &routev3.RouteConfiguration{Name: rc.Name, Metadata: metadataToEnvoy(rc.Metadata)}
	for _, vh := range rc.VirtualHosts {
		ev := &routev3.VirtualHost{Name: vh.Name, Domains: vh.Domains, Metadata: metadataToEnvoy(vh.Metadata)}
		for _, r := range vh.Routes {
			ev.Routes = append(ev.Routes, routeToEnvoy(r))
		}
		for _, h := range vh.ResponseHeadersToAdd {
			o := &corev3.HeaderValueOption{}
			if h.Header != nil {
				o.Header = &corev3.HeaderValue{Key: h.Header.Key, Value: h.Header.Value}
			}
			ev.ResponseHeadersToAdd = append(ev.ResponseHeadersToAdd, o)
		}
		out.VirtualHosts = append(out.VirtualHosts, ev)
	}
	return out
}

func routeToEnvoy(r *routeconfig.Route) *routev3.Route {
	out := &routev3.Route{Name: r.Name}
	if m := r.Match; m != nil {
		out.Match = &routev3.RouteMatch{}
		switch {
		case m.Prefix != nil:
			out.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: *m.Prefix}
		case m.ConnectMatcher:
			out.Match.PathSpecifier = &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}
		}
	}
	switch {
	case r.Route != nil:
		a := &routev3.RouteAction{}
		if r.Route.Cluster != nil {
			a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: *r.Route.Cluster}
		}
		for _, u := range r.Route.UpgradeConfigs {
			eu := &routev3.RouteAction_UpgradeConfig{UpgradeType: u.UpgradeType}
			if u.ConnectConfig {
				eu.ConnectConfig = &routev3.RouteAction_UpgradeConfig_ConnectConfig{}
			}
			a.UpgradeConfigs = append(a.UpgradeConfigs, eu)
		}
		out.Action = &routev3.Route_Route{Route: a}
	case r.DirectResponse != nil:
		d := &routev3.DirectResponseAction{Status: r.DirectResponse.Status}
		if b := r.DirectResponse.Body; b != nil {
			d.Body = &corev3.DataSource{}
			if b.InlineString != nil {
				d.Body.Specifier = &corev3.DataSource_InlineString{InlineString: *b.InlineString}
			}
		}
		out.Action = &routev3.Route_DirectResponse{DirectResponse: d}
	}
	return out
}

func metadataToEnvoy(m *routeconfig.Metadata) *corev3.Metadata {
	if m == nil {
		return nil
	}
	out := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
	for k, s := range m.FilterMetadata {
		out.FilterMetadata[k] = structToEnvoy(s)
	}
	return out
}

func structToEnvoy(s *routeconfig.Struct) *structpb.Struct {
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range s.Fields {
		out.Fields[k] = valueToEnvoy(v)
	}
	return out
}

func valueToEnvoy(v *routeconfig.Value) *structpb.Value {
	switch v.Kind {
	case routeconfig.KindNull:
		return structpb.NewNullValue()
	case routeconfig.KindNumber:
		return structpb.NewNumberValue(v.Number)
	case routeconfig.KindString:
		return structpb.NewStringValue(v.String)
	case routeconfig.KindBool:
		return structpb.NewBoolValue(v.Bool)
	case routeconfig.KindStruct:
		return structpb.NewStructValue(structToEnvoy(v.Struct))
	case routeconfig.KindList:
		l := &structpb.ListValue{}
		for _, e := range v.List {
			l.Values = append(l.Values, valueToEnvoy(e))
		}
		return structpb.NewListValue(l)
	}
	return &structpb.Value{}
}
