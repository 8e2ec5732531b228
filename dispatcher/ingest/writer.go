package ingest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/jackc/pgx/v5/pgconn"
)

// Appender is the store the writers commit to (*auditstore.Store).
type Appender interface {
	AppendRecords(ctx context.Context, org string, events []auditstore.Record, reports []usage.Report) (auditstore.AppendResult, error)
}

var _ Appender = (*auditstore.Store)(nil)

// work is one accepted request waiting for its commit.
type work struct {
	org     string
	events  []auditstore.Record
	reports []usage.Report
	done    chan outcome // buffered, receives exactly once
}

type outcome struct {
	stored, duplicates int
	err                error
}

func (w *work) size() int { return len(w.events) + len(w.reports) }

// writers is the group of goroutines that coalesce queued requests into
// transactions: each takes whatever is queued for it (up to maxBatch
// items), groups it by org and commits one transaction per org. An org's
// requests always go to the same writer, so they coalesce instead of
// waiting on each other's chain locks. Requests are answered only after
// their transaction commits.
type writers struct {
	store    Appender
	queues   []chan *work
	queued   atomic.Int64 // items in queue
	maxQueue int64
	maxBatch int
	timeout  time.Duration
	m        *metrics
	log      *slog.Logger

	mu          sync.Mutex // guards the following
	unavailable time.Time  // until when new requests are refused after a failure
	closed      bool       // writers stopped: every new request is refused

	wg sync.WaitGroup
}

// errQueueFull and errUnavailable are answered 429 and 503.
var (
	errQueueFull   = errors.New("ingest queue full")
	errUnavailable = errors.New("audit store unavailable")
)

// retryAfter is how long clients are told to wait after a store failure.
const retryAfter = time.Second

func (w *writers) start(ctx context.Context, n, queueLen int) {
	w.queues = make([]chan *work, n)
	for i := range n {
		w.queues[i] = make(chan *work, queueLen)
		w.wg.Go(func() { w.loop(ctx, w.queues[i]) })
	}
}

// queueOf is the queue of org's writer (FNV-1a of the org).
func (w *writers) queueOf(org string) chan *work {
	h := uint32(2166136261)
	for i := 0; i < len(org); i++ {
		h = (h ^ uint32(org[i])) * 16777619
	}
	return w.queues[h%uint32(len(w.queues))]
}

// enqueue queues wk or refuses it at once when the queue is full or the
// store failed within the last second.
func (w *writers) enqueue(wk *work) error {
	w.mu.Lock()
	down := w.closed || time.Now().Before(w.unavailable)
	w.mu.Unlock()
	if down {
		return errUnavailable
	}
	n := int64(wk.size())
	if w.queued.Add(n) > w.maxQueue {
		w.queued.Add(-n)
		return errQueueFull
	}
	select {
	case w.queueOf(wk.org) <- wk:
		w.m.queueItems.Set(float64(w.queued.Load()))
		return nil
	default:
		w.queued.Add(-n)
		return errQueueFull
	}
}

func (w *writers) loop(ctx context.Context, queue chan *work) {
	for {
		var first *work
		select {
		case first = <-queue:
		case <-ctx.Done():
			return
		}
		batch := []*work{first}
		items := first.size()
	drain:
		for items < w.maxBatch {
			select {
			case wk := <-queue:
				batch = append(batch, wk)
				items += wk.size()
			default:
				break drain
			}
		}
		w.queued.Add(-int64(items))
		w.m.queueItems.Set(float64(w.queued.Load()))
		w.commit(ctx, batch)
	}
}

// commit writes batch, one transaction per org.
func (w *writers) commit(ctx context.Context, batch []*work) {
	byOrg := map[string][]*work{}
	var orgs []string
	for _, wk := range batch {
		if byOrg[wk.org] == nil {
			orgs = append(orgs, wk.org)
		}
		byOrg[wk.org] = append(byOrg[wk.org], wk)
	}
	for _, org := range orgs {
		ws := byOrg[org]
		err := w.commitOrg(ctx, org, ws)
		if err != nil && len(ws) > 1 && isDataError(err) {
			// One request the database refuses must not sink the others.
			for _, wk := range ws {
				w.commitOrg(ctx, org, []*work{wk})
			}
		}
	}
}

func (w *writers) commitOrg(ctx context.Context, org string, ws []*work) error {
	var events []auditstore.Record
	var reports []usage.Report
	for _, wk := range ws {
		events = append(events, wk.events...)
		reports = append(reports, wk.reports...)
	}
	tctx, cancel := context.WithTimeout(ctx, w.timeout)
	start := time.Now()
	res, err := w.store.AppendRecords(tctx, org, events, reports)
	cancel()
	w.m.batchSeconds.Observe(time.Since(start).Seconds())
	w.m.batchItems.Observe(float64(len(events) + len(reports)))
	if err != nil {
		if isDataError(err) && len(ws) > 1 {
			return err // commit retries them one by one
		}
		// One line per failed transaction, not per request.
		w.log.Warn("ingest batch not committed", "org", org, "requests", len(ws), "items", len(events)+len(reports), "error", err.Error())
		if !isDataError(err) {
			w.mu.Lock()
			w.unavailable = time.Now().Add(retryAfter)
			w.mu.Unlock()
			err = errors.Join(errUnavailable, err)
		}
		for _, wk := range ws {
			wk.done <- outcome{err: err}
		}
		return err
	}
	ei, ui := 0, 0
	for _, wk := range ws {
		var o outcome
		for range wk.events {
			if res.EventStored[ei] {
				o.stored++
			} else {
				o.duplicates++
			}
			ei++
		}
		for range wk.reports {
			if res.UsageStored[ui] {
				o.stored++
			} else {
				o.duplicates++
			}
			ui++
		}
		wk.done <- o
	}
	return nil
}

// isDataError reports whether err is Postgres refusing the data itself
// (SQLSTATE class 22 data exception or 23 integrity violation), which a
// retry cannot fix.
func isDataError(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return len(pg.Code) == 5 && (pg.Code[:2] == "22" || pg.Code[:2] == "23")
	}
	return false
}

// stop refuses new requests, then waits for the writers to exit (after
// their context is cancelled). A request queued in the gap is failed by
// drainQueue or, at worst, times out after CommitTimeout.
func (w *writers) stop() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.wg.Wait()
}

// drainQueue fails whatever is still queued (used on a hard stop).
func (w *writers) drainQueue() {
	for _, q := range w.queues {
	drain:
		for {
			select {
			case wk := <-q:
				w.queued.Add(-int64(wk.size()))
				wk.done <- outcome{err: errUnavailable}
			default:
				break drain
			}
		}
	}
}
