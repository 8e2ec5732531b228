package auditstore

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// Partition is one monthly audit partition.
type Partition struct {
	Name  string    // table name, audit_events_<class>_YYYY_MM
	Class string    // ClassStandard or ClassSecurity
	Month time.Time // first day of the month, UTC
}

// Expired reports whether every event p can hold is older than the
// retention of its class at now.
func (p Partition) Expired(now time.Time) bool {
	years, ok := RetentionYears[p.Class]
	if !ok {
		return false
	}
	end := p.Month.AddDate(0, 1, 0)
	return !end.After(now.UTC().AddDate(-years, 0, 0))
}

var partitionName = regexp.MustCompile(`^audit_events_(standard|security)_(\d{4})_(\d{2})$`)

// RetentionOptions tune Retention.
type RetentionOptions struct {
	// Now is the time retention is computed from. If zero, time.Now().
	Now time.Time
	// DryRun lists what would be dropped and drops nothing.
	DryRun bool
}

// Retention drops the monthly partitions whose whole month is past its
// class's retention (1 year standard, 2 years security), records each drop
// in audit_partition_drops so verify tells it from deletion, and then makes
// sure partitions exist around Now. It runs as cordon_owner and returns the
// partitions dropped (or, with DryRun, those that would be).
func Retention(ctx context.Context, databaseURL string, opts RetentionOptions) ([]Partition, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("retention: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SET ROLE cordon_owner"); err != nil {
		return nil, fmt.Errorf("retention: set role cordon_owner: %w", err)
	}
	parts, err := listPartitions(ctx, conn)
	if err != nil {
		return nil, err
	}
	var dropped []Partition
	for _, p := range parts {
		if !p.Expired(now) {
			continue
		}
		if opts.DryRun {
			dropped = append(dropped, p)
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO audit_partition_drops (retention_class, chain_month) VALUES ($1, $2) ON CONFLICT DO NOTHING", p.Class, p.Month); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "DROP TABLE "+pgx.Identifier{p.Name}.Sanitize())
			return err
		})
		if err != nil {
			return dropped, fmt.Errorf("retention: drop %s: %w", p.Name, err)
		}
		dropped = append(dropped, p)
	}
	if !opts.DryRun {
		if _, err := conn.Exec(ctx, "SELECT cordon_ensure_audit_partitions($1, 0, 3)", now.UTC()); err != nil {
			return dropped, fmt.Errorf("retention: create partitions ahead: %w", err)
		}
	}
	return dropped, nil
}

// ListPartitions returns the monthly audit partitions, oldest first.
func ListPartitions(ctx context.Context, databaseURL string) ([]Partition, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("list partitions: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return listPartitions(ctx, conn)
}

func listPartitions(ctx context.Context, conn *pgx.Conn) ([]Partition, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_inherits i
		JOIN pg_class c ON c.oid = i.inhrelid
		JOIN pg_class p ON p.oid = i.inhparent
		WHERE p.relname IN ('audit_events_standard', 'audit_events_security')
		ORDER BY c.relname`)
	if err != nil {
		return nil, fmt.Errorf("list audit partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list audit partitions: %w", err)
	}
	var parts []Partition
	for _, n := range names {
		m := partitionName.FindStringSubmatch(n)
		if m == nil {
			continue // the default partitions
		}
		month, err := time.Parse("2006-01", m[2]+"-"+m[3])
		if err != nil {
			continue
		}
		parts = append(parts, Partition{Name: n, Class: m[1], Month: month})
	}
	return parts, nil
}
