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
		lastSeq    int64
		lastHash   []byte
		dropped    bool
	}
	rows, err := conn.Query(ctx, `
		WITH c AS (
			SELECT org_id, retention_class, chain_month FROM audit_chain_heads WHERE $1 = '' OR org_id = $1
			UNION
			SELECT DISTINCT org_id, retention_class, chain_month FROM audit_events WHERE $1 = '' OR org_id = $1)
		SELECT c.org_id, c.retention_class, c.chain_month, h.last_seq IS NOT NULL, coalesce(h.last_seq, 0), h.last_hash,
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
		if err := rows.Scan(&c.org, &c.class, &c.month, &c.hasHead, &c.lastSeq, &c.lastHash, &c.dropped); err != nil {
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
		n, p, err := verifyChain(ctx, conn, c.org, c.class, c.month, c.lastSeq, c.lastHash)
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

func verifyChain(ctx context.Context, conn *pgx.Conn, org, class string, month time.Time, headSeq int64, headHash []byte) (int64, *Problem, error) {
	rows, err := conn.Query(ctx, `SELECT seq, ts, event_type, event_id, actor_type, actor_id, actor_ip, actor_user_agent,
			resource_type, resource_id, action, result, metadata::text, request_id, prev_hash, hash
		FROM audit_events WHERE org_id = $1 AND retention_class = $2 AND chain_month = $3
		ORDER BY seq`, org, class, month)
	if err != nil {
		return 0, nil, fmt.Errorf("verify: read chain %s/%s/%s: %w", org, class, month.Format("2006-01"), err)
	}
	defer rows.Close()
	problem := func(seq int64, id, kind, detail string) *Problem {
		return &Problem{Org: org, Class: class, Month: month, Seq: seq, EventID: id, Kind: kind, Detail: detail}
	}
	var (
		n        int64
		wantSeq  int64 = 1
		prevHash       = genesis
		r              = row{org: org, class: class, month: month}
		md       *string
	)
	for rows.Next() {
		if err := rows.Scan(&r.seq, &r.ts, &r.eventType, &r.eventID, &r.actorType, &r.actorID, &r.actorIP, &r.actorUA,
			&r.resourceType, &r.resourceID, &r.action, &r.result, &md, &r.requestID, &r.prevHash, &r.hash); err != nil {
			return n, nil, fmt.Errorf("verify: read chain %s/%s/%s: %w", org, class, month.Format("2006-01"), err)
		}
		n++
		r.ts = r.ts.UTC()
		r.metadata = nil
		if md != nil {
			r.metadata = []byte(*md)
		}
		switch {
		case r.seq > wantSeq:
			return n, problem(wantSeq, "", KindMissing, fmt.Sprintf("rows %d..%d are missing (next row present is seq %d, %s)", wantSeq, r.seq-1, r.seq, r.eventID)), nil
		case r.seq < wantSeq:
			return n, problem(r.seq, r.eventID, KindReordered, fmt.Sprintf("seq %d appears again after seq %d", r.seq, wantSeq-1)), nil
		}
		if !bytes.Equal(r.computeHash(), r.hash) {
			return n, problem(r.seq, r.eventID, KindChanged, "row content does not match its hash (changed or moved)"), nil
		}
		if !bytes.Equal(r.prevHash, prevHash) {
			return n, problem(r.seq, r.eventID, KindReordered, fmt.Sprintf("prev_hash does not link to row %d (rows replaced or reordered)", r.seq-1)), nil
		}
		prevHash = r.hash
		wantSeq++
	}
	if err := rows.Err(); err != nil {
		return n, nil, fmt.Errorf("verify: read chain %s/%s/%s: %w", org, class, month.Format("2006-01"), err)
	}
	last := wantSeq - 1
	switch {
	case last < headSeq:
		return n, problem(last+1, "", KindMissing, fmt.Sprintf("rows %d..%d are missing (the chain head says %d rows)", last+1, headSeq, headSeq)), nil
	case last > headSeq:
		return n, problem(headSeq+1, "", KindMissing, fmt.Sprintf("chain head says %d rows but %d exist", headSeq, last)), nil
	case !bytes.Equal(prevHash, headHash):
		return n, problem(last, "", KindChanged, "last row's hash does not match the chain head"), nil
	}
	return n, nil, nil
}
