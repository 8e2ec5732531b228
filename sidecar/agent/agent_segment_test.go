package agent

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestValidSegmentMatchesRegexp: the written-out check accepts exactly what the
// regexp it replaced accepted.
func TestValidSegmentMatchesRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	cases := []string{"", "a", "0", "_", "-", "_a", "-a", "a_", "a-", "acme", "block_follower", "A", "a/b", "a.b", "a\n", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64)}
	r := rand.New(rand.NewPCG(1, 2))
	const alphabet = "az09_-A./\n"
	for range 100000 {
		n := r.IntN(8)
		if r.IntN(20) == 0 {
			n = 60 + r.IntN(8)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, s := range cases {
		if got, want := validSegment(s), re.MatchString(s); got != want {
			t.Errorf("validSegment(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
