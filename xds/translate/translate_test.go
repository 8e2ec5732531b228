package translate

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/xds/routeconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files and fuzz seeds in testdata/")

// goldenPolicies are the policies pinned by testdata/<name>.json.
func goldenPolicies() map[string]*allowlist.JobPolicy {
	return map[string]*allowlist.JobPolicy{
		"platform_rpc": {
			Org: "acme", Job: "block_follower", Class: allowlist.ClassPlatform, Mode: allowlist.ModeEnforce,
			Rules: []allowlist.Rule{
				{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:platform_storage"},
				{Host: "*.s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:platform_storage"},
				{Host: "rpc.monad.example", Ports: []uint16{443, 8545}, Source: "endpoint_set:monad_rpc"},
				{CIDR: netip.MustParsePrefix("10.20.0.0/16"), Ports: []uint16{5432}, Source: "endpoint_set:monad_rpc"},
				// The same host from a second set: one virtual host, both rules kept.
				{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443, 8443}, Source: "endpoint_set:backups"},
			},
		},
		"user_webhook": {
			Org: "acme", Job: "price_alert", Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce,
			Rules: []allowlist.Rule{
				{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:platform_storage"},
				{Host: "hooks.slack.com", Ports: []uint16{443}, Source: "webhook:https://hooks.slack.com/services/T0/B0/"},
			},
		},
		"report_mode": {
			Org: "globex", Job: "cryo_ingest", Class: allowlist.ClassPlatform, Mode: allowlist.ModeReport,
			Rules: []allowlist.Rule{
				{CIDR: netip.MustParsePrefix("fd00:20::/48"), Ports: []uint16{5432, 6432}, Source: "endpoint_set:db"},
				{Host: "*.rpc.globex.example", Ports: []uint16{443}, Source: "endpoint_set:rpc"},
			},
		},
		"deny_all": {Org: "acme", Job: "sandbox", Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce},
	}
}

func TestGolden(t *testing.T) {
	for name, p := range goldenPolicies() {
		t.Run(name, func(t *testing.T) {
			rc, err := ToRouteConfiguration(p)
			if err != nil {
				t.Fatalf("ToRouteConfiguration: %v", err)
			}
			got, err := MarshalJSON(rc)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name+".json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", got)
				dir := filepath.Join("testdata", "fuzz", "FuzzFromRouteConfiguration")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, name), []byte(seed), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run go test ./xds/translate -update): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation (run go test ./xds/translate -update and review the diff)\ngot:\n%s", path, got)
			}
			// The golden file decodes back to the same policy.
			var back routev3.RouteConfiguration
			if err := protojson.Unmarshal(want, &back); err != nil {
				t.Fatal(err)
			}
			p2, err := FromRouteConfiguration(&back)
			if err != nil {
				t.Fatalf("FromRouteConfiguration(golden): %v", err)
			}
			if d := policyDiff(p, p2); d != "" {
				t.Errorf("golden round trip: %s", d)
			}
		})
	}
}

// policyDiff says how two policies differ, or "" when they are the same.
func policyDiff(want, got *allowlist.JobPolicy) string {
	wantMode := want.Mode
	if wantMode == "" {
		wantMode = allowlist.ModeEnforce
	}
	switch {
	case got.Org != want.Org || got.Job != want.Job:
		return fmt.Sprintf("got id %s, want %s", got.ID(), want.ID())
	case got.Class != want.Class:
		return fmt.Sprintf("got class %q, want %q", got.Class, want.Class)
	case got.Mode != wantMode:
		return fmt.Sprintf("got mode %q, want %q", got.Mode, wantMode)
	case len(got.Rules) != len(want.Rules):
		return fmt.Sprintf("got %d rules, want %d", len(got.Rules), len(want.Rules))
	}
	for i := range want.Rules {
		w, g := want.Rules[i], got.Rules[i]
		if g.Host != w.Host || g.CIDR != w.CIDR || g.Source != w.Source || !slices.Equal(g.Ports, w.Ports) {
			return fmt.Sprintf("rule %d: got %+v, want %+v", i, g, w)
		}
	}
	return ""
}

