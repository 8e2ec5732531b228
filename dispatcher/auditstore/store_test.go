package auditstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// migratedDB returns the URL of a fresh, migrated database.
func migratedDB(t *testing.T) string {
	t.Helper()
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	return url
}

func openStore(t *testing.T, url string) *auditstore.Store {
	t.Helper()
	s, err := auditstore.Open(ctxT(t), url, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func event(org, job string, ts time.Time) audit.Event {
	return audit.Event{
		Timestamp: ts,
		EventType: "EGRESS_ALLOWED",
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.test/org/" + org + "/job/" + job},
		Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: org},
		Action:    "CONNECT",
		Result:    audit.ResultSuccess,
		Metadata:  map[string]any{"bytes": 12.0, "host": "api.example.com"},
		RequestID: "req_1",
	}
}

func events(org, job string, n int) []audit.Event {
	evs := make([]audit.Event, n)
	now := time.Now()
	for i := range evs {
		evs[i] = event(org, job, now.Add(time.Duration(i)*time.Millisecond))
	}
	return evs
}

func report(org, job, run string) usage.Report {
	exit := 0
	return usage.Report{
		ReportID: "usg_" + strings.TrimPrefix(audit.NewID(), "evt_"), Org: org, Job: job, RunID: run, Final: true,
		StartedAt: time.Now().Add(-time.Minute), EndedAt: time.Now(), ExitCode: &exit,
		CPUUserSeconds: 1.5, MaxRSSBytes: 1 << 20, WallSeconds: 60,
		Egress:      map[string]usage.Egress{"api.example.com:443": {BytesOut: 10, BytesIn: 20, Requests: 1}},
		Enforcement: "network-only",
	}
}

func verifyOK(t *testing.T, url string) auditstore.VerifyReport {
	t.Helper()
	rep, err := auditstore.Verify(ctxT(t), url, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("verify found %d problems, want 0: %v", len(rep.Problems), rep.Problems)
	}
	return rep
}

func count(t *testing.T, c *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := c.QueryRow(ctxT(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestMigrateIsIdempotentAndSafeConcurrently(t *testing.T) {
	url := pgtest.Shared(t).NewDatabase(t)
	var wg sync.WaitGroup
	applied := make([][]string, 3)
	errs := make([]error, 3)
	for i := range 3 {
		wg.Go(func() { applied[i], errs[i] = auditstore.Migrate(ctxT(t), url, nil) })
	}
	wg.Wait()
	total := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrate %d: %v", i, err)
		}
		total += len(applied[i])
	}
	files, err := os.ReadDir("migrations")
	if err != nil {
		t.Fatal(err)
	}
	if total != len(files) {
		t.Errorf("concurrent migrations applied %d migrations in total, want %d (each exactly once)", total, len(files))
	}
	again, err := auditstore.Migrate(ctxT(t), url, nil)
	if err != nil || len(again) != 0 {
		t.Errorf("second migrate applied %v, %v; want nothing, nil", again, err)
	}
	c := connect(t, url)
	for _, table := range []string{"orgs", "users", "jobs", "runs", "usage_reports", "audit_events", "audit_chain_heads"} {
		var rls, force bool
		if err := c.QueryRow(ctxT(t), "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = $1", table).Scan(&rls, &force); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if !rls || !force {
			t.Errorf("%s: row security enabled %v forced %v, want both", table, rls, force)
		}
	}
	parts, err := auditstore.ListPartitions(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 14 {
		t.Errorf("got %d monthly partitions after migrate, want 14 (2 classes x 7 months)", len(parts))
	}
}

func TestAppendStoresOnceAndChains(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	ctx := ctxT(t)
	evs := events("acme", "etl", 20)
	evs[3].Result = audit.ResultDenied // a security-class event: its own chain
	rep := report("acme", "etl", "run-1")

	res, err := s.Append(ctx, "acme", evs[:10], []usage.Report{rep})
	if err != nil {
		t.Fatal(err)
	}
	for i, ok := range res.EventStored {
		if !ok {
			t.Errorf("event %d: stored false on first delivery, want true", i)
		}
	}
	if !res.UsageStored[0] {
		t.Error("usage report: stored false on first delivery, want true")
	}
	// Redeliver out of order, with a duplicate inside the batch and new events.
	batch := append([]audit.Event{evs[15], evs[2], evs[2]}, evs[5:20]...)
	res, err = s.Append(ctx, "acme", batch, []usage.Report{rep, rep})
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for _, ok := range res.EventStored {
		if ok {
			stored++
		}
	}
	if stored != 10 {
		t.Errorf("second batch stored %d events, want 10 (the new ones)", stored)
	}
	if res.UsageStored[0] || res.UsageStored[1] {
		t.Errorf("redelivered usage report stored %v, want false", res.UsageStored)
	}
	c := connect(t, url)
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != 20 {
		t.Errorf("got %d audit rows, want 20", n)
	}
	if n := count(t, c, "SELECT count(*) FROM audit_events WHERE retention_class = 'security'"); n != 1 {
		t.Errorf("got %d security rows, want 1", n)
	}
	if n := count(t, c, "SELECT count(*) FROM usage_reports"); n != 1 {
		t.Errorf("got %d usage rows, want 1", n)
	}
	if n := count(t, c, "SELECT count(*) FROM runs WHERE final AND exit_code = 0"); n != 1 {
		t.Errorf("got %d final runs, want 1", n)
	}
	var md string
	if err := c.QueryRow(ctx, "SELECT metadata::text FROM audit_events WHERE event_id = $1", evs[0].EventID).Scan(&md); err != nil {
		t.Fatal(err)
	}
	if md != `{"bytes":12,"host":"api.example.com"}` {
		t.Errorf("got metadata %s, want the canonical JSON", md)
	}
	rep2 := verifyOK(t, url)
	if rep2.Rows != 20 || rep2.Chains != 2 {
		t.Errorf("verify checked %d rows in %d chains, want 20 in 2", rep2.Rows, rep2.Chains)
	}
}

func records(evs []audit.Event) []auditstore.Record {
	recs := make([]auditstore.Record, len(evs))
	for i := range evs {
		recs[i].Event = evs[i]
	}
	return recs
}

// TestAppendBatchesSeveralOrgsInOneTransaction: each org's rows land in its
// own chains under its own org (row-level security admits only the orgs the
// transaction names), redelivery inside a multi-org transaction stores
// nothing twice, and an org given twice is refused.
func TestAppendBatchesSeveralOrgsInOneTransaction(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	ctx := ctxT(t)
	acme, globex := events("acme", "etl", 10), events("globex", "web", 6)
	globex[2].Result = audit.ResultDenied
	repA, repG := report("acme", "etl", "run-a"), report("globex", "web", "run-g")
	const acmeFirst, globexFirst = 5, 3 // events stored before the redelivery

	// Given out of lock order: results still come back in the order given.
	res, err := s.AppendBatches(ctx, []auditstore.OrgBatch{
		{Org: "globex", Events: records(globex[:globexFirst]), Reports: []usage.Report{repG}},
		{Org: "acme", Events: records(acme[:acmeFirst])},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || len(res[0].EventStored) != globexFirst || len(res[1].EventStored) != acmeFirst || !res[0].UsageStored[0] {
		t.Fatalf("got results %+v, want globex's (%d events, 1 report) then acme's (%d events)", res, globexFirst, acmeFirst)
	}
	// Redeliver: some of each org stored already, one org's report too.
	res, err = s.AppendBatches(ctx, []auditstore.OrgBatch{
		{Org: "acme", Events: records(acme), Reports: []usage.Report{repA}},
		{Org: "globex", Events: records(globex), Reports: []usage.Report{repG}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Exactly the events not stored before are new.
	for i, tc := range []struct {
		org   string
		first int
	}{{"acme", acmeFirst}, {"globex", globexFirst}} {
		for j, stored := range res[i].EventStored {
			if stored != (j >= tc.first) {
				t.Errorf("redelivery: %s event %d stored: %v, want %v (the first %d were stored before)", tc.org, j, stored, j >= tc.first, tc.first)
			}
		}
	}
	if !res[0].UsageStored[0] || res[1].UsageStored[0] {
		t.Errorf("usage stored %v and %v, want acme's new report stored and globex's not again", res[0].UsageStored, res[1].UsageStored)
	}
	c := connect(t, url)
	for _, tc := range []struct {
		org, job    string
		rows, usage int
	}{{"acme", "etl", len(acme), 1}, {"globex", "web", len(globex), 1}} {
		// Every row stored under an org is one of that org's events.
		if n := count(t, c, "SELECT count(*) FROM audit_events WHERE org_id = $1 AND actor_id LIKE '%/org/' || $1 || '/job/' || $2", tc.org, tc.job); n != tc.rows {
			t.Errorf("%s: got %d audit rows of its own, want %d", tc.org, n, tc.rows)
		}
		if n := count(t, c, "SELECT count(*) FROM usage_reports WHERE org_id = $1 AND job_id = $2", tc.org, tc.job); n != tc.usage {
			t.Errorf("%s: got %d usage rows, want %d", tc.org, n, tc.usage)
		}
	}
	all := len(acme) + len(globex)
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != all {
		t.Errorf("got %d audit rows in all, want %d", n, all)
	}
	if n := count(t, c, "SELECT count(*) FROM runs WHERE (org_id, job_id, run_id) IN (('acme', 'etl', 'run-a'), ('globex', 'web', 'run-g'))"); n != 2 {
		t.Errorf("got %d runs, want one per org", n)
	}
	// Three chains: acme's standard, globex's standard and security.
	if rep := verifyOK(t, url); rep.Rows != int64(all) || rep.Chains != 3 {
		t.Errorf("verify checked %d rows in %d chains, want %d in 3", rep.Rows, rep.Chains, all)
	}

	_, err = s.AppendBatches(ctx, []auditstore.OrgBatch{{Org: "acme"}, {Org: "acme"}})
	if err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Errorf("acme twice: got %v, want an error saying so", err)
	}
}

func TestConcurrentAppendersShareOneChain(t *testing.T) {
	url := migratedDB(t)
	a, b := openStore(t, url), openStore(t, url)
	all := events("acme", "etl", 400)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for w := range 8 {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Go(func() {
			// Every writer sends overlapping slices: each event arrives up to twice.
			for i := w * 50; i < w*50+100 && i < len(all); i += 25 {
				if _, err := s.Append(ctxT(t), "acme", all[i:min(i+25, len(all))], nil); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := connect(t, url)
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != 400 {
		t.Errorf("got %d rows, want 400", n)
	}
	if n := count(t, c, "SELECT count(DISTINCT event_id) FROM audit_events"); n != 400 {
		t.Errorf("got %d distinct event ids, want 400", n)
	}
	verifyOK(t, url)
}

// TestRememberedHeadsThatMovedOnAreReadAgain: a Store appends to a chain
// from where it left it, in one round trip; when another replica has
// appended since, cordon_advance_chains refuses the stale guess under the
// chain's lock, nothing of that attempt is stored, and the Store redoes it
// from the heads as they are.
func TestRememberedHeadsThatMovedOnAreReadAgain(t *testing.T) {
	url := migratedDB(t)
	a, b := openStore(t, url), openStore(t, url)
	ctx := ctxT(t)
	evs := events("acme", "etl", 15)
	for i, step := range []struct {
		s                 *auditstore.Store
		remembered, stale int64 // a's counts after the step
	}{
		{a, 0, 0}, // a reads the heads: the chain is new to it
		{b, 0, 0}, // b appends; a's memory of the chain is now stale
		{a, 1, 1}, // a guesses, is refused, and reads the heads
		{a, 2, 1}, // a's guess is right: one round trip
		{b, 2, 1},
	} {
		if _, err := step.s.Append(ctx, "acme", evs[i*3:i*3+3], nil); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := a.Stats(); got.Remembered != step.remembered || got.Stale != step.stale {
			t.Errorf("after step %d: store a's stats %+v, want %d remembered, %d stale", i, got, step.remembered, step.stale)
		}
	}
	c := connect(t, url)
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != 15 {
		t.Errorf("got %d rows, want 15", n)
	}
	if n := count(t, c, "SELECT max(seq) FROM audit_events"); n != 15 {
		t.Errorf("got last seq %d, want 15: the refused attempt left a gap", n)
	}
	verifyOK(t, url)

	// The function itself, as cordon_service: a head not where the
	// caller says is refused, and nothing moves.
	var id, seq int64
	var hash []byte
	if err := c.QueryRow(ctx, "SELECT chain_id, last_seq, last_hash FROM audit_chain_heads").Scan(&id, &seq, &hash); err != nil {
		t.Fatal(err)
	}
	// advance moves the chain from seq to seq+1 as cordon_service with
	// cordon.write_orgs set to writeOrgs, and returns the SQLSTATE.
	advance := func(writeOrgs string, from int64) string {
		err := asRole(t, url, "cordon_service", "", func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT set_config('cordon.write_orgs', $1, true)", writeOrgs); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "SELECT cordon_advance_chains($1, $2, $3, $4, $5)",
				[]int64{id}, []int64{from}, [][]byte{hash}, []int64{from + 1}, [][]byte{make([]byte, 32)})
			return err
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return fmt.Sprint(err)
		}
		return pgErr.Code
	}
	if got := advance("acme", seq-1); got != "CD001" {
		t.Errorf("advancing a chain from the wrong seq: got %s, want SQLSTATE CD001", got)
	}
	// And a head of an org the transaction does not name is not found.
	if got := advance("other", seq); got != "CD001" {
		t.Errorf("advancing another org's chain: got %s, want SQLSTATE CD001", got)
	}
	if n := count(t, c, "SELECT last_seq FROM audit_chain_heads"); n != 15 {
		t.Errorf("head at %d after refused moves, want 15", n)
	}
}

// TestAuditInsertCannotDropRows: the write pipeline commits without a
// round trip between the audit INSERT and COMMIT, which relies on a plain
// INSERT storing every row it is given or failing. No trigger or rule on
// audit_events or its partitions may change that; and if one does (a
// trigger that swallows rows, added here by a superuser), the shortfall
// is reported as an error, so the events are not acknowledged.
func TestAuditInsertCannotDropRows(t *testing.T) {
	url := migratedDB(t)
	c := connect(t, url)
	if n := count(t, c, `SELECT count(*) FROM pg_trigger
		WHERE tgrelid IN (SELECT relid FROM pg_partition_tree('audit_events')) AND tgtype & 4 <> 0`); n != 0 {
		t.Errorf("%d INSERT triggers on audit_events and its partitions, want 0", n)
	}
	if n := count(t, c, `SELECT count(*) FROM pg_rewrite
		WHERE ev_class IN (SELECT relid FROM pg_partition_tree('audit_events'))`); n != 0 {
		t.Errorf("%d rules on audit_events and its partitions, want 0", n)
	}

	s := openStore(t, url)
	ctx := ctxT(t)
	if _, err := s.Append(ctx, "acme", events("acme", "etl", 2), nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE FUNCTION swallow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`,
		`CREATE TRIGGER swallow BEFORE INSERT ON audit_events FOR EACH ROW WHEN (NEW.seq % 2 = 0) EXECUTE FUNCTION swallow()`,
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Append(ctx, "acme", events("acme", "etl", 4), nil)
	if !errors.Is(err, auditstore.ErrChainConflict) || !strings.Contains(err.Error(), "inserted 2 of 4") {
		t.Errorf("append with rows swallowed: got %v, want ErrChainConflict saying 2 of 4 inserted", err)
	}
}

// TestUsageReportColumnsRoundTrip: every field of a usage report reaches
// its column as sent (reports travel to Postgres as JSON rows).
func TestUsageReportColumnsRoundTrip(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	ctx := ctxT(t)
	full := report("acme", "etl", "run-1")
	full.StartedAt = time.Date(2026, 11, 2, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	full.EndedAt = full.StartedAt.Add(90*time.Second + 1)
	exit := -9
	full.ExitCode = &exit
	full.CPUUserSeconds, full.CPUSystemSeconds, full.WallSeconds = 0.1, 1e-7, 90.000000001
	full.MaxRSSBytes, full.Denials, full.Redactions = 1<<62, 3, 4
	full.StdoutBytes, full.StderrBytes = 5, 6
	sample := report("acme", "etl", "run-2")
	sample.Final, sample.ExitCode, sample.Egress = false, nil, nil
	quiet := report("acme", "etl", "run-3")
	quiet.Egress = map[string]usage.Egress{}
	if _, err := s.Append(ctx, "acme", nil, []usage.Report{full, sample, quiet}); err != nil {
		t.Fatal(err)
	}
	type stored struct {
		job, run, enforcement          string
		final                          bool
		started, ended                 time.Time
		exit                           *int32
		user, sys, wall                float64
		rss, denials, red, out, errOut int64
		egress                         []byte
	}
	conn := connect(t, url)
	get := func(id string) stored {
		var r stored
		if err := conn.QueryRow(ctx, `SELECT job_id, run_id, enforcement, final, started_at, ended_at, exit_code,
			cpu_user_seconds, cpu_system_seconds, wall_seconds, max_rss_bytes, denials, redactions,
			stdout_bytes, stderr_bytes, egress::text FROM usage_reports WHERE report_id = $1`, id).Scan(
			&r.job, &r.run, &r.enforcement, &r.final, &r.started, &r.ended, &r.exit, &r.user, &r.sys, &r.wall,
			&r.rss, &r.denials, &r.red, &r.out, &r.errOut, &r.egress); err != nil {
			t.Fatal(err)
		}
		return r
	}
	got := get(full.ReportID)
	if got.job != "etl" || got.run != "run-1" || got.enforcement != full.Enforcement || !got.final ||
		!got.started.Equal(full.StartedAt.Truncate(time.Microsecond)) || !got.ended.Equal(full.EndedAt.Truncate(time.Microsecond)) ||
		got.exit == nil || *got.exit != -9 || got.user != 0.1 || got.sys != 1e-7 || got.wall != 90.000000001 ||
		got.rss != 1<<62 || got.denials != 3 || got.red != 4 || got.out != 5 || got.errOut != 6 ||
		string(got.egress) != `{"api.example.com:443": {"denials": 0, "bytes_in": 20, "requests": 1, "bytes_out": 10}}` {
		t.Errorf("stored report %+v (egress %s), want it as sent: %+v", got, got.egress, full)
	}
	if got := get(sample.ReportID); got.final || got.exit != nil || got.egress != nil {
		t.Errorf("stored sample report: final %v, exit %v, egress %s; want false, NULL, NULL", got.final, got.exit, got.egress)
	}
	if got := get(quiet.ReportID); string(got.egress) != "{}" {
		t.Errorf("stored egress of a report with an empty egress map: %q, want {}", got.egress)
	}
}

// asRole runs fn in a transaction on a superuser connection switched to role
// with the org set.
func asRole(t *testing.T, url, role, org string, fn func(tx pgx.Tx) error) error {
	t.Helper()
	c := connect(t, url)
	return pgx.BeginFunc(ctxT(t), c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctxT(t), "SET LOCAL ROLE "+role); err != nil {
			return err
		}
		if org != "" {
			if _, err := tx.Exec(ctxT(t), "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
				return err
			}
		}
		return fn(tx)
	})
}

func TestRowLevelSecurityConfinesEveryRole(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	for _, org := range []string{"acme", "globex"} {
		if _, err := s.Append(ctxT(t), org, events(org, "etl", 5), []usage.Report{report(org, "etl", "r1")}); err != nil {
			t.Fatal(err)
		}
	}
	tables := []string{"orgs", "jobs", "runs", "usage_reports", "audit_events", "audit_chain_heads"}
	cases := []struct {
		name, role, org string
		wantOther       int // rows of another org visible
	}{
		{"service sees its org", "cordon_service", "acme", 0},
		{"service with no org sees nothing", "cordon_service", "", 0},
		{"owner is confined too", "cordon_owner", "globex", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, table := range tables {
				err := asRole(t, url, tc.role, tc.org, func(tx pgx.Tx) error {
					var total, mine int
					// No WHERE clause: row-level security alone decides.
					if err := tx.QueryRow(ctxT(t), "SELECT count(*), count(*) FILTER (WHERE org_id = $1) FROM "+table, tc.org).Scan(&total, &mine); err != nil {
						return err
					}
					if total != mine {
						t.Errorf("%s as %s (org %q): %d rows visible, %d of them its own; want only its own", table, tc.role, tc.org, total, mine)
					}
					if tc.org != "" && mine == 0 {
						t.Errorf("%s as %s (org %q): sees none of its own rows, want some", table, tc.role, tc.org)
					}
					return nil
				})
				if err != nil && tc.role != "cordon_owner" {
					t.Fatalf("%s: %v", table, err)
				}
			}
		})
	}
	t.Run("service cannot write another org", func(t *testing.T) {
		err := asRole(t, url, "cordon_service", "acme", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctxT(t), "INSERT INTO jobs (org_id, job_id) VALUES ('globex', 'sneaky')")
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "row-level security") {
			t.Errorf("insert into another org: got %v, want a row-level security violation", err)
		}
	})
	t.Run("service cannot read a partition directly", func(t *testing.T) {
		err := asRole(t, url, "cordon_service", "acme", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctxT(t), "SELECT count(*) FROM audit_events_standard_default")
			return err
		})
		if !isCode(err, "42501") {
			t.Errorf("direct partition read: got %v, want permission denied (42501)", err)
		}
	})
}

// TestWriteOrgsPolicies checks migration 0140: cordon.write_orgs lets the
// service role insert audit rows and move chain heads of the orgs it
// names, and nothing more: no other org, no other role, no reading of the
// named orgs' audit rows, nothing at all when unset or empty.
func TestWriteOrgsPolicies(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	for _, org := range []string{"acme", "globex", "initech"} {
		if _, err := s.Append(ctxT(t), org, events(org, "etl", 2), nil); err != nil {
			t.Fatal(err)
		}
	}
	insertRow := func(org string) string {
		return fmt.Sprintf(`INSERT INTO audit_events (org_id, retention_class, chain_month, seq, ts, event_type, event_id,
			actor_type, actor_id, resource_type, resource_id, action, result, prev_hash, hash)
			VALUES ('%s', 'standard', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1000, now(), 'X', 'evt_policy_%s',
			'job', 'a', 'r', 'r', 'a', 'SUCCESS', '\x%064x'::bytea, '\x%064x'::bytea)`, org, org, 0, 0)
	}
	with := func(role, writeOrgs string, fn func(tx pgx.Tx) error) error {
		return asRole(t, url, role, "", func(tx pgx.Tx) error {
			if writeOrgs != "-" {
				if _, err := tx.Exec(ctxT(t), "SELECT set_config('cordon.write_orgs', $1, true)", writeOrgs); err != nil {
					return err
				}
			}
			return fn(tx)
		})
	}
	exec := func(sql string) func(tx pgx.Tx) error {
		return func(tx pgx.Tx) error { _, err := tx.Exec(ctxT(t), sql); return err }
	}
	refused := func(err error) bool { return err != nil && strings.Contains(err.Error(), "row-level security") }

	for _, tc := range []struct {
		name, role, writeOrgs, org string
		allowed                    bool
	}{
		{"named org", "cordon_service", "acme,globex", "globex", true},
		{"org not named", "cordon_service", "acme,globex", "initech", false},
		{"prefix of a named org", "cordon_service", "acme,globex", "acm", false},
		{"unset", "cordon_service", "-", "acme", false},
		{"empty", "cordon_service", "", "acme", false},
		{"other role", "cordon_owner", "acme", "acme", false},
	} {
		t.Run("insert audit row: "+tc.name, func(t *testing.T) {
			err := with(tc.role, tc.writeOrgs, exec(insertRow(tc.org)))
			if tc.allowed && err != nil {
				t.Errorf("got %v, want the row inserted", err)
			}
			if !tc.allowed && !refused(err) {
				t.Errorf("got %v, want a row-level security violation", err)
			}
		})
	}

	t.Run("no reading of named orgs' audit rows", func(t *testing.T) {
		err := with("cordon_service", "acme,globex", func(tx pgx.Tx) error {
			var n int
			if err := tx.QueryRow(ctxT(t), "SELECT count(*) FROM audit_events").Scan(&n); err != nil {
				return err
			}
			if n != 0 {
				t.Errorf("audit rows visible with only cordon.write_orgs set: %d, want 0", n)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("chain heads of named orgs only", func(t *testing.T) {
		err := with("cordon_service", "acme", func(tx pgx.Tx) error {
			rows, _ := tx.Query(ctxT(t), "SELECT DISTINCT org_id FROM audit_chain_heads")
			orgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			if !slices.Equal(orgs, []string{"acme"}) {
				t.Errorf("chain heads visible: orgs %v, want [acme]", orgs)
			}
			ct, err := tx.Exec(ctxT(t), "UPDATE audit_chain_heads SET last_seq = last_seq WHERE org_id = 'globex'")
			if err != nil {
				return err
			}
			if ct.RowsAffected() != 0 {
				t.Errorf("moved %d chain heads of an org not named, want 0", ct.RowsAffected())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no new org outside the list", func(t *testing.T) {
		err := with("cordon_service", "acme", exec("INSERT INTO orgs (org_id) VALUES ('hooli')"))
		if !refused(err) {
			t.Errorf("got %v, want a row-level security violation", err)
		}
	})
}

func isCode(err error, code string) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == code
}

func TestAuditRowsAreAppendOnly(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	if _, err := s.Append(ctxT(t), "acme", events("acme", "etl", 3), nil); err != nil {
		t.Fatal(err)
	}
	c := connect(t, url)
	for _, priv := range []string{"UPDATE", "DELETE", "TRUNCATE"} {
		var has bool
		if err := c.QueryRow(ctxT(t), "SELECT has_table_privilege('cordon_service', 'audit_events', $1)", priv).Scan(&has); err != nil {
			t.Fatal(err)
		}
		if has {
			t.Errorf("cordon_service has %s on audit_events, want not", priv)
		}
	}
	stmts := map[string]string{
		"update":             "UPDATE audit_events SET result = 'FAILURE'",
		"delete":             "DELETE FROM audit_events",
		"truncate":           "TRUNCATE audit_events",
		"truncate partition": "TRUNCATE audit_events_standard_" + time.Now().UTC().Format("2006_01"),
	}
	for _, role := range []string{"cordon_service", "cordon_owner", ""} {
		for name, sql := range stmts {
			t.Run(fmt.Sprintf("%s as %q", name, role), func(t *testing.T) {
				var err error
				if role == "" { // the superuser itself: only the trigger stands in the way
					_, err = connect(t, url).Exec(ctxT(t), sql)
				} else {
					err = asRole(t, url, role, "acme", func(tx pgx.Tx) error { _, err := tx.Exec(ctxT(t), sql); return err })
				}
				if !isCode(err, "42501") {
					t.Errorf("got %v, want refusal (42501)", err)
				}
			})
		}
	}
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != 3 {
		t.Errorf("got %d rows after the attempts, want 3", n)
	}
	verifyOK(t, url)
}

func TestVerifyFindsTampering(t *testing.T) {
	cases := []struct {
		name     string
		tamper   string // {A} and {B} are the event ids of rows 3 and 5
		wantKind string
		wantSeq  int64
		wantID   bool // the problem names the row's event_id
	}{
		{"changed field", "UPDATE audit_events SET result = 'FAILURE' WHERE event_id = '{A}'", auditstore.KindChanged, 3, true},
		{"changed metadata", `UPDATE audit_events SET metadata = '{"bytes":13,"host":"api.example.com"}' WHERE event_id = '{A}'`, auditstore.KindChanged, 3, true},
		{"deleted row", "DELETE FROM audit_events WHERE event_id = '{A}'", auditstore.KindMissing, 3, false},
		{"deleted tail", "DELETE FROM audit_events WHERE seq >= 5", auditstore.KindMissing, 5, false},
		{"renumbered", "UPDATE audit_events SET seq = seq + 100 WHERE event_id = '{A}'", auditstore.KindMissing, 3, false},
		{"swapped rows", "UPDATE audit_events SET seq = 1000 WHERE event_id = '{A}'; UPDATE audit_events SET seq = 3 WHERE event_id = '{B}'; UPDATE audit_events SET seq = 5 WHERE event_id = '{A}'", auditstore.KindChanged, 3, true},
		{"head deleted", "DELETE FROM audit_chain_heads", auditstore.KindNoHead, 0, false},
		// chain_id is not hashed: a row put under another chain's ID
		// leaves a gap in its own chain, and a row that loses its
		// chain_id is read with the rows stored before chain IDs, first.
		{"moved to another chain_id", "UPDATE audit_events SET chain_id = chain_id + 1000 WHERE event_id = '{A}'", auditstore.KindMissing, 3, false},
		{"chain_id cleared", "UPDATE audit_events SET chain_id = NULL WHERE event_id = '{A}'", auditstore.KindMissing, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := migratedDB(t)
			s := openStore(t, url)
			evs := events("acme", "etl", 6)
			if _, err := s.Append(ctxT(t), "acme", evs, nil); err != nil {
				t.Fatal(err)
			}
			verifyOK(t, url)
			c := connect(t, url)
			sql := strings.NewReplacer("{A}", evs[2].EventID, "{B}", evs[4].EventID).Replace(tc.tamper)
			if _, err := c.Exec(ctxT(t), "SET session_replication_role = replica; "+sql); err != nil {
				t.Fatalf("tamper: %v", err)
			}
			rep, err := auditstore.Verify(ctxT(t), url, "acme")
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Problems) != 1 {
				t.Fatalf("got %d problems %v, want 1", len(rep.Problems), rep.Problems)
			}
			p := rep.Problems[0]
			if p.Kind != tc.wantKind || p.Seq != tc.wantSeq {
				t.Errorf("got %s at seq %d (%s), want %s at seq %d", p.Kind, p.Seq, p, tc.wantKind, tc.wantSeq)
			}
			if tc.wantID && p.EventID == "" {
				t.Errorf("problem %s does not name the row's event_id", p)
			}
		})
	}
}

// TestVerifyReadsRowsStoredBeforeChainIDs checks a chain whose first rows
// were stored before migration 0160 (no chain_id) and the rest after.
func TestVerifyReadsRowsStoredBeforeChainIDs(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	if _, err := s.Append(ctxT(t), "acme", events("acme", "etl", 3), nil); err != nil {
		t.Fatal(err)
	}
	c := connect(t, url)
	// What rows stored before the migration look like.
	if _, err := c.Exec(ctxT(t), "SET session_replication_role = replica; UPDATE audit_events SET chain_id = NULL"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctxT(t), "SET session_replication_role = DEFAULT"); err != nil {
		t.Fatal(err)
	}
	evs := events("acme", "etl", 3)
	res, err := s.Append(ctxT(t), "acme", evs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.EventStored, []bool{true, true, true}) {
		t.Fatalf("stored %v, want all three", res.EventStored)
	}
	// Redelivered after the migration, they are still found stored.
	if res, err = s.Append(ctxT(t), "acme", evs, nil); err != nil || slices.Contains(res.EventStored, true) {
		t.Fatalf("redelivery stored %v (%v), want none", res.EventStored, err)
	}
	if n := count(t, c, "SELECT count(*) FROM audit_events WHERE chain_id IS NULL"); n != 3 {
		t.Fatalf("%d rows without chain_id, want 3", n)
	}
	if rep := verifyOK(t, url); rep.Rows != 6 {
		t.Fatalf("verify read %d rows, want 6", rep.Rows)
	}
}

// TestEveryPartitionHasChainIndex checks that every leaf partition,
// including those created after the migrations, keeps its chains unique
// by (chain_id, seq): the index is per partition (migration 0160), so one
// missing would go unnoticed until a bug stored a seq twice.
func TestEveryPartitionHasChainIndex(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	if _, err := s.EnsurePartitions(ctxT(t), time.Now().AddDate(0, 6, 0)); err != nil {
		t.Fatal(err)
	}
	c := connect(t, url)
	leaves := count(t, c, "SELECT count(*) FROM pg_partition_tree('audit_events') WHERE isleaf")
	if leaves < 20 {
		t.Fatalf("%d leaf partitions, want at least 20 (two classes, 7 + 6 months, two defaults)", leaves)
	}
	missing := count(t, c, `SELECT count(*) FROM pg_partition_tree('audit_events') p WHERE p.isleaf AND NOT EXISTS (
		SELECT 1 FROM pg_index i WHERE i.indrelid = p.relid AND i.indisunique AND i.indpred IS NULL
			AND i.indkey::text = (SELECT attnum FROM pg_attribute WHERE attrelid = p.relid AND attname = 'chain_id')::text
				|| ' ' || (SELECT attnum FROM pg_attribute WHERE attrelid = p.relid AND attname = 'seq')::text)`)
	if missing != 0 {
		t.Fatalf("%d of %d leaf partitions have no unique (chain_id, seq) index", missing, leaves)
	}
}

func TestRetentionDropsOnlyExpiredPartitions(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	now := time.Date(2026, 11, 15, 12, 0, 0, 0, time.UTC)
	c := connect(t, url)
	// Partitions for the last 30 months, as a long-running deployment has.
	if _, err := c.Exec(ctxT(t), "SELECT cordon_ensure_audit_partitions($1, 24, 0), cordon_ensure_audit_partitions($2, 6, 0)", now, now.AddDate(-2, 0, 0)); err != nil {
		t.Fatal(err)
	}
	at := func(months int, denied bool) audit.Event {
		ev := event("acme", "etl", now.AddDate(0, -months, 0))
		if denied {
			ev.Result = audit.ResultDenied
		}
		return ev
	}
	evs := []audit.Event{
		at(13, false), // standard, 13 months: expired
		at(11, false), // standard, 11 months: kept
		at(13, true),  // security, 13 months: kept
		at(25, true),  // security, 25 months: expired
		at(23, true),  // security, 23 months: kept
		at(0, false),
	}
	if _, err := s.Append(ctxT(t), "acme", evs, nil); err != nil {
		t.Fatal(err)
	}
	dry, err := auditstore.Retention(ctxT(t), url, auditstore.RetentionOptions{Now: now, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, c, "SELECT count(*) FROM audit_events"); n != 6 || len(dry) == 0 {
		t.Fatalf("dry run: %d rows left and %d partitions listed, want 6 and some", n, len(dry))
	}
	dropped, err := auditstore.Retention(ctxT(t), url, auditstore.RetentionOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dropped {
		if !p.Expired(now) {
			t.Errorf("dropped %s, which is not expired", p.Name)
		}
	}
	left, err := auditstore.ListPartitions(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range left {
		if p.Expired(now) {
			t.Errorf("kept %s, which is expired", p.Name)
		}
	}
	var got []string
	rows, _ := c.Query(ctxT(t), "SELECT event_id FROM audit_events ORDER BY ts")
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	got = ids
	want := []string{evs[4].EventID, evs[2].EventID, evs[1].EventID, evs[5].EventID}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("rows left %v, want %v", got, want)
	}
	rep := verifyOK(t, url)
	if rep.Expired != 2 {
		t.Errorf("verify counted %d expired chains, want 2", rep.Expired)
	}
}

func TestMonthWithoutPartitionStillStores(t *testing.T) {
	url := migratedDB(t)
	s := openStore(t, url)
	old := time.Now().AddDate(0, -8, 0) // migrate creates partitions 3 months back
	evs := []audit.Event{event("acme", "etl", old), event("acme", "etl", old.Add(time.Second))}
	if _, err := s.Append(ctxT(t), "acme", evs, nil); err != nil {
		t.Fatalf("append into a month without a partition: %v", err)
	}
	c := connect(t, url)
	if n := count(t, c, "SELECT count(*) FROM audit_events_standard_default"); n != 2 {
		t.Errorf("got %d rows in the default partition, want 2", n)
	}
	// Creating that month's partition later is skipped, not an error.
	if _, err := c.Exec(ctxT(t), "SELECT cordon_ensure_audit_partitions($1, 0, 0)", old); err != nil {
		t.Errorf("ensure partitions over a month held by the default partition: %v", err)
	}
	verifyOK(t, url)
}
