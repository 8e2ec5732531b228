// Package benchpg is what the audit store's benchmarks (bench-dispatcher,
// txprobe) share: a throwaway Postgres cluster migrated to the audit
// schema and run with the store's ServerSettings, the CPU time of its
// processes and of the benchmark's own, and the statements it spent most
// time on.
package benchpg

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
)

// Options say what cluster Start starts.
type Options struct {
	// Durable keeps fsync and synchronous_commit on.
	Durable bool
	// Extra settings go on top of auditstore.ServerSettings.
	Extra map[string]string
	// PgStat loads pg_stat_statements, for PrintStatements.
	PgStat bool
}

// Settings are the server settings the cluster runs with beyond
// pgtest's: auditstore.ServerSettings, then Extra, then
// pg_stat_statements with PgStat.
func (o Options) Settings() map[string]string {
	set := map[string]string{}
	for k, v := range auditstore.ServerSettings {
		set[k] = v
	}
	for k, v := range o.Extra {
		set[k] = v
	}
	if o.PgStat {
		set["shared_preload_libraries"] = "pg_stat_statements"
	}
	return set
}

// SettingsFlag collects repeated -pgset name=value flags, for
// Options.Extra.
type SettingsFlag map[string]string

func (s SettingsFlag) String() string { return fmt.Sprint(map[string]string(s)) }

func (s SettingsFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want name=value, got %q", v)
	}
	s[name] = value
	return nil
}

// Start starts a cluster and returns it with the URL of a new database
// migrated to the audit schema. The caller closes the cluster.
func Start(ctx context.Context, o Options) (*pgtest.Cluster, string, error) {
	cluster, err := pgtest.New(pgtest.Options{Durable: o.Durable, Settings: o.Settings()})
	if err != nil {
		return nil, "", err
	}
	db, err := cluster.CreateDatabase(ctx)
	if err == nil {
		_, err = auditstore.Migrate(ctx, db, nil)
	}
	if err != nil {
		cluster.Close()
		return nil, "", err
	}
	return cluster, db, nil
}

// PrintStatements prints, as a Markdown table, the twelve statements the
// cluster of db spent most time executing (Start with PgStat).
func PrintStatements(ctx context.Context, db string) {
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		log.Print(err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		log.Print(err)
		return
	}
	rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
		FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Println("\n| calls | total ms | ms/call | rows | statement |\n|---|---|---|---|---|")
	for rows.Next() {
		var calls, nrows int64
		var total float64
		var q string
		if rows.Scan(&calls, &total, &nrows, &q) == nil {
			fmt.Printf("| %d | %.0f | %.3f | %d | %s |\n", calls, total, total/float64(calls), nrows, q)
		}
	}
}

// SelfCPU is the CPU time this process has used so far.
func SelfCPU() time.Duration { return procCPU("self", false) }

// ClusterCPU is the CPU time the cluster whose postmaster is pid has used
// so far: the postmaster, the backends it has reaped, and the live ones
// (from /proc).
func ClusterCPU(postmaster int) time.Duration {
	t := procCPU(strconv.Itoa(postmaster), true)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if ppid(e.Name()) == postmaster {
			t += procCPU(e.Name(), false)
		}
	}
	return t
}

// ClockTicks is USER_HZ on Linux: the unit of /proc's CPU times.
const ClockTicks = 100

func statFields(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:]) // fields from state (3rd) on
}

func ppid(pid string) int {
	f := statFields(pid)
	if len(f) < 2 {
		return -1
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// procCPU is utime+stime (and, with children, the reaped children's).
func procCPU(pid string, children bool) time.Duration {
	f := statFields(pid)
	if len(f) < 15 {
		return 0
	}
	sum := 0
	idx := []int{11, 12} // utime, stime
	if children {
		idx = append(idx, 13, 14) // cutime, cstime
	}
	for _, i := range idx {
		n, _ := strconv.Atoi(f[i])
		sum += n
	}
	return time.Duration(sum) * time.Second / ClockTicks
}
