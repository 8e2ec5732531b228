package scrub

import (
	"bytes"
	"math/rand/v2"
	"regexp"
	"testing"
)

var markerRE = regexp.MustCompile(`(\[REDACTED:[A-Za-z0-9_./-]+\]|\*\*\*REDACTED\*\*\*)`)

// normalizeMarkers replaces every redaction marker by one placeholder: when
// a rule's redaction and a secret's overlap, which marker text the merged
// redaction gets depends on when the bytes arrived (a rule redaction that
// already started was written out), what is redacted does not.
func normalizeMarkers(s string) string {
	return markerRE.ReplaceAllString(s, "<R>")
}

var fuzzSecrets = []Secret{
	{Name: "API_KEY", Value: "fuzz-Secret-VALUE-0123"},
	{Name: "PASSWORD", Value: "p@ss w0rd\n\"<>&é\\end"},
}

var fuzzScrubber = func() *Scrubber {
	s, err := New(Config{Secrets: fuzzSecrets})
	if err != nil {
		panic(err)
	}
	return s
}()

// FuzzScrub plants one secret, in the form chosen by form, at offset at of
// arbitrary text, and scrubs it with the write sizes given by split. The
// output must not contain any form of any secret, and must not depend on
// how the input was split.
func FuzzScrub(f *testing.F) {
	f.Add([]byte("hello world\n"), uint8(0), uint16(6), []byte{1})
	f.Fuzz(func(t *testing.T, text []byte, form uint8, at uint16, split []byte) {
		if len(text) > 1<<16 {
			return
		}
		r := rand.New(rand.NewPCG(uint64(at), uint64(form)))
		sec := fuzzSecrets[int(form)%len(fuzzSecrets)].Value
		cut := 0
		if len(text) > 0 {
			cut = int(at) % (len(text) + 1)
		}
		in := append(append(append([]byte{}, text[:cut]...), encodeSecret(r, sec, int(form)%numForms)...), text[cut:]...)

		var sizes []int
		for _, b := range split {
			sizes = append(sizes, int(b))
		}
		whole := scrubAll(t, fuzzScrubber, string(in), nil)
		got := scrubAll(t, fuzzScrubber, string(in), sizes)
		if normalizeMarkers(got) != normalizeMarkers(whole) {
			t.Fatalf("split %v changes the output:\n got %q\nwant %q", sizes, got, whole)
		}
		for _, s := range fuzzSecrets {
			if leaks(got, s.Value) {
				t.Fatalf("output leaks %s: %q", s.Name, got)
			}
		}
		// Without anything to redact, text passes byte-identical.
		if !bytes.ContainsAny(text, "@-_:=eAghkxBb") {
			if out := scrubAll(t, fuzzScrubber, string(text), sizes); out != string(text) {
				t.Fatalf("text without triggers changed: got %q, want %q", out, text)
			}
		}
	})
}
