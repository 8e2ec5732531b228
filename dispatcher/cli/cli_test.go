package cli_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/cli"
	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := cli.Run(ctx, args, &out, &errb)
	return code, out.String() + errb.String()
}

func TestUsageErrors(t *testing.T) {
	t.Setenv(cli.DatabaseEnv, "")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"no database", []string{"verify"}, "no database"},
		{"bad flag", []string{"migrate", "--nope"}, "flag provided but not defined"},
		{"bad now", []string{"retention", "--db", "postgres://x", "--now", "yesterday"}, "RFC 3339"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(t, tc.args...)
			if code != cli.ExitError || !strings.Contains(out, tc.want) {
				t.Errorf("got exit %d %q, want exit %d containing %q", code, out, cli.ExitError, tc.want)
			}
		})
	}
}

func TestServeVerifyRetention(t *testing.T) {
	db := pgtest.Shared(t).NewDatabase(t)
	if code, out := run(t, "migrate", "--db", db); code != 0 || !strings.Contains(out, "applied: ") || strings.Contains(out, "applied: 0") {
		t.Fatalf("migrate: exit %d %s", code, out)
	}
	if code, out := run(t, "migrate", "--db", db); code != 0 || !strings.Contains(out, "applied: 0") {
		t.Fatalf("second migrate: exit %d %s", code, out)
	}

	// serve, with its SVID from a real Workload API server.
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	dispatcherID := spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")
	ws, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: ca, ID: dispatcherID})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wsDone := make(chan error, 1)
	go func() { wsDone <- ws.Serve(ctx, ln) }()
	ready := make(chan string, 1)
	serveDone := make(chan error, 1)
	go func() {
		serveDone <- cli.Serve(ctx, cli.ServeConfig{
			Database: db, Listen: "127.0.0.1:0", TrustDomain: "cordon.test", WorkloadAPI: "unix://" + sock,
			Ready: func(a cli.Addrs) { ready <- a.Sidecar },
		})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-serveDone:
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve not ready after 30s")
	}
	jobID, _ := ca.JobID("acme", "etl")
	svid, _ := ca.MintX509SVID(jobID, time.Hour)
	c := ingestclient.New("https://"+addr, mtls.ClientConfig(svid, ca.Bundle(), dispatcherID))
	var evs []audit.Event
	for range 5 {
		evs = append(evs, audit.Event{
			Timestamp: time.Now(), EventType: "JOB_STARTED", EventID: audit.NewID(),
			Actor:    audit.Actor{Type: audit.ActorJob, ID: jobID.String()},
			Resource: audit.Resource{Type: "JOB", ID: "etl", TenantID: "acme"}, Action: "START", Result: audit.ResultSuccess,
		})
	}
	res, err := c.SendEvents(context.Background(), evs)
	c.Close()
	if err != nil || res.Stored != 5 {
		t.Fatalf("send through serve: got %+v, %v; want 5 stored", res, err)
	}
	cancel()
	if err := <-serveDone; err != nil {
		t.Errorf("serve returned %v after cancel, want nil", err)
	}
	<-wsDone

	if code, out := run(t, "verify", "--db", db); code != 0 || !strings.Contains(out, "verified 5 rows") {
		t.Fatalf("verify: exit %d %s", code, out)
	}
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "SET session_replication_role = replica; UPDATE audit_events SET action = 'STOP' WHERE event_id = '"+evs[1].EventID+"'"); err != nil {
		t.Fatal(err)
	}
	code, out := run(t, "verify", "--db", db, "--org", "acme")
	if code != cli.ExitProblems || !strings.Contains(out, evs[1].EventID) || !strings.Contains(out, "seq 2") {
		t.Errorf("verify after tampering: exit %d %q, want exit 1 naming seq 2 and %s", code, out, evs[1].EventID)
	}
	if code, out := run(t, "retention", "--db", db, "--dry-run", "--now", "2030-01-01T00:00:00Z"); code != 0 || !strings.Contains(out, "would drop") {
		t.Errorf("retention dry run: exit %d %s", code, out)
	}
}
