package scrub

import (
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// benchSecrets returns n random secrets of 24–48 bytes, like API keys.
func benchSecrets(n int) []Secret {
	r := rand.New(rand.NewPCG(7, 8))
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	out := make([]Secret, n)
	for i := range out {
		b := make([]byte, 24+r.IntN(25))
		for j := range b {
			b[j] = alpha[r.IntN(len(alpha))]
		}
		out[i] = Secret{Name: fmt.Sprintf("SECRET_%d", i), Value: string(b)}
	}
	return out
}

// benchLog returns about n bytes of ordinary log text without secrets.
func benchLog(n int) []byte {
	r := rand.New(rand.NewPCG(9, 10))
	return []byte(ordinaryText(r, n))
}

// BenchmarkScrub measures the scrubber on ordinary log text with 1,000
// secrets (every form) and the full rule set, written in 32 KiB writes
// (the size os/exec's copy loop uses).
func BenchmarkScrub(b *testing.B) {
	s, err := New(Config{Secrets: benchSecrets(1000)})
	if err != nil {
		b.Fatal(err)
	}
	benchWrites(b, s, benchLog(1<<20), 32<<10)
}

// benchWrites measures s scrubbing data, written in writes of size bytes
// to one Writer.
func benchWrites(b *testing.B, s *Scrubber, data []byte, size int) {
	w := s.NewWriter(io.Discard)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		for p := data; len(p) > 0; {
			n := min(size, len(p))
			if _, err := w.Write(p[:n]); err != nil {
				b.Fatal(err)
			}
			p = p[n:]
		}
	}
}

// naiveScrubber is the baseline the issue asks for: a strings.Replacer over
// every secret form plus a loop of regular expressions for the rules,
// applied per write (it is not even stream-safe).
type naiveScrubber struct {
	rep   *strings.Replacer
	rules []*regexp.Regexp
}

func newNaive(secrets []Secret) *naiveScrubber {
	var oldnew []string
	for _, s := range secrets {
		for _, f := range secretForms(s.Value) {
			oldnew = append(oldnew, f, "[REDACTED:"+s.Name+"]")
		}
	}
	n := &naiveScrubber{rep: strings.NewReplacer(oldnew...)}
	for _, re := range []string{
		`(AKIA|ASIA)[A-Z0-9]{16}`,
		`gh[pousr]_[A-Za-z0-9]+`, `github_pat_[A-Za-z0-9_]+`,
		`[sr]k_(live|test)_[A-Za-z0-9]+`, `xox[bpaors]-[A-Za-z0-9-]+`, `hooks\.slack\.com/[A-Za-z0-9/_-]+`,
		`eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*`,
		`-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END`,
		`(?i)(password|passwd|secret|token|api_?key|authorization)["']?\s*[:=]\s*["']?[^\s"',;]+`,
		`[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+`,
	} {
		n.rules = append(n.rules, regexp.MustCompile(re))
	}
	return n
}

func (n *naiveScrubber) scrub(p []byte) []byte {
	s := n.rep.Replace(string(p))
	for _, re := range n.rules {
		s = re.ReplaceAllString(s, "***REDACTED***")
	}
	return []byte(s)
}

func BenchmarkNaiveBaseline(b *testing.B) {
	n := newNaive(benchSecrets(1000))
	data := benchLog(1 << 20)
	const writeSize = 32 << 10
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		for p := data; len(p) > 0; {
			k := min(writeSize, len(p))
			io.Discard.Write(n.scrub(p[:k]))
			p = p[k:]
		}
	}
}

// BenchmarkScrubWithHits is BenchmarkScrub with something to redact about
// every 2 KiB: an injected secret in some form, a rule match or an email.
func BenchmarkScrubWithHits(b *testing.B) {
	secrets := benchSecrets(1000)
	s, err := New(Config{Secrets: secrets})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(13, 14))
	var sb strings.Builder
	hits := []string{`{"api_key": "sk_live_abc123xyz"}`, "password=hunter2", "mail bob@example.com",
		"Authorization: Bearer abc.def", "AKIAIOSFODNN7EXAMPLE"}
	for sb.Len() < 1<<20 {
		sb.WriteString(ordinaryText(r, 2048))
		if r.IntN(2) == 0 {
			sb.WriteString(encodeSecret(r, secrets[r.IntN(len(secrets))].Value, r.IntN(numForms)))
		} else {
			sb.WriteString(hits[r.IntN(len(hits))])
		}
	}
	benchWrites(b, s, []byte(sb.String()), 32<<10)
}

// BenchmarkScrubSmallWrites measures line-sized writes (80 bytes).
func BenchmarkScrubSmallWrites(b *testing.B) {
	s, err := New(Config{Secrets: benchSecrets(1000)})
	if err != nil {
		b.Fatal(err)
	}
	benchWrites(b, s, benchLog(1<<20), 80)
}

func BenchmarkNew1000(b *testing.B) {
	secrets := benchSecrets(1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(Config{Secrets: secrets}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNew10(b *testing.B) {
	secrets := benchSecrets(10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(Config{Secrets: secrets}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScrubHexHeavy is log text where every line carries 64-digit hex
// hashes (a block follower's output): hex shares prefixes with the secrets'
// hex forms, so the automaton leaves its shallow states more often.
func BenchmarkScrubHexHeavy(b *testing.B) {
	s, err := New(Config{Secrets: benchSecrets(1000)})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(15, 16))
	var sb strings.Builder
	for sb.Len() < 1<<20 {
		fmt.Fprintf(&sb, "INFO block %d tx 0x%016x%016x%016x%016x status=ok\n", r.IntN(1e8), r.Uint64(), r.Uint64(), r.Uint64(), r.Uint64())
	}
	benchWrites(b, s, []byte(sb.String()), 32<<10)
}
