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
	pool *pgxpool.Pool
	log  *slog.Logger
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
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		// The audit INSERT takes hand-encoded arrays (wirearray.go).
		if err := registerWireArrays(c); err != nil {
			return err
		}
		// Usage reports are COPYed into a staging table (COPY is not
		// allowed into tables with row-level security) and inserted from it.
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
	return &Store{pool: pool, log: log}, nil
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
	err := s.appendBatches(ctx, orgs, chains, true)
	if errors.Is(err, errDuplicates) {
		// The rows stay as built; only their numbering is redone.
		for _, a := range orgs {
			clear(a.res.EventStored)
		}
		err = s.appendBatches(ctx, orgs, chains, false)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// errDuplicates aborts an optimistic append that met stored events.
var errDuplicates = errors.New("batch holds events already stored")

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
	seen := map[chainKey]map[string]bool{}
	for i := range b.Events {
		r, err := newRow(b.Org, &b.Events[i])
		if err != nil {
			return nil, err
		}
		a.rows[i] = r
		k := chainKey{r.class, r.month}
		if seen[k] == nil {
			seen[k] = map[string]bool{}
		}
		if seen[k][r.eventID] {
			continue // duplicate within the batch
		}
		seen[k][r.eventID] = true
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
	a.existing = make([]map[string]bool, len(a.keys))
	return a, nil
}

// headKey names one chain of one org in the locked heads.
type headKey struct {
	org, class string
	month      int64 // Unix seconds of the month's first day
}

// chainColumns name chains, one per index, as statement parameters.
type chainColumns struct {
	orgs, classes []string
	months        []time.Time
}

func (c *chainColumns) add(org string, k chainKey) {
	c.orgs = append(c.orgs, org)
	c.classes = append(c.classes, k.class)
	c.months = append(c.months, k.month)
}

// chainList is every chain of a transaction, in lock order, with where
// each one's locked head goes.
type chainList struct {
	chainColumns
	heads map[headKey]*chainHead
}

func newChainList(orgs []*orgAppend) *chainList {
	l := &chainList{heads: map[headKey]*chainHead{}}
	for _, a := range orgs {
		for i, k := range a.keys {
			l.add(a.org, k)
			l.heads[headKey{a.org, k.class, k.month.Unix()}] = &a.heads[i]
		}
	}
	return l
}

// queueLock queues, for the first round trip, what names the
// transaction's orgs for row-level security (cordon.write_orgs, see
// migration 0140), records the orgs, and locks every chain with one
// statement, in the global lock order (the arrays are in that order, and
// the rows of INSERT ... SELECT are locked one after the other in it).
// Unless optimistic, it then looks up, org by org, the events already
// stored.
func queueLock(b *pgx.Batch, orgs []*orgAppend, chains *chainList, optimistic bool) {
	ids := make([]string, len(orgs))
	for i, a := range orgs {
		ids[i] = a.org
	}
	b.Queue("SELECT set_config('cordon.write_orgs', $1, true)", strings.Join(ids, ","))
	b.Queue("INSERT INTO orgs (org_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", ids)
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

// headMoves are the chain heads a transaction moves forward, and where to.
type headMoves struct {
	chainColumns
	seqs   []int64
	hashes [][]byte
}

// chain numbers and hashes the new rows of each of a's chains from its
// locked head, adding them to c and the heads' new positions to m.
func (a *orgAppend) chain(c *columns, m *headMoves) {
	for i, k := range a.keys {
		seq, prev := a.heads[i].seq, a.heads[i].hash
		for _, ri := range a.chains[k] {
			r := &a.rows[ri]
			if a.existing[i][r.eventID] {
				continue
			}
			seq++
			r.chainID, r.seq, r.prevHash = a.heads[i].id, seq, prev
			r.hash = r.computeHash()
			prev = r.hash
			a.res.EventStored[ri] = true
			c.add(r)
		}
		if seq != a.heads[i].seq {
			m.add(a.org, k)
			m.seqs = append(m.seqs, seq)
			m.hashes = append(m.hashes, prev)
		}
	}
}

// queueWrite queues, for the second round trip, the new audit rows of
// every org (one INSERT), the chain heads' new positions (one UPDATE), and
// org by org the usage reports from usage_stage (which holds every org's:
// RLS is checked against the org set here).
func queueWrite(b *pgx.Batch, orgs []*orgAppend, c *columns, m *headMoves, stored []map[string]bool) {
	if n := c.n; n > 0 {
		// A plain INSERT stores every row or fails (a stored event is a
		// unique violation, handled by appendBatches): fewer rows would
		// mean something dropped them, and the heads must not move.
		b.Queue(insertAuditSQL, c.args()...).Exec(func(ct pgconn.CommandTag) error {
			if ct.RowsAffected() != int64(n) {
				return fmt.Errorf("%w: inserted %d of %d new rows", ErrChainConflict, ct.RowsAffected(), n)
			}
			return nil
		})
		heads := len(m.seqs)
		b.Queue(`UPDATE audit_chain_heads h SET last_seq = u.seq, last_hash = u.hash, updated_at = now()
			FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bytea[]) AS u(org, class, month, seq, hash)
			WHERE h.org_id = u.org AND h.retention_class = u.class AND h.chain_month = u.month`,
			m.orgs, m.classes, m.months, m.seqs, m.hashes).Exec(func(ct pgconn.CommandTag) error {
			if ct.RowsAffected() != int64(heads) {
				return fmt.Errorf("%w: moved %d of %d chain heads", ErrChainConflict, ct.RowsAffected(), heads)
			}
			return nil
		})
	}
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
// numbers the rows of orgs from their locked heads and fills in their
// results.
//
// BEGIN leads the pipeline that locks the chains instead of taking a
// round trip of its own (as pgx.BeginFunc's would): a round trip costs a
// send, a receive and a wake-up on both sides, and a transaction makes
// three or four. COMMIT stays a round trip of its own, after the write
// pipeline's results are checked: a check that fails must be able to
// keep the transaction from committing.
func (s *Store) appendBatches(ctx context.Context, orgs []*orgAppend, chains *chainList, optimistic bool) (err error) {
	names := func() string {
		if len(orgs) == 1 {
			return "org " + orgs[0].org
		}
		return fmt.Sprintf("%d orgs", len(orgs))
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("append audit batches of %s: %w", names(), err)
	}
	defer conn.Release()
	defer func() {
		// The pool would close a connection left in the transaction.
		if err != nil && !conn.Conn().IsClosed() && conn.Conn().PgConn().TxStatus() != 'I' {
			conn.Exec(ctx, "ROLLBACK")
		}
	}()
	pg := conn.Conn()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	queueLock(b, orgs, chains, optimistic)
	if err := pg.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("lock audit chains of %s: %w", names(), err)
	}

	c := newColumns()
	defer putColumns(c) // after the batch: pgx has copied the arrays
	var moves headMoves
	var usageRows [][]any
	for _, a := range orgs {
		a.chain(c, &moves)
		for _, i := range a.reportIdx {
			v, err := usageValues(a.org, &a.reports[i])
			if err != nil {
				return err
			}
			usageRows = append(usageRows, v)
		}
	}
	if len(usageRows) > 0 {
		if _, err := pg.CopyFrom(ctx, pgx.Identifier{"usage_stage"}, usageColumns, pgx.CopyFromRows(usageRows)); err != nil {
			return fmt.Errorf("copy usage reports of %s: %w", names(), err)
		}
	}

	b = &pgx.Batch{}
	stored := make([]map[string]bool, len(orgs)) // report IDs stored, for orgs with reports
	queueWrite(b, orgs, c, &moves, stored)
	if err := pg.SendBatch(ctx, b).Close(); err != nil {
		if isUniqueViolation(err) {
			// An event already stored: the plain INSERT refused it.
			if optimistic {
				return errDuplicates
			}
			// The chains are locked and stored events were left out,
			// so this is not the client's data at fault: never pass
			// on the PgError, which would read as a data error.
			return fmt.Errorf("%w: %s: %v", ErrChainConflict, names(), err)
		}
		return fmt.Errorf("insert batch of %s: %w", names(), err)
	}
	if _, err := pg.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit batch of %s: %w", names(), err)
	}
	for i, a := range orgs {
		for _, ri := range a.reportIdx {
			a.res.UsageStored[ri] = stored[i][a.reports[ri].ReportID]
		}
	}
	return nil
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
	for i, col := range cols {
		args[i] = col.a.array()
	}
	return args
}

var usageColumns = []string{
	"org_id", "report_id", "job_id", "run_id", "final", "started_at", "ended_at", "exit_code",
	"cpu_user_seconds", "cpu_system_seconds", "max_rss_bytes", "wall_seconds", "egress",
	"denials", "redactions", "stdout_bytes", "stderr_bytes", "enforcement", "received_at",
}

func usageValues(org string, r *usage.Report) ([]any, error) {
	var egress any
	if r.Egress != nil {
		b, err := json.Marshal(r.Egress)
		if err != nil {
			return nil, fmt.Errorf("encode egress of usage report %s: %w", r.ReportID, err)
		}
		egress = string(b)
	}
	var exit any
	if r.ExitCode != nil {
		exit = int32(*r.ExitCode)
	}
	return []any{org, r.ReportID, r.Job, r.RunID, r.Final, r.StartedAt.UTC(), r.EndedAt.UTC(), exit,
		r.CPUUserSeconds, r.CPUSystemSeconds, r.MaxRSSBytes, r.WallSeconds, egress,
		r.Denials, r.Redactions, r.StdoutBytes, r.StderrBytes, r.Enforcement, time.Now().UTC()}, nil
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
