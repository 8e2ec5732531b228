// Package auditstore is the dispatcher's Postgres store: the schema
// (embedded, versioned migrations), appending audit events to per-org hash
// chains and storing usage reports exactly once, verifying the chains, and
// dropping partitions past retention.
//
// It is not the HTTP API (dispatcher/ingest) and does not authorise
// callers: Append trusts that every event and report it is given belongs to
// the org it is told, and row-level security in Postgres holds it to that.
//
// Roles: Migrate runs as a superuser; Open connects and SET ROLEs to
// cordon_service (production logs in as a role that is a member of it);
// Verify uses cordon_auditor and Retention cordon_owner.
//
// The Postgres server it writes to should run with ServerSettings (in
// postgresql.conf, or -c flags): they are part of what the ingest
// benchmark measures.
package auditstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ServerSettings are the Postgres server settings (name -> value) the
// audit store is meant to run with, beyond a durable default install.
//
//   - backend_flush_after=256kB: a backend that has written this much of
//     its relations (new pages of the append-only audit partitions and
//     their indexes, evicted buffers) asks the kernel to start writing it
//     out. Off by default, the kernel holds it as dirty page cache until
//     its 30-second expiry or the next checkpoint's fsync, then writes it
//     all at once, and the WAL fsyncs of commits queue behind that burst.
//     Measured with make bench-dispatcher paced at 50,000 items/s for 60 s:
//     without it, a 150-250 ms stall at every checkpoint (every ~11 s at
//     the default max_wal_size) and p99 ack 91-196 ms in four runs; with
//     it, p99 30-79 ms in six runs (four under 50 ms), the stalls left
//     smaller and still at checkpoints. A larger max_wal_size or
//     shared_buffers made it worse (p99 104-127 ms).
var ServerSettings = map[string]string{
	"backend_flush_after": "256kB",
}

var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// Options tune Open.
type Options struct {
	// MaxConns is the pool size. If zero, 8.
	MaxConns int32
	// Log receives the store's logs. If nil, discarded.
	Log *slog.Logger
}

// Store appends to the audit store as the cordon_service role.
type Store struct {
	pool  *pgxpool.Pool
	log   *slog.Logger
	cache headCache

	remembered, stale atomic.Int64 // AppendStats
}

// AppendStats counts the append transactions that started from
// remembered chain heads (one round trip), and those of them that found a
// head had moved on (another replica appended) and were redone.
type AppendStats struct {
	Remembered, Stale int64
}

// Stats returns the counts since Open.
func (s *Store) Stats() AppendStats {
	return AppendStats{Remembered: s.remembered.Load(), Stale: s.stale.Load()}
}

// Open connects to databaseURL (it does not wait for the database to be
// up: the pool connects on demand) as cordon_service.
func Open(ctx context.Context, databaseURL string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("open audit store: parse database URL: %w", err)
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 8
	}
	// The pool runs only the append statements, prepared once per
	// connection. Postgres's default (plan_cache_mode=auto) kept
	// re-planning them at every execution: a custom plan for each new
	// set of array parameters, which with the partitioned audit table
	// was about 0.15 ms of Postgres CPU per transaction (a fifth of what
	// a transaction of a few events costs). Their generic plans are the
	// same plans: unnest the arrays, insert, and find chain heads by
	// primary key.
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		// The audit INSERT takes hand-encoded arrays (wirearray.go).
		if err := registerWireArrays(c); err != nil {
			return err
		}
		// Usage reports of every org of a transaction go into a staging
		// table in one statement (a temporary table has no row-level
		// security), then org by org from there into usage_reports, with
		// cordon.org_id set to that org (queueWrite).
		_, err := c.Exec(ctx, `SET ROLE cordon_service;
			CREATE TEMP TABLE usage_stage (LIKE usage_reports INCLUDING DEFAULTS) ON COMMIT DELETE ROWS`)
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = discardLogger
	}
	return &Store{pool: pool, log: log, cache: newHeadCache()}, nil
}

// Close closes the pool. It is idempotent.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// EnsurePartitions creates the monthly partitions around now (3 months back,
// 3 ahead). The dispatcher calls it at start and daily, so inserts never
// have to fall back to the default partition.
func (s *Store) EnsurePartitions(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, "SELECT cordon_ensure_audit_partitions($1, 3, 3)", now.UTC()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("ensure audit partitions: %w", err)
	}
	return n, nil
}

