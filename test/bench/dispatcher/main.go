// Command dispatcher-bench measures sustained ingest into the dispatcher:
// it starts a throwaway PostgreSQL cluster, migrates it, runs the ingest
// API in-process on loopback with mTLS, and drives it with concurrent
// sidecar clients (each its own SVID, org and job) sending audit events and
// usage reports for a fixed time. It prints items/s and acknowledgement
// latency percentiles, then verifies every hash chain.
//
// It is a benchmark, not a test: run it through make bench-dispatcher.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"maps"
	"math"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/cli"
	"github.com/cordon-dev/cordon/dispatcher/ingest"
	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/bench/benchpg"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func main() {
	// The clients stand in for sidecars on other machines, but share
	// this one's two cores with the dispatcher and Postgres. Each event
	// ID is a UUIDv7 with 74 random bits, and without the pool every one
	// was a getrandom system call: 4% of this process's CPU at 50,000
	// events/s, spent on the clients' side.
	uuid.EnableRandPool()
	clients := flag.Int("clients", 50, "concurrent sidecar clients")
	orgs := flag.Int("orgs", 10, "orgs the clients are spread over")
	duration := flag.Duration("duration", 20*time.Second, "how long to send")
	batch := flag.Int("batch", 100, "events per request")
	usageEvery := flag.Int("usage-every", 10, "send a usage report every N requests")
	rate := flag.Int("rate", 0, "paced mode: this many items/s (events and usage reports) offered over all clients; 0: each client sends as fast as it is answered")
	writers := flag.Int("writers", 4, "dispatcher writer goroutines")
	durable := flag.Bool("durable", true, "keep fsync and synchronous_commit on in Postgres")
	pgStat := flag.Bool("pgstat", false, "print the statements Postgres spent most time on")
	warmup := flag.Duration("warmup", 0, "offer the same load this long before the measured duration, counting nothing: a fresh cluster spends its first tens of seconds creating WAL segments (zero-filled and fsynced in the commit path) that a server that has been up recycles")
	timeline := flag.Bool("timeline", false, "also print one row per second: requests scheduled in it, their p99 and max, CPU of this process and of postgres, and the host's steal and iowait")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the dispatcher and clients here")
	pgSettings := benchpg.SettingsFlag{}
	flag.Var(pgSettings, "pgset", "extra postgres setting name=value (repeatable), to try a setting before it goes into the benchmark's defaults")
	var sqls sqlFlag
	flag.Var(&sqls, "sql", "a statement run as superuser after the migrations (repeatable), to try a schema change before it goes into a migration")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*clients, *orgs, *warmup, *duration, *batch, *usageEvery, *writers, *rate, *durable, *pgStat, *timeline, pgSettings, sqls); err != nil {
		pprof.StopCPUProfile()
		log.Fatal(err)
	}
}

// sqlFlag collects -sql statements.
type sqlFlag []string

func (s *sqlFlag) String() string { return strings.Join(*s, "; ") }

func (s *sqlFlag) Set(v string) error { *s = append(*s, v); return nil }

// execAll runs each statement on db as the superuser and prints it, so
// the run's output says what schema it measured.
func execAll(ctx context.Context, db string, sqls []string) error {
	if len(sqls) == 0 {
		return nil
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range sqls {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("-sql %q: %w", q, err)
		}
		fmt.Printf("schema change: %s\n", q)
	}
	return nil
}

func run(nClients, nOrgs int, warmup, duration time.Duration, batchSize, usageEvery, writers, rate int, durable, pgStat, timeline bool, pgSettings map[string]string, sqls []string) error {
	ctx := context.Background()
	// The dispatcher's garbage collector target, as cordon-dispatcher
	// serve sets it (this process is the dispatcher and its clients).
	gcPercent := cli.TuneGC()
	// Before anything else runs: what the host gives (calibrate.go).
	cal, err := calibrate()
	if err != nil {
		return err
	}
	// The settings the audit store is meant to run with, then -pgset's.
	pgOpts := benchpg.Options{Durable: durable, Extra: pgSettings, PgStat: pgStat}
	cluster, db, err := benchpg.Start(ctx, pgOpts)
	if err != nil {
		return err
	}
	defer cluster.Close()
	if err := execAll(ctx, db, sqls); err != nil {
		return err
	}
	store, err := auditstore.Open(ctx, db, auditstore.Options{MaxConns: int32(writers + 2)})
	if err != nil {
		return err
	}
	defer store.Close()
	ca, err := spiffedev.NewCA("cordon.bench")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	srv, err := ingest.New(ingest.Config{Store: store, TrustDomain: ca.TrustDomain(), Writers: writers, Registry: reg})
	if err != nil {
		return err
	}
	serverID := spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")
	svid, err := ca.MintX509SVID(serverID, time.Hour)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(l, mtls.ServerConfig(svid, ca.Bundle(), ca.TrustDomain()))
	defer srv.Shutdown(context.Background())
	base := "https://" + l.Addr().String()

	var (
		items    atomic.Int64
		requests atomic.Int64
		retries  atomic.Int64
		mu       sync.Mutex
		samples  []sample // every acked request
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	// interval is each client's time between requests when paced. A
	// request carries batchSize events, or one usage report every
	// usageEvery-th, so the offered items/s is rate (the target is
	// in events stored per second; an earlier version scheduled as if every
	// request carried batchSize items and so offered only about 90% of
	// rate).
	var interval time.Duration
	if rate > 0 {
		perRequest := float64(batchSize)
		if usageEvery > 0 {
			perRequest = (float64(batchSize)*float64(usageEvery-1) + 1) / float64(usageEvery)
		}
		interval = time.Duration(float64(time.Second) * float64(nClients) * perRequest / float64(rate))
	}
	pgPID, err := cluster.PID()
	if err != nil {
		return err
	}
	type client struct {
		c        *ingestclient.Client
		org, job string
		id       spiffeid.ID
	}
	cs := make([]client, nClients)
	for i := range cs {
		org := fmt.Sprintf("org-%d", i%nOrgs)
		job := fmt.Sprintf("job-%d", i)
		id, _ := ca.JobID(org, job)
		csvid, err := ca.MintX509SVID(id, time.Hour)
		if err != nil {
			return err
		}
		c := ingestclient.New(base, mtls.ClientConfig(csvid, ca.Bundle(), serverID))
		defer c.Close()
		cs[i] = client{c, org, job, id}
	}
	// The clients start warmup before the measured start; requests
	// scheduled before it are sent but not counted.
	begin := time.Now()
	start := begin.Add(warmup)
	deadline := start.Add(duration)
	for i, cl := range cs {
		c, org, job, id := cl.c, cl.org, cl.job, cl.id
		wg.Go(func() {
			var mine []sample
			run := fmt.Sprintf("run-%d", i)
			// Spread the clients' schedules over one interval.
			started := begin.Add(interval * time.Duration(i) / time.Duration(nClients))
			// One batch per client, rewritten before each request (the
			// client encodes it before SendEvents returns): in production
			// the sidecars build their events on other machines, and here
			// building them anew cost 8% of this process's CPU.
			evs := make([]audit.Event, batchSize)
			for k := range evs {
				evs[k] = event(id.String(), org, k)
			}
			for n := 0; time.Now().Before(deadline); n++ {
				for k := range evs {
					refresh(&evs[k], n, k)
				}
				var send func() (ingestclient.Result, error)
				count := len(evs)
				if usageEvery > 0 && n%usageEvery == usageEvery-1 {
					rep := report(org, job, run, started)
					send = func() (ingestclient.Result, error) { return c.SendUsage(ctx, []usage.Report{rep}) }
					count = 1
				} else {
					send = func() (ingestclient.Result, error) { return c.SendEvents(ctx, evs) }
				}
				// Paced: each request has a scheduled time and its latency
				// counts from then, so a slow dispatcher cannot hide its
				// backlog (no coordinated omission).
				t0 := time.Now()
				if interval > 0 {
					t0 = started.Add(time.Duration(n) * interval)
					if d := time.Until(t0); d > 0 {
						time.Sleep(d)
					}
				}
				counted := !t0.Before(start) // not a warm-up request
				for {
					_, err := send()
					if err == nil {
						if counted {
							mine = append(mine, sample{at: t0.Sub(start), lat: time.Since(t0)})
							items.Add(int64(count))
							requests.Add(1)
						}
						break
					}
					var re *ingestclient.RetryableError
					if !errors.As(err, &re) {
						firstErr.CompareAndSwap(nil, &err)
						return
					}
					if counted {
						retries.Add(1)
					}
					time.Sleep(min(re.After, 100*time.Millisecond))
				}
			}
			mu.Lock()
			samples = append(samples, mine...)
			mu.Unlock()
		})
	}
	time.Sleep(time.Until(start))
	wal0, err := walNow(ctx, db)
	if err != nil {
		return err
	}
	cpu0 := cpuNow(pgPID)
	var ticks []tick
	stopTicks := func() {}
	if timeline {
		stop, done := make(chan struct{}), make(chan struct{})
		stopTicks = sync.OnceFunc(func() { close(stop); <-done })
		defer stopTicks()
		go func() {
			defer close(done)
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					ticks = append(ticks, tick{cpu: cpuNow(pgPID), host: hostNow()})
				}
			}
		}()
	}
	host0 := hostNow()
	wg.Wait()
	elapsed := time.Since(start)
	// -cpuprofile covers the load, not verify.
	pprof.StopCPUProfile()
	cpu1 := cpuNow(pgPID)
	if p := firstErr.Load(); p != nil {
		return *p
	}
	wal1, err := walNow(ctx, db)
	if err != nil {
		return err
	}
	latencies := make([]time.Duration, len(samples))
	for i, x := range samples {
		latencies[i] = x.lat
	}
	slices.Sort(latencies)
	mode := "closed loop (as fast as answered)"
	if rate > 0 {
		mode = fmt.Sprintf("paced at %d items/s offered", rate)
	}
	if warmup > 0 {
		mode += fmt.Sprintf(", measured after a %s warm-up at the same load", warmup)
	}
	fmt.Printf("\ndispatcher ingest, %s: %d clients, %d orgs, %d events/request, usage every %d requests, %d writers, durable=%v, GC %d%%\n",
		mode, nClients, nOrgs, batchSize, usageEvery, writers, durable, gcPercent)
	var set []string
	settings := pgOpts.Settings()
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		set = append(set, k+"="+settings[k])
	}
	fmt.Printf("postgres settings beyond pgtest's: %s\n\n", strings.Join(set, " "))
	fmt.Println("| items acked | requests | retries | seconds | items/s | p50 ack | p90 ack | p99 ack | max ack |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	fmt.Printf("| %d | %d | %d | %.1f | %.0f | %s | %s | %s | %s |\n",
		items.Load(), requests.Load(), retries.Load(), elapsed.Seconds(), float64(items.Load())/elapsed.Seconds(),
		ms(percentile(latencies, 0.50)), ms(percentile(latencies, 0.90)), ms(percentile(latencies, 0.99)), ms(percentile(latencies, 1)))

	n := float64(items.Load())
	self, pg := (cpu1.self - cpu0.self).Seconds(), (cpu1.pg - cpu0.pg).Seconds()
	fmt.Printf("\nCPU: this process (dispatcher and clients) %.1fs, postgres %.1fs: %.1fus + %.1fus per item;\n"+
		"on 2 dedicated cores that is a capacity of about %.0f items/s (the machine had %.1f cores busy on average)\n",
		self, pg, self/n*1e6, pg/n*1e6, 2*n/(self+pg), (self+pg)/elapsed.Seconds())
	fmt.Printf("WAL: %.0f bytes, %.2f records and %.3f full-page images per item\n",
		float64(wal1.bytes-wal0.bytes)/n, float64(wal1.records-wal0.records)/n, float64(wal1.fpi-wal0.fpi)/n)

	host1 := hostNow()
	fmt.Printf("host: %.2f cores stolen, %.2f cores in iowait on average; before the run, %s\n",
		(host1.steal-host0.steal)/elapsed.Seconds(), (host1.iowait-host0.iowait)/elapsed.Seconds(), cal)
	if timeline {
		stopTicks()
		printTimeline(samples, ticks, tick{cpu: cpu0, host: host0})
	}

	srv.Shutdown(context.Background())
	printBatches(reg)
	if pgStat {
		benchpg.PrintStatements(ctx, db)
	}
	vstart := time.Now()
	rep, err := auditstore.Verify(ctx, db, "")
	if err != nil {
		return err
	}
	fmt.Printf("\nverify: %d rows in %d chains in %.1fs, %d broken\n", rep.Rows, rep.Chains, time.Since(vstart).Seconds(), len(rep.Problems))
	if err := printSizes(ctx, db, rep.Rows); err != nil {
		return err
	}
	if len(rep.Problems) > 0 {
		for _, p := range rep.Problems {
			fmt.Println("BROKEN", p)
		}
		os.Exit(1)
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// event is the k-th event of a client's batch; refresh makes it new.
func event(actor, org string, k int) audit.Event {
	ev := audit.Event{
		EventType: "EGRESS_ALLOWED",
		Actor:     audit.Actor{Type: audit.ActorJob, ID: actor},
		Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: org},
		Action:    "CONNECT",
		Result:    audit.ResultSuccess,
		Metadata:  map[string]any{"host": "api.example.com", "port": 443, "bytes_out": 0, "sni": "api.example.com"},
	}
	if k%20 == 0 {
		ev.EventType, ev.Result = "EGRESS_DENIED", audit.ResultDenied
		ev.Resource.ID = "evil.example.net:443"
	}
	return ev
}

// refresh gives ev a new ID, timestamp, byte count and request ID, for
// the n-th request of its client.
func refresh(ev *audit.Event, n, k int) {
	ev.Timestamp = time.Now()
	ev.EventID = audit.NewID()
	ev.Metadata["bytes_out"] = n*1000 + k
	ev.RequestID = "req_" + strconv.Itoa(n) + "_" + strconv.Itoa(k)
}

func report(org, job, run string, started time.Time) usage.Report {
	exit := 0
	return usage.Report{
		ReportID: "usg_" + strings.TrimPrefix(audit.NewID(), "evt_"), Org: org, Job: job, RunID: run,
		StartedAt: started, EndedAt: time.Now(), ExitCode: &exit, WallSeconds: time.Since(started).Seconds(),
		CPUUserSeconds: 1, MaxRSSBytes: 64 << 20, Enforcement: "cgroup-ebpf",
		Egress: map[string]usage.Egress{"api.example.com:443": {BytesOut: 1000, BytesIn: 5000, Requests: 10}},
	}
}

// printBatches reports the dispatcher's own view: transactions, their mean
// size and commit time, and the commit and server-side answer times at the
// 50th and 99th percentiles (as the upper bounds of the histogram buckets
// they fall in). A client's p99 far above the server's points at the
// clients and the network stack; a commit p99 near the client's, at the
// database.
func printBatches(reg *prometheus.Registry) {
	mfs, err := reg.Gather()
	if err != nil {
		return
	}
	var n uint64
	var items, secs float64
	var commit, ack *dto.Histogram
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			switch mf.GetName() {
			case "cordon_dispatcher_ingest_batch_items":
				n, items = h.GetSampleCount(), h.GetSampleSum()
			case "cordon_dispatcher_ingest_batch_seconds":
				secs, commit = h.GetSampleSum(), h
			case "cordon_dispatcher_ingest_ack_seconds":
				if labelIs(m, "endpoint", ingest.EventsPath) {
					ack = h
				}
			}
		}
	}
	if n > 0 {
		fmt.Printf("\ndispatcher: %d transactions, %.0f items each on average, %.1fms mean commit\n", n, items/float64(n), secs/float64(n)*1000)
		fmt.Printf("commit p50 <= %s, p99 <= %s; events answered (server side) p50 <= %s, p99 <= %s\n",
			bucketQuantile(commit, 0.5), bucketQuantile(commit, 0.99), bucketQuantile(ack, 0.5), bucketQuantile(ack, 0.99))
	}
}

// bucketQuantile is the upper bound of the bucket of h holding its q
// quantile ("?" without samples, "inf" past the last bound).
func bucketQuantile(h *dto.Histogram, q float64) string {
	if h == nil || h.GetSampleCount() == 0 {
		return "?"
	}
	want := uint64(math.Ceil(q * float64(h.GetSampleCount())))
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() >= want {
			return (time.Duration(b.GetUpperBound() * float64(time.Second))).String()
		}
	}
	return "inf"
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

type walStats struct{ records, fpi, bytes int64 }

// printSizes prints the bytes per audit row of the audit_events heap and
// of each of its indexes, over all partitions: what each index costs in
// pages written.
func printSizes(ctx context.Context, db string, rows int64) error {
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	r, err := conn.Query(ctx, `SELECT c.relname, (SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree(c.oid))::bigint
		FROM pg_class c WHERE c.oid = 'audit_events'::regclass
			OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'audit_events'::regclass)
		UNION ALL
		-- The (chain_id, seq) indexes are per partition (migration 0160).
		SELECT 'chain_seq (per partition)', sum(pg_relation_size(i.indexrelid))::bigint
		FROM pg_partition_tree('audit_events') p JOIN pg_index i ON i.indrelid = p.relid
		WHERE p.isleaf AND i.indexrelid::regclass::text LIKE '%\_chain\_seq'
		ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("read relation sizes: %w", err)
	}
	var (
		name string
		size int64
		out  []string
	)
	_, err = pgx.ForEachRow(r, []any{&name, &size}, func() error {
		out = append(out, fmt.Sprintf("%s %.0f", name, float64(size)/float64(max(rows, 1))))
		return nil
	})
	if err != nil {
		return fmt.Errorf("read relation sizes: %w", err)
	}
	fmt.Printf("bytes per audit row: %s\n", strings.Join(out, ", "))
	return nil
}

// walNow reads the cluster's WAL counters (pg_stat_wal).
func walNow(ctx context.Context, db string) (walStats, error) {
	var w walStats
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return w, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, "SELECT wal_records, wal_fpi, wal_bytes::bigint FROM pg_stat_wal").Scan(&w.records, &w.fpi, &w.bytes)
	if err != nil {
		return w, fmt.Errorf("read pg_stat_wal: %w", err)
	}
	return w, nil
}

type cpuTimes struct{ self, pg time.Duration }

// cpuNow reads the CPU time used so far by this process and by the
// postgres cluster.
func cpuNow(postmaster int) cpuTimes {
	return cpuTimes{self: benchpg.SelfCPU(), pg: benchpg.ClusterCPU(postmaster)}
}

// percentile is the p quantile (0 to 1) of sorted, 0 when it is empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// sample is one request's scheduled time (from the start of the run) and
// latency.
type sample struct{ at, lat time.Duration }

// tick is what -timeline samples every second.
type tick struct {
	cpu  cpuTimes
	host hostTimes
}

// printTimeline prints one row per second of the run: the requests
// scheduled in it, their p99 and max latency, and the CPU seconds used in
// it.
func printTimeline(samples []sample, ticks []tick, first tick) {
	slices.SortFunc(samples, func(a, b sample) int { return cmp.Compare(a.at, b.at) })
	fmt.Println("\n| second | requests | p99 | max | this process | postgres | steal | iowait |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	prev := first
	for sec := 0; len(samples) > 0; sec++ {
		end := time.Duration(sec+1) * time.Second
		n := 0
		for n < len(samples) && samples[n].at < end {
			n++
		}
		lats := make([]time.Duration, n)
		for i := range n {
			lats[i] = samples[i].lat
		}
		samples = samples[n:]
		slices.Sort(lats)
		row := fmt.Sprintf("| %d | %d |", sec, n)
		if n > 0 {
			row += fmt.Sprintf(" %s | %s |", ms(percentile(lats, 0.99)), ms(percentile(lats, 1)))
		} else {
			row += " | |"
		}
		if sec < len(ticks) {
			t := ticks[sec]
			row += fmt.Sprintf(" %.2f | %.2f | %.2f | %.2f |", (t.cpu.self - prev.cpu.self).Seconds(), (t.cpu.pg - prev.cpu.pg).Seconds(),
				t.host.steal-prev.host.steal, t.host.iowait-prev.host.iowait)
			prev = t
		}
		fmt.Println(row)
	}
}

// hostTimes are the machine's stolen and iowait CPU seconds so far
// (/proc/stat): steal is time the hypervisor gave this machine's CPUs to
// someone else, which no code here can win back.
type hostTimes struct{ steal, iowait float64 }

func hostNow() hostTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return hostTimes{}
	}
	iowait, _ := strconv.ParseFloat(f[5], 64)
	steal, _ := strconv.ParseFloat(f[8], 64)
	return hostTimes{steal: steal / benchpg.ClockTicks, iowait: iowait / benchpg.ClockTicks}
}
