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
package auditstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

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
// written with that org set for row-level security. When it returns nil,
// everything is durably committed, and result i says what batch i stored.
// An org may appear only once.
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
	res, err := s.appendBatches(ctx, batches, true)
	if errors.Is(err, errDuplicates) {
		res, err = s.appendBatches(ctx, batches, false)
	}
	return res, err
}

// errDuplicates aborts an optimistic append that met stored events.
var errDuplicates = errors.New("batch holds events already stored")

// orgAppend is one org's part of a transaction.
type orgAppend struct {
	org       string
	events    []Record
	reports   []usage.Report
	res       *AppendResult
	rows      []row
	chains    map[chainKey][]int // chain -> indexes into rows of first occurrences
	keys      []chainKey         // the chains, in lock order
	reportIdx []int              // first occurrence of each report
	heads     []chainHead        // one per key, as locked
	existing  []map[string]bool  // one per key: event IDs already stored
	stage     *columns           // the new rows
	// The chain heads to move forward.
	headClasses []string
	headMonths  []time.Time
	headSeqs    []int64
	headHashes  [][]byte
}

type chainHead struct {
	seq  int64
	hash []byte
}

// newOrgAppend numbers nothing yet: it builds the rows and finds the chains.
func newOrgAppend(b *OrgBatch, res *AppendResult) (*orgAppend, error) {
	a := &orgAppend{org: b.Org, events: b.Events, reports: b.Reports, res: res,
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

// queueLock queues, for the first round trip, what locks a's chains (and,
// unless optimistic, finds its events already stored).
func (a *orgAppend) queueLock(b *pgx.Batch, optimistic bool) {
	b.Queue("SELECT set_config('cordon.org_id', $1, true)", a.org)
	b.Queue("INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING", a.org)
	for i, k := range a.keys {
		b.Queue(`INSERT INTO audit_chain_heads AS h (org_id, retention_class, chain_month, last_seq, last_hash)
			VALUES ($1, $2, $3, 0, $4)
			ON CONFLICT (org_id, retention_class, chain_month) DO UPDATE SET last_seq = h.last_seq
			RETURNING last_seq, last_hash`, a.org, k.class, k.month, genesis).QueryRow(func(r pgx.Row) error {
			return r.Scan(&a.heads[i].seq, &a.heads[i].hash)
		})
		a.existing[i] = map[string]bool{}
		if optimistic {
			continue
		}
		ids := make([]string, 0, len(a.chains[k]))
		for _, ri := range a.chains[k] {
			ids = append(ids, a.rows[ri].eventID)
		}
		b.Queue(`SELECT event_id FROM audit_events
			WHERE org_id = $1 AND retention_class = $2 AND chain_month = $3 AND event_id = ANY($4)`,
			a.org, k.class, k.month, ids).Query(func(rs pgx.Rows) error {
			var id string
			_, err := pgx.ForEachRow(rs, []any{&id}, func() error { a.existing[i][id] = true; return nil })
			return err
		})
	}
}

// chain numbers and hashes the new rows of each chain from its locked head.
func (a *orgAppend) chain() {
	a.stage = newColumns(len(a.events))
	for i, k := range a.keys {
		seq, prev := a.heads[i].seq, a.heads[i].hash
		for _, ri := range a.chains[k] {
			r := &a.rows[ri]
			if a.existing[i][r.eventID] {
				continue
			}
			seq++
			r.seq, r.prevHash = seq, prev
			r.hash = r.computeHash()
			prev = r.hash
			a.res.EventStored[ri] = true
			a.stage.add(r)
		}
		if seq != a.heads[i].seq {
			a.headClasses = append(a.headClasses, k.class)
			a.headMonths = append(a.headMonths, k.month)
			a.headSeqs = append(a.headSeqs, seq)
			a.headHashes = append(a.headHashes, prev)
		}
	}
}

// queueWrite queues, for the second round trip, a's inserts: the new
// audit rows, the chain heads, and its usage reports from usage_stage
// (which holds every org's: RLS is checked against the org set here).
func (a *orgAppend) queueWrite(b *pgx.Batch, stored map[string]bool) {
	b.Queue("SELECT set_config('cordon.org_id', $1, true)", a.org)
	if n := len(a.stage.seq); n > 0 {
		// A plain INSERT stores every row or fails (a stored event is a
		// unique violation, handled by appendBatches): fewer rows would
		// mean something dropped them, and the heads must not move.
		b.Queue(insertAuditSQL, a.stage.args(a.org)...).Exec(func(ct pgconn.CommandTag) error {
			if ct.RowsAffected() != int64(n) {
				return fmt.Errorf("%w: org %s: inserted %d of %d new rows", ErrChainConflict, a.org, ct.RowsAffected(), n)
			}
			return nil
		})
		b.Queue(`UPDATE audit_chain_heads h SET last_seq = u.seq, last_hash = u.hash, updated_at = now()
			FROM unnest($2::text[], $3::date[], $4::bigint[], $5::bytea[]) AS u(class, month, seq, hash)
			WHERE h.org_id = $1 AND h.retention_class = u.class AND h.chain_month = u.month`,
			a.org, a.headClasses, a.headMonths, a.headSeqs, a.headHashes)
	}
	if len(a.reportIdx) == 0 {
		return
	}
	b.Queue("INSERT INTO jobs (org_id, job_id) SELECT DISTINCT org_id, job_id FROM usage_stage WHERE org_id = $1 ON CONFLICT DO NOTHING", a.org)
	b.Queue(`INSERT INTO runs (org_id, job_id, run_id, started_at, last_report_at, final, exit_code)
		SELECT DISTINCT ON (run_id) org_id, job_id, run_id, started_at, ended_at, final, exit_code
		FROM usage_stage WHERE org_id = $1 ORDER BY run_id, final DESC, ended_at DESC
		ON CONFLICT (org_id, run_id) DO UPDATE SET
			last_report_at = greatest(runs.last_report_at, EXCLUDED.last_report_at),
			final = runs.final OR EXCLUDED.final,
			exit_code = coalesce(EXCLUDED.exit_code, runs.exit_code)`, a.org)
	b.Queue(`INSERT INTO usage_reports SELECT * FROM usage_stage WHERE org_id = $1
		ON CONFLICT (org_id, report_id) DO NOTHING RETURNING report_id`, a.org).Query(func(rs pgx.Rows) error {
		var id string
		_, err := pgx.ForEachRow(rs, []any{&id}, func() error { stored[id] = true; return nil })
		return err
	})
}

func (s *Store) appendBatches(ctx context.Context, batches []OrgBatch, optimistic bool) ([]AppendResult, error) {
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
	names := func() string {
		if len(orgs) == 1 {
			return "org " + orgs[0].org
		}
		return fmt.Sprintf("%d orgs", len(orgs))
	}

	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, a := range orgs {
			a.queueLock(b, optimistic)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("lock audit chains of %s: %w", names(), err)
		}

		var usageRows [][]any
		for _, a := range orgs {
			a.chain()
			for _, i := range a.reportIdx {
				v, err := usageValues(a.org, &a.reports[i])
				if err != nil {
					return err
				}
				usageRows = append(usageRows, v)
			}
		}
		if len(usageRows) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"usage_stage"}, usageColumns, pgx.CopyFromRows(usageRows)); err != nil {
				return fmt.Errorf("copy usage reports of %s: %w", names(), err)
			}
		}

		b = &pgx.Batch{}
		stored := make([]map[string]bool, len(orgs))
		for i, a := range orgs {
			stored[i] = map[string]bool{}
			a.queueWrite(b, stored[i])
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
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
		for i, a := range orgs {
			for _, ri := range a.reportIdx {
				a.res.UsageStored[ri] = stored[i][a.reports[ri].ReportID]
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
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

// columns holds the new rows of a batch column by column, for one INSERT
// ... SELECT FROM unnest(...): a single statement and round trip, which
// measured faster than COPY into a staging table and INSERT ... SELECT from
// it (COPY itself is refused on tables with row-level security).
type columns struct {
	class, eventType, eventID, actorType, actorID, actorIP, actorUA []string
	resourceType, resourceID, action, result, requestID             []string
	month, ts                                                       []time.Time
	seq                                                             []int64
	metadata                                                        []*string
	prevHash, hash                                                  [][]byte
}

func newColumns(n int) *columns {
	return &columns{
		class: make([]string, 0, n), eventType: make([]string, 0, n), eventID: make([]string, 0, n),
		actorType: make([]string, 0, n), actorID: make([]string, 0, n), actorIP: make([]string, 0, n),
		actorUA: make([]string, 0, n), resourceType: make([]string, 0, n), resourceID: make([]string, 0, n),
		action: make([]string, 0, n), result: make([]string, 0, n), requestID: make([]string, 0, n),
		month: make([]time.Time, 0, n), ts: make([]time.Time, 0, n), seq: make([]int64, 0, n),
		metadata: make([]*string, 0, n), prevHash: make([][]byte, 0, n), hash: make([][]byte, 0, n),
	}
}

func (c *columns) add(r *row) {
	c.class = append(c.class, r.class)
	c.month = append(c.month, r.month)
	c.seq = append(c.seq, r.seq)
	c.ts = append(c.ts, r.ts)
	c.eventType = append(c.eventType, r.eventType)
	c.eventID = append(c.eventID, r.eventID)
	c.actorType = append(c.actorType, r.actorType)
	c.actorID = append(c.actorID, r.actorID)
	c.actorIP = append(c.actorIP, r.actorIP)
	c.actorUA = append(c.actorUA, r.actorUA)
	c.resourceType = append(c.resourceType, r.resourceType)
	c.resourceID = append(c.resourceID, r.resourceID)
	c.action = append(c.action, r.action)
	c.result = append(c.result, r.result)
	var md *string
	if r.metadata != nil {
		s := string(r.metadata)
		md = &s
	}
	c.metadata = append(c.metadata, md)
	c.requestID = append(c.requestID, r.requestID)
	c.prevHash = append(c.prevHash, r.prevHash)
	c.hash = append(c.hash, r.hash)
}

func (c *columns) args(org string) []any {
	return []any{org, c.class, c.month, c.seq, c.ts, c.eventType, c.eventID, c.actorType, c.actorID, c.actorIP, c.actorUA,
		c.resourceType, c.resourceID, c.action, c.result, c.metadata, c.requestID, c.prevHash, c.hash}
}

const insertAuditSQL = `INSERT INTO audit_events (org_id, retention_class, chain_month, seq, ts, event_type, event_id,
	actor_type, actor_id, actor_ip, actor_user_agent, resource_type, resource_id,
	action, result, metadata, request_id, prev_hash, hash)
	SELECT $1, class, month, seq, ts, event_type, event_id, actor_type, actor_id, actor_ip, actor_ua,
		resource_type, resource_id, action, result, md::json, request_id, prev_hash, hash
	FROM unnest($2::text[], $3::date[], $4::bigint[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[],
		$10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
		$18::bytea[], $19::bytea[])
		AS u(class, month, seq, ts, event_type, event_id, actor_type, actor_id, actor_ip, actor_ua,
		resource_type, resource_id, action, result, md, request_id, prev_hash, hash)`

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
