// Package delivery gets the agent's audit events and usage reports to the
// dispatcher without losing them (DESIGN.md "How a task runs", step 5):
// each goes into a bounded on-disk spool (sidecar/spool) the moment it is
// emitted, and is delivered from there over mTLS with the task's SVID
// (dispatcher/ingestclient). While the dispatcher is unreachable records
// wait on disk and are retried with backoff; the dispatcher stores each
// event and report once by its ID, so redelivery is harmless. A full spool
// is logged and counted by the spool, never silently dropped.
//
// It is not the client (dispatcher/ingestclient) nor the queue
// (sidecar/spool); it only joins them.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/spool"
)

// Config configures the spools.
type Config struct {
	// Dir holds the two spools (Dir/events and Dir/usage). Required.
	Dir string
	// MaxBytes bounds both spools together on disk: three quarters for
	// events, one quarter for usage reports. If zero, 64 MiB.
	MaxBytes int64
	// DrainTimeout is how long Run keeps delivering after its context
	// ends, while records emitted by this process are still undelivered.
	// If zero, 5s.
	DrainTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// delivery (the spool's defaults if zero: 500ms and 1 minute).
	MinBackoff, MaxBackoff time.Duration
	// Registerer, if set, receives the spools' metrics.
	Registerer prometheus.Registerer
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// Sender sends batches to the dispatcher; *ingestclient.Client is one.
type Sender interface {
	SendEvents(ctx context.Context, events []audit.Event) (ingestclient.Result, error)
	SendUsage(ctx context.Context, reports []usage.Report) (ingestclient.Result, error)
}

var _ Sender = (*ingestclient.Client)(nil)

// Delivery is the pair of spools. Events and Usage take records from the
// moment Open returns; Run delivers them.
type Delivery struct {
	cfg    Config
	events *tracked[audit.Event]
	usage  *tracked[usage.Report]
}

// Open opens (or recovers) the spools under cfg.Dir.
func Open(cfg Config) (*Delivery, error) {
	if cfg.Dir == "" {
		return nil, errors.New("delivery: no spool directory: pass --spool-dir")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.MaxBytes < 64<<10 {
		return nil, fmt.Errorf("delivery: --spool-max-bytes %d is too small, want at least 65536", cfg.MaxBytes)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sc := func(name string, max int64) spool.Config {
		return spool.Config{
			Dir: filepath.Join(cfg.Dir, name), MaxBytes: max, Name: name,
			MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
			Registerer: cfg.Registerer, Logger: cfg.Logger,
		}
	}
	ev, err := spool.Open[audit.Event](sc("events", cfg.MaxBytes/4*3))
	if err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	us, err := spool.Open[usage.Report](sc("usage", cfg.MaxBytes/4))
	if err != nil {
		ev.Close()
		return nil, fmt.Errorf("delivery: %w", err)
	}
	return &Delivery{
		cfg:    cfg,
		events: newTracked(ev, func(e audit.Event) string { return e.EventID }),
		usage:  newTracked(us, func(r usage.Report) string { return r.ReportID }),
	}, nil
}

// Events is where audit events go (an audit.Emitter).
func (d *Delivery) Events() audit.Emitter { return d.events }

// Usage is where usage reports go (agent.Config.Usage).
func (d *Delivery) Usage() interface{ Emit(usage.Report) } { return d.usage }

// Run delivers through s until ctx ends, then for up to DrainTimeout
// while records emitted by this process are still undelivered (the task
// is stopping: its disk goes with it). Records still undelivered stay in
// the spool for a later Run.
func (d *Delivery) Run(ctx context.Context, s Sender) error {
	g, gctx := errgroup.WithContext(context.WithoutCancel(ctx))
	g.Go(func() error {
		return d.events.run(gctx, ctx, d.cfg.DrainTimeout, deliverFunc[audit.Event](func(ctx context.Context, evs []audit.Event) error {
			_, err := s.SendEvents(ctx, evs)
			return classify(err)
		}))
	})
	g.Go(func() error {
		return d.usage.run(gctx, ctx, d.cfg.DrainTimeout, deliverFunc[usage.Report](func(ctx context.Context, rs []usage.Report) error {
			_, err := s.SendUsage(ctx, rs)
			return classify(err)
		}))
	})
	return g.Wait()
}

// Close closes the spools; undelivered records stay on disk. Idempotent.
func (d *Delivery) Close() error {
	return errors.Join(d.events.s.Close(), d.usage.s.Close())
}

// classify maps ingestclient's errors onto the spool's: a RetryableError
// keeps the batch for later, anything else (PermanentError) sets it aside.
func classify(err error) error {
	var re *ingestclient.RetryableError
	if errors.As(err, &re) {
		return spool.RetryLater(err, re.After)
	}
	return err
}

type deliverFunc[T any] func(ctx context.Context, recs []T) error

func (f deliverFunc[T]) Deliver(ctx context.Context, recs []T) error { return f(ctx, recs) }

// tracked is a spool that remembers which records this process emitted
// and has not delivered yet, so Run knows when draining is done.
type tracked[T any] struct {
	s   *spool.Spool[T]
	key func(T) string

	mu      sync.Mutex          // guards pending
	pending map[string]struct{} // bounded by the spool's size
	empty   chan struct{}       // signalled when pending becomes empty
}

func newTracked[T any](s *spool.Spool[T], key func(T) string) *tracked[T] {
	return &tracked[T]{s: s, key: key, pending: map[string]struct{}{}, empty: make(chan struct{}, 1)}
}

// Emit spools rec; a full spool is logged and counted by the spool.
func (t *tracked[T]) Emit(rec T) {
	k := t.key(rec)
	t.mu.Lock()
	t.pending[k] = struct{}{}
	t.mu.Unlock()
	if err := t.s.Append(rec); err != nil {
		t.mu.Lock()
		delete(t.pending, k)
		t.mu.Unlock()
		return // the spool logged and counted it
	}
}

func (t *tracked[T]) done(recs []T) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		delete(t.pending, t.key(r))
	}
	if len(t.pending) == 0 {
		select {
		case t.empty <- struct{}{}:
		default:
		}
	}
}

func (t *tracked[T]) idle() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending) == 0
}

// run delivers until stop ends, then drains for up to drain.
func (t *tracked[T]) run(ctx, stop context.Context, drain time.Duration, d spool.Deliverer[T]) error {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		select {
		case <-rctx.Done():
			return
		case <-stop.Done():
		}
		timer := time.NewTimer(drain)
		defer timer.Stop()
		for !t.idle() {
			select {
			case <-rctx.Done():
				return
			case <-timer.C:
				cancel()
				return
			case <-t.empty:
			}
		}
		cancel()
	})
	return t.s.Run(rctx, deliverFunc[T](func(ctx context.Context, recs []T) error {
		err := d.Deliver(ctx, recs)
		var r spool.Retryable
		if err == nil || !errors.As(err, &r) {
			t.done(recs) // stored, or set aside for good
		}
		return err
	}))
}
