package userapi

import (
	"net/http/httptest"
	"testing"
	"time"
)

// FuzzParseCursor: a cursor from the client never panics the parser, and
// only cursors this API signed are accepted.
func FuzzParseCursor(f *testing.F) {
	a := &API{cursorKey: make([]byte, 32)}
	good := a.signCursor("audit_events", "acme", "job=x&", cursorPos{T: 1, ID: "evt_1", C: "standard"})
	f.Add(good)
	f.Add("")
	f.Add("eyJ0IjoxfQ.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := a.parseCursor("audit_events", "acme", "job=x&", s)
		if err != nil || p == nil {
			return
		}
		if s != good && a.signCursor("audit_events", "acme", "job=x&", *p) != s {
			t.Fatalf("accepted a cursor this API did not sign: %q", s)
		}
	})
}

// FuzzParseQuery: any query string is either accepted with only known
// parameters or refused with a ParamError, never a panic.
func FuzzParseQuery(f *testing.F) {
	f.Add("from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&limit=10")
	f.Add("job=a&job=b")
	f.Add("%zz=1")
	a := &API{cursorKey: make([]byte, 32), now: nowFixed}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest("GET", "/api/v1/audit-events", nil)
		r.URL.RawQuery = raw
		q, _, err := a.ParseAuditQuery(r, "acme")
		if err != nil {
			if _, ok := err.(*ParamError); !ok {
				t.Fatalf("error %T %v, want *ParamError", err, err)
			}
			return
		}
		if !q.From.Before(q.To) || q.Limit < 1 || q.Limit > MaxCSVLimit {
			t.Fatalf("accepted %q as %+v", raw, q)
		}
	})
}

func nowFixed() time.Time { return time.Date(2026, 1, 15, 10, 30, 0, 0, time.UTC) }