// AppendResult says, item by item, what Append stored: true for a new row,
// false for a duplicate of a row already stored (or earlier in the batch).
type AppendResult struct {
	EventStored []bool // one per event passed to Append, in order
	UsageStored []bool // one per report passed to Append, in order
}

type chainKey struct {
	class string
	month time.Time
}

// ErrChainConflict means rows of a chain were found already stored after
// the chain was locked; the transaction was rolled back. It indicates a
// bug or tampering, not a transient fault.
var ErrChainConflict = errors.New("audit chain conflict")

// Record is one event to append. RawMetadata, when not nil, is the exact
// JSON object stored and hashed (the ingest API passes the redacted bytes
// it received, sparing a decode and re-encode); when nil, Event.Metadata is
// encoded with encoding/json.
type Record struct {
	Event       audit.Event
	RawMetadata []byte
}

// Append stores events and usage reports of one org in one transaction,
// encoding the events' metadata: it is AppendBatches with one batch.
func (s *Store) Append(ctx context.Context, org string, events []audit.Event, reports []usage.Report) (AppendResult, error) {
	recs := make([]Record, len(events))
	for i := range events {
		recs[i].Event = events[i]
	}
	res, err := s.AppendBatches(ctx, []OrgBatch{{Org: org, Events: recs, Reports: reports}})
	if err != nil {
		return AppendResult{EventStored: make([]bool, len(events)), UsageStored: make([]bool, len(reports))}, err
	}
	return res[0], nil
}

// OrgBatch is one org's events and usage reports for AppendBatches. They
// must be validated by the caller and belong to Org.
type OrgBatch struct {
	Org     string
	Events  []Record
	Reports []usage.Report
}

