package auditstore

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Problem is the first thing wrong with one chain.
type Problem struct {
	Org   string
	Class string
	Month time.Time
	// Seq and EventID name the row where the chain breaks; EventID is empty
	// when the row itself is missing.
	Seq     int64
	EventID string
	Kind    string // one of the Kind constants
	Detail  string
}

// Kinds of Problem.
const (
	KindChanged   = "changed"   // the row's content does not match its hash
	KindMissing   = "missing"   // rows absent: a gap in seq, or the tail behind the head
	KindReordered = "reordered" // prev_hash does not link to the row before
	KindNoHead    = "no-head"   // rows without a chain head
)

func (p Problem) String() string {
	s := fmt.Sprintf("org %s class %s month %s seq %d", p.Org, p.Class, p.Month.Format("2006-01"), p.Seq)
	if p.EventID != "" {
		s += " event_id " + p.EventID
	}
	return s + ": " + p.Kind + ": " + p.Detail
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Chains   int // chains checked
	Rows     int64
	Expired  int // chains whose partition retention dropped
	Problems []Problem
}

// Verify walks the hash chains (every org's, or only org's when org is not
// empty) from their genesis, recomputing each row's hash, and reports the
// first broken, missing or reordered row of each chain. It reads as
// cordon_auditor; databaseURL must be able to SET ROLE to it. Chains whose
// month retention dropped are counted as expired, not missing.
func Verify(ctx context.Context, databaseURL, org string) (VerifyReport, error) {
	var rep VerifyReport
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return rep, fmt.Errorf("verify: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SET ROLE cordon_auditor"); err != nil {
		return rep, fmt.Errorf("verify: set role cordon_auditor: %w", err)
	}
	type chain struct {
		org, class string
		month      time.Time
		hasHead    bool
		id         int64 // chain_id, when hasHead
		lastSeq    int64
		lastHash   []byte
		dropped    bool
	}
	rows, err := conn.Query(ctx, `
		WITH c AS (
			SELECT org_id, retention_class, chain_month FROM audit_chain_heads WHERE $1 = '' OR org_id = $1
			UNION
			SELECT DISTINCT org_id, retention_class, chain_month FROM audit_events WHERE $1 = '' OR org_id = $1)
		SELECT c.org_id, c.retention_class, c.chain_month, h.last_seq IS NOT NULL, coalesce(h.chain_id, 0), coalesce(h.last_seq, 0), h.last_hash,
			d.chain_month IS NOT NULL
		FROM c
		LEFT JOIN audit_chain_heads h USING (org_id, retention_class, chain_month)
		LEFT JOIN audit_partition_drops d USING (retention_class, chain_month)
		ORDER BY 1, 2, 3`, org)
	if err != nil {
		return rep, fmt.Errorf("verify: list chains: %w", err)
	}
	var chains []chain
	for rows.Next() {
		var c chain
		if err := rows.Scan(&c.org, &c.class, &c.month, &c.hasHead, &c.id, &c.lastSeq, &c.lastHash, &c.dropped); err != nil {
			return rep, fmt.Errorf("verify: list chains: %w", err)
		}
		chains = append(chains, c)
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("verify: list chains: %w", err)
	}

	for _, c := range chains {
		rep.Chains++
		base := Problem{Org: c.org, Class: c.class, Month: c.month}
		if c.dropped {
			rep.Expired++
			continue
		}
		if !c.hasHead {
			p := base
			p.Kind, p.Detail = KindNoHead, "rows exist for a chain that has no head row (head deleted?)"
			rep.Problems = append(rep.Problems, p)
			continue
		}
		n, p, err := verifyChain(ctx, conn, c.org, c.class, c.month, c.id, c.lastSeq, c.lastHash)
		rep.Rows += n
		if err != nil {
			return rep, err
		}
		if p != nil {
			rep.Problems = append(rep.Problems, *p)
		}
	}
	return rep, nil
}

