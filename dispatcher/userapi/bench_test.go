package userapi

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
)

// BenchmarkQueries measures the API's queries (without HTTP and token
// validation) over 20,000 events of acme (a tenth of them denials spread
// over 20 destinations) next to 20,000 of globex.
func BenchmarkQueries(b *testing.B) {
	e := newEnv(b)
	for _, org := range []string{"acme", "globex"} {
		for batch := range 20 {
			var evs []audit.Event
			for i := range 1000 {
				n := batch*1000 + i
				typ := "EGRESS_ALLOWED"
				if n%10 == 0 {
					typ = EventEgressDenied
				}
				evs = append(evs, event(org, typ, fmt.Sprintf("job-%d", n%5), fmt.Sprintf("host-%d.example:443", n%20),
					e.now.Add(-time.Duration(n)*4*time.Second)))
			}
			if _, err := e.store.Append(context.Background(), org, evs, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	from, to := e.now.Add(-24*time.Hour), e.now.Add(time.Minute)
	b.Run("audit_page_100", func(b *testing.B) {
		q := AuditQuery{From: from, To: to, Limit: 100}
		for b.Loop() {
			p, err := e.api.AuditEvents(ctx, "acme", q, "")
			if err != nil || len(p.Items) != 100 {
				b.Fatal(err, len(p.Items))
			}
		}
	})
	b.Run("audit_page_100_deep", func(b *testing.B) {
		// The 150th page: keyset pagination costs the same as the first.
		p, _ := e.api.AuditEvents(ctx, "acme", AuditQuery{From: from, To: to, Limit: 1000}, "")
		var c cursorPos
		for range 15 {
			last := p.Items[len(p.Items)-1]
			c = cursorPos{T: last.Timestamp.UnixMicro(), ID: last.EventID, C: last.class}
			p, _ = e.api.AuditEvents(ctx, "acme", AuditQuery{From: from, To: to, Limit: 1000, Cursor: &c}, "")
		}
		q := AuditQuery{From: from, To: to, Limit: 100, Cursor: &c}
		for b.Loop() {
			if _, err := e.api.AuditEvents(ctx, "acme", q, ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("audit_filtered_job_denied", func(b *testing.B) {
		q := AuditQuery{From: from, To: to, Limit: 100, Job: "job-0", EventType: EventEgressDenied}
		for b.Loop() {
			if _, err := e.api.AuditEvents(ctx, "acme", q, ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("denials_24_buckets", func(b *testing.B) {
		q := DenialQuery{From: from, To: to}
		for b.Loop() {
			d, err := e.api.DenialsOf(ctx, "acme", q)
			if err != nil || d.Total != 2000 {
				b.Fatal(err, d.Total)
			}
		}
	})
}
