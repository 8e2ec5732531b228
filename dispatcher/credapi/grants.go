package credapi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/datasets"
)

// PGGrants is the PII grant store in Postgres (table pii_grants, migration
// 0130). It implements credentials.Grants. Every query runs in a
// transaction confined by row-level security to the org it asks about.
type PGGrants struct {
	pool  *pgxpool.Pool
	owned bool // Close closes pool
}

var _ credentials.Grants = (*PGGrants)(nil)

// NewPGGrants uses pool, whose connections must act as cordon_service
// (SET ROLE cordon_service in AfterConnect, as dispatcher/admission's pool
// does) so that row-level security applies. Close does not close pool.
func NewPGGrants(pool *pgxpool.Pool) *PGGrants { return &PGGrants{pool: pool} }

// OpenGrants connects to databaseURL with a small pool of its own that acts
// as cordon_service. It does not wait for the database: the pool connects
// on demand. Close closes the pool.
func OpenGrants(ctx context.Context, databaseURL string) (*PGGrants, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("open PII grants: parse database URL: %w", err)
	}
	cfg.MaxConns = 4
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open PII grants: %w", err)
	}
	return &PGGrants{pool: pool, owned: true}, nil
}

// Close closes the pool if OpenGrants made it. It is idempotent.
func (g *PGGrants) Close() {
	if g.owned {
		g.pool.Close()
	}
}

// PIIGrant returns the newest grant of org that lets job use location: one
// whose prefix is location or a parent of it, not revoked and not expired
// (by the database clock). location must be canonical (s3://bucket/prefix/,
// as datasets.Location.String gives); anything else is an error, never a
// match.
func (g *PGGrants) PIIGrant(ctx context.Context, org, job, location string) (string, bool, error) {
	loc, err := datasets.ParseLocation(location)
	if err != nil || loc.String() != location {
		return "", false, fmt.Errorf("look up PII grant: location %q is not a canonical s3://bucket/prefix/ location", location)
	}
	var id string
	err = inOrg(ctx, g.pool, org, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `
			SELECT grant_id FROM pii_grants
			WHERE org_id = $1 AND job_id = $2 AND revoked_at IS NULL
			  AND (expires_at IS NULL OR expires_at > now())
			  AND starts_with($3, location)
			ORDER BY granted_at DESC, grant_id LIMIT 1`, org, job, location).Scan(&id)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("look up PII grant of %s/%s for %s: %w", org, job, location, err)
	}
	return id, true, nil
}

// Grant is one PII grant.
type Grant struct {
	Org      string // required
	ID       string // required: 1 to 128 of A-Z a-z 0-9 . _ : - starting with a letter or digit
	Job      string // required
	Location string // required: s3://bucket/prefix/ or arn:aws:s3:::bucket/prefix/; stored canonical
	// GrantedBy is who granted it (a user ID or email). Required.
	GrantedBy string
	// ExpiresAt ends the grant. If zero, it does not expire.
	ExpiresAt time.Time
}

var grantIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// AddGrant stores g (creating the org's row if needed). Granting is an
// admin action: the caller authorises it and audits it.
func (g *PGGrants) AddGrant(ctx context.Context, gr Grant) error {
	loc, err := datasets.ParseLocation(gr.Location)
	if err != nil {
		return fmt.Errorf("add PII grant %q: %w", gr.ID, err)
	}
	if !grantIDRE.MatchString(gr.ID) {
		return fmt.Errorf("add PII grant %q: the ID must be 1 to 128 of A-Z a-z 0-9 . _ : - starting with a letter or digit", gr.ID)
	}
	if gr.GrantedBy == "" {
		return fmt.Errorf("add PII grant %q: granted_by is required", gr.ID)
	}
	var expires *time.Time
	if !gr.ExpiresAt.IsZero() {
		expires = &gr.ExpiresAt
	}
	err = inOrg(ctx, g.pool, gr.Org, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orgs (org_id) VALUES ($1) ON CONFLICT DO NOTHING`, gr.Org); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO pii_grants (org_id, grant_id, job_id, location, granted_by, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, gr.Org, gr.ID, gr.Job, loc.String(), gr.GrantedBy, expires)
		return err
	})
	if err != nil {
		return fmt.Errorf("add PII grant %q of %s/%s: %w", gr.ID, gr.Org, gr.Job, err)
	}
	return nil
}

// RevokeGrant revokes org's grant id from now on. It reports whether a
// grant that was not yet revoked was found.
func (g *PGGrants) RevokeGrant(ctx context.Context, org, id string) (bool, error) {
	var n int64
	err := inOrg(ctx, g.pool, org, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE pii_grants SET revoked_at = now()
			WHERE org_id = $1 AND grant_id = $2 AND revoked_at IS NULL`, org, id)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("revoke PII grant %q of %s: %w", id, org, err)
	}
	return n == 1, nil
}

// inOrg runs fn in a transaction confined by row-level security to org.
func inOrg(ctx context.Context, db *pgxpool.Pool, org string, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
			return err
		}
		return fn(tx)
	})
}
