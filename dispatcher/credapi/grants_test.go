package credapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/test/pgtest"
)

func migratedGrants(t *testing.T) (*credapi.PGGrants, string) {
	t.Helper()
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	g, err := credapi.OpenGrants(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g, url
}

func TestPGGrantsCoverPrefixesOfTheirJobOnly(t *testing.T) {
	g, url := migratedGrants(t)
	ctx := ctxT(t)
	for _, gr := range []credapi.Grant{
		{Org: "acme", ID: "g-users", Job: "alerts", Location: "s3://trace-data/acme/users/", GrantedBy: "dpo"},
		{Org: "acme", ID: "g-arn", Job: "alerts", Location: "arn:aws:s3:::trace-data/acme/billing/", GrantedBy: "dpo"},
		{Org: "acme", ID: "g-expiring", Job: "alerts", Location: "s3://trace-data/acme/soon/", GrantedBy: "dpo", ExpiresAt: time.Now().Add(time.Second)},
		{Org: "acme", ID: "g-revoked", Job: "alerts", Location: "s3://trace-data/acme/revoked/", GrantedBy: "dpo"},
		{Org: "beta", ID: "g-beta", Job: "alerts", Location: "s3://trace-data/acme/beta-granted/", GrantedBy: "dpo"},
	} {
		if err := g.AddGrant(ctx, gr); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := g.RevokeGrant(ctx, "acme", "g-revoked"); err != nil || !ok {
		t.Fatalf("RevokeGrant: got %v, %v, want true, nil", ok, err)
	}
	if ok, err := g.RevokeGrant(ctx, "acme", "g-revoked"); err != nil || ok {
		t.Fatalf("RevokeGrant twice: got %v, %v, want false, nil", ok, err)
	}
	// Let g-expiring expire by the database clock.
	time.Sleep(1100 * time.Millisecond)

	for _, tc := range []struct {
		name, org, job, loc string
		wantID              string // "" for no grant
	}{
		{"exact prefix", "acme", "alerts", "s3://trace-data/acme/users/", "g-users"},
		{"under the prefix", "acme", "alerts", "s3://trace-data/acme/users/emails/2026/", "g-users"},
		{"granted by ARN, asked as s3://", "acme", "alerts", "s3://trace-data/acme/billing/", "g-arn"},
		{"sibling sharing a name prefix", "acme", "alerts", "s3://trace-data/acme/users-private/", ""},
		{"parent of the prefix", "acme", "alerts", "s3://trace-data/acme/", ""},
		{"other bucket", "acme", "alerts", "s3://trace-data2/acme/users/", ""},
		{"other job", "acme", "other", "s3://trace-data/acme/users/", ""},
		{"expired", "acme", "alerts", "s3://trace-data/acme/soon/", ""},
		{"revoked", "acme", "alerts", "s3://trace-data/acme/revoked/", ""},
		{"another org's grant", "acme", "alerts", "s3://trace-data/acme/beta-granted/", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, ok, err := g.PIIGrant(ctx, tc.org, tc.job, tc.loc)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.wantID || ok != (tc.wantID != "") {
				t.Fatalf("PIIGrant: got %q, %v, want %q", id, ok, tc.wantID)
			}
		})
	}

	for _, loc := range []string{"s3://trace-data/acme/users/../", "s3://trace-data/acme/users", "arn:aws:s3:::trace-data/acme/users/", "s3://trace-data/acme/*/"} {
		if _, ok, err := g.PIIGrant(ctx, "acme", "alerts", loc); err == nil || ok {
			t.Errorf("PIIGrant(%q): got ok=%v err=%v, want an error", loc, ok, err)
		}
	}

	// The table itself refuses a non-canonical location, and row-level
	// security hides every org's grants from a session without an org.
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, `INSERT INTO pii_grants (org_id, grant_id, job_id, location, granted_by)
		VALUES ('acme', 'bad', 'alerts', 's3://trace-data/acme/*', 'x')`); err == nil {
		t.Error("a wildcard location was stored")
	}
	var n int
	err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL ROLE cordon_service"); err != nil {
			return err
		}
		return tx.QueryRow(ctx, "SELECT count(*) FROM pii_grants").Scan(&n)
	})
	if err != nil || n != 0 {
		t.Fatalf("cordon_service without an org sees %d grants (err %v), want 0", n, err)
	}
}

func TestAddGrantRefusesBadInput(t *testing.T) {
	g, _ := migratedGrants(t)
	for _, tc := range []struct {
		name string
		gr   credapi.Grant
	}{
		{"wildcard", credapi.Grant{Org: "acme", ID: "g", Job: "alerts", Location: "s3://trace-data/acme/*", GrantedBy: "dpo"}},
		{"bucket only", credapi.Grant{Org: "acme", ID: "g", Job: "alerts", Location: "s3://trace-data/", GrantedBy: "dpo"}},
		{"bad ID", credapi.Grant{Org: "acme", ID: "../g", Job: "alerts", Location: "s3://trace-data/acme/u/", GrantedBy: "dpo"}},
		{"no granter", credapi.Grant{Org: "acme", ID: "g", Job: "alerts", Location: "s3://trace-data/acme/u/"}},
		{"bad job", credapi.Grant{Org: "acme", ID: "g", Job: "Alerts!", Location: "s3://trace-data/acme/u/", GrantedBy: "dpo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := g.AddGrant(ctxT(t), tc.gr); err == nil {
				t.Fatal("AddGrant: got nil error, want a refusal")
			}
		})
	}
}
