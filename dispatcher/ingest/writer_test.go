package ingest

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/jackc/pgx/v5/pgconn"
)

// refusing is an Appender that refuses, as Postgres refuses bad data, every
// transaction holding an event whose ID starts with "bad", and records the
// event IDs of every transaction it is given.
type refusing struct {
	mu  sync.Mutex // guards txs
	txs []string
}

func (r *refusing) AppendBatches(_ context.Context, batches []auditstore.OrgBatch) ([]auditstore.AppendResult, error) {
	var ids []string
	bad := false
	res := make([]auditstore.AppendResult, len(batches))
	for i, b := range batches {
		res[i].EventStored = make([]bool, len(b.Events))
		for j, rec := range b.Events {
			ids = append(ids, rec.Event.EventID)
			bad = bad || strings.HasPrefix(rec.Event.EventID, "bad")
			res[i].EventStored[j] = true
		}
	}
	r.mu.Lock()
	r.txs = append(r.txs, strings.Join(ids, " "))
	r.mu.Unlock()
	if bad {
		return nil, &pgconn.PgError{Code: "23514", Message: "check violation"}
	}
	return res, nil
}

// TestCommitSplitsRefusedBatches: when the database refuses a round's data,
// commit retries org by org, then request by request, never commits the
// same requests twice in a row, and answers every request exactly once.
func TestCommitSplitsRefusedBatches(t *testing.T) {
	type req struct{ org, id string }
	cases := []struct {
		name    string
		reqs    []req
		wantTxs []string // event IDs of each transaction, in order
	}{
		{"one bad request", []req{{"acme", "bad1"}}, []string{"bad1"}},
		{"one org, one bad request of two",
			[]req{{"acme", "ok1"}, {"acme", "bad1"}},
			[]string{"ok1 bad1", "ok1", "bad1"}},
		{"two orgs of one request each",
			[]req{{"acme", "ok1"}, {"globex", "bad1"}},
			[]string{"ok1 bad1", "ok1", "bad1"}},
		{"two orgs, one bad request of the first's two",
			[]req{{"acme", "ok1"}, {"globex", "ok2"}, {"acme", "bad1"}},
			[]string{"ok1 bad1 ok2", "ok1 bad1", "ok1", "bad1", "ok2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := &refusing{}
			w := &writers{store: store, timeout: time.Second, m: newMetrics(nil), log: slog.New(slog.DiscardHandler)}
			var batch []*work
			for _, r := range tc.reqs {
				batch = append(batch, &work{org: r.org, events: []auditstore.Record{{Event: audit.Event{EventID: r.id}}},
					done: make(chan outcome, 1)})
			}
			committed := make(chan struct{})
			go func() { w.commit(context.Background(), batch); close(committed) }()
			select {
			case <-committed:
			case <-time.After(10 * time.Second):
				t.Fatal("commit blocked: a request was answered more than once")
			}
			if !slices.Equal(store.txs, tc.wantTxs) {
				t.Errorf("got transactions %q, want %q", store.txs, tc.wantTxs)
			}
			for i, wk := range batch {
				if n := len(wk.done); n != 1 {
					t.Errorf("request %d answered %d times, want once", i, n)
					continue
				}
				o := <-wk.done
				bad := strings.HasPrefix(tc.reqs[i].id, "bad")
				if bad != isDataError(o.err) || !bad && o.stored != 1 {
					t.Errorf("request %d (%s): got %+v, want it refused: %v", i, tc.reqs[i].id, o, bad)
				}
			}
		})
	}
}