// AppendBatches stores the batches of several orgs in one transaction, so
// they share one commit and one WAL flush: events are appended to their
// (org, class, month) hash chains, each chain locked through its head row
// so replicas append one at a time; events and reports already stored are
// skipped (an event ID is stored once per chain). Each org's rows are
// written under row-level security: the transaction names its orgs in
// cordon.write_orgs, and every org's audit rows go in one INSERT and every
// chain is locked and moved with one statement each, so the per-statement
// cost Postgres pays (executor start-up, partition routing, constraint and
// policy expressions) is paid once per transaction, not once per org;
// usage reports are still written org by org with cordon.org_id set to
// that org. When it returns nil, everything is durably committed, and
// result i says what batch i stored. An org may appear only once.
// Timestamps are stored with microsecond precision.
//
// Chains are locked in one global order (org, class, month), so two
// transactions, of this replica or another, never deadlock.
//
// Most batches hold no event stored before, so AppendBatches first inserts
// optimistically without looking for duplicates; if the insert meets any
// (a unique violation on audit_events_event_id), the transaction is rolled
// back and redone looking them up first, so that sequence numbers stay
// gapless. The insert is a plain INSERT, not INSERT ... ON CONFLICT DO
// NOTHING: with the chains locked nothing else can insert the same rows,
// and ON CONFLICT would cost every row a probe of both unique indexes and
// a speculative insertion (an extra WAL record) on top of the insert.
//
// Most batches also go to chains this Store appended to last (the ingest
// writers send an org's requests to one writer), so the optimistic
// attempt starts from where the Store left each chain (headCache) and
// sends the whole transaction in one round trip; cordon_advance_chains
// (migration 0170) checks under the chains' locks that they are still
// there. When one is not (another replica appended to it), that attempt
// is rolled back before inserting anything and redone reading the heads.
func (s *Store) AppendBatches(ctx context.Context, batches []OrgBatch) ([]AppendResult, error) {
	res := make([]AppendResult, len(batches))
	orgs := make([]*orgAppend, len(batches))
	for i := range batches {
		res[i] = AppendResult{EventStored: make([]bool, len(batches[i].Events)), UsageStored: make([]bool, len(batches[i].Reports))}
		a, err := newOrgAppend(&batches[i], &res[i])
		if err != nil {
			return nil, err
		}
		orgs[i] = a
	}
	// Lock order: by org, then (within an org) by class and month.
	sort.Slice(orgs, func(i, j int) bool { return orgs[i].org < orgs[j].org })
	for i := 1; i < len(orgs); i++ {
		if orgs[i].org == orgs[i-1].org {
			return nil, fmt.Errorf("append audit batches: org %s appears twice, merge its batches", orgs[i].org)
		}
	}
	chains := newChainList(orgs)
	err := s.appendBatches(ctx, orgs, chains, true, true)
	if errors.Is(err, errStaleHeads) {
		resetResults(orgs)
		err = s.appendBatches(ctx, orgs, chains, true, false)
	}
	if errors.Is(err, errDuplicates) {
		resetResults(orgs)
		err = s.appendBatches(ctx, orgs, chains, false, false)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// errDuplicates aborts an optimistic append that met stored events;
// errStaleHeads one that started from remembered chain heads that had
// moved on.
var (
	errDuplicates = errors.New("batch holds events already stored")
	errStaleHeads = errors.New("remembered audit chain heads have moved on")
)

// resetResults readies orgs for another attempt: the rows stay as built,
// only their numbering is redone.
func resetResults(orgs []*orgAppend) {
	for _, a := range orgs {
		clear(a.res.EventStored)
	}
}

// orgAppend is one org's part of a transaction.
type orgAppend struct {
	org       string
	reports   []usage.Report
	res       *AppendResult
	rows      []row
	chains    map[chainKey][]int // chain -> indexes into rows of first occurrences
	keys      []chainKey         // the chains, in lock order
	reportIdx []int              // first occurrence of each report
	heads     []chainHead        // one per key, as locked
	next      []chainHead        // one per key, where the transaction leaves it
	existing  []map[string]bool  // one per key: event IDs already stored (looked up unless optimistic)
}

type chainHead struct {
	id   int64 // chain_id
	seq  int64
	hash []byte
}

// newOrgAppend numbers nothing yet: it builds the rows and finds the chains.
func newOrgAppend(b *OrgBatch, res *AppendResult) (*orgAppend, error) {
	a := &orgAppend{org: b.Org, reports: b.Reports, res: res,
		rows: make([]row, len(b.Events)), chains: map[chainKey][]int{}}
	// An event ID is stored once per chain.
	type inChain struct {
		class string
		month int64
		id    string
	}
	seen := make(map[inChain]struct{}, len(b.Events))
	for i := range b.Events {
		r, err := newRow(b.Org, &b.Events[i])
		if err != nil {
			return nil, err
		}
		a.rows[i] = r
		id := inChain{r.class, r.month.Unix(), r.eventID}
		if _, dup := seen[id]; dup {
			continue // duplicate within the batch
		}
		seen[id] = struct{}{}
		k := chainKey{r.class, r.month}
		a.chains[k] = append(a.chains[k], i)
	}
	a.keys = make([]chainKey, 0, len(a.chains))
	for k := range a.chains {
		a.keys = append(a.keys, k)
	}
	sort.Slice(a.keys, func(i, j int) bool {
		if a.keys[i].class != a.keys[j].class {
			return a.keys[i].class < a.keys[j].class
		}
		return a.keys[i].month.Before(a.keys[j].month)
	})
	a.reportIdx = dedupeReports(b.Reports)
	a.heads = make([]chainHead, len(a.keys))
	a.next = make([]chainHead, len(a.keys))
	a.existing = make([]map[string]bool, len(a.keys))
	return a, nil
}

// headKey names one chain of one org in the locked heads.
type headKey struct {
	org, class string
	month      int64 // Unix seconds of the month's first day
}

// chainList is every chain of a transaction, in lock order, as the
// parameters of the statement that locks them (one element per chain),
// with where each one's locked head goes.
type chainList struct {
	orgs, classes []string
	months        []time.Time
	heads         map[headKey]*chainHead
}

func newChainList(orgs []*orgAppend) *chainList {
	l := &chainList{heads: map[headKey]*chainHead{}}
	for _, a := range orgs {
		for i, k := range a.keys {
			l.orgs = append(l.orgs, a.org)
			l.classes = append(l.classes, k.class)
			l.months = append(l.months, k.month)
			l.heads[headKey{a.org, k.class, k.month.Unix()}] = &a.heads[i]
		}
	}
	return l
}

// orgIDs are the IDs of orgs, in order.
func orgIDs(orgs []*orgAppend) []string {
	ids := make([]string, len(orgs))
	for i, a := range orgs {
		ids[i] = a.org
	}
	return ids
}

// queueWriteOrgs queues what names the transaction's orgs for row-level
// security: cordon.write_orgs (see migration 0140).
func queueWriteOrgs(b *pgx.Batch, orgs []*orgAppend) {
	b.Queue("SELECT set_config('cordon.write_orgs', $1, true)", strings.Join(orgIDs(orgs), ","))
}

// queueLock queues, for the first round trip of a transaction that does
// not know where its chains' heads are, what names its orgs for
// row-level security, records the orgs, and locks and reads every chain
// head with one statement, in the global lock order (the arrays are in
// that order, and the rows of INSERT ... SELECT are locked one after the
// other in it). Unless optimistic, it then looks up, org by org, the
// events already stored.
func queueLock(b *pgx.Batch, orgs []*orgAppend, chains *chainList, optimistic bool) {
	queueWriteOrgs(b, orgs)
	b.Queue("INSERT INTO orgs (org_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", orgIDs(orgs))
	if len(chains.orgs) > 0 {
		b.Queue(`INSERT INTO audit_chain_heads AS h (org_id, retention_class, chain_month, last_seq, last_hash)
			SELECT o, c, m, 0, $4 FROM unnest($1::text[], $2::text[], $3::date[]) AS u(o, c, m)
			ON CONFLICT (org_id, retention_class, chain_month) DO UPDATE SET last_seq = h.last_seq
			RETURNING org_id, retention_class, chain_month, chain_id, last_seq, last_hash`,
			chains.orgs, chains.classes, chains.months, genesis).Query(func(rs pgx.Rows) error {
			var (
				org, class string
				month      time.Time
				head       chainHead
				n          int
			)
			_, err := pgx.ForEachRow(rs, []any{&org, &class, &month, &head.id, &head.seq, &head.hash}, func() error {
				h := chains.heads[headKey{org, class, month.Unix()}]
				if h == nil {
					return fmt.Errorf("%w: locked a head (%s, %s, %s) nobody asked for", ErrChainConflict, org, class, month.Format("2006-01"))
				}
				*h = head
				n++
				return nil
			})
			if err == nil && n != len(chains.orgs) {
				err = fmt.Errorf("%w: locked %d of %d chain heads", ErrChainConflict, n, len(chains.orgs))
			}
			return err
		})
	}
	if optimistic {
		return
	}
	for _, a := range orgs {
		b.Queue("SELECT set_config('cordon.org_id', $1, true)", a.org)
		for i, k := range a.keys {
			ids := make([]string, 0, len(a.chains[k]))
			for _, ri := range a.chains[k] {
				ids = append(ids, a.rows[ri].eventID)
			}
			existing := map[string]bool{}
			a.existing[i] = existing
			b.Queue(`SELECT event_id FROM audit_events
				WHERE org_id = $1 AND retention_class = $2 AND chain_month = $3 AND event_id = ANY($4)`,
				a.org, k.class, k.month, ids).Query(func(rs pgx.Rows) error {
				var id string
				_, err := pgx.ForEachRow(rs, []any{&id}, func() error { existing[id] = true; return nil })
				return err
			})
		}
	}
}

// headMoves are the chain heads a transaction moves forward: from where,
// and to where, in the global lock order.
type headMoves struct {
	ids                  []int64
	oldSeqs, newSeqs     []int64
	oldHashes, newHashes [][]byte
}

// chain numbers and hashes the new rows of each of a's chains from its
// head (as locked, or as remembered), adding them to c and the heads'
// moves to m; a.next is where the transaction leaves each head.
func (a *orgAppend) chain(c *columns, m *headMoves) {
	for i, k := range a.keys {
		head := a.heads[i]
		seq, prev := head.seq, head.hash
		for _, ri := range a.chains[k] {
			r := &a.rows[ri]
			if a.existing[i][r.eventID] {
				continue
			}
			seq++
			r.chainID, r.seq, r.prevHash = head.id, seq, prev
			r.hash = r.computeHash()
			prev = r.hash
			a.res.EventStored[ri] = true
			c.add(r)
		}
		a.next[i] = chainHead{id: head.id, seq: seq, hash: prev}
		if seq != head.seq {
			m.ids = append(m.ids, head.id)
			m.oldSeqs, m.oldHashes = append(m.oldSeqs, head.seq), append(m.oldHashes, head.hash)
			m.newSeqs, m.newHashes = append(m.newSeqs, seq), append(m.newHashes, prev)
		}
	}
}

// usageRow is a usage report as a row of usage_stage, for
// json_populate_recordset, which matches JSON names to columns. Report's
// JSON names are usage_reports' columns (report_id, run_id, final, ...,
// enforcement; an absent exit_code is NULL) except its org and job, which
// json_populate_recordset ignores: org_id and job_id are added, and
// egress is written even when empty ({}), as the column always held it,
// where Report's JSON leaves it out.
type usageRow struct {
	usage.Report
	OrgID      string                  `json:"org_id"`
	JobID      string                  `json:"job_id"`
	Egress     map[string]usage.Egress `json:"egress"`
	ReceivedAt time.Time               `json:"received_at"`
}

// queueWrite queues, after the heads are locked or known: the chain
// heads' moves (cordon_advance_chains, which checks under their locks
// that they are where the rows were hashed onto), the new audit rows of
// every org (one INSERT, whose row count goes to inserted), and the usage
// reports: every org's into usage_stage (a temporary table, without
// row-level security), then org by org from there with cordon.org_id set
// to that org. COMMIT follows in the same pipeline.
func queueWrite(b *pgx.Batch, orgs []*orgAppend, c *columns, m *headMoves, usageJSON []byte, stored []map[string]bool, inserted *int64) {
	if len(m.ids) > 0 {
		b.Queue("SELECT cordon_advance_chains($1, $2, $3, $4, $5)", m.ids, m.oldSeqs, m.oldHashes, m.newSeqs, m.newHashes)
	}
	if c.n > 0 {
		b.Queue(insertAuditSQL, c.args()...).Exec(func(ct pgconn.CommandTag) error {
			*inserted = ct.RowsAffected()
			return nil
		})
	}
	if usageJSON == nil {
		return
	}
	b.Queue("INSERT INTO usage_stage SELECT * FROM json_populate_recordset(NULL::usage_stage, $1::json)", string(usageJSON))
	for i, a := range orgs {
		if len(a.reportIdx) == 0 {
			continue
		}
		b.Queue("SELECT set_config('cordon.org_id', $1, true)", a.org)
		b.Queue("INSERT INTO jobs (org_id, job_id) SELECT DISTINCT org_id, job_id FROM usage_stage WHERE org_id = $1 ON CONFLICT DO NOTHING", a.org)
		b.Queue(`INSERT INTO runs (org_id, job_id, run_id, started_at, last_report_at, final, exit_code)
			SELECT DISTINCT ON (run_id) org_id, job_id, run_id, started_at, ended_at, final, exit_code
			FROM usage_stage WHERE org_id = $1 ORDER BY run_id, final DESC, ended_at DESC
			ON CONFLICT (org_id, run_id) DO UPDATE SET
				last_report_at = greatest(runs.last_report_at, EXCLUDED.last_report_at),
				final = runs.final OR EXCLUDED.final,
				exit_code = coalesce(EXCLUDED.exit_code, runs.exit_code)`, a.org)
		st := map[string]bool{}
		stored[i] = st
		b.Queue(`INSERT INTO usage_reports SELECT * FROM usage_stage WHERE org_id = $1
			ON CONFLICT (org_id, report_id) DO NOTHING RETURNING report_id`, a.org).Query(func(rs pgx.Rows) error {
			var id string
			_, err := pgx.ForEachRow(rs, []any{&id}, func() error { st[id] = true; return nil })
			return err
		})
	}
}

// appendBatches is one attempt of AppendBatches: one transaction, which
// numbers the rows of orgs from their heads (remembered ones if recall)
// and fills in their results.
//
// A round trip costs a send, a receive and a wake-up on both sides, and
// under load a wait for a core at each wake-up. When every chain's head
// is remembered (and the attempt is optimistic), the transaction is one
// pipeline: BEGIN, cordon.write_orgs, cordon_advance_chains, the INSERT,
// the usage statements, COMMIT. Otherwise a first pipeline (led by BEGIN)
// records the orgs and locks and reads the heads, and a second does the
// rest. Any statement that fails aborts the transaction, and the COMMIT
// queued after it then rolls it back, so every check that must keep the
// transaction from committing runs in Postgres: the lock statement's
// count in queueLock is read in Go before the second pipeline is sent;
// cordon_advance_chains checks the heads. A plain INSERT stores every row
// it is given or fails (TestAuditInsertCannotDropRows keeps it so: no
// trigger or rule may swallow rows), and its count is still checked after
// the commit: a shortfall is reported as an error, so the requests are
// not acknowledged and their events are redelivered.
func (s *Store) appendBatches(ctx context.Context, orgs []*orgAppend, chains *chainList, optimistic, recall bool) (err error) {
	names := func() string {
		if len(orgs) == 1 {
			return "org " + orgs[0].org
		}
		return fmt.Sprintf("%d orgs", len(orgs))
	}
	// Gather the usage reports before taking a connection: encoding them
	// is the one step here that can fail on the data.
	usageJSON, err := usageStageJSON(orgs)
	if err != nil {
		return err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("append audit batches of %s: %w", names(), err)
	}
	defer conn.Release()
	defer func() {
		if err == nil {
			s.cache.remember(orgs)
			return
		}
		// Whatever happened, the heads are read again next time.
		s.cache.forget(orgs)
		// The pool would close a connection left in the transaction.
		if !conn.Conn().IsClosed() && conn.Conn().PgConn().TxStatus() != 'I' {
			conn.Exec(ctx, "ROLLBACK")
		}
	}()
	pg := conn.Conn()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	guessed := optimistic && recall && s.cache.recall(orgs)
	if guessed {
		s.remembered.Add(1)
		queueWriteOrgs(b, orgs)
	} else {
		queueLock(b, orgs, chains, optimistic)
		if err := pg.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("lock audit chains of %s: %w", names(), err)
		}
		b = &pgx.Batch{}
	}

	c := newColumns()
	defer putColumns(c) // after the batch: pgx has copied the arrays
	var moves headMoves
	for _, a := range orgs {
		a.chain(c, &moves)
	}
	stored := make([]map[string]bool, len(orgs)) // report IDs stored, for orgs with reports
	inserted := int64(-1)
	queueWrite(b, orgs, c, &moves, usageJSON, stored, &inserted)
	b.Queue("COMMIT")
	if err := pg.SendBatch(ctx, b).Close(); err != nil {
		var pgErr *pgconn.PgError
		switch {
		case guessed && errors.As(err, &pgErr) && pgErr.Code == "CD001":
			s.stale.Add(1)
			return errStaleHeads
		case isUniqueViolation(err) && optimistic:
			// An event already stored: the plain INSERT refused it.
			return errDuplicates
		case isUniqueViolation(err) || errors.As(err, &pgErr) && pgErr.Code == "CD001":
			// The chains were locked and read, and stored events
			// left out, so this is not the client's data at fault:
			// never pass on the PgError, which would read as a data
			// error.
			return fmt.Errorf("%w: %s: %v", ErrChainConflict, names(), err)
		}
		return fmt.Errorf("insert batch of %s: %w", names(), err)
	}
	if c.n > 0 && inserted != int64(c.n) {
		s.log.Error("audit INSERT committed fewer rows than it was given; the chain has a gap verify will report",
			"orgs", names(), "inserted", inserted, "rows", c.n)
		return fmt.Errorf("%w: %s: inserted %d of %d new rows", ErrChainConflict, names(), inserted, c.n)
	}
	for i, a := range orgs {
		for _, ri := range a.reportIdx {
			a.res.UsageStored[ri] = stored[i][a.reports[ri].ReportID]
		}
	}
	return nil
}

// usageStageJSON is every org's new usage reports as a JSON array of
// usage_stage rows, or nil when there are none.
func usageStageJSON(orgs []*orgAppend) ([]byte, error) {
	var rows []usageRow
	now := time.Now().UTC().Truncate(time.Microsecond)
	for _, a := range orgs {
		for _, i := range a.reportIdx {
			r := a.reports[i]
			// Postgres would round the nanoseconds; the audit rows'
			// timestamps are truncated, and so are these.
			r.StartedAt, r.EndedAt = r.StartedAt.Truncate(time.Microsecond), r.EndedAt.Truncate(time.Microsecond)
			rows = append(rows, usageRow{Report: r, OrgID: a.org, JobID: r.Job, Egress: r.Egress, ReceivedAt: now})
		}
	}
	if rows == nil {
		return nil, nil
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return nil, fmt.Errorf("encode usage reports: %w", err)
	}
	return b, nil
}

// headCache remembers where this Store left each chain it appended to,
// and the orgs whose rows exist, so that the next transaction of an org
// can hash its rows onto the chains without first reading their heads.
// It is a guess: cordon_advance_chains checks it under the chains' locks,
// and chains are serialised in Postgres, never here. Entries are
// remembered only after a commit, and forgotten after any failure.
type headCache struct {
	mu    sync.Mutex
	heads map[headKey]chainHead
	orgs  map[string]bool
}

// maxCachedHeads bounds the cache (a chain head is about 100 bytes); past
// it, the cache starts over, and chains are read again.
const maxCachedHeads = 1 << 16

func newHeadCache() headCache {
	return headCache{heads: map[headKey]chainHead{}, orgs: map[string]bool{}}
}

// recall copies the remembered heads of every chain of orgs into place
// and reports whether it knew them all (and every org).
func (h *headCache) recall(orgs []*orgAppend) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range orgs {
		if !h.orgs[a.org] {
			return false
		}
		for i, k := range a.keys {
			head, ok := h.heads[headKey{a.org, k.class, k.month.Unix()}]
			if !ok {
				return false
			}
			a.heads[i] = head
		}
	}
	return true
}

