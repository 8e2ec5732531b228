package scrub

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

// The property tests build outputs with encoders from the standard library
// (not secretForms), so a form secretForms forgot shows up as a leak.

var ordinaryWords = strings.Fields(`INFO WARN DEBUG block height 1829374 synced peers=12 latency_ms=34
GET /api/v1/blocks?from=100 200 OK elapsed 12.5ms user_id=42 job=ingest retry 3/5 "status":"ok"
{"level":"info","msg":"processed batch","count":512} worker-7 shard_3 connected to db.internal:5432
took 0.3s -- checkpoint saved at /var/lib/job/state.json; next run in 60s [ok] (cached) x86_64`)

func ordinaryText(r *rand.Rand, n int) string {
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(ordinaryWords[r.IntN(len(ordinaryWords))])
		if r.IntN(8) == 0 {
			b.WriteString("\n")
		} else {
			b.WriteString(" ")
		}
	}
	return b.String()
}

func randomSecret(r *rand.Rand) string {
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	const special = "+/=-_.~!$&'()*,;:@%<>\"\\ é"
	n := MinSecretLen + r.IntN(40)
	var b strings.Builder
	for b.Len() < n {
		if r.IntN(5) == 0 {
			b.WriteByte(special[r.IntN(len(special))])
		} else {
			b.WriteByte(alpha[r.IntN(len(alpha))])
		}
	}
	if r.IntN(6) == 0 {
		b.WriteString("\nsecond line of the value " + fmt.Sprint(r.Int()) + "\n")
	}
	return b.String()
}

// encodeSecret returns v printed in form f, with random neighbours for the
// base64 alignments.
func encodeSecret(r *rand.Rand, v string, f int) string {
	noise := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return string(b)
	}
	switch f {
	case 0:
		return v
	case 1:
		return hex.EncodeToString([]byte(v))
	case 2:
		return strings.ToUpper(hex.EncodeToString([]byte(v)))
	case 3, 4, 5, 6:
		encs := []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding}
		return encs[f-3].EncodeToString([]byte(noise(r.IntN(7)) + v + noise(r.IntN(7))))
	case 7:
		return url.QueryEscape(v)
	case 8:
		return url.PathEscape(v)
	case 9:
		b, _ := json.Marshal(v)
		return string(b)
	case 10:
		return strings.ReplaceAll(v, "\n", "\r\n")
	default:
		return fmt.Sprintf("%q", v)
	}
}

const numForms = 12

// chunkings returns write-size patterns: one write, 1-byte writes and
// random splits.
func chunkings(r *rand.Rand) [][]int {
	return [][]int{nil, {1}, {1 + r.IntN(3), 1 + r.IntN(17), 1 + r.IntN(200)}, {r.IntN(5000) + 1}}
}

func TestPropertyNoLeak(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 60; iter++ {
		var secrets []Secret
		for i := 0; i < 1+r.IntN(6); i++ {
			secrets = append(secrets, Secret{Name: fmt.Sprintf("S%d", i), Value: randomSecret(r)})
		}
		s, err := New(Config{Secrets: secrets})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		var in strings.Builder
		for i := 0; i < 20; i++ {
			in.WriteString(ordinaryText(r, r.IntN(300)))
			sec := secrets[r.IntN(len(secrets))].Value
			in.WriteString(encodeSecret(r, sec, r.IntN(numForms)))
		}
		var first string
		for ci, sizes := range chunkings(r) {
			got := scrubAll(t, s, in.String(), sizes)
			for _, sec := range secrets {
				if leaks(got, sec.Value) {
					t.Fatalf("iter %d sizes %v: output leaks secret %s:\n%q", iter, sizes, sec.Name, got)
				}
			}
			if ci == 0 {
				first = got
			} else if normalizeMarkers(got) != normalizeMarkers(first) {
				t.Fatalf("iter %d: output depends on chunking %v:\n got %q\nwant %q", iter, sizes, got, first)
			}
		}
	}
}

func TestPropertyOrdinaryTextUnchanged(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var secrets []Secret
	for i := 0; i < 50; i++ {
		secrets = append(secrets, Secret{Name: fmt.Sprintf("S%d", i), Value: randomSecret(r)})
	}
	s := mustNew(t, Config{Secrets: secrets})
	for iter := 0; iter < 30; iter++ {
		in := ordinaryText(r, 1+r.IntN(20000))
		for _, sizes := range chunkings(r) {
			if got := scrubAll(t, s, in, sizes); got != in {
				t.Fatalf("sizes %v: ordinary text changed:\n got %q\nwant %q", sizes, got, in)
			}
		}
	}
}

// TestHugeLine checks that a line of megabytes streams through: nearly all
// of it is written before Close.
func TestHugeLine(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "K", Value: "Secret-Value-123"}}})
	var out bytes.Buffer
	w := s.NewWriter(&out)
	line := bytes.Repeat([]byte("abcdefgh "), 1<<17) // ~1.1 MB, no newline
	if _, err := w.Write(line); err != nil {
		t.Fatal(err)
	}
	if held := len(line) - out.Len(); held > 16 {
		t.Fatalf("got %d bytes held back from a line without secrets, want at most 16", held)
	}
	w.Close()
	if !bytes.Equal(out.Bytes(), line) {
		t.Fatal("huge line changed")
	}
}
