package delivery

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSender answers each call with the next scripted error (nil once
// the script is used up) and records what it stored.
type fakeSender struct {
	mu      sync.Mutex
	script  []error
	stored  map[string]int
	reports int
}

func (f *fakeSender) next() error {
	if len(f.script) == 0 {
		return nil
	}
	err := f.script[0]
	f.script = f.script[1:]
	return err
}

func (f *fakeSender) SendEvents(_ context.Context, evs []audit.Event) (ingestclient.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.next(); err != nil {
		return ingestclient.Result{}, err
	}
	for _, e := range evs {
		f.stored[e.EventID]++
	}
	return ingestclient.Result{Stored: len(evs)}, nil
}

func (f *fakeSender) SendUsage(_ context.Context, rs []usage.Report) (ingestclient.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports += len(rs)
	return ingestclient.Result{Stored: len(rs)}, nil
}

func (f *fakeSender) count(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stored[id]
}

func event() audit.Event {
	return audit.Event{EventID: audit.NewID(), EventType: "JOB_STARTED", Timestamp: time.Now()}
}

func TestDeliveryRetriesAndSetsAside(t *testing.T) {
	for _, tc := range []struct {
		name      string
		script    []error
		wantStore int  // times the event is stored
		rejected  bool // set aside in rejected.jsonl
	}{
		{"delivered", nil, 1, false},
		{"retryable then delivered", []error{&ingestclient.RetryableError{After: 10 * time.Millisecond, Err: errors.New("503")}}, 1, false},
		{"permanent", []error{&ingestclient.PermanentError{Status: 400, Message: "invalid", Index: 0}}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, err := Open(Config{Dir: dir, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			s := &fakeSender{script: tc.script, stored: map[string]int{}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx, s) }()
			ev := event()
			d.Events().Emit(ev)
			// Stopping drains: Run returns once the event is delivered or set aside.
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(4 * time.Second):
				t.Fatal("Run did not return after draining")
			}
			if got := s.count(ev.EventID); got != tc.wantStore {
				t.Errorf("stored %d times, want %d", got, tc.wantStore)
			}
			_, err = os.Stat(filepath.Join(dir, "events", "rejected.jsonl"))
			if got := err == nil; got != tc.rejected {
				t.Errorf("set aside: got %v, want %v", got, tc.rejected)
			}
		})
	}
}

func TestDrainIsBounded(t *testing.T) {
	d, err := Open(Config{Dir: t.TempDir(), DrainTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	down := make([]error, 1000)
	for i := range down {
		down[i] = &ingestclient.RetryableError{Err: errors.New("connection refused")}
	}
	s := &fakeSender{script: down, stored: map[string]int{}}
	d.Events().Emit(event())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := d.Run(ctx, s); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Fatalf("Run with the dispatcher down returned after %v, want about the 200ms drain timeout", el)
	}
	d.Close()
	// The event is still on disk for the next agent.
	d2, err := Open(Config{Dir: d.cfg.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.events.s.Bytes() == 0 {
		t.Fatal("undelivered event lost from the spool, want it kept")
	}
}

func TestOpenRefusesTinySpool(t *testing.T) {
	if _, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1000}); err == nil {
		t.Fatal("got nil, want an error for a 1000-byte spool")
	}
}