// remember records where a committed transaction left orgs' chains.
func (h *headCache) remember(orgs []*orgAppend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.heads) > maxCachedHeads || len(h.orgs) > maxCachedHeads {
		clear(h.heads)
		clear(h.orgs)
	}
	for _, a := range orgs {
		h.orgs[a.org] = true
		for i, k := range a.keys {
			h.heads[headKey{a.org, k.class, k.month.Unix()}] = a.next[i]
		}
	}
}

// forget drops what is remembered of orgs and their chains.
func (h *headCache) forget(orgs []*orgAppend) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range orgs {
		delete(h.orgs, a.org)
		for _, k := range a.keys {
			delete(h.heads, headKey{a.org, k.class, k.month.Unix()})
		}
	}
}

// isUniqueViolation reports whether err is Postgres refusing a duplicate
// key (SQLSTATE 23505).
func isUniqueViolation(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505"
}

func newRow(org string, rec *Record) (row, error) {
	ev := &rec.Event
	md := rec.RawMetadata
	if md == nil && ev.Metadata != nil {
		var err error
		if md, err = json.Marshal(ev.Metadata); err != nil {
			return row{}, fmt.Errorf("encode metadata of event %s: %w", ev.EventID, err)
		}
	}
	ts := ev.Timestamp.UTC().Truncate(time.Microsecond)
	return row{
		org: org, class: RetentionClass(ev), month: chainMonth(ts), ts: ts,
		eventType: ev.EventType, eventID: ev.EventID,
		actorType: ev.Actor.Type, actorID: ev.Actor.ID, actorIP: ev.Actor.IPAddress, actorUA: ev.Actor.UserAgent,
		resourceType: ev.Resource.Type, resourceID: ev.Resource.ID,
		action: ev.Action, result: ev.Result, metadata: md, requestID: ev.RequestID,
	}, nil
}

