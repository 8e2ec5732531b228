package allowlist

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/internal/jobid"
)

// TestSlugsAreSPIFFESegments checks the name rule against go-spiffe: every
// name the parser accepts is a valid SPIFFE ID path segment, since org and
// job become spiffe://TD/org/ORG/job/JOB.
func TestSlugsAreSPIFFESegments(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"acme", true},
		{"block_follower", true},
		{"cryo-ingest", true},
		{"a", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{".", false},
		{"..", false},
		{"a.b", false},
		{"Acme", false},
		{"_acme", false},
		{"acme-", false},
		{"a/b", false},
		{"a b", false},
		{"a%2fb", false},
		{"ａcme", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := jobid.IsSlug(tc.name); got != tc.ok {
				t.Fatalf("slug %q: got %v, want %v", tc.name, got, tc.ok)
			}
			if tc.ok {
				if err := spiffeid.ValidatePathSegment(tc.name); err != nil {
					t.Errorf("accepted slug %q is not a SPIFFE path segment: %v", tc.name, err)
				}
			}
		})
	}
}
