package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/bpf"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/ingest"
	usagewire "github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

// dispatcher is a real ingest server over mTLS on a fixed loopback
// address, so it can be stopped and started again where the agent
// expects it.
type dispatcher struct {
	t     *testing.T
	ca    *spiffedev.CA
	dbURL string
	addr  string

	srv   *ingest.Server
	store *auditstore.Store
	done  chan error
	logs  func() string // the agent's, shown when a wait fails
	quit  func()
}

func (d *dispatcher) start() {
	t := d.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := auditstore.Open(ctx, d.dbURL, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ingest.New(ingest.Config{Store: store, TrustDomain: d.ca.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := d.ca.MintX509SVID(spiffeid.RequireFromSegments(d.ca.TrustDomain(), "dispatcher"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = net.Listen("tcp", d.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("listen again on %s: %v", d.addr, err)
	}
	d.srv, d.store, d.done = srv, store, make(chan error, 1)
	go func() { d.done <- srv.Serve(l, mtls.ServerConfig(svid, d.ca.Bundle(), d.ca.TrustDomain())) }()
}

// stop shuts the dispatcher down gracefully. Idempotent.
func (d *dispatcher) stop() {
	if d.done == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.srv.Shutdown(ctx)
	if err := <-d.done; err != nil && err != http.ErrServerClosed {
		d.t.Errorf("dispatcher serve: %v", err)
	}
	d.done = nil
	d.store.Close()
}

func (d *dispatcher) count(sql string, args ...any) int {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, d.dbURL)
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		d.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// dump is the stored usage reports as JSON, for failure messages.
func (d *dispatcher) dump() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, d.dbURL)
	if err != nil {
		return err.Error()
	}
	defer c.Close(context.Background())
	var s *string
	if err := c.QueryRow(ctx, `SELECT json_agg(u)::text FROM usage_reports u`).Scan(&s); err != nil || s == nil {
		return fmt.Sprint(err)
	}
	return *s
}

// waitCount waits until sql counts want rows.
func (d *dispatcher) waitCount(what string, want int, sql string, args ...any) {
	d.t.Helper()
	var got int
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = d.count(sql, args...); got == want {
			return
		}
	}
	logs := ""
	if d.quit != nil && os.Getenv("CORDON_DEBUG_QUIT") != "" {
		d.quit()
		time.Sleep(time.Second)
	}
	if d.logs != nil {
		logs = d.logs()
	}
	d.t.Fatalf("%s: got %d rows, want %d; usage reports %s; agent logs:\n%s", what, got, want, d.dump(), logs)
}

// TestAgentDeliversToDispatcher: the agent's audit events and usage
// reports reach a real dispatcher (ingest over mTLS into Postgres) under
// the SVID's org and job; while the dispatcher is down they wait in the
// spool, and after it is back they arrive, each exactly once.
func TestAgentDeliversToDispatcher(t *testing.T) {
	cluster := pgtest.Start(t)
	dbURL := cluster.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := auditstore.Migrate(ctx, dbURL, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	d := &dispatcher{t: t, ca: ca, dbURL: dbURL, addr: freeAddr(t)}
	d.start()
	t.Cleanup(d.stop)

	dir := t.TempDir()
	endpoint := devWorkloadAPI(t, ca, "spiffe://cordon.test/org/acme/job/block_follower", dir)
	_, port := upstream(t)
	proxyAddr := freeAddr(t)
	shared := filepath.Join(dir, "cordon")
	spoolDir := filepath.Join(dir, "spool")
	a := startAgent(t, endpoint, "--provider", "file", "--secrets-file", secretsFile(t, `{"monad_rpc_key": "`+rpcKey+`"}`),
		"--secrets", "monad_rpc_key", "--shared-dir", shared, "--allowlists", writeAllowlist(t, port),
		"--unsafe-allow-cidr", "127.0.0.0/8", "--proxy-addr", proxyAddr,
		"--dispatcher", "https://"+d.addr, "--spool-dir", spoolDir, "--retry-max-backoff", "300ms",
		"--usage-interval", "200ms", "--run-id", "run-e2e-1", "--admission=false")
	d.logs = a.Logs
	d.quit = func() { a.cmd.Process.Signal(syscall.SIGQUIT) }
	c := proxyClient(proxyAddr)
	get := func(url string, want int) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: got %s, want %d", url, resp.Status, want)
		}
	}
	allowed := "http://localhost:" + strconv.Itoa(port) + "/"
	get(allowed, http.StatusOK)
	get("http://example.com/", http.StatusForbidden)

	const byOrg = `SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND actor_id = 'spiffe://cordon.test/org/acme/job/block_follower'`
	d.waitCount("secret access and the first two egress decisions", 3,
		byOrg+` AND event_type IN ('SECRETS_ACCESSED', 'EGRESS_ALLOWED', 'EGRESS_DENIED')`)
	d.waitCount("an interim usage report with the egress", 1,
		`SELECT least(count(*), 1) FROM usage_reports WHERE org_id = 'acme' AND job_id = 'block_follower' AND NOT final
		 AND (egress->'localhost:`+strconv.Itoa(port)+`'->>'requests')::int = 1 AND denials = 1`)

	// The dispatcher goes away: what happens now waits in the spool.
	d.stop()
	for range 3 {
		get("http://example.com/", http.StatusForbidden)
	}
	job := exec.Command(filepath.Join(shared, "bin", "cordon-sidecar"), "run", "--agent-socket", filepath.Join(shared, "run", "agent.sock"),
		"--", "/bin/sh", "-c", "exit 3")
	job.Env = []string{"PATH=/usr/bin:/bin"}
	if err := job.Run(); err == nil || job.ProcessState.ExitCode() != 3 {
		t.Fatalf("job: %v, want exit 3", err)
	}
	if n := spooled(t, filepath.Join(spoolDir, "usage")); n == 0 {
		t.Fatalf("usage spool is empty while the dispatcher is down, want the final report in it")
	}

	// The wrapper confined the job where this host can.
	level := bpf.LevelCgroupEBPF
	if err := bpf.Probe(); err != nil {
		t.Logf("no eBPF here, expecting network-only: %v", err)
		level = bpf.LevelNetworkOnly
	}
	d.start()
	d.waitCount("the final usage report", 1,
		`SELECT count(*) FROM usage_reports WHERE org_id = 'acme' AND job_id = 'block_follower' AND run_id = 'run-e2e-1'
		 AND final AND exit_code = 3 AND denials = 4 AND enforcement = '`+level+`'
		 AND (egress->'localhost:`+strconv.Itoa(port)+`'->>'requests')::int = 1
		 AND (egress->'denied'->>'denials')::int = 4`)
	// 1 SECRETS_ACCESSED, 1 SECRETS_HANDED_OFF, 5 egress decisions,
	// JOB_STARTED and JOB_FINISHED: 9, each once.
	d.waitCount("every audit event", 9, byOrg)
	if got := d.count(`SELECT count(DISTINCT event_id) FROM audit_events`); got != 9 {
		t.Errorf("got %d distinct events, want 9", got)
	}
	if got := d.count(byOrg + ` AND event_type = 'JOB_FINISHED' AND metadata->>'enforcement' = '` + level + `'`); got != 1 {
		t.Errorf("got %d JOB_FINISHED events with the enforcement level, want 1", got)
	}
	if got := d.count(`SELECT count(*) FROM usage_reports WHERE final`); got != 1 {
		t.Errorf("got %d final usage reports, want 1", got)
	}
	if err := a.stop(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.Logs())
	}
}

// spooled is the number of records in a spool directory's segments.
func spooled(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range splitLines(b) {
			var r usagewire.Report
			if json.Unmarshal(line, &r) == nil && r.ReportID != "" {
				n++
			}
		}
	}
	return n
}

func splitLines(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != '\n' {
			i++
		}
		out = append(out, b[:i])
		if i < len(b) {
			i++
		}
		b = b[i:]
	}
	return out
}