// columns holds the new rows of a batch column by column, each column a
// binary array (wirearray.go), for one INSERT ... SELECT unnest(...): a
// single statement and round trip, which measured faster than COPY into a
// staging table and INSERT ... SELECT from it (COPY itself is refused on
// tables with row-level security). The unnests are in the select list, not
// in FROM: a set-returning function in FROM is materialised into a
// tuplestore first, which cost Postgres about 5 µs a row more.
type columns struct {
	n                                                                           int
	org, class, month, chainID, seq, ts, eventType, eventID, actorType, actorID arrayBuilder
	actorIP, actorUA, resourceType, resourceID, action, result, md              arrayBuilder
	requestID, prevHash, hash                                                   arrayBuilder
}

// column is one column of the audit INSERT: the builder of its
// parameter, the audit_events column it fills and the array type it is
// sent as (cast is SQL applied to each element, for metadata's json).
type column struct {
	a      *arrayBuilder
	name   string
	oid    uint32
	sqlArr string
	cast   string
}

// list returns every column in the order of insertAuditSQL's parameters:
// the one list the statement, its arguments and the buffers' upkeep are
// derived from.
func (c *columns) list() []column {
	text := func(a *arrayBuilder, name string) column { return column{a, name, pgtype.TextOID, "text[]", ""} }
	return []column{
		text(&c.org, "org_id"),
		text(&c.class, "retention_class"),
		{&c.month, "chain_month", pgtype.DateOID, "date[]", ""},
		{&c.chainID, "chain_id", pgtype.Int8OID, "bigint[]", ""},
		{&c.seq, "seq", pgtype.Int8OID, "bigint[]", ""},
		{&c.ts, "ts", pgtype.TimestamptzOID, "timestamptz[]", ""},
		text(&c.eventType, "event_type"),
		text(&c.eventID, "event_id"),
		text(&c.actorType, "actor_type"),
		text(&c.actorID, "actor_id"),
		text(&c.actorIP, "actor_ip"),
		text(&c.actorUA, "actor_user_agent"),
		text(&c.resourceType, "resource_type"),
		text(&c.resourceID, "resource_id"),
		text(&c.action, "action"),
		text(&c.result, "result"),
		{&c.md, "metadata", pgtype.TextOID, "text[]", "::json"},
		text(&c.requestID, "request_id"),
		{&c.prevHash, "prev_hash", pgtype.ByteaOID, "bytea[]", ""},
		{&c.hash, "hash", pgtype.ByteaOID, "bytea[]", ""},
	}
}