// verifyChain walks one chain in seq order: the rows stored before chain
// IDs (migration 0160), which have none, then the rows under its chain_id.
// A row under another chain_id is not seen, so it shows as a gap; a row
// of another chain moved under this chain_id fails its hash, which covers
// the chain's org, class and month.
func verifyChain(ctx context.Context, conn *pgx.Conn, org, class string, month time.Time, chainID, headSeq int64, headHash []byte) (int64, *Problem, error) {
	w := chainWalk{org: org, class: class, month: month, wantSeq: 1, prevHash: genesis}
	const cols = `seq, ts, event_type, event_id, actor_type, actor_id, actor_ip, actor_user_agent,
			resource_type, resource_id, action, result, metadata::text, request_id, prev_hash, hash`
	reads := []struct {
		sql  string
		args []any
	}{
		{`SELECT ` + cols + ` FROM audit_events
			WHERE org_id = $1 AND retention_class = $2 AND chain_month = $3 AND chain_id IS NULL ORDER BY seq`,
			[]any{org, class, month}},
		{`SELECT ` + cols + ` FROM audit_events
			WHERE chain_id = $1 AND retention_class = $2 AND chain_month = $3 ORDER BY seq`,
			[]any{chainID, class, month}},
	}
	for _, q := range reads {
		var p *Problem
		rows, err := conn.Query(ctx, q.sql, q.args...)
		if err == nil {
			p, err = w.walk(rows)
		}
		if err != nil {
			return w.n, nil, fmt.Errorf("verify: read chain %s/%s/%s: %w", org, class, month.Format("2006-01"), err)
		}
		if p != nil {
			return w.n, p, nil
		}
	}
	last := w.wantSeq - 1
	switch {
	case last < headSeq:
		return w.n, w.problem(last+1, "", KindMissing, fmt.Sprintf("rows %d..%d are missing (the chain head says %d rows)", last+1, headSeq, headSeq)), nil
	case last > headSeq:
		return w.n, w.problem(headSeq+1, "", KindMissing, fmt.Sprintf("chain head says %d rows but %d exist", headSeq, last)), nil
	case !bytes.Equal(w.prevHash, headHash):
		return w.n, w.problem(last, "", KindChanged, "last row's hash does not match the chain head"), nil
	}
	return w.n, nil, nil
}

// chainWalk is where a walk along one chain has got to.
type chainWalk struct {
	org, class string
	month      time.Time
	n          int64  // rows read
	wantSeq    int64  // the next row's seq
	prevHash   []byte // the last row's hash
}

func (w *chainWalk) problem(seq int64, id, kind, detail string) *Problem {
	return &Problem{Org: w.org, Class: w.class, Month: w.month, Seq: seq, EventID: id, Kind: kind, Detail: detail}
}

// walk reads rows (in seq order) on from where w is, and returns the
// first problem, if any. It closes rows.
func (w *chainWalk) walk(rows pgx.Rows) (*Problem, error) {
	defer rows.Close()
	r := row{org: w.org, class: w.class, month: w.month}
	var md *string
	for rows.Next() {
		if err := rows.Scan(&r.seq, &r.ts, &r.eventType, &r.eventID, &r.actorType, &r.actorID, &r.actorIP, &r.actorUA,
			&r.resourceType, &r.resourceID, &r.action, &r.result, &md, &r.requestID, &r.prevHash, &r.hash); err != nil {
			return nil, err
		}
		w.n++
		r.ts = r.ts.UTC()
		r.metadata = nil
		if md != nil {
			r.metadata = []byte(*md)
		}
		switch {
		case r.seq > w.wantSeq:
			return w.problem(w.wantSeq, "", KindMissing, fmt.Sprintf("rows %d..%d are missing (next row present is seq %d, %s)", w.wantSeq, r.seq-1, r.seq, r.eventID)), nil
		case r.seq < w.wantSeq:
			return w.problem(r.seq, r.eventID, KindReordered, fmt.Sprintf("seq %d appears again after seq %d", r.seq, w.wantSeq-1)), nil
		}
		if !bytes.Equal(r.computeHash(), r.hash) {
			return w.problem(r.seq, r.eventID, KindChanged, "row content does not match its hash (changed or moved)"), nil
		}
		if !bytes.Equal(r.prevHash, w.prevHash) {
			return w.problem(r.seq, r.eventID, KindReordered, fmt.Sprintf("prev_hash does not link to row %d (rows replaced or reordered)", r.seq-1)), nil
		}
		w.prevHash = r.hash
		w.wantSeq++
	}
	return nil, rows.Err()
}
