package scrub

import (
	"encoding/hex"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestAutomatonMatchesBruteForce compares every reported match (end, length)
// with a strings.Index search, over a small alphabet so patterns overlap
// and share prefixes and suffixes.
func TestAutomatonMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "abc"[r.IntN(3)]
		}
		return string(b)
	}
	for iter := 0; iter < 200; iter++ {
		var pats [][]byte
		var ids []int32
		for i := 0; i < 1+r.IntN(30); i++ {
			pats = append(pats, []byte(word(1+r.IntN(8))))
			ids = append(ids, int32(i))
		}
		a := buildAutomaton(pats, ids)
		text := word(300)
		type m struct{ end, length int }
		var got, want []m
		ref := uint32(root)
		for i := 0; i < len(text); i++ {
			ref = a.step(ref, text[i])
			for n := int32(a.id(ref)); n >= 0; n = a.dictLink[n] {
				for _, o := range a.outs[a.outStart[n]:a.outStart[n+1]] {
					got = append(got, m{i + 1, int(o.length)})
				}
			}
			n := a.id(ref)
			if want := a.outStart[n] != a.outStart[n+1] || a.dictLink[n] >= 0; a.hasOut(ref) != want {
				t.Fatalf("iter %d pos %d: hasOut %v, want %v", iter, i, !want, want)
			}
			if d := int(a.live[a.id(ref)]); !isLongestSuffix(text[:i+1], d, pats) {
				t.Fatalf("iter %d pos %d: live %d is not the longest extendable prefix", iter, i, d)
			}
		}
		seen := map[string]bool{}
		for _, p := range pats {
			if seen[string(p)] {
				continue
			}
			seen[string(p)] = true
			for i := 0; i+len(p) <= len(text); i++ {
				if strings.HasPrefix(text[i:], string(p)) {
					want = append(want, m{i + len(p), len(p)})
				}
			}
		}
		cmp := func(x, y m) int { return (x.end-y.end)*100 + x.length - y.length }
		slices.SortFunc(got, cmp)
		slices.SortFunc(want, cmp)
		got = slices.Compact(got) // the same text under two ids is one match here
		if !slices.Equal(got, want) {
			t.Fatalf("iter %d: got %d matches, want %d", iter, len(got), len(want))
		}
	}
}

// isLongestSuffix reports whether d is the length of the longest suffix of
// s that is a proper prefix of some pattern (one more byte could extend it).
func isLongestSuffix(s string, d int, pats [][]byte) bool {
	longest := 0
	for _, p := range pats {
		for l := min(len(p)-1, len(s)); l > longest; l-- {
			if strings.HasSuffix(s, string(p[:l])) {
				longest = l
				break
			}
		}
	}
	return longest == d
}

// TestScanLanes checks the four-lane walk against a single walk.
func TestScanLanes(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	s := mustNew(t, Config{Secrets: benchSecrets(50)})
	a := s.ac
	for iter := 0; iter < 300; iter++ {
		text := []byte(ordinaryText(r, laneMin+r.IntN(8000)))
		// Plant partial and whole secrets and rule triggers.
		for k := 0; k < r.IntN(4); k++ {
			v := benchSecrets(50)[r.IntN(50)].Value
			v = v[:1+r.IntN(len(v))]
			at := r.IntN(len(text) - len(v))
			copy(text[at:], v)
		}
		// Long unfinished prefixes (hex forms) across lane boundaries, so
		// the warm-up is sometimes too short and the check must catch it.
		for k := 0; k < r.IntN(20); k++ {
			v := hex.EncodeToString([]byte(benchSecrets(50)[r.IntN(50)].Value))
			v = v[:40+r.IntN(len(v)-41)]
			q := min(len(text)/4, laneBlock)
			at := (1+r.IntN(3))*q - len(v) + 1 + r.IntN(len(v)-laneWarmup)
			if at >= 0 && at+len(v) <= len(text) {
				copy(text[at:], v)
			}
		}
		ref := uint32(root)
		n, got := a.scan(ref, text)
		want := ref
		wantN := len(text)
		for i, b := range text {
			want = a.step(want, b)
			if a.hasOut(want) {
				wantN = i + 1
				break
			}
		}
		if n != wantN || got != want {
			t.Fatalf("iter %d: got (%d, %d), want (%d, %d)", iter, n, got, wantN, want)
		}
	}
}
