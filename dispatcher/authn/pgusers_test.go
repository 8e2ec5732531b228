package authn_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgUsers returns PGUsers over a fresh migrated database with the orgs
// acme and globex, acting as cordon_service, and a superuser URL.
func pgUsers(t *testing.T) (*authn.PGUsers, string) {
	t.Helper()
	ctx := ctxT(t)
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	su, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	if _, err := su.Exec(ctx, "INSERT INTO orgs (org_id) VALUES ('acme'), ('globex')"); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 24
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return authn.NewPGUsers(pool), url
}

func countUsers(t *testing.T, url, org, sub string) int {
	t.Helper()
	c, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctxT(t), "SELECT count(*) FROM users WHERE org_id = $1 AND external_id = $2", org, sub).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPGUsersFirstLogin(t *testing.T) {
	users, url := pgUsers(t)
	ctx := ctxT(t)
	id := oidc.Identity{Subject: "cognito-sub-1", Email: "alice@example.com", OrgID: "acme", Role: rbac.Reader}

	u1, created, err := users.EnsureUser(ctx, id)
	if err != nil || !created {
		t.Fatalf("first login: got created=%v err=%v, want created", created, err)
	}
	if u1.ID == "" || u1.OrgID != "acme" || u1.ExternalID != id.Subject || u1.Email != id.Email || u1.Role != rbac.Reader || u1.CreatedAt.IsZero() {
		t.Errorf("first login user: got %+v, want the token's fields and an ID", u1)
	}
	u2, created, err := users.EnsureUser(ctx, id)
	if err != nil || created {
		t.Fatalf("second login: got created=%v err=%v, want not created", created, err)
	}
	if u2.ID != u1.ID || u2.PreviousRole != "" {
		t.Errorf("second login: got ID %s previous role %q, want ID %s and no role change", u2.ID, u2.PreviousRole, u1.ID)
	}
	if n := countUsers(t, url, "acme", id.Subject); n != 1 {
		t.Errorf("rows after two logins: got %d, want 1", n)
	}

	// The IdP promotes her: the row follows the token and says what it was.
	id.Role = rbac.Admin
	u3, created, err := users.EnsureUser(ctx, id)
	if err != nil || created || u3.Role != rbac.Admin || u3.PreviousRole != rbac.Reader {
		t.Fatalf("promotion: got %+v created=%v err=%v, want role admin, previous reader", u3, created, err)
	}

	// The same sub in another org is another user.
	other := id
	other.OrgID = "globex"
	u4, created, err := users.EnsureUser(ctx, other)
	if err != nil || !created || u4.ID == u1.ID {
		t.Fatalf("same sub in another org: got %+v created=%v err=%v, want a new user", u4, created, err)
	}
}

func TestPGUsersUnknownOrg(t *testing.T) {
	users, url := pgUsers(t)
	id := oidc.Identity{Subject: "s", OrgID: "initech", Role: rbac.Admin}
	_, created, err := users.EnsureUser(ctxT(t), id)
	if !errors.Is(err, authn.ErrUnknownOrg) || created {
		t.Fatalf("org not provisioned: got created=%v err=%v, want ErrUnknownOrg", created, err)
	}
	if n := countUsers(t, url, "initech", "s"); n != 0 {
		t.Errorf("rows: got %d, want 0", n)
	}
}

func TestPGUsersConcurrentFirstLogins(t *testing.T) {
	users, url := pgUsers(t)
	id := oidc.Identity{Subject: "racer", Email: "r@example.com", OrgID: "acme", Role: rbac.Writer}
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]bool{}
	createdCount := 0
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			u, created, err := users.EnsureUser(context.Background(), id)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ids[u.ID] = true
			if created {
				createdCount++
			}
		}()
	}
	close(start)
	wg.Wait()
	if createdCount != 1 || len(ids) != 1 {
		t.Errorf("%d concurrent first logins: got %d created and %d distinct IDs, want 1 and 1", n, createdCount, len(ids))
	}
	if got := countUsers(t, url, "acme", "racer"); got != 1 {
		t.Errorf("rows: got %d, want 1", got)
	}
}

// TestDenialEventIsStorable appends a DenialEvent to the real audit store:
// the event this package builds is one the store accepts, in the caller's
// org chain.
func TestDenialEventIsStorable(t *testing.T) {
	_, url := pgUsers(t)
	ctx := ctxT(t)
	store, err := auditstore.Open(ctx, url, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ev := authn.DenialEvent(oidc.Identity{Subject: "sub-9", Email: "x@example.com", OrgID: "acme", Role: rbac.Reader}, rbac.View, rbac.AuditEvents, "req-9")
	if _, err := store.Append(ctx, "acme", []audit.Event{ev}, nil); err != nil {
		t.Fatalf("append denial event: %v", err)
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var class, actor, action string
	if err := c.QueryRow(ctx, "SELECT retention_class, actor_id, action FROM audit_events WHERE event_id = $1", ev.EventID).Scan(&class, &actor, &action); err != nil {
		t.Fatal(err)
	}
	if class != "security" || actor != "sub-9" || action != "VIEW" {
		t.Errorf("stored row: got class %s actor %s action %s, want security sub-9 VIEW", class, actor, action)
	}
}

// TestEndToEnd: real tokens from the loopback issuer, the real validator,
// the middleware over HTTP and users in Postgres. The first request
// inserts the user, the next ones find it, and another org's token is
// refused because that org was never provisioned.
func TestEndToEnd(t *testing.T) {
	users, url := pgUsers(t)
	e := newEnvWith(t, users)
	tok := e.token(t, "e2e-user", "acme", "writer", nil)
	for i := range 2 {
		resp, body := e.do(t, "POST", "/runs/cancel", map[string][]string{"Authorization": {"Bearer " + tok}})
		if resp.StatusCode != 200 || !strings.Contains(body, "hello e2e-user writer ") {
			t.Fatalf("request %d: got %d %q, want 200 from the handler", i, resp.StatusCode, body)
		}
	}
	if n := countUsers(t, url, "acme", "e2e-user"); n != 1 {
		t.Errorf("users rows: got %d, want 1", n)
	}
	resp, _ := e.do(t, "GET", "/runs", map[string][]string{"Authorization": {"Bearer " + e.token(t, "x", "initech", "admin", nil)}})
	if resp.StatusCode != 403 {
		t.Errorf("org not provisioned: got %d, want 403", resp.StatusCode)
	}
	var created int
	for _, ev := range e.audit.all() {
		if ev.EventType == authn.EventUserCreated {
			created++
		}
	}
	if created != 1 {
		t.Errorf("USER_CREATED events: got %d, want 1", created)
	}
}
