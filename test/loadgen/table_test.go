package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestVerdicts(t *testing.T) {
	base := Result{
		Name:      "direct",
		KeepAlive: RateResult{Requests: 1000, PerSecond: 100000, P99: time.Millisecond},
		Paced:     RateResult{Requests: 1000, PerSecond: 5000, P99: 200 * time.Microsecond},
		Bulk:      BulkResult{Bytes: 1 << 30, GBPerSecond: 2},
	}
	good := Result{
		Name: "proxy", Proxy: "127.0.0.3:1",
		KeepAlive: RateResult{Requests: 500, PerSecond: 45000, P99: 1500 * time.Microsecond},
		Paced:     RateResult{Requests: 1000, PerSecond: 5000, P99: 700 * time.Microsecond},
		PacedRate: 5000,
		Bulk:      BulkResult{Bytes: 1 << 30, GBPerSecond: 1.6},
		Idle:      IdleResult{Want: 10000, Opened: 10000, RSS: 300_000_000, Checked: 100, Alive: 100},
	}
	tests := []struct {
		name   string
		mutate func(*Result)
		want   []string // one per goal: keep-alive, bulk, p99 closed loop, p99 paced, idle
	}{
		{"exactly at every goal", func(*Result) {}, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "PASS 300 MB"}},
		{"just below keep-alive", func(r *Result) { r.KeepAlive.PerSecond = 44900 }, []string{"MISS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "PASS 300 MB"}},
		{"slow bulk", func(r *Result) { r.Bulk.GBPerSecond = 1.5 }, []string{"PASS 45%", "MISS 75%", "PASS 0.500ms", "PASS 0.500ms", "PASS 300 MB"}},
		{"p99 over", func(r *Result) { r.KeepAlive.P99 += time.Microsecond }, []string{"PASS 45%", "PASS 80%", "MISS 0.501ms", "PASS 0.500ms", "PASS 300 MB"}},
		{"errors spoil keep-alive", func(r *Result) { r.KeepAlive.Errors = 1 }, []string{"MISS (1 errors)", "PASS 80%", "MISS (1 errors)", "PASS 0.500ms", "PASS 300 MB"}},
		{"paced p99 over", func(r *Result) { r.Paced.P99 += time.Microsecond }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "MISS 0.501ms", "PASS 300 MB"}},
		{"paced errors", func(r *Result) { r.Paced.Errors = 2 }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "MISS (2 errors)", "PASS 300 MB"}},
		{"bulk failed", func(r *Result) { r.Bulk = BulkResult{Error: "reset"} }, []string{"PASS 45%", "MISS (failed)", "PASS 0.500ms", "PASS 0.500ms", "PASS 300 MB"}},
		{"too much memory", func(r *Result) { r.Idle.RSS = 300_000_001 }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS 300 MB"}},
		{"could not open all", func(r *Result) { r.Idle.Opened = 9000 }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS (only 9000 of 10000 opened)"}},
		{"dead tunnels", func(r *Result) { r.Idle.Alive = 99 }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS (1 of 100 checked tunnels dead)"}},
		{"projected from fd limit", func(r *Result) {
			r.Idle = IdleResult{Want: 9800, Opened: 9800, BaselineRSS: 10_000_000, RSS: 206_000_000, Checked: 98, Alive: 98}
		}, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "PASS 210 MB projected from 9800"}},
		{"projection over the goal", func(r *Result) {
			r.Idle = IdleResult{Want: 9800, Opened: 9800, BaselineRSS: 10_000_000, RSS: 300_000_000, Checked: 98, Alive: 98}
		}, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS 306 MB projected from 9800"}},
		{"too few to project", func(r *Result) {
			r.Idle = IdleResult{Want: 100, Opened: 100, RSS: 1, Checked: 1, Alive: 1}
		}, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS (only 100 measured)"}},
		{"no idle phase", func(r *Result) { r.Idle = IdleResult{} }, []string{"PASS 45%", "PASS 80%", "PASS 0.500ms", "PASS 0.500ms", "MISS (not measured)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good
			tt.mutate(&r)
			vs := Verdicts(base, r)
			if len(vs) != len(tt.want) {
				t.Fatalf("got %d verdicts, want %d", len(vs), len(tt.want))
			}
			for i, v := range vs {
				if v.String() != tt.want[i] {
					t.Errorf("%s: got %q, want %q", v.Goal, v, tt.want[i])
				}
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	results := []Result{
		{Name: "direct", Clients: 16, GOMAXPROCS: 2, NumCPU: 2,
			KeepAlive: RateResult{Requests: 1000, PerSecond: 100000, P50: 100 * time.Microsecond, P99: time.Millisecond},
			Tunnels:   RateResult{Requests: 100, PerSecond: 10000},
			Bulk:      BulkResult{Bytes: 1 << 30, GBPerSecond: 2}},
		{Name: "cordon-egress", Skipped: "not built: ./bin/cordon-egress is missing (make build)"},
		{Name: "squid", Proxy: "127.0.0.4:1", Clients: 16,
			KeepAlive: RateResult{Requests: 100, PerSecond: 13000, P50: time.Millisecond, P99: 2 * time.Millisecond},
			Tunnels:   RateResult{Requests: 10, PerSecond: 4000, Errors: 3, FirstError: "CONNECT answered 503, want 200"},
			Bulk:      BulkResult{Bytes: 1 << 30, GBPerSecond: 1, Runs: []float64{0.9, 1, 1.2}},
			Idle:      IdleResult{Want: 10000, Opened: 10000, RSS: 350_000_000, BaselineRSS: 30_000_000, Checked: 100, Alive: 100}},
	}
	var sb strings.Builder
	if err := WriteTable(&sb, results); err != nil {
		t.Fatal(err)
	}
	out := sb.String()
	for _, want := range []string{
		"16 concurrent clients; load tool GOMAXPROCS=2 on 2 CPUs",
		"cordon-egress  not measured (see notes)",
		"cordon-egress not measured: not built: ./bin/cordon-egress is missing (make build)",
		"13000 (13%)",
		"1.000ms", // squid's p99 added
		"4000 (40%)*",
		"1.00 (50%)", // squid's bulk, as a share of direct's
		"squid tunnels: 3 failed requests (marked *), first: CONNECT answered 503, want 200",
		"1.00 (50%), 0.90-1.20",
		"MISS 13%", "MISS 50%", "MISS 1.000ms", "MISS 350 MB",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PASS") {
		t.Errorf("table has a PASS for a proxy that met no goal:\n%s", out)
	}
}
