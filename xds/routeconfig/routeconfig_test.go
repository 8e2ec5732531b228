package routeconfig_test

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/xds/routeconfig"
	"github.com/cordon-dev/cordon/xds/translate"
)

// These tests hold routeconfig to go-control-plane, which the package
// itself must not import: what the server encodes with the real Envoy types
// the lean decoder reads back to the very same policy, and whatever the lean
// decoder accepts is, read by the real types, exactly what the server would
// have sent for that policy.

var update = flag.Bool("update", false, "rewrite the fuzz seeds in testdata/fuzz/")

func policies() map[string]*allowlist.JobPolicy {
	return map[string]*allowlist.JobPolicy{
		"platform_rpc": {
			Org: "acme", Job: "block_follower", Class: allowlist.ClassPlatform, Mode: allowlist.ModeEnforce,
			Rules: []allowlist.Rule{
				{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:platform_storage"},
				{Host: "*.s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:platform_storage"},
				{Host: "rpc.monad.example", Ports: []uint16{443, 8545}, Source: "endpoint_set:monad_rpc"},
				{CIDR: netip.MustParsePrefix("10.20.0.0/16"), Ports: []uint16{5432}, Source: "endpoint_set:monad_rpc"},
				{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443, 8443}, Source: "endpoint_set:backups"},
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

// samePolicy says how got differs from want, "" when it does not. An empty
// Mode is enforce.
func samePolicy(want, got *allowlist.JobPolicy) string {
	w := *want
	if w.Mode == "" {
		w.Mode = allowlist.ModeEnforce
	}
	if got.Org != w.Org || got.Job != w.Job || got.Class != w.Class || got.Mode != w.Mode || len(got.Rules) != len(w.Rules) {
		return fmt.Sprintf("got %+v, want %+v", got, &w)
	}
	for i, r := range w.Rules {
		g := got.Rules[i]
		if g.Host != r.Host || g.CIDR != r.CIDR || g.Source != r.Source || !slices.Equal(g.Ports, r.Ports) {
			return fmt.Sprintf("rule %d: got %+v, want %+v", i, g, r)
		}
	}
	return ""
}

func envoyWire(t testing.TB, p *allowlist.JobPolicy, deterministic bool) []byte {
	t.Helper()
	rc, err := translate.ToRouteConfiguration(p)
	if err != nil {
		t.Fatalf("ToRouteConfiguration(%+v): %v", p, err)
	}
	b, err := proto.MarshalOptions{Deterministic: deterministic}.Marshal(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMarshalIsProtobufDeterministic: routeconfig's types and field numbers
// are go-control-plane's, byte for byte.
func TestMarshalIsProtobufDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 500 {
		p := randomPolicy(r)
		built, err := routeconfig.Build(p)
		if err != nil {
			t.Fatalf("case %d: Build(%+v): %v", i, p, err)
		}
		if got, want := routeconfig.Marshal(built), envoyWire(t, p, true); !bytes.Equal(got, want) {
			t.Fatalf("case %d: Marshal(Build(%+v)) differs from go-control-plane's deterministic encoding\ngot  %x\nwant %x", i, p, got, want)
		}
	}
}

// TestDecodeWhatTheServerSends: policies encoded by the server's code
// (go-control-plane types, the default non-deterministic marshal, as gRPC
// sends them) decode to identical policies.
func TestDecodeWhatTheServerSends(t *testing.T) {
	for name, p := range policies() {
		got, err := routeconfig.Decode(envoyWire(t, p, false))
		if err != nil {
			t.Fatalf("%s: Decode: %v", name, err)
		}
		if d := samePolicy(p, got); d != "" {
			t.Errorf("%s: %s", name, d)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		p := randomPolicy(r)
		got, err := routeconfig.Decode(envoyWire(t, p, false))
		if err != nil {
			t.Fatalf("case %d: Decode of %+v: %v", i, p, err)
		}
		if d := samePolicy(p, got); d != "" {
			t.Fatalf("case %d: %s", i, d)
		}
	}
}

// TestUnmarshalRefuses covers what a protobuf decoder would accept
// silently but the lean decoder must not: fields it does not model, and
// repeated or conflicting singular fields.
func TestUnmarshalRefuses(t *testing.T) {
	good := envoyWire(t, policies()["platform_rpc"], true)
	if _, err := routeconfig.Decode(good); err != nil {
		t.Fatalf("Decode(good): %v", err)
	}
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	msg := func(num protowire.Number, m []byte) []byte {
		return protowire.AppendBytes(tag(nil, num, protowire.BytesType), m)
	}
	str := func(num protowire.Number, s string) []byte { return msg(num, []byte(s)) }
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(nil, num, protowire.VarintType), v)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	// A route configuration with one virtual host holding one route.
	inRoute := func(route []byte) []byte { return cat(str(1, "egress/a/b"), msg(2, msg(3, route))) }
	value := func(v []byte) []byte {
		return msg(17, msg(1, cat(str(1, "cordon"), msg(2, msg(1, cat(str(1, "org"), msg(2, v)))))))
	}
	deep := str(3, "x")
	for range 40 {
		deep = msg(6, msg(1, deep))
	}
	tests := []struct {
		name string
		wire []byte
		want string
	}{
		{"unknown top-level field", cat(good, varint(14, 1)), "RouteConfiguration field 14"},
		{"unknown field number past 64", cat(good, varint(100, 1)), "RouteConfiguration field 100"},
		{"name twice", cat(good, str(1, "egress/acme/other")), "sent twice"},
		{"name as varint", cat(varint(1, 1), good), "RouteConfiguration field 1"},
		{"fixed32", cat(good, protowire.AppendFixed32(tag(nil, 1, protowire.Fixed32Type), 1)), "wire type 5"},
		{"group", cat(good, tag(nil, 1, protowire.StartGroupType)), "wire type 3"},
		{"truncated", good[:len(good)-1], "unexpected EOF"},
		{"bad tag", cat(good, []byte{0x80}), "unexpected EOF"},
		{"field number zero", cat(good, []byte{0x02, 0x00}), "invalid field number"},
		{"invalid utf-8", cat(str(1, "egress/a/\xff"), good[len(str(1, "")):]), "invalid UTF-8"},
		{"unknown virtual host field", cat(str(1, "egress/a/b"), msg(2, varint(4, 1))), "VirtualHost field 4"},
		{"two actions", inRoute(cat(msg(2, nil), msg(7, nil))), "second action"},
		{"route action twice", inRoute(cat(msg(2, nil), msg(2, nil))), "second action"},
		{"two path specifiers", inRoute(msg(1, cat(str(1, "/"), msg(12, nil)))), "second path specifier"},
		{"connect matcher with content", inRoute(msg(1, msg(12, varint(1, 1)))), "ConnectMatcher field 1"},
		{"match twice", inRoute(cat(msg(1, nil), msg(1, nil))), "sent twice"},
		{"route metadata", inRoute(msg(4, nil)), "Route field 4"},
		{"cluster twice", inRoute(msg(2, cat(str(1, "a"), str(1, "b")))), "second cluster specifier"},
		{"cluster header", inRoute(msg(2, str(2, "x-host"))), "RouteAction field 2"},
		{"connect config allow_post", inRoute(msg(2, msg(25, msg(3, varint(2, 1))))), "ConnectConfig field 2"},
		{"status past 32 bits", inRoute(msg(7, varint(1, 1<<32|403))), "out of range"},
		{"body from a file", inRoute(msg(7, msg(2, str(1, "/etc/passwd")))), "DataSource field 1"},
		{"header append action", cat(str(1, "egress/a/b"), msg(2, msg(10, varint(3, 1)))), "HeaderValueOption field 3"},
		{"metadata twice", cat(good, msg(17, nil)), "sent twice"},
		{"typed filter metadata", cat(str(1, "egress/a/b"), msg(17, msg(2, nil))), "Metadata field 2"},
		{"duplicate metadata key", cat(str(1, "egress/a/b"), msg(17, cat(msg(1, str(1, "cordon")), msg(1, str(1, "cordon"))))), `key "cordon" twice`},
		{"duplicate struct key", value(msg(5, cat(msg(1, str(1, "k")), msg(1, str(1, "k"))))), `key "k" twice`},
		{"two kinds", value(cat(str(3, "acme"), varint(4, 1))), "second kind"},
		{"bool 2", value(varint(4, 2)), "want 0 or 1"},
		{"null 1", value(varint(1, 1)), "want NULL_VALUE"},
		{"map entry extra field", cat(str(1, "egress/a/b"), msg(17, msg(1, cat(str(1, "cordon"), varint(3, 1))))), "field 3"},
		{"nested too deep", value(deep), "nested deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := routeconfig.Decode(tt.wire)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %+v, %v; want an error containing %q", p, err, tt.want)
			}
		})
	}
}

// TestDecodeRefusesHostileRoutes feeds the decoder route configurations a
// broken or hostile control plane could send, well-formed and built with
// the real types: every one must be refused (the client NACKs and keeps
// its last good policy).
func TestDecodeRefusesHostileRoutes(t *testing.T) {
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
		{"deny status 200", func(rc *routev3.RouteConfiguration) {
			last := rc.VirtualHosts[len(rc.VirtualHosts)-1]
			last.Routes[0].GetDirectResponse().Status = 200
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
		{"require tls on a host", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].RequireTls = routev3.VirtualHost_ALL }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, err := translate.ToRouteConfiguration(policies()["platform_rpc"])
			if err != nil {
				t.Fatal(err)
			}
			tt.mutate(rc)
			wire, err := proto.Marshal(rc)
			if err != nil {
				t.Fatal(err)
			}
			if p, err := routeconfig.Decode(wire); err == nil {
				t.Errorf("got policy %+v, want an error", p)
			}
		})
	}
}