func randomPolicy(r *rand.Rand) *allowlist.JobPolicy {
	hosts := []string{"a.example.com", "*.example.com", "b.example.com", "*.s3.amazonaws.com", "x-1.y.z", "hooks.slack.com"}
	cidrs := []string{"10.0.0.0/8", "10.20.0.0/16", "192.168.1.0/24", "fd00::/8", "2001:db8::/32", "100.64.0.0/10"}
	p := &allowlist.JobPolicy{
		Org:   []string{"acme", "globex", "o-1"}[r.IntN(3)],
		Job:   []string{"j", "block_follower", "cryo-ingest"}[r.IntN(3)],
		Class: []allowlist.Class{allowlist.ClassPlatform, allowlist.ClassUser}[r.IntN(2)],
		Mode:  []allowlist.Mode{allowlist.ModeEnforce, allowlist.ModeReport, ""}[r.IntN(3)],
	}
	for range r.IntN(12) {
		var ports []uint16
		for range 1 + r.IntN(4) {
			port := uint16(1 + r.IntN(65535))
			if r.IntN(2) == 0 {
				port = []uint16{443, 80, 8545}[r.IntN(3)]
			}
			if !slices.Contains(ports, port) {
				ports = append(ports, port)
			}
		}
		rule := allowlist.Rule{Ports: ports, Source: fmt.Sprintf("endpoint_set:s%d", r.IntN(4))}
		if r.IntN(3) == 0 {
			rule.CIDR = netip.MustParsePrefix(cidrs[r.IntN(len(cidrs))])
		} else {
			rule.Host = hosts[r.IntN(len(hosts))]
		}
		p.Rules = append(p.Rules, rule)
	}
	return p
}

// TestRoundTrip is the property the client relies on: whatever the server
// translates, the client decodes to the very same policy.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		p := randomPolicy(r)
		rc, err := ToRouteConfiguration(p)
		if err != nil {
			t.Fatalf("case %d: ToRouteConfiguration(%+v): %v", i, p, err)
		}
		// Through the wire format, as the client sees it.
		wire, err := proto.Marshal(rc)
		if err != nil {
			t.Fatal(err)
		}
		var got routev3.RouteConfiguration
		if err := proto.Unmarshal(wire, &got); err != nil {
			t.Fatal(err)
		}
		back, err := FromRouteConfiguration(&got)
		if err != nil {
			t.Fatalf("case %d: FromRouteConfiguration: %v", i, err)
		}
		if d := policyDiff(p, back); d != "" {
			t.Fatalf("case %d: round trip of %+v: %s", i, p, d)
		}
	}
}

