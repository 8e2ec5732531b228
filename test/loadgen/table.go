package loadgen

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// The goals of issue 2 for the egress proxy, as ratios to the direct
// baseline of the same run on the same machine.
const (
	// GoalKeepAliveRatio: keep-alive req/s at least this share of direct.
	GoalKeepAliveRatio = 0.45
	// GoalBulkRatio: 1 GiB tunnel throughput at least this share of direct.
	GoalBulkRatio = 0.80
	// GoalP99Added: p99 keep-alive latency at most this much above direct
	// (checked in the closed loop and at a fixed paced rate).
	GoalP99Added = 500 * time.Microsecond
	// GoalIdleTunnels idle tunnels must fit in GoalIdleRSS bytes (MB = 10^6).
	GoalIdleTunnels = 10000
	GoalIdleRSS     = 300_000_000
)

// Verdict is one goal checked for one target.
type Verdict struct {
	Goal string
	// Pass is true when the measurement meets the goal. A goal that could
	// not be measured does not pass.
	Pass bool
	// Detail is the measured value behind the verdict, or why there is none.
	Detail string
}

func (v Verdict) String() string {
	if v.Pass {
		return "PASS " + v.Detail
	}
	return "MISS " + v.Detail
}

// Verdicts checks r against the goals using base (the direct run) as the
// reference. A phase with any failed request does not pass.
func Verdicts(base, r Result) []Verdict {
	var out []Verdict
	ka := Verdict{Goal: fmt.Sprintf("keep-alive >= %.0f%% of direct", GoalKeepAliveRatio*100)}
	switch {
	case r.KeepAlive.Errors > 0:
		ka.Detail = fmt.Sprintf("(%d errors)", r.KeepAlive.Errors)
	case base.KeepAlive.PerSecond <= 0:
		ka.Detail = "(no direct baseline)"
	default:
		ratio := r.KeepAlive.PerSecond / base.KeepAlive.PerSecond
		ka.Pass, ka.Detail = ratio >= GoalKeepAliveRatio, fmt.Sprintf("%.0f%%", ratio*100)
	}
	out = append(out, ka)

	bulk := Verdict{Goal: fmt.Sprintf("tunnel GB/s >= %.0f%% of direct", GoalBulkRatio*100)}
	switch {
	case r.Bulk.Error != "":
		bulk.Detail = "(failed)"
	case base.Bulk.GBPerSecond <= 0 || r.Bulk.Bytes == 0:
		bulk.Detail = "(not measured)"
	default:
		ratio := r.Bulk.GBPerSecond / base.Bulk.GBPerSecond
		bulk.Pass, bulk.Detail = ratio >= GoalBulkRatio, fmt.Sprintf("%.0f%%", ratio*100)
	}
	out = append(out, bulk)

	// p99 added, twice: in the closed loop (every client as fast as it is
	// answered, so the CPUs are saturated and latency mostly restates
	// throughput) and paced at a fixed rate every target can carry (the
	// latency the extra hop itself adds).
	p99 := func(goal string, b, x RateResult) Verdict {
		v := Verdict{Goal: goal}
		switch {
		case x.Errors > 0:
			v.Detail = fmt.Sprintf("(%d errors)", x.Errors)
		case b.Requests == 0 || x.Requests == 0:
			v.Detail = "(not measured)"
		default:
			added := x.P99 - b.P99
			v.Pass, v.Detail = added <= GoalP99Added, fmtDur(added)
		}
		return v
	}
	out = append(out, p99("p99 added <= "+fmtDur(GoalP99Added)+" (closed loop)", base.KeepAlive, r.KeepAlive))
	out = append(out, p99(fmt.Sprintf("p99 added <= %s at %d req/s", fmtDur(GoalP99Added), max(r.PacedRate, base.PacedRate)), base.Paced, r.Paced))

	idle := Verdict{Goal: fmt.Sprintf("%d idle tunnels <= %d MB", GoalIdleTunnels, GoalIdleRSS/1_000_000)}
	switch {
	case r.Idle.RSS == 0:
		idle.Detail = "(not measured)"
	case r.Idle.Opened < r.Idle.Want:
		idle.Detail = fmt.Sprintf("(only %d of %d opened)", r.Idle.Opened, r.Idle.Want)
	case r.Idle.Alive < r.Idle.Checked:
		idle.Detail = fmt.Sprintf("(%d of %d checked tunnels dead)", r.Idle.Checked-r.Idle.Alive, r.Idle.Checked)
	case r.Idle.Opened >= GoalIdleTunnels:
		idle.Pass, idle.Detail = r.Idle.RSS <= GoalIdleRSS, fmtMB(r.Idle.RSS)
	case r.Idle.Opened*10 >= GoalIdleTunnels*9:
		p := r.Idle.ProjectedRSS(GoalIdleTunnels)
		idle.Pass, idle.Detail = p <= GoalIdleRSS, fmt.Sprintf("%s projected from %d", fmtMB(p), r.Idle.Opened)
	default:
		idle.Detail = fmt.Sprintf("(only %d measured)", r.Idle.Opened)
	}
	return append(out, idle)
}