// insertAuditSQL is INSERT INTO audit_events (columns) SELECT
// unnest($1::type[]), ...: one statement for every row of a transaction.
var insertAuditSQL = func() string {
	var names, values []string
	for i, col := range (&columns{}).list() {
		names = append(names, col.name)
		values = append(values, fmt.Sprintf("unnest($%d::%s)%s", i+1, col.sqlArr, col.cast))
	}
	return "INSERT INTO audit_events (" + strings.Join(names, ", ") + ") SELECT " + strings.Join(values, ", ")
}()

// columnsPool keeps the column buffers of finished transactions: each
// grows to the size of its column over a batch (tens of kilobytes for the
// metadata and event IDs of a few hundred rows), and building them anew
// regrew every one from a few kilobytes each transaction.
var columnsPool = sync.Pool{New: func() any { return &columns{} }}

// newColumns returns empty columns from columnsPool; the caller puts them
// back with putColumns once nothing reads their arrays.
func newColumns() *columns {
	c := columnsPool.Get().(*columns)
	c.n = 0
	for _, col := range c.list() {
		col.a.reset(col.oid)
	}
	return c
}

// maxPooledColumns is the most buffer putColumns keeps, so one huge
// transaction does not pin its memory.
const maxPooledColumns = 4 << 20

func putColumns(c *columns) {
	size := 0
	for _, col := range c.list() {
		size += cap(col.a.b)
	}
	if size <= maxPooledColumns {
		columnsPool.Put(c)
	}
}

