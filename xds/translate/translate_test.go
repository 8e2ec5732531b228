package translate

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cordon-dev/cordon/internal/allowlist"
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
		{"job ending in -", func(p *allowlist.JobPolicy) { p.Job = "j-" }, "lowercase slugs"},
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

// TestFromRouteConfigurationNil: the hostile route configurations a
// broken control plane could send are xds/routeconfig's tests
// (TestDecodeRefusesHostileRoutes), as FromRouteConfiguration is
// routeconfig.Decode of the wire form.
func TestFromRouteConfigurationNil(t *testing.T) {
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
