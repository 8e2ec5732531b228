package auditstore

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
)

// Retention classes: the first-level partitions of audit_events.
const (
	// ClassStandard events are kept 1 year (seeds/000: "audit logs retained
	// for 1 year minimum").
	ClassStandard = "standard"
	// ClassSecurity events (authentication and authorization) are kept 2
	// years (seeds/002, "Audit Log Retention").
	ClassSecurity = "security"
)

// RetentionYears is how long each class is kept.
var RetentionYears = map[string]int{
	ClassStandard: 1,
	ClassSecurity: 2,
}

// RetentionClass says which class ev belongs to: authentication events
// (login, logout, token refresh, auth failure) and authorization events
// (permission denied, role change, and every DENIED result, such as an
// egress denial) are security events; everything else is standard. It
// depends only on the event, so a redelivered event lands in the same chain.
func RetentionClass(ev *audit.Event) string {
	if ev.Result == audit.ResultDenied {
		return ClassSecurity
	}
	for _, p := range []string{"AUTH", "LOGIN", "LOGOUT", "TOKEN_", "PERMISSION_", "ROLE_"} {
		if strings.HasPrefix(ev.EventType, p) {
			return ClassSecurity
		}
	}
	return ClassStandard
}

// chainMonth is the first day (UTC) of the month of t: the chain and the
// monthly partition an event belongs to.
func chainMonth(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// row is one audit_events row as hashed and stored.
type row struct {
	org, class     string
	month          time.Time
	chainID        int64 // audit_chain_heads.chain_id; not hashed (migration 0160)
	seq            int64
	ts             time.Time // UTC, microsecond precision (what Postgres keeps)
	eventType      string
	eventID        string
	actorType      string
	actorID        string
	actorIP        string
	actorUA        string
	resourceType   string
	resourceID     string
	action, result string
	metadata       []byte // exact JSON text, or nil
	requestID      string
	prevHash, hash []byte
}

const hashVersion = "cordon-audit-chain-v1"

// computeHash is SHA-256 over a canonical encoding of the row: every field
// length-prefixed (so no two rows encode alike), in a fixed order, ending
// with prev_hash. It covers the chain position (org, class, month, seq), so
// a row moved or renumbered no longer matches its hash.
func (r *row) computeHash() []byte {
	// Most rows fit the stack buffer; the hash is computed for every row
	// appended, so it allocates nothing else.
	var buf [512]byte
	var num [32]byte
	b := buf[:0]
	b = put(b, hashVersion)
	b = put(b, r.org)
	b = put(b, r.class)
	b = put(b, r.month.AppendFormat(num[:0], "2006-01"))
	b = put(b, strconv.AppendInt(num[:0], r.seq, 10))
	b = put(b, strconv.AppendInt(num[:0], r.ts.UnixMicro(), 10))
	b = put(b, r.eventType)
	b = put(b, r.eventID)
	b = put(b, r.actorType)
	b = put(b, r.actorID)
	b = put(b, r.actorIP)
	b = put(b, r.actorUA)
	b = put(b, r.resourceType)
	b = put(b, r.resourceID)
	b = put(b, r.action)
	b = put(b, r.result)
	if r.metadata == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = put(b, r.metadata)
	}
	b = put(b, r.requestID)
	b = put(b, r.prevHash)
	sum := sha256.Sum256(b)
	return sum[:]
}

// put appends s to b, prefixed with its length.
func put[S string | []byte](b []byte, s S) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// genesis is the prev_hash of the first row of every chain.
var genesis = make([]byte, sha256.Size)