func (c *columns) add(r *row) {
	c.n++
	c.org.text(r.org)
	c.class.text(r.class)
	c.month.date(r.month)
	c.chainID.int64(r.chainID)
	c.seq.int64(r.seq)
	c.ts.timestamptz(r.ts)
	c.eventType.text(r.eventType)
	c.eventID.text(r.eventID)
	c.actorType.text(r.actorType)
	c.actorID.text(r.actorID)
	c.actorIP.text(r.actorIP)
	c.actorUA.text(r.actorUA)
	c.resourceType.text(r.resourceType)
	c.resourceID.text(r.resourceID)
	c.action.text(r.action)
	c.result.text(r.result)
	if r.metadata == nil {
		c.md.null()
	} else {
		c.md.bytes(r.metadata)
	}
	c.requestID.text(r.requestID)
	c.prevHash.bytes(r.prevHash)
	c.hash.bytes(r.hash)
}

func (c *columns) args() []any {
	cols := c.list()
	args := make([]any, len(cols))
	total := 0
	for i, col := range cols {
		a := col.a.array()
		total += len(a.b)
		args[i] = a
	}
	// pgx encodes the parameters one after the other into one buffer,
	// which it shrinks to 256 bytes after every query: the first array
	// makes room for all of them, instead of the buffer doubling its way
	// to a few hundred kilobytes each transaction.
	first := args[0].(wireArray)
	first.reserve = total
	args[0] = first
	return args
}

// dedupeReports returns the indexes of the first occurrence of each report ID.
func dedupeReports(reports []usage.Report) []int {
	seen := make(map[string]bool, len(reports))
	idx := make([]int, 0, len(reports))
	for i := range reports {
		if seen[reports[i].ReportID] {
			continue
		}
		seen[reports[i].ReportID] = true
		idx = append(idx, i)
	}
	return idx
}
