package cli

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	usagereport "github.com/cordon-dev/cordon/internal/usage"
	"github.com/prometheus/client_golang/prometheus"
)

// appender is what storeEmitter writes to; *auditstore.Store is one.
type appender interface {
	Append(ctx context.Context, org string, events []audit.Event, reports []usagereport.Report) (auditstore.AppendResult, error)
}

// storeEmitter turns the fire-and-forget audit.Emitter that authn uses
// into appends to the audit store: one owned goroutine, a bounded queue,
// and an event that cannot be queued is counted and logged (by type and
// org, never its content) instead of blocking a user's request.
type storeEmitter struct {
	store   appender
	log     *slog.Logger
	queue   chan audit.Event
	dropped prometheus.Counter
	failed  prometheus.Counter

	done chan struct{} // closed when run has stored the last event

	mu     sync.Mutex // guards closed and sends on queue
	closed bool
}

var _ audit.Emitter = (*storeEmitter)(nil)

func newStoreEmitter(store appender, reg prometheus.Registerer, log *slog.Logger) *storeEmitter {
	e := &storeEmitter{
		store: store,
		log:   log,
		queue: make(chan audit.Event, 1024),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_user_audit_dropped_total",
			Help: "User-side audit events (logins, denials) dropped because the queue to the audit store was full.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_user_audit_failed_total",
			Help: "User-side audit events the audit store refused or could not take.",
		}),
		done: make(chan struct{}),
	}
	reg.MustRegister(e.dropped, e.failed)
	go e.run()
	return e
}

// Emit queues ev; it never blocks.
func (e *storeEmitter) Emit(ev audit.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		e.drop(ev, "emitter closed")
		return
	}
	select {
	case e.queue <- ev:
	default:
		e.drop(ev, "queue full")
	}
}

func (e *storeEmitter) drop(ev audit.Event, why string) {
	e.dropped.Inc()
	e.log.Error("audit event dropped", "reason", why, "event_type", ev.EventType, "org", ev.Resource.TenantID)
}

func (e *storeEmitter) run() {
	defer close(e.done)
	for ev := range e.queue {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := e.store.Append(ctx, ev.Resource.TenantID, []audit.Event{ev}, nil)
		cancel()
		if err != nil {
			e.failed.Inc()
			e.log.Error("audit event not stored", "event_type", ev.EventType, "org", ev.Resource.TenantID, "error", err.Error())
		}
	}
}

// Close stores what is queued and stops. It is idempotent.
func (e *storeEmitter) Close() {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.queue)
	}
	e.mu.Unlock()
	<-e.done
}
