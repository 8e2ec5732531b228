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
	h := sha256.New()
	var lenBuf [4]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint32(lenBuf[:], uint32(len(b)))
		h.Write(lenBuf[:])
		h.Write(b)
	}
	str := func(s string) { put([]byte(s)) }
	str(hashVersion)
	str(r.org)
	str(r.class)
	str(r.month.Format("2006-01"))
	str(strconv.FormatInt(r.seq, 10))
	str(strconv.FormatInt(r.ts.UnixMicro(), 10))
	str(r.eventType)
	str(r.eventID)
	str(r.actorType)
	str(r.actorID)
	str(r.actorIP)
	str(r.actorUA)
	str(r.resourceType)
	str(r.resourceID)
	str(r.action)
	str(r.result)
	if r.metadata == nil {
		h.Write([]byte{0})
	} else {
		h.Write([]byte{1})
		put(r.metadata)
	}
	str(r.requestID)
	put(r.prevHash)
	return h.Sum(nil)
}

// genesis is the prev_hash of the first row of every chain.
var genesis = make([]byte, sha256.Size)
