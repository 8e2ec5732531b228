package authn

import (
	"context"
	"errors"
	"fmt"

	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGUsers keeps users in the dispatcher's users table (dispatcher/auditstore
// migrations). Its pool must act as cordon_service (log in as a member and
// SET ROLE cordon_service in AfterConnect, as auditstore.Open does): every
// transaction sets cordon.org_id, and row-level security confines it to
// the token's org.
type PGUsers struct {
	pool *pgxpool.Pool
}

var _ Users = (*PGUsers)(nil)

// NewPGUsers returns a Users backed by pool. The caller owns the pool.
func NewPGUsers(pool *pgxpool.Pool) *PGUsers { return &PGUsers{pool: pool} }

// EnsureUser implements Users in one transaction: the org must exist; the
// insert is ON CONFLICT DO NOTHING on (org_id, external_id), so concurrent
// first logins of one user insert exactly one row and all of them return
// it; an existing user gets the token's email and role and last_login_at.
func (p *PGUsers) EnsureUser(ctx context.Context, id oidc.Identity) (User, bool, error) {
	var u User
	var created bool
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", id.OrgID); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM orgs WHERE org_id = $1)", id.OrgID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return ErrUnknownOrg
		}
		u = User{OrgID: id.OrgID, ExternalID: id.Subject, Email: id.Email, Role: id.Role}
		err := tx.QueryRow(ctx, `
			INSERT INTO users (org_id, external_id, email, role, last_login_at)
			VALUES ($1, $2, $3, $4, now())
			ON CONFLICT (org_id, external_id) DO NOTHING
			RETURNING user_id::text, created_at`,
			id.OrgID, id.Subject, id.Email, string(id.Role)).Scan(&u.ID, &u.CreatedAt)
		if err == nil {
			created = true
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var prev string
		err = tx.QueryRow(ctx, `
			WITH old AS (
				SELECT user_id, role FROM users
				WHERE org_id = $1 AND external_id = $2
				FOR UPDATE
			)
			UPDATE users u SET email = $3, role = $4, last_login_at = now()
			FROM old WHERE u.user_id = old.user_id
			RETURNING u.user_id::text, u.created_at, old.role`,
			id.OrgID, id.Subject, id.Email, string(id.Role)).Scan(&u.ID, &u.CreatedAt, &prev)
		if err != nil {
			return err
		}
		if rbac.Role(prev) != id.Role {
			u.PreviousRole = rbac.Role(prev)
		}
		return nil
	})
	if errors.Is(err, ErrUnknownOrg) {
		return User{}, false, fmt.Errorf("ensure user: org %q: %w; provision it before its users log in", id.OrgID, ErrUnknownOrg)
	}
	if err != nil {
		return User{}, false, fmt.Errorf("ensure user in org %q: %w", id.OrgID, err)
	}
	return u, created, nil
}
