package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

type rec struct {
	ID   string `json:"id"`
	Body string `json:"body"`
}

// sink is a Deliverer that records batches and fails as told.
type sink struct {
	mu    sync.Mutex // guards the following
	got   []rec
	fails []error // returned, in order, before succeeding
	calls int
}

func (s *sink) Deliver(ctx context.Context, recs []rec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.fails) > 0 {
		err := s.fails[0]
		s.fails = s.fails[1:]
		return err
	}
	s.got = append(s.got, recs...)
	return nil
}

func (s *sink) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.got {
		out = append(out, r.ID)
	}
	return out
}

func open(t *testing.T, dir string, mod func(*Config)) *Spool[rec] {
	t.Helper()
	cfg := Config{Dir: dir, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Registerer: prometheus.NewRegistry()}
	if mod != nil {
		mod(&cfg)
	}
	s, err := Open[rec](cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runUntil runs delivery until cond holds (or 10s), then stops it.
func runUntil(t *testing.T, s *Spool[rec], d Deliverer[rec], cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, d) }()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func appendN(t *testing.T, s *Spool[rec], from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := s.Append(rec{ID: fmt.Sprintf("evt_%04d", i), Body: strings.Repeat("x", 50)}); err != nil {
			t.Fatal(err)
		}
	}
}

func want(from, n int) string {
	var ids []string
	for i := from; i < from+n; i++ {
		ids = append(ids, fmt.Sprintf("evt_%04d", i))
	}
	return strings.Join(ids, ",")
}

func segFiles(t *testing.T, dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
	return m
}

func TestDeliversInOrderAndDeletesSegments(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) { c.SegmentBytes = 400; c.BatchSize = 7 })
	defer s.Close()
	appendN(t, s, 0, 50)
	if n := len(segFiles(t, dir)); n < 5 {
		t.Fatalf("got %d segments for 50 records of ~80 bytes in 400-byte segments, want several", n)
	}
	d := &sink{}
	runUntil(t, s, d, func() bool { return len(d.ids()) == 50 && s.Bytes() == 0 })
	if got := strings.Join(d.ids(), ","); got != want(0, 50) {
		t.Fatalf("delivered %s, want %s", got, want(0, 50))
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("got %d segment files after delivery, want only the empty active one", n)
	}
}

func TestFullIsReportedNotDropped(t *testing.T) {
	s := open(t, t.TempDir(), func(c *Config) { c.MaxBytes = 500 })
	defer s.Close()
	var err error
	n := 0
	for ; n < 100; n++ {
		if err = s.Append(rec{ID: fmt.Sprintf("evt_%04d", n), Body: strings.Repeat("x", 50)}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("got %v after %d appends, want ErrFull", err, n)
	}
	if s.Bytes() > 500 {
		t.Fatalf("spool holds %d bytes, want <= 500", s.Bytes())
	}
	if got := counter(s.m.full); got != 1 {
		t.Fatalf("cordon_sidecar_spool_full_total = %v, want 1", got)
	}
	// Delivering frees space again.
	d := &sink{}
	runUntil(t, s, d, func() bool { return s.Bytes() == 0 })
	if err := s.Append(rec{ID: "evt_after"}); err != nil {
		t.Fatalf("append after draining: %v", err)
	}
}

func TestRetryableThenDelivered(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := open(t, t.TempDir(), nil)
	defer s.Close()
	appendN(t, s, 0, 3)
	d := &sink{fails: []error{
		RetryLater(errors.New("dispatcher 503"), 5*time.Millisecond),
		fmt.Errorf("send: %w", RetryLater(errors.New("connection refused"), 0)),
	}}
	runUntil(t, s, d, func() bool { return len(d.ids()) == 3 })
	if got := strings.Join(d.ids(), ","); got != want(0, 3) {
		t.Fatalf("delivered %s, want %s exactly once", got, want(0, 3))
	}
	if got := counter(s.m.failures); got != 2 {
		t.Fatalf("failures = %v, want 2", got)
	}
}

func TestPermanentRejectionIsKept(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) { c.BatchSize = 2 })
	defer s.Close()
	appendN(t, s, 0, 4)
	d := &sink{fails: []error{errors.New("400 bad request")}}
	runUntil(t, s, d, func() bool { return len(d.ids()) == 2 })
	if got := strings.Join(d.ids(), ","); got != want(2, 2) {
		t.Fatalf("delivered %s, want %s", got, want(2, 2))
	}
	b, err := os.ReadFile(filepath.Join(dir, rejectedFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "evt_0000") || !strings.Contains(string(b), "evt_0001") {
		t.Fatalf("rejected.jsonl = %q, want the two rejected records", b)
	}
	if got := counter(s.m.rejected); got != 2 {
		t.Fatalf("rejected = %v, want 2", got)
	}
}

func TestReopenRedeliversAndCutsTornRecord(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	s := open(t, dir, nil)
	appendN(t, s, 0, 5)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// A crash mid-append leaves half a line.
	segs := segFiles(t, dir)
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"evt_torn","bo`)
	f.Close()

	s = open(t, dir, nil)
	defer s.Close()
	appendN(t, s, 5, 1)
	d := &sink{}
	runUntil(t, s, d, func() bool { return len(d.ids()) == 6 })
	if got := strings.Join(d.ids(), ","); got != want(0, 6) {
		t.Fatalf("delivered %s, want %s (torn record cut)", got, want(0, 6))
	}
}

func TestCorruptLineSetAsideOnce(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	appendN(t, s, 0, 2)
	s.Close()
	segs := segFiles(t, dir)
	f, _ := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("not json at all\n")
	f.Close()
	s = open(t, dir, nil)
	defer s.Close()
	appendN(t, s, 2, 2)
	d := &sink{fails: []error{RetryLater(errors.New("busy"), time.Millisecond)}}
	runUntil(t, s, d, func() bool { return len(d.ids()) == 4 })
	if got := strings.Join(d.ids(), ","); got != want(0, 4) {
		t.Fatalf("delivered %s, want %s", got, want(0, 4))
	}
	b, _ := os.ReadFile(filepath.Join(dir, rejectedFile))
	if strings.Count(string(b), "not json at all") != 1 {
		t.Fatalf("rejected.jsonl = %q, want the corrupt line exactly once", b)
	}
}

func TestRecordTooLarge(t *testing.T) {
	s := open(t, t.TempDir(), func(c *Config) { c.MaxRecordBytes = 100 })
	defer s.Close()
	if err := s.Append(rec{ID: "big", Body: strings.Repeat("y", 200)}); err == nil || errors.Is(err, ErrFull) {
		t.Fatalf("got %v, want a record-size error", err)
	}
}

func TestGroupCommit(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := open(t, t.TempDir(), func(c *Config) { c.SyncEvery = 10 * time.Millisecond })
	defer s.Close()
	appendN(t, s, 0, 3)
	d := &sink{}
	runUntil(t, s, d, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return !s.dirty && len(d.ids()) == 3
	})
}

func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
