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
	AppendBatches(ctx context.Context, batches []auditstore.OrgBatch) ([]auditstore.AppendResult, error)
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
// items) and commits it in one transaction, every org's requests as one
// batch (so a round costs one commit, one WAL flush). An org's requests
// always go to the same writer, so they coalesce instead of waiting on
// each other's chain locks. Requests are answered only after their
// transaction commits.
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

// orgWork is one org's requests in a round.
type orgWork struct {
	org string
	ws  []*work
}

// commit writes batch in one transaction. If the database refuses the
// data of one request, it retries org by org (when the batch holds several
// orgs), then request by request, so that one bad request does not sink
// the others; every request is answered once.
func (w *writers) commit(ctx context.Context, batch []*work) {
	var groups []orgWork
	index := map[string]int{}
	for _, wk := range batch {
		i, ok := index[wk.org]
		if !ok {
			i = len(groups)
			index[wk.org] = i
			groups = append(groups, orgWork{org: wk.org})
		}
		groups[i].ws = append(groups[i].ws, wk)
	}
	if w.commitGroups(ctx, groups, len(batch) > 1) {
		return
	}
	for _, g := range groups {
		// With one org, its transaction is the one just refused.
		if len(groups) > 1 && w.commitGroups(ctx, []orgWork{g}, len(g.ws) > 1) {
			continue
		}
		for _, wk := range g.ws {
			w.commitGroups(ctx, []orgWork{{org: g.org, ws: []*work{wk}}}, false)
		}
	}
}

// commitGroups commits groups in one transaction and answers their
// requests, except when the database refuses the data and split is set:
// then it answers none of them and returns false, for commit to retry them
// in smaller parts. It returns true when it answered them.
func (w *writers) commitGroups(ctx context.Context, groups []orgWork, split bool) (answered bool) {
	batches := make([]auditstore.OrgBatch, len(groups))
	items := 0
	for i, g := range groups {
		b := &batches[i]
		b.Org = g.org
		if len(g.ws) == 1 {
			// The request's own slices: the store only reads them.
			b.Events, b.Reports = g.ws[0].events, g.ws[0].reports
		} else {
			for _, wk := range g.ws {
				b.Events = append(b.Events, wk.events...)
				b.Reports = append(b.Reports, wk.reports...)
			}
		}
		items += len(b.Events) + len(b.Reports)
	}
	tctx, cancel := context.WithTimeout(ctx, w.timeout)
	start := time.Now()
	res, err := w.store.AppendBatches(tctx, batches)
	cancel()
	w.m.batchSeconds.Observe(time.Since(start).Seconds())
	w.m.batchItems.Observe(float64(items))
	if err != nil {
		if split && isDataError(err) {
			return false
		}
		// One line per failed transaction, not per request.
		requests := 0
		for _, g := range groups {
			requests += len(g.ws)
		}
		w.log.Warn("ingest batch not committed", "orgs", len(groups), "requests", requests, "items", items, "error", err.Error())
		if !isDataError(err) {
			w.mu.Lock()
			w.unavailable = time.Now().Add(retryAfter)
			w.mu.Unlock()
			err = errors.Join(errUnavailable, err)
		}
		for _, g := range groups {
			for _, wk := range g.ws {
				wk.done <- outcome{err: err}
			}
		}
		return true
	}
	for i, g := range groups {
		events, reports := res[i].EventStored, res[i].UsageStored
		for _, wk := range g.ws {
			var o outcome
			o.count(events[:len(wk.events)])
			o.count(reports[:len(wk.reports)])
			events, reports = events[len(wk.events):], reports[len(wk.reports):]
			wk.done <- o
		}
	}
	return true
}

// count adds stored, one flag per item, to o's stored and duplicates.
func (o *outcome) count(stored []bool) {
	for _, ok := range stored {
		if ok {
			o.stored++
		} else {
			o.duplicates++
		}
	}
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
