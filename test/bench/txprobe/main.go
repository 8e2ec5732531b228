// Command txprobe measures what an audit append transaction costs
// Postgres, apart from its rows: one goroutine appends batches of N events
// of one org (or of -orgs orgs) through auditstore.Store for a few
// seconds per N, into a throwaway durable cluster, and prints the
// Postgres CPU (all its processes, from /proc) and wall time per
// transaction. The per-transaction cost is the intercept of CPU against N;
// the per-row cost its slope. make bench-dispatcher measures the whole
// dispatcher under load; this isolates the store, with no contention.
//
//	go run ./test/bench/txprobe -sizes 10,100,500 -pgset synchronous_commit=off
//	go run ./test/bench/txprobe -pgstat   # and the statements' own times
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/test/bench/benchpg"
)

func main() {
	sizes := flag.String("sizes", "10,50,100,200,500,1000", "events per transaction, comma-separated")
	orgs := flag.Int("orgs", 1, "orgs per transaction (the events are split among them)")
	each := flag.Duration("each", 4*time.Second, "how long to append at each size")
	rounds := flag.Int("rounds", 2, "how many times to go through the sizes")
	pgStat := flag.Bool("pgstat", false, "print the statements Postgres spent most time on (pg_stat_statements)")
	pgSet := benchpg.SettingsFlag{}
	flag.Var(pgSet, "pgset", "extra Postgres setting name=value (repeatable)")
	flag.Parse()
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < *orgs {
			log.Fatalf("-sizes: %q is not a count of at least -orgs events", f)
		}
		ns = append(ns, n)
	}
	if err := run(ns, *orgs, *each, *rounds, *pgStat, pgSet); err != nil {
		log.Fatal(err)
	}
}

func run(sizes []int, orgs int, each time.Duration, rounds int, pgStat bool, pgSet map[string]string) error {
	ctx := context.Background()
	cluster, db, err := benchpg.Start(ctx, benchpg.Options{Durable: true, Extra: pgSet, PgStat: pgStat})
	if err != nil {
		return err
	}
	defer cluster.Close()
	if pgStat {
		defer benchpg.PrintStatements(ctx, db)
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
			cpu0, t0 := benchpg.ClusterCPU(pid), time.Now()
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
			cpu, wall := (benchpg.ClusterCPU(pid) - cpu0).Seconds(), time.Since(t0)
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
