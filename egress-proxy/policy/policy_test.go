package policy

import (
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

func testPolicy() *allowlist.JobPolicy {
	return &allowlist.JobPolicy{
		Org: "acme", Job: "block_follower", Class: allowlist.ClassPlatform,
		Rules: []allowlist.Rule{
			{Host: "s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:storage"},
			{Host: "*.s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:storage"},
			{Host: "rpc.monad.example", Ports: []uint16{443, 8545}, Source: "endpoint_set:rpc"},
			{Host: "*.hooks.example", Ports: []uint16{443}, Source: "webhook:https://x.hooks.example/"},
			{CIDR: netip.MustParsePrefix("10.20.0.0/16"), Ports: []uint16{5432}, Source: "endpoint_set:rpc"},
			{CIDR: netip.MustParsePrefix("fd12::/16"), Ports: []uint16{5432}, Source: "endpoint_set:rpc"},
		},
	}
}

func mustCompile(t testing.TB, p *allowlist.JobPolicy) *Compiled {
	t.Helper()
	c, err := Compile(p)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}

func TestMatchName(t *testing.T) {
	c := mustCompile(t, testPolicy())
	tests := []struct {
		name     string
		host     string
		port     uint16
		wantRule string // "" means no match
	}{
		{"exact", "s3.us-east-1.amazonaws.com", 443, "s3.us-east-1.amazonaws.com:443"},
		{"exact wrong port", "s3.us-east-1.amazonaws.com", 80, ""},
		{"wildcard one level", "bucket.s3.us-east-1.amazonaws.com", 443, "*.s3.us-east-1.amazonaws.com:443"},
		{"wildcard deep", "a.b.c.s3.us-east-1.amazonaws.com", 443, "*.s3.us-east-1.amazonaws.com:443"},
		{"wildcard wrong port", "bucket.s3.us-east-1.amazonaws.com", 8443, ""},
		{"wildcard apex without exact rule", "hooks.example", 443, ""},
		{"wildcard sub", "x.hooks.example", 443, "*.hooks.example:443"},
		{"second port", "rpc.monad.example", 8545, "rpc.monad.example:8545"},
		{"suffix lookalike", "evilrpc.monad.example", 443, ""},
		{"label suffix lookalike", "bucket.evils3.us-east-1.amazonaws.com", 443, ""},
		{"parent of exact", "monad.example", 443, ""},
		{"child of exact", "x.rpc.monad.example", 443, ""},
		{"other host", "evil.com", 443, ""},
		{"empty", "", 443, ""},
		{"dot", ".", 443, ""},
		{"homograph punycode", "xn--pple-43d.com", 443, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rule, ok := c.MatchName(tt.host, tt.port)
			if ok != (tt.wantRule != "") || rule != tt.wantRule {
				t.Errorf("MatchName(%q, %d): got %q, %v, want %q", tt.host, tt.port, rule, ok, tt.wantRule)
			}
		})
	}
}

