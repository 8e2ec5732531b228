package logbuf

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer records every underlying write.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes++
	return b.buf.Write(p)
}

func (b *lockedBuffer) snapshot() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.writes
}

func TestBatchesLinesIntoOneWrite(t *testing.T) {
	var out lockedBuffer
	w := New(&out, time.Hour, 1<<10)
	defer w.Close()
	for i := range 10 {
		fmt.Fprintf(w, "line %d\n", i)
	}
	if s, n := out.snapshot(); n != 0 || s != "" {
		t.Fatalf("before a flush: %d writes (%q), want none", n, s)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	s, n := out.snapshot()
	if n != 1 || strings.Count(s, "\n") != 10 {
		t.Fatalf("after Flush: %d writes of %q, want one write of 10 lines", n, s)
	}
}

func TestFlushesOnInterval(t *testing.T) {
	var out lockedBuffer
	w := New(&out, 20*time.Millisecond, 1<<10)
	defer w.Close()
	w.Write([]byte("hello\n"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := out.snapshot(); s == "hello\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("line not written within 5s of a 20ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFullBufferWritesWholeLines(t *testing.T) {
	var out lockedBuffer
	w := New(&out, time.Hour, 16)
	defer w.Close()
	w.Write([]byte("0123456789\n")) // 11 bytes, buffered
	w.Write([]byte("abcdefghij\n")) // does not fit: the first goes out alone
	if s, n := out.snapshot(); n != 1 || s != "0123456789\n" {
		t.Fatalf("got %d writes %q, want the first line alone", n, s)
	}
	long := strings.Repeat("x", 40) + "\n" // larger than the buffer: through
	w.Write([]byte(long))
	if s, n := out.snapshot(); n != 3 || s != "0123456789\nabcdefghij\n"+long {
		t.Fatalf("got %d writes %q", n, s)
	}
}

func TestCloseFlushesAndWritesThrough(t *testing.T) {
	var out lockedBuffer
	w := New(&out, time.Hour, 1<<10)
	w.Write([]byte("a\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if s, _ := out.snapshot(); s != "a\n" {
		t.Fatalf("after Close: %q", s)
	}
	w.Write([]byte("b\n"))
	if s, _ := out.snapshot(); s != "a\nb\n" {
		t.Fatalf("write after Close: %q, want it written through", s)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConcurrentWritesKeepLinesWhole(t *testing.T) {
	var out lockedBuffer
	w := New(&out, time.Millisecond, 256)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(w, "goroutine %d line %04d end\n", g, i)
			}
		})
	}
	wg.Wait()
	w.Close()
	s, _ := out.snapshot()
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 8*500 {
		t.Fatalf("got %d lines, want %d", len(lines), 8*500)
	}
	for _, l := range lines {
		var g, i int
		if _, err := fmt.Sscanf(l, "goroutine %d line %d end", &g, &i); err != nil {
			t.Fatalf("torn line %q: %v", l, err)
		}
	}
}
