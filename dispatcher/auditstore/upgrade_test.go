package auditstore

import (
	"context"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
)

// TestChainIDMigrationKeepsStoredChains upgrades a database that holds
// chains written before migration 0160 (rows without chain_id, stored the
// way the store wrote them then) and checks that the store appends to
// them, still finds their events stored, and that verify walks each one
// across the upgrade.
func TestChainIDMigrationKeepsStoredChains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := pgtest.Shared(t).NewDatabase(t)
	su, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())

	// Migrate to the schema before 0160: mark 0160 applied, migrate, then
	// unmark it.
	if _, err := su.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO schema_migrations (version, name) VALUES (160, '0160_chain_id.sql')`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := su.Exec(ctx, "DELETE FROM schema_migrations WHERE version = 160"); err != nil {
		t.Fatal(err)
	}

	// Two chains of acme as the store wrote them before: rows numbered
	// and hashed from genesis, and a head at the last one.
	old := map[string][]audit.Event{}
	now := time.Now().UTC()
	for i := range 4 {
		ev := audit.Event{Timestamp: now.Add(time.Duration(i) * time.Millisecond), EventType: "EGRESS_ALLOWED", EventID: audit.NewID(),
			Actor: audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.test/org/acme/job/etl"}, Resource: audit.Resource{Type: "EGRESS", ID: "a:443", TenantID: "acme"},
			Action: "CONNECT", Result: audit.ResultSuccess, Metadata: map[string]any{"n": i}}
		if i%2 == 1 {
			ev.EventType, ev.Action = "AUTH_LOGIN", "LOGIN" // the security class
		}
		old[RetentionClass(&ev)] = append(old[RetentionClass(&ev)], ev)
	}
	if _, err := su.Exec(ctx, "INSERT INTO orgs (org_id) VALUES ('acme')"); err != nil {
		t.Fatal(err)
	}
	for _, evs := range old {
		prev := genesis
		var r row
		for i := range evs {
			if r, err = newRow("acme", &Record{Event: evs[i]}); err != nil {
				t.Fatal(err)
			}
			r.seq, r.prevHash = int64(i+1), prev
			r.hash = r.computeHash()
			prev = r.hash
			if _, err := su.Exec(ctx, `INSERT INTO audit_events (org_id, retention_class, chain_month, seq, ts, event_type, event_id,
				actor_type, actor_id, resource_type, resource_id, action, result, metadata, prev_hash, hash)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
				r.org, r.class, r.month, r.seq, r.ts, r.eventType, r.eventID, r.actorType, r.actorID,
				r.resourceType, r.resourceID, r.action, r.result, string(r.metadata), r.prevHash, r.hash); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := su.Exec(ctx, `INSERT INTO audit_chain_heads (org_id, retention_class, chain_month, last_seq, last_hash)
			VALUES ($1, $2, $3, $4, $5)`, r.org, r.class, r.month, r.seq, r.hash); err != nil {
			t.Fatal(err)
		}
	}

	applied, err := Migrate(ctx, url, nil)
	if err != nil || len(applied) != 1 || applied[0] != "0160_chain_id.sql" {
		t.Fatalf("upgrade applied %v (%v), want 0160_chain_id.sql alone", applied, err)
	}
	s, err := Open(ctx, url, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for class, evs := range old {
		res, err := s.Append(ctx, "acme", evs, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, stored := range res.EventStored {
			if stored {
				t.Errorf("%s event %d stored again after the upgrade", class, i)
			}
		}
		more := append([]audit.Event(nil), evs...)
		for i := range more {
			more[i].EventID = audit.NewID()
		}
		if _, err := s.Append(ctx, "acme", more, nil); err != nil {
			t.Fatal(err)
		}
	}
	var legacy, chained int
	if err := su.QueryRow(ctx, `SELECT count(*) FILTER (WHERE chain_id IS NULL), count(*) FILTER (WHERE chain_id IS NOT NULL)
		FROM audit_events`).Scan(&legacy, &chained); err != nil {
		t.Fatal(err)
	}
	if legacy != 4 || chained != 4 {
		t.Fatalf("%d rows without chain_id and %d with, want 4 and 4", legacy, chained)
	}
	rep, err := Verify(ctx, url, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 || rep.Chains != 2 || rep.Rows != 8 {
		t.Fatalf("verify: %d chains, %d rows, problems %v; want 2 chains, 8 rows, none", rep.Chains, rep.Rows, rep.Problems)
	}
}
