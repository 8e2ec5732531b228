package allowlist

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonicalHost(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		err  error // nil: success
	}{
		{"canonical", "rpc.monad.example", "rpc.monad.example", nil},
		{"uppercase folded", "RPC.Monad.EXAMPLE", "rpc.monad.example", nil},
		{"one trailing dot stripped", "rpc.monad.example.", "rpc.monad.example", nil},
		{"two trailing dots", "rpc.monad.example..", "", ErrBadHost},
		{"unicode to punycode", "bücher.example", "xn--bcher-kva.example", nil},
		{"uppercase unicode", "BÜCHER.example", "xn--bcher-kva.example", nil},
		{"punycode kept", "xn--bcher-kva.example", "xn--bcher-kva.example", nil},
		{"invalid punycode", "xn--a.example", "", ErrBadHost},
		{"fullwidth mapped", "ｅｘａｍｐｌｅ.com", "example.com", nil},
		{"ideographic full stop", "example。com", "example.com", nil},
		{"single label", "localhost", "localhost", nil},
		{"digits in labels", "s3.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com", nil},
		{"empty", "", "", ErrBadHost},
		{"only dot", ".", "", ErrBadHost},
		{"leading dot", ".example.com", "", ErrBadHost},
		{"empty label", "a..example", "", ErrBadHost},
		{"label of 63", strings.Repeat("a", 63) + ".example", strings.Repeat("a", 63) + ".example", nil},
		{"label of 64", strings.Repeat("a", 64) + ".example", "", ErrBadHost},
		{"name of 253", name(253), name(253), nil},
		{"name of 254", name(254), "", ErrBadHost},
		{"huge", strings.Repeat("a.", 10000) + "com", "", ErrBadHost},
		{"underscore", "_dmarc.example.com", "", ErrBadHost},
		{"space", "exa mple.com", "", ErrBadHost},
		{"star", "*.example.com", "", ErrBadHost},
		{"percent", "exa%2ample.com", "", ErrBadHost},
		{"at sign", "user@example.com", "", ErrBadHost},
		{"port attached", "example.com:443", "", ErrBadHost},
		{"slash", "example.com/x", "", ErrBadHost},
		{"nul", "example.com\x00.evil", "", ErrBadHost},
		{"leading hyphen", "-example.com", "", ErrBadHost},
		{"trailing hyphen", "example-.com", "", ErrBadHost},
		{"hyphens 3 and 4 (CDN names use them)", "r4---sn-ab.example", "r4---sn-ab.example", nil},
		{"hyphens 3 and 4 in unicode", "r4---sn-äb.example", "xn--r4---sn-b-22a.example", nil},
		{"zero width joiner", "exa\u200dmple.com", "", ErrBadHost},
		{"right to left mixed", "a\u05d0.example", "", ErrBadHost},
		{"ipv4", "127.0.0.1", "", ErrIPLiteral},
		{"ipv4 trailing dot", "127.0.0.1.", "", ErrIPLiteral},
		{"decimal ipv4", "2130706433", "", ErrIPLiteral},
		{"hex ipv4", "0x7f000001", "", ErrIPLiteral},
		{"octal ipv4", "0177.0.0.1", "", ErrIPLiteral},
		{"short ipv4", "127.1", "", ErrIPLiteral},
		{"mixed hex short", "0x7f.1", "", ErrIPLiteral},
		{"name ending in number", "example.123", "", ErrIPLiteral},
		{"fullwidth ipv4", "１２７．０．０．１", "", ErrIPLiteral},
		{"ipv6", "::1", "", ErrIPLiteral},
		{"bracketed ipv6", "[::1]", "", ErrIPLiteral},
		{"mapped ipv6", "[::ffff:169.254.169.254]", "", ErrIPLiteral},
		{"ipv6 zone", "fe80::1%eth0", "", ErrIPLiteral},
		{"hex-looking label not last", "0x7f.example", "0x7f.example", nil},
		{"not-a-number last label", "a.0xg", "a.0xg", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalHost(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("CanonicalHost(%q): got %q, %v; want error %v", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CanonicalHost(%q): got %q, %v; want %q", tc.in, got, err, tc.want)
			}
			// Canonical output is a fixed point.
			if again, err := CanonicalHost(got); err != nil || again != got {
				t.Errorf("CanonicalHost(%q) again: got %q, %v; want %q", got, again, err, got)
			}
		})
	}
}

// name builds a valid host of exactly n bytes out of 63-byte labels.
func name(n int) string {
	var b strings.Builder
	for b.Len() < n {
		left := n - b.Len()
		if b.Len() > 0 {
			b.WriteByte('.')
			left--
		}
		b.WriteString(strings.Repeat("a", min(63, max(left, 1))))
	}
	return b.String()
}

func BenchmarkCanonicalHost(b *testing.B) {
	for _, in := range []string{"rpc.monad.example", "RPC.Monad.Example.", "bücher.example"} {
		b.Run(in, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := CanonicalHost(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
