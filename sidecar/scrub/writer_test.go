package scrub

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
)

type failWriter struct{ err error }

func (f failWriter) Write(p []byte) (int, error) { return 0, f.err }

func TestWriteErrorIsSticky(t *testing.T) {
	boom := errors.New("disk full")
	s := mustNew(t, Config{})
	w := s.NewWriter(failWriter{boom})
	if _, err := w.Write([]byte("hello\n")); !errors.Is(err, boom) {
		t.Fatalf("Write: got %v, want %v", err, boom)
	}
	if _, err := w.Write([]byte("again\n")); !errors.Is(err, boom) {
		t.Fatalf("second Write: got %v, want %v", err, boom)
	}
	if err := w.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close: got %v, want %v", err, boom)
	}
}

// TestConcurrentWriters runs a stdout and a stderr Writer from one Scrubber
// at the same time, reading Redactions meanwhile (run with -race).
func TestConcurrentWriters(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "K", Value: "concurrent-secret-1"}}})
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	ws := []*Writer{s.NewWriter(&outs[0]), s.NewWriter(&outs[1])}
	for i := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				io.WriteString(ws[i], "line concurrent-secret-1 end\n")
			}
			ws[i].Close()
		}()
	}
	for j := 0; j < 1000; j++ {
		_ = ws[0].Redactions() + ws[1].Redactions()
	}
	wg.Wait()
	for i := range ws {
		if got := ws[i].Redactions(); got != 200 {
			t.Errorf("writer %d: got %d redactions, want 200", i, got)
		}
		if bytes.Contains(outs[i].Bytes(), []byte("concurrent-secret-1")) {
			t.Errorf("writer %d leaked the secret", i)
		}
	}
}

// TestSteadyStateAllocs checks that Write allocates nothing once warm.
func TestSteadyStateAllocs(t *testing.T) {
	s := mustNew(t, Config{Secrets: benchSecrets(100)})
	w := s.NewWriter(io.Discard)
	data := benchLog(64 << 10)
	w.Write(data)
	line := []byte("INFO user@example.com token=abc123 key " + benchSecrets(100)[3].Value + " done\n")
	w.Write(line)
	if n := testing.AllocsPerRun(50, func() {
		w.Write(data[:32<<10])
		w.Write(line)
	}); n != 0 {
		t.Fatalf("got %v allocations per write, want 0", n)
	}
}

// TestPromptsNotHeld checks that text ending in a complete trigger is
// written at once: only bytes that could still grow into a redaction wait.
func TestPromptsNotHeld(t *testing.T) {
	s := mustNew(t, Config{Secrets: []Secret{{Name: "K", Value: "zq9-SECRET-zq9"}}})
	for _, in := range []string{"Password: ", "Authorization: Bearer ", "key -----BEGIN ", "at zq9-SECRET-zq9", "x@", "50%"} {
		var out bytes.Buffer
		w := s.NewWriter(&out)
		if _, err := w.Write([]byte(in)); err != nil {
			t.Fatal(err)
		}
		want := in
		switch in {
		case "at zq9-SECRET-zq9":
			want = "at [REDACTED:K]"
		case "x@":
			want = "x" // the '@' waits for the domain: "***" may go before it
		}
		if got := out.String(); got != want {
			t.Errorf("after writing %q: got %q written, want %q", in, got, want)
		}
	}
}