func TestParseResourceName(t *testing.T) {
	tests := []struct {
		name, org, job string
		ok             bool
	}{
		{"egress/acme/block_follower", "acme", "block_follower", true},
		{"egress/acme", "", "", false},
		{"egress/acme/a/b", "", "", false},
		{"egress//j", "", "", false},
		{"ingress/acme/j", "", "", false},
		{"egress/ACME/j", "", "", false},
		// jobid.IsSlug: no allowlist or SPIFFE ID names these.
		{"egress/acme/j-", "", "", false},
		{"egress/acme_/j", "", "", false},
	}
	for _, tt := range tests {
		org, job, err := routeconfig.ParseResourceName(tt.name)
		if (err == nil) != tt.ok || org != tt.org || job != tt.job {
			t.Errorf("ParseResourceName(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.name, org, job, err, tt.org, tt.job, tt.ok)
		}
	}
}

// TestValidatorsMatchRegexps: the hand-written host check accepts exactly
// what the regular expression it replaces accepts. (Org and job names are
// jobid.IsSlug, tested against its regexp in internal/jobid.)
func TestValidatorsMatchRegexps(t *testing.T) {
	hostRE := regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	cases := []string{"", "a", "-", "_a", "a_", "a-", "*.", "*", "*.a", "**.a", "*.*.a", "a..b", ".a", "a.", "a.b-", "a.-b",
		"A", "a\n", "\na", "x-1.y.z", strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 63) + ".b",
		strings.Repeat("a", 64) + ".b", "a/b", "é", "a b"}
	r := rand.New(rand.NewPCG(5, 6))
	const alphabet = "ab0-_.*A/\n"
	for range 200000 {
		n := r.IntN(12)
		if r.IntN(50) == 0 {
			n = 60 + r.IntN(8)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		if got, want := routeconfig.ValidHost(s), hostRE.MatchString(s); got != want {
			t.Errorf("ValidHost(%q) = %v, regexp says %v", s, got, want)
		}
	}
}

// TestWriteFuzzSeeds keeps testdata/fuzz/FuzzDecode in step with the
// mapping: the seeds are the wire form the server sends (-update rewrites
// them).
func TestWriteFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for name, p := range policies() {
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", envoyWire(t, p, true))
		path := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != seed {
			t.Errorf("%s is missing or stale (run go test ./xds/routeconfig -run TestWriteFuzzSeeds -update): %v", path, err)
		}
	}
}

// FuzzDecode: whatever the lean decoder accepts, go-control-plane's types
// read as exactly the route configuration the server would send for the
// decoded policy, and it passes Envoy validation. So the proxy never
// enforces anything but what it was sent.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(nil))
	f.Fuzz(func(t *testing.T, wire []byte) {
		p, err := routeconfig.Decode(wire)
		if err != nil {
			return
		}
		var rc routev3.RouteConfiguration
		if err := proto.Unmarshal(wire, &rc); err != nil {
			t.Fatalf("accepted %x, which protobuf cannot read: %v", wire, err)
		}
		again, err := translate.ToRouteConfiguration(p)
		if err != nil {
			t.Fatalf("accepted %x but cannot translate it back: %v", wire, err)
		}
		if !proto.Equal(again, &rc) {
			t.Fatalf("accepted %x as %+v but the server would send something else for it", wire, p)
		}
	})
}