func TestToRouteConfigurationRejects(t *testing.T) {
	ok := func() *allowlist.JobPolicy {
		return &allowlist.JobPolicy{Org: "acme", Job: "j", Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce,
			Rules: []allowlist.Rule{{Host: "a.example.com", Ports: []uint16{443}, Source: "s"}}}
	}
	tests := []struct {
		name   string
		mutate func(p *allowlist.JobPolicy)
		want   string
	}{
		{"empty org", func(p *allowlist.JobPolicy) { p.Org = "" }, "lowercase slugs"},
		{"slash in job", func(p *allowlist.JobPolicy) { p.Job = "a/b" }, "lowercase slugs"},
		{"unknown class", func(p *allowlist.JobPolicy) { p.Class = "admin" }, `class "admin"`},
		{"unknown mode", func(p *allowlist.JobPolicy) { p.Mode = "allow" }, `mode "allow"`},
		{"no ports", func(p *allowlist.JobPolicy) { p.Rules[0].Ports = nil }, "lists no ports"},
		{"port zero", func(p *allowlist.JobPolicy) { p.Rules[0].Ports = []uint16{0} }, "port 0"},
		{"duplicate port", func(p *allowlist.JobPolicy) { p.Rules[0].Ports = []uint16{443, 443} }, "twice"},
		{"bare star", func(p *allowlist.JobPolicy) { p.Rules[0].Host = "*" }, "not a lowercase host"},
		{"inner star", func(p *allowlist.JobPolicy) { p.Rules[0].Host = "a.*.com" }, "not a lowercase host"},
		{"uppercase", func(p *allowlist.JobPolicy) { p.Rules[0].Host = "A.example.com" }, "not a lowercase host"},
		{"host with port", func(p *allowlist.JobPolicy) { p.Rules[0].Host = "a.example.com:443" }, "not a lowercase host"},
		{"host and cidr", func(p *allowlist.JobPolicy) { p.Rules[0].CIDR = netip.MustParsePrefix("10.0.0.0/8") }, "both"},
		{"neither", func(p *allowlist.JobPolicy) { p.Rules[0].Host = "" }, "neither"},
		{"unmasked cidr", func(p *allowlist.JobPolicy) {
			p.Rules[0].Host = ""
			p.Rules[0].CIDR = netip.MustParsePrefix("10.1.2.3/8")
		}, "host bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok()
			tt.mutate(p)
			_, err := ToRouteConfiguration(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestFromRouteConfigurationRejects feeds the client route configurations a
// broken or hostile control plane could send: every one must be refused
// (the client NACKs and keeps its last good policy).
func TestFromRouteConfigurationRejects(t *testing.T) {
	base := goldenPolicies()["platform_rpc"]
	meta := func(rc *routev3.RouteConfiguration) map[string]*structpb.Value {
		return rc.Metadata.FilterMetadata[routeconfig.MetadataKey].Fields
	}
	vmeta := func(rc *routev3.RouteConfiguration, i int) map[string]*structpb.Value {
		return rc.VirtualHosts[i].Metadata.FilterMetadata[routeconfig.MetadataKey].Fields
	}
	tests := []struct {
		name   string
		mutate func(rc *routev3.RouteConfiguration)
	}{
		{"nil metadata", func(rc *routev3.RouteConfiguration) { rc.Metadata = nil }},
		{"wrong name", func(rc *routev3.RouteConfiguration) { rc.Name = "egress/acme/other" }},
		{"not egress name", func(rc *routev3.RouteConfiguration) { rc.Name = "acme/block_follower" }},
		{"mode allow", func(rc *routev3.RouteConfiguration) { meta(rc)["mode"] = structpb.NewStringValue("allow") }},
		{"mode number", func(rc *routev3.RouteConfiguration) { meta(rc)["mode"] = structpb.NewNumberValue(1) }},
		{"unknown field", func(rc *routev3.RouteConfiguration) { meta(rc)["allow_all"] = structpb.NewBoolValue(true) }},
		{"extra domain", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts[0].Domains = append(rc.VirtualHosts[0].Domains, "evil.example:443")
		}},
		{"star domain on allow host", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].Domains = []string{"*"} }},
		{"deny host removed", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts = rc.VirtualHosts[:len(rc.VirtualHosts)-1] }},
		{"deny host routes to cluster", func(rc *routev3.RouteConfiguration) {
			last := rc.VirtualHosts[len(rc.VirtualHosts)-1]
			last.Routes = rc.VirtualHosts[0].Routes
		}},
		{"unexplained vhost", func(rc *routev3.RouteConfiguration) {
			vh := proto.Clone(rc.VirtualHosts[0]).(*routev3.VirtualHost)
			vh.Name, vh.Domains, vh.Metadata = "allow:evil", []string{"*.com:443"}, nil
			rc.VirtualHosts = append([]*routev3.VirtualHost{vh}, rc.VirtualHosts...)
		}},
		{"duplicate index", func(rc *routev3.RouteConfiguration) {
			r := vmeta(rc, 1)["rules"].GetListValue().Values[0].GetStructValue().Fields
			r["index"] = structpb.NewNumberValue(0)
		}},
		{"fractional port", func(rc *routev3.RouteConfiguration) {
			r := vmeta(rc, 1)["rules"].GetListValue().Values[0].GetStructValue().Fields
			r["ports"] = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(443.5)}})
		}},
		{"port out of range", func(rc *routev3.RouteConfiguration) {
			r := meta(rc)["cidr_rules"].GetListValue().Values[0].GetStructValue().Fields
			r["ports"] = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(70000)}})
		}},
		{"cidr unparseable", func(rc *routev3.RouteConfiguration) {
			r := meta(rc)["cidr_rules"].GetListValue().Values[0].GetStructValue().Fields
			r["cidr"] = structpb.NewStringValue("0.0.0.0/0x")
		}},
		{"huge index", func(rc *routev3.RouteConfiguration) {
			r := meta(rc)["cidr_rules"].GetListValue().Values[0].GetStructValue().Fields
			r["index"] = structpb.NewNumberValue(1e12)
		}},
		{"ignore port in host matching", func(rc *routev3.RouteConfiguration) { rc.IgnorePortInHostMatching = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := ToRouteConfiguration(base)
			if err != nil {
				t.Fatal(err)
			}
			tt.mutate(rc)
			if p, err := FromRouteConfiguration(rc); err == nil {
				t.Errorf("got policy %+v, want an error", p)
			}
		})
	}
	if _, err := FromRouteConfiguration(nil); err == nil {
		t.Error("FromRouteConfiguration(nil): got no error")
	}
}

// FuzzFromRouteConfiguration: whatever the decoder accepts must translate
// back to exactly its input and pass Envoy validation.
func FuzzFromRouteConfiguration(f *testing.F) {
	f.Add([]byte(`{"name":"egress/a/b"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var rc routev3.RouteConfiguration
		if err := protojson.Unmarshal(data, &rc); err != nil {
			return
		}
		p, err := FromRouteConfiguration(&rc)
		if err != nil {
			return
		}
		again, err := ToRouteConfiguration(p)
		if err != nil {
			t.Fatalf("accepted %s but cannot translate it back: %v", data, err)
		}
		if !proto.Equal(again, &rc) {
			t.Fatalf("accepted %s but it translates back differently", data)
		}
	})
}
