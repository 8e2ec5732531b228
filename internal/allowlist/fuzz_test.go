package allowlist

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/internal/jobid"
)

// FuzzParse checks that Parse never panics, that every failure is a
// non-empty, sorted ErrorList with real positions, and that what it accepts
// holds the invariants the proxy relies on. Seeds: testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("f.yaml", data)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("got error %v (%T), want a non-empty ErrorList", err, err)
			}
			for i, e := range list {
				if e.Pos.File != "f.yaml" || e.Pos.Line < 1 || e.Pos.Col < 1 || e.Msg == "" {
					t.Fatalf("error %d has a bad position or no message: %#v", i, e)
				}
				if i > 0 {
					p := list[i-1].Pos
					if p.Line > e.Pos.Line || (p.Line == e.Pos.Line && p.Col > e.Pos.Col) {
						t.Fatalf("errors not sorted: %v before %v", p, e.Pos)
					}
				}
			}
			return
		}
		if file.Version != 1 || !jobid.IsSlug(file.Org) {
			t.Fatalf("accepted version %d org %q", file.Version, file.Org)
		}
		td := spiffeid.RequireTrustDomainFromString("example.org")
		for name := range file.Jobs {
			if _, err := spiffeid.FromSegments(td, "org", file.Org, "job", name); err != nil {
				t.Fatalf("accepted org %q job %q that make no SPIFFE ID: %v", file.Org, name, err)
			}
		}
		for _, set := range file.EndpointSets {
			if len(set.Entries) == 0 {
				t.Fatalf("accepted empty endpoint set %s", set.Name)
			}
			for _, e := range set.Entries {
				checkEntry(t, e)
			}
		}
		s := &Set{Files: map[string]*File{file.Org: file}}
		for _, p := range s.Policies() {
			if p.Mode != ModeEnforce && p.Mode != ModeReport {
				t.Fatalf("policy %s has mode %q", p.ID(), p.Mode)
			}
			if p.Class != ClassPlatform && p.Class != ClassUser {
				t.Fatalf("policy %s has class %q", p.ID(), p.Class)
			}
		}
	})
}

// checkEntry asserts what an accepted entry must be.
func checkEntry(t *testing.T, e Entry) {
	t.Helper()
	if (e.Host == "") == !e.CIDR.IsValid() {
		t.Fatalf("entry must have exactly one of host and cidr: %+v", e)
	}
	if len(e.Ports) == 0 || !slices.IsSorted(e.Ports) || slices.Contains(e.Ports, 0) || len(slices.Compact(slices.Clone(e.Ports))) != len(e.Ports) {
		t.Fatalf("entry ports: %v", e.Ports)
	}
	if e.Host != "" {
		name := strings.TrimPrefix(e.Host, "*.")
		if got, err := CanonicalHost(name); err != nil || got != name {
			t.Fatalf("accepted non-canonical host %q: %q, %v", e.Host, got, err)
		}
		return
	}
	if e.CIDR != e.CIDR.Masked() || e.CIDR.Addr().Is4In6() {
		t.Fatalf("accepted non-canonical cidr %v", e.CIDR)
	}
	for _, r := range metadataRanges {
		if e.CIDR.Overlaps(r.prefix) {
			t.Fatalf("accepted cidr %v covering %s", e.CIDR, r.why)
		}
	}
}

// FuzzCanonicalHost checks that CanonicalHost never panics and that its
// output is a valid, canonical, non-address name. Seeds:
// testdata/fuzz/FuzzCanonicalHost.
func FuzzCanonicalHost(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		got, err := CanonicalHost(s)
		if err != nil {
			if !errors.Is(err, ErrBadHost) && !errors.Is(err, ErrIPLiteral) {
				t.Fatalf("CanonicalHost(%q): error %v matches neither ErrBadHost nor ErrIPLiteral", s, err)
			}
			return
		}
		if checkLDH(got) != nil || isIPLiteral(got) || strings.HasSuffix(got, ".") {
			t.Fatalf("CanonicalHost(%q) = %q: not a valid canonical name", s, got)
		}
		if again, err := CanonicalHost(got); err != nil || again != got {
			t.Fatalf("CanonicalHost(%q) = %q, but CanonicalHost(%q) = %q, %v", s, got, got, again, err)
		}
		if isASCII(s) && !strings.Contains(strings.ToLower(s), "xn--") && got != strings.ToLower(strings.TrimSuffix(s, ".")) {
			t.Fatalf("CanonicalHost(%q) = %q: ASCII input must only be lowercased", s, got)
		}
		if _, err := lookupProfile.ToASCII(got); err != nil {
			t.Fatalf("CanonicalHost(%q) = %q, which the IDNA profile refuses: %v", s, got, err)
		}
	})
}