func TestCheckAddr(t *testing.T) {
	c := mustCompile(t, testPolicy())
	unsafe := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16")}
	tests := []struct {
		name       string
		addr       string
		port       uint16
		unsafe     []netip.Prefix
		wantReason Reason
		wantRule   string
	}{
		{"public", "93.184.216.34", 443, nil, ReasonNone, ""},
		{"public v6", "2606:4700::1111", 443, nil, ReasonNone, ""},
		{"loopback", "127.0.0.1", 443, nil, ReasonNonPublicAddress, ""},
		{"loopback unsafe", "127.0.0.1", 443, unsafe, ReasonNone, ""},
		{"mapped loopback unsafe", "::ffff:127.0.0.1", 443, unsafe, ReasonNone, ""},
		{"private no rule", "10.0.0.1", 5432, nil, ReasonNonPublicAddress, ""},
		{"private cidr rule", "10.20.3.4", 5432, nil, ReasonNone, "10.20.0.0/16:5432"},
		{"private cidr rule wrong port", "10.20.3.4", 443, nil, ReasonNonPublicAddress, ""},
		{"mapped private cidr", "::ffff:10.20.3.4", 5432, nil, ReasonNone, "10.20.0.0/16:5432"},
		{"ula cidr", "fd12::5", 5432, nil, ReasonNone, "fd12::/16:5432"},
		{"metadata", "169.254.169.254", 80, nil, ReasonMetadata, ""},
		{"metadata unsafe", "169.254.169.254", 80, unsafe, ReasonMetadata, ""},
		{"metadata mapped", "::ffff:169.254.169.254", 80, unsafe, ReasonMetadata, ""},
		{"metadata nat64", "64:ff9b::a9fe:a9fe", 80, nil, ReasonMetadata, ""},
		{"ecs creds", "169.254.170.2", 80, unsafe, ReasonMetadata, ""},
		{"imds v6", "fd00:ec2::254", 80, nil, ReasonMetadata, ""},
		{"link local unsafe", "169.254.1.1", 80, unsafe, ReasonNone, ""},
		{"cgnat", "100.64.0.1", 443, nil, ReasonNonPublicAddress, ""},
		{"nat64 public", "64:ff9b::808:808", 443, nil, ReasonNonPublicAddress, ""},
		{"6to4", "2002:808:808::1", 443, nil, ReasonNonPublicAddress, ""},
		{"unspecified", "0.0.0.0", 443, nil, ReasonNonPublicAddress, ""},
		{"multicast", "224.0.0.1", 443, nil, ReasonNonPublicAddress, ""},
		{"invalid", "", 443, nil, ReasonNonPublicAddress, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a netip.Addr
			if tt.addr != "" {
				a = netip.MustParseAddr(tt.addr)
			}
			rule, reason := c.CheckAddr(a, tt.port, tt.unsafe)
			if reason != tt.wantReason || rule != tt.wantRule {
				t.Errorf("CheckAddr(%s, %d): got %q, %q, want %q, %q", tt.addr, tt.port, rule, reason, tt.wantRule, tt.wantReason)
			}
		})
	}
}

func TestCheckLiteral(t *testing.T) {
	c := mustCompile(t, testPolicy())
	tests := []struct {
		name       string
		addr       string
		port       uint16
		wantReason Reason
	}{
		{"public literal without rule", "93.184.216.34", 443, ReasonIPLiteral},
		{"loopback literal", "127.0.0.1", 80, ReasonIPLiteral},
		{"cidr literal", "10.20.0.9", 5432, ReasonNone},
		{"cidr literal wrong port", "10.20.0.9", 22, ReasonIPLiteral},
		{"metadata literal", "169.254.169.254", 80, ReasonMetadata},
		{"metadata mapped literal", "::ffff:169.254.169.254", 80, ReasonMetadata},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, reason := c.CheckLiteral(netip.MustParseAddr(tt.addr), tt.port)
			if reason != tt.wantReason {
				t.Errorf("CheckLiteral(%s, %d): got %q, want %q", tt.addr, tt.port, reason, tt.wantReason)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		rule allowlist.Rule
		want string
	}{
		{"no ports", allowlist.Rule{Host: "a.example"}, "no ports"},
		{"port zero", allowlist.Rule{Host: "a.example", Ports: []uint16{0}}, "port 0"},
		{"uppercase host", allowlist.Rule{Host: "A.example", Ports: []uint16{443}}, "not canonical"},
		{"trailing dot", allowlist.Rule{Host: "a.example.", Ports: []uint16{443}}, "not canonical"},
		{"unicode host", allowlist.Rule{Host: "bücher.example", Ports: []uint16{443}}, "not canonical"},
		{"ip host", allowlist.Rule{Host: "10.0.0.1", Ports: []uint16{443}}, "IP address"},
		{"both", allowlist.Rule{Host: "a.example", CIDR: netip.MustParsePrefix("10.0.0.0/8"), Ports: []uint16{1}}, "exactly one"},
		{"neither", allowlist.Rule{Ports: []uint16{1}}, "exactly one"},
		{"metadata cidr", allowlist.Rule{CIDR: netip.MustParsePrefix("169.254.0.0/16"), Ports: []uint16{80}}, "metadata"},
		{"everything cidr", allowlist.Rule{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Ports: []uint16{80}}, "metadata"},
		{"imds v6 cidr", allowlist.Rule{CIDR: netip.MustParsePrefix("fd00::/8"), Ports: []uint16{80}}, "metadata"},
		{"unmasked cidr", allowlist.Rule{CIDR: netip.MustParsePrefix("10.0.0.1/8"), Ports: []uint16{80}}, "host bits"},
		{"wildcard in middle", allowlist.Rule{Host: "a.*.example", Ports: []uint16{443}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(&allowlist.JobPolicy{Org: "o", Job: "j", Rules: []allowlist.Rule{tt.rule}})
			if err == nil {
				t.Fatalf("Compile: got nil error, want one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Compile: got %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := Compile(&allowlist.JobPolicy{Org: "o", Job: "j", Mode: "audit"}); err == nil {
		t.Error("Compile with mode audit: got nil error, want unknown mode")
	}
}

func TestStore(t *testing.T) {
	s := NewStore()
	if _, ok := s.Lookup("acme", "block_follower"); ok {
		t.Fatal("Lookup before Apply: got a policy, want deny-all")
	}
	if err := s.Apply([]*allowlist.JobPolicy{testPolicy()}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	c, ok := s.Lookup("acme", "block_follower")
	if !ok || c.Org() != "acme" || c.Job() != "block_follower" {
		t.Fatalf("Lookup: got %v, %v, want acme/block_follower", c, ok)
	}
	bad := &allowlist.JobPolicy{Org: "acme", Job: "other", Rules: []allowlist.Rule{{Host: "x.example"}}}
	other := &allowlist.JobPolicy{Org: "acme", Job: "new", Rules: []allowlist.Rule{{Host: "y.example", Ports: []uint16{443}}}}
	if err := s.Apply([]*allowlist.JobPolicy{other, bad}); err == nil {
		t.Fatal("Apply with a bad policy: got nil error")
	}
	if _, ok := s.Lookup("acme", "new"); ok {
		t.Error("after failed Apply: new policy visible, want nothing changed")
	}
	if _, ok := s.Lookup("acme", "block_follower"); !ok {
		t.Error("after failed Apply: old policy gone, want nothing changed")
	}
	if err := s.Apply([]*allowlist.JobPolicy{testPolicy(), testPolicy()}); err == nil {
		t.Error("Apply with a duplicate job: got nil error")
	}
	if err := s.Apply([]*allowlist.JobPolicy{other}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if _, ok := s.Lookup("acme", "block_follower"); ok {
		t.Error("after Apply without the job: old policy still visible")
	}
}

func TestStoreConcurrentSwap(t *testing.T) {
	s := NewStore()
	a := testPolicy()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c, ok := s.Lookup("acme", "block_follower"); ok {
				if _, ok := c.MatchName("rpc.monad.example", 443); !ok {
					t.Error("concurrent Lookup saw a half-applied policy")
					return
				}
			}
		}
	}()
	for i := 0; i < 200; i++ {
		ps := []*allowlist.JobPolicy{a}
		if i%2 == 1 {
			ps = nil
		}
		if err := s.Apply(ps); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestReasonsDistinct(t *testing.T) {
	seen := map[Reason]bool{}
	for _, r := range Reasons {
		if r == ReasonNone || seen[r] {
			t.Errorf("reason %q empty or listed twice", r)
		}
		seen[r] = true
	}
}

func BenchmarkMatchName(b *testing.B) {
	c := mustCompile(b, testPolicy())
	s := NewStore()
	if err := s.Apply([]*allowlist.JobPolicy{testPolicy()}); err != nil {
		b.Fatal(err)
	}
	b.Run("exact", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := c.MatchName("rpc.monad.example", 8545); !ok {
				b.Fatal("no match")
			}
		}
	})
	b.Run("wildcard_deep", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := c.MatchName("a.b.bucket.s3.us-east-1.amazonaws.com", 443); !ok {
				b.Fatal("no match")
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := c.MatchName("exfil.attacker.example.net", 443); ok {
				b.Fatal("match")
			}
		}
	})
	b.Run("lookup_and_match_and_addr", func(b *testing.B) {
		a := netip.MustParseAddr("52.216.8.1")
		b.ReportAllocs()
		for b.Loop() {
			c, ok := s.Lookup("acme", "block_follower")
			if !ok {
				b.Fatal("no policy")
			}
			if _, ok := c.MatchName("bucket.s3.us-east-1.amazonaws.com", 443); !ok {
				b.Fatal("no match")
			}
			if _, r := c.CheckAddr(a, 443, nil); r != ReasonNone {
				b.Fatal(r)
			}
		}
	})
}
