package xdsclient

import (
	"bytes"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	envoyresource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cordon-dev/cordon/xds/routeconfig"
	"github.com/cordon-dev/cordon/xds/translate"
)

// The lean ADS messages are held to go-control-plane's, which only the
// tests import.

func TestRouteTypeURL(t *testing.T) {
	if routeconfig.TypeURL != envoyresource.RouteType {
		t.Fatalf("got %q, want go-control-plane's %q", routeconfig.TypeURL, envoyresource.RouteType)
	}
	if want := "/" + discoveryv3.AggregatedDiscoveryService_ServiceDesc.ServiceName + "/" +
		discoveryv3.AggregatedDiscoveryService_ServiceDesc.Streams[0].StreamName; adsMethod != want {
		t.Fatalf("got method %q, want %q", adsMethod, want)
	}
}

// TestDiscoveryRequestWire: what the client sends is byte for byte what
// go-control-plane's DiscoveryRequest marshals to.
func TestDiscoveryRequestWire(t *testing.T) {
	tests := []struct {
		name string
		lean discoveryRequest
		want *discoveryv3.DiscoveryRequest
	}{
		{"subscription",
			discoveryRequest{NodeID: jobA, TypeURL: routeconfig.TypeURL, ResourceNames: []string{"egress/acme/a"}},
			&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: jobA}, TypeUrl: envoyresource.RouteType, ResourceNames: []string{"egress/acme/a"}}},
		{"resuming gateway (wildcard)",
			discoveryRequest{NodeID: gatewayI, TypeURL: routeconfig.TypeURL, VersionInfo: "v7"},
			&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: gatewayI}, TypeUrl: envoyresource.RouteType, VersionInfo: "v7"}},
		{"ack",
			discoveryRequest{TypeURL: routeconfig.TypeURL, ResourceNames: []string{"egress/acme/a"}, ResponseNonce: "3", VersionInfo: "v2"},
			&discoveryv3.DiscoveryRequest{TypeUrl: envoyresource.RouteType, ResourceNames: []string{"egress/acme/a"}, ResponseNonce: "3", VersionInfo: "v2"}},
		{"nack",
			discoveryRequest{TypeURL: routeconfig.TypeURL, ResponseNonce: "4", VersionInfo: "v2",
				ErrorDetail: &rpcStatus{Code: 3, Message: "resource 0: bad"}},
			&discoveryv3.DiscoveryRequest{TypeUrl: envoyresource.RouteType, ResponseNonce: "4", VersionInfo: "v2",
				ErrorDetail: &status.Status{Code: 3, Message: "resource 0: bad"}}},
		{"negative code", discoveryRequest{ErrorDetail: &rpcStatus{Code: -1}},
			&discoveryv3.DiscoveryRequest{ErrorDetail: &status.Status{Code: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.lean.marshal(); !bytes.Equal(got, want) {
				t.Errorf("got  %x\nwant %x", got, want)
			}
		})
	}
}

func envoyResponse(t testing.TB) *discoveryv3.DiscoveryResponse {
	t.Helper()
	var resources []*anypb.Any
	for _, job := range []string{"a", "b"} {
		rc, err := translate.ToRouteConfiguration(pol(job, job+".example.com"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := anypb.New(rc)
		if err != nil {
			t.Fatal(err)
		}
		resources = append(resources, a)
	}
	return &discoveryv3.DiscoveryResponse{
		VersionInfo: "v3", Resources: resources, Canary: true, TypeUrl: envoyresource.RouteType, Nonce: "9",
		ControlPlane: &corev3.ControlPlane{Identifier: "cordon-xds-1"},
	}
}

// sameResponse compares what the client reads with go-control-plane's
// reading of the same bytes.
func sameResponse(t *testing.T, got *discoveryResponse, want *discoveryv3.DiscoveryResponse) {
	t.Helper()
	if got.VersionInfo != want.GetVersionInfo() || got.TypeURL != want.GetTypeUrl() || got.Nonce != want.GetNonce() ||
		len(got.Resources) != len(want.GetResources()) {
		t.Fatalf("got %+v, want %v", got, want)
	}
	for i, a := range want.GetResources() {
		if got.Resources[i].TypeURL != a.GetTypeUrl() || !bytes.Equal(got.Resources[i].Value, a.GetValue()) {
			t.Fatalf("resource %d: got %+v, want %v", i, got.Resources[i], a)
		}
	}
}

func TestDiscoveryResponseWire(t *testing.T) {
	want := envoyResponse(t)
	wire, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	// A newer control plane's fields the client does not know are skipped.
	wire = protowire.AppendVarint(protowire.AppendTag(slices.Clone(wire), 99, protowire.VarintType), 1)
	var got discoveryResponse
	if err := got.unmarshal(wire); err != nil {
		t.Fatal(err)
	}
	sameResponse(t, &got, want)

	for name, bad := range map[string][]byte{
		"truncated":     wire[:len(wire)-1],
		"invalid utf-8": protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "v\xff"),
		"bad length":    {0x12, 0x05, 0x01},
	} {
		if err := (&discoveryResponse{}).unmarshal(bad); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}

// FuzzDiscoveryResponse: every envelope go-control-plane can read, the
// client reads the same.
func FuzzDiscoveryResponse(f *testing.F) {
	wire, err := proto.Marshal(envoyResponse(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wire)
	f.Fuzz(func(t *testing.T, wire []byte) {
		var want discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(wire, &want); err != nil {
			return
		}
		var got discoveryResponse
		if err := got.unmarshal(wire); err != nil {
			t.Fatalf("protobuf reads %x but the client does not: %v", wire, err)
		}
		sameResponse(t, &got, &want)
	})
}