// WriteTable prints the results as one table, then the goals as PASS/MISS
// per proxy, then notes on errors and anything unusual. The baseline is the
// first measured result without a proxy.
func WriteTable(w io.Writer, results []Result) error {
	var base *Result
	for i := range results {
		if results[i].Proxy == "" && results[i].Skipped == "" {
			base = &results[i]
			break
		}
	}
	var sb strings.Builder
	for _, r := range results {
		if r.Skipped != "" {
			continue
		}
		fmt.Fprintf(&sb, "Egress proxy benchmark, loopback only. %d concurrent clients; load tool GOMAXPROCS=%d on %d CPUs.\n", r.Clients, r.GOMAXPROCS, r.NumCPU)
		fmt.Fprintf(&sb, "The load tool, the upstream and the proxy under test share those CPUs, so every row is CPU-bound on all three.\n\n")
		break
	}
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tkeep-alive req/s\tp50\tp99\tp99 added\tpaced p50 / p99 (added)\ttunnels/s\t1 GiB tunnel GB/s, median (share), range\tRSS 10k idle MB\t")
	var notes []string
	for _, r := range results {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\tnot measured (see notes)\t\t\t\t\t\t\t\t\n", r.Name)
			notes = append(notes, fmt.Sprintf("%s not measured: %s", r.Name, r.Skipped))
			continue
		}
		added := "-"
		if base != nil && r.Proxy != "" && r.KeepAlive.Requests > 0 && base.KeepAlive.Requests > 0 {
			added = fmtDur(r.KeepAlive.P99 - base.KeepAlive.P99)
		}
		paced := "-"
		if r.Paced.Requests > 0 {
			paced = fmtDur(r.Paced.P50) + " / " + fmtDur(r.Paced.P99)
			if base != nil && r.Proxy != "" && base.Paced.Requests > 0 {
				paced += " (" + fmtDur(r.Paced.P99-base.Paced.P99) + ")"
			}
			if r.Paced.Errors > 0 {
				paced += "*"
			}
		}
		bulk := "failed"
		if r.Bulk.Error == "" && r.Bulk.Bytes > 0 {
			bulk = fmt.Sprintf("%.2f", r.Bulk.GBPerSecond)
			if base != nil && base.Bulk.GBPerSecond > 0 {
				bulk += fmt.Sprintf(" (%.0f%%)", r.Bulk.GBPerSecond/base.Bulk.GBPerSecond*100)
			}
			if len(r.Bulk.Runs) > 1 {
				bulk += fmt.Sprintf(", %.2f-%.2f", slices.Min(r.Bulk.Runs), slices.Max(r.Bulk.Runs))
			}
		} else if r.Bulk.Error == "" {
			bulk = "-"
		}
		rss := "-"
		if r.Idle.RSS > 0 {
			rss = fmt.Sprintf("%.0f", float64(r.Idle.RSS)/1e6)
			if r.Idle.Opened != GoalIdleTunnels {
				rss += fmt.Sprintf(" (%d open)", r.Idle.Opened)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name,
			fmtRate(r.KeepAlive, base, func(x *Result) float64 { return x.KeepAlive.PerSecond }),
			fmtDur(r.KeepAlive.P50), fmtDur(r.KeepAlive.P99), added, paced,
			fmtRate(r.Tunnels, base, func(x *Result) float64 { return x.Tunnels.PerSecond }),
			bulk, rss)
		notes = append(notes, resultNotes(r)...)
	}
	tw.Flush()

	proxies := 0
	for _, r := range results {
		if r.Skipped == "" && r.Proxy != "" {
			proxies++
		}
	}
	if base != nil && proxies > 0 {
		fmt.Fprintf(&sb, "\nGoals (ratios to direct in this run):\n")
		tw = tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
		header := false
		for _, r := range results {
			if r.Skipped != "" || r.Proxy == "" {
				continue
			}
			vs := Verdicts(*base, r)
			if !header {
				fmt.Fprint(tw, "target\t")
				for _, v := range vs {
					fmt.Fprintf(tw, "%s\t", v.Goal)
				}
				fmt.Fprintln(tw)
				header = true
			}
			fmt.Fprintf(tw, "%s\t", r.Name)
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t", v)
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	} else if base == nil {
		fmt.Fprintf(&sb, "\nNo direct baseline was measured, so no goal can be checked.\n")
	}
	if len(notes) > 0 {
		fmt.Fprintf(&sb, "\nNotes:\n")
		for _, n := range notes {
			fmt.Fprintf(&sb, "- %s\n", n)
		}
	}
	_, err := io.WriteString(w, sb.String())
	return err
}

func fmtRate(r RateResult, base *Result, get func(*Result) float64) string {
	s := fmt.Sprintf("%.0f", r.PerSecond)
	if base != nil && get(base) > 0 && base.Proxy == "" {
		s += fmt.Sprintf(" (%.0f%%)", r.PerSecond/get(base)*100)
	}
	if r.Errors > 0 {
		s += "*"
	}
	return s
}

func resultNotes(r Result) []string {
	var notes []string
	for _, ph := range []struct {
		name string
		rr   RateResult
	}{{"keep-alive", r.KeepAlive}, {"paced keep-alive", r.Paced}, {"tunnels", r.Tunnels}} {
		if ph.rr.Errors > 0 {
			notes = append(notes, fmt.Sprintf("%s %s: %d failed requests (marked *), first: %s", r.Name, ph.name, ph.rr.Errors, ph.rr.FirstError))
		}
	}
	if r.KeepAlive.Requests > 0 && r.KeepAlive.Connects > uint64(r.Clients) {
		notes = append(notes, fmt.Sprintf("%s keep-alive: %d client connections for %d requests: it does not keep client connections alive, every request paid a new connection",
			r.Name, r.KeepAlive.Connects, r.KeepAlive.Requests))
	}
	if r.Bulk.Error != "" {
		notes = append(notes, fmt.Sprintf("%s bulk: %s after %d bytes", r.Name, r.Bulk.Error, r.Bulk.Bytes))
	}
	if r.Idle.Want > 0 {
		if r.Idle.Opened < r.Idle.Want || r.Idle.Error != "" {
			notes = append(notes, fmt.Sprintf("%s idle: opened %d of %d tunnels (%d failed); first error: %s", r.Name, r.Idle.Opened, r.Idle.Want, r.Idle.Failed, r.Idle.Error))
		}
		if r.Idle.Alive < r.Idle.Checked {
			notes = append(notes, fmt.Sprintf("%s idle: %d of %d sampled tunnels no longer worked after the memory reading", r.Name, r.Idle.Checked-r.Idle.Alive, r.Idle.Checked))
		}
		if r.Idle.RSS > 0 {
			notes = append(notes, fmt.Sprintf("%s idle: RSS %s before, %s with %d tunnels open (opened in %.1fs)", r.Name, fmtMB(r.Idle.BaselineRSS), fmtMB(r.Idle.RSS), r.Idle.Opened, r.Idle.OpenSeconds))
		}
	}
	return notes
}

// fmtDur prints a latency in milliseconds with three decimals.
func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}

func fmtMB(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }
