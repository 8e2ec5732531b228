// Command txprobe measures what an audit append transaction costs
// Postgres, apart from its rows: one goroutine appends batches of N events
// of one org (or of -orgs orgs) through auditstore.Store for a few
// seconds per N, into a throwaway durable cluster, and prints the
// Postgres CPU (all its processes, from /proc) and wall time per
// transaction. The per-transaction cost is the intercept of CPU against N;
// the per-row cost its slope. make bench-dispatcher measures the whole
// dispatcher under load; this isolates the store, with no contention.
//
//	go run ./test/bench/txprobe -sizes 10,100,500 -pgset plan_cache_mode=auto
//	go run ./test/bench/txprobe -pgstat   # and the statements' own times
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
)

func main() {
	sizes := flag.String("sizes", "10,50,100,200,500,1000", "events per transaction, comma-separated")
	orgs := flag.Int("orgs", 1, "orgs per transaction (the events are split among them)")
	each := flag.Duration("each", 4*time.Second, "how long to append at each size")
	rounds := flag.Int("rounds", 2, "how many times to go through the sizes")
	pgStat := flag.Bool("pgstat", false, "print the statements Postgres spent most time on (pg_stat_statements)")
	pgSet := flag.String("pgset", "", "extra Postgres settings, name=value, comma-separated")
	flag.Parse()
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < *orgs {
			log.Fatalf("-sizes: %q is not a count of at least -orgs events", f)
		}
		ns = append(ns, n)
	}
	if err := run(ns, *orgs, *each, *rounds, *pgStat, *pgSet); err != nil {
		log.Fatal(err)
	}
}

func run(sizes []int, orgs int, each time.Duration, rounds int, pgStat bool, pgSet string) error {
	ctx := context.Background()
	opts := pgtest.Options{Durable: true, Settings: map[string]string{}}
	for k, v := range auditstore.ServerSettings {
		opts.Settings[k] = v
	}
	if pgStat {
		opts.Settings["shared_preload_libraries"] = "pg_stat_statements"
	}
	for _, kv := range strings.Split(pgSet, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			opts.Settings[k] = v
		}
	}
	cluster, err := pgtest.New(opts)
	if err != nil {
		return err
	}
	defer cluster.Close()
	db, err := cluster.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	if _, err := auditstore.Migrate(ctx, db, nil); err != nil {
		return err
	}
	if pgStat {
		su, err := pgx.Connect(ctx, db)
		if err != nil {
			return err
		}
		defer su.Close(ctx)
		if _, err := su.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
			return err
		}
		defer printStatements(ctx, su)
	}
	store, err := auditstore.Open(ctx, db, auditstore.Options{MaxConns: 2})
	if err != nil {
		return err
	}
	defer store.Close()
	pid, err := cluster.PID()
	if err != nil {
		return err
	}
	fmt.Println("| round | events/tx | orgs/tx | transactions | Postgres CPU ms/tx | us/event | wall ms/tx |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for round := range rounds {
		for _, n := range sizes {
			per := n / orgs
			txs := 0
			cpu0, t0 := pgCPU(pid), time.Now()
			for time.Since(t0) < each {
				batches := make([]auditstore.OrgBatch, orgs)
				for o := range batches {
					org := fmt.Sprintf("org-%d", o)
					recs := make([]auditstore.Record, per)
					for k := range recs {
						recs[k].Event = event(org, k)
					}
					batches[o] = auditstore.OrgBatch{Org: org, Events: recs}
				}
				if _, err := store.AppendBatches(ctx, batches); err != nil {
					return err
				}
				txs++
			}
			cpu, wall := pgCPU(pid)-cpu0, time.Since(t0)
			fmt.Printf("| %d | %d | %d | %d | %.3f | %.2f | %.2f |\n", round+1, per*orgs, orgs, txs,
				cpu/float64(txs)*1e3, cpu/float64(txs*per*orgs)*1e6, wall.Seconds()/float64(txs)*1e3)
		}
	}
	return nil
}

// event is an egress event of org, as make bench-dispatcher sends them.
func event(org string, k int) audit.Event {
	return audit.Event{
		Timestamp: time.Now(), EventID: audit.NewID(), RequestID: "req_1_" + strconv.Itoa(k),
		EventType: "EGRESS_ALLOWED",
		Actor:     audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.bench/org/" + org + "/job/j"},
		Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: org},
		Action:    "CONNECT", Result: audit.ResultSuccess,
		Metadata: map[string]any{"host": "api.example.com", "port": 443, "bytes_out": k, "sni": "api.example.com"},
	}
}

func printStatements(ctx context.Context, c *pgx.Conn) {
	rows, err := c.Query(ctx, `SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
		FROM pg_stat_statements WHERE calls > 1 ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Println("\n| calls | total ms | us/call | rows | statement |\n|---|---|---|---|---|")
	for rows.Next() {
		var calls, n int64
		var ms float64
		var q string
		if err := rows.Scan(&calls, &ms, &n, &q); err != nil {
			log.Print(err)
			return
		}
		fmt.Printf("| %d | %.0f | %.1f | %d | %s |\n", calls, ms, ms/float64(calls)*1e3, n, q)
	}
}

// pgCPU is the CPU seconds used so far by the postmaster and its children.
func pgCPU(postmaster int) float64 {
	total := 0.0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // from the state (3rd field) on
		if len(f) < 13 || (f[1] != strconv.Itoa(postmaster) && e.Name() != strconv.Itoa(postmaster)) {
			continue
		}
		user, _ := strconv.ParseFloat(f[11], 64)
		sys, _ := strconv.ParseFloat(f[12], 64)
		total += (user + sys) / 100 // USER_HZ
	}
	return total
}
