package admit_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"plain http", "http://dispatcher:8443"},
		{"no host", "https://"},
		{"userinfo", "https://u:p@dispatcher:8443"},
		{"query", "https://dispatcher:8443?x=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := admit.New(tc.url, &tls.Config{}, 0); err == nil {
				c.Close()
				t.Errorf("New(%q): got a client, want an error", tc.url)
			}
		})
	}
}

// TestAgainstTheDispatcher runs the client against dispatcher/admission's
// real handler over mTLS on real Postgres: admit, a refusal with its
// reason, a heartbeat carrying a termination order, and a terminated
// finish recorded as RUN_TERMINATED.
func TestAgainstTheDispatcher(t *testing.T) {
	ctx := ctxT(t)
	dbURL := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctx, dbURL, nil); err != nil {
		t.Fatal(err)
	}
	store, err := auditstore.Open(ctx, dbURL, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	svc, err := admission.New(admission.Config{DB: pool, Audit: store, TrustDomain: "cordon.test"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")
	svid, err := ca.MintX509SVID(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: admission.NewHandler(svc, ca.TrustDomain(), nil), ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: mtls.ServerConfig(svid, ca.Bundle(), ca.TrustDomain()),
		ErrorLog:  log.New(io.Discard, "", 0)}
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	client := func(org, job string) *admit.Client {
		id, err := ca.JobID(org, job)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ca.MintX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := admit.New("https://"+ln.Addr().String(), mtls.ClientConfig(s, ca.Bundle(), serverID), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	etl, report := client("acme", "etl"), client("acme", "report")
	if err := svc.SetQuota(ctx, "acme", 1, 100); err != nil {
		t.Fatal(err)
	}

	a, err := etl.Admit(ctx, "run-1")
	if err != nil || !a.Admitted || a.HeartbeatSeconds <= 0 || a.LeaseExpiresAt.IsZero() {
		t.Fatalf("admit: got %+v, %v; want admitted with a lease and a heartbeat interval", a, err)
	}
	r, err := report.Admit(ctx, "run-2")
	if err != nil || r.Admitted || r.Reason == "" {
		t.Fatalf("admit over the limit: got %+v, %v; want refused with a reason", r, err)
	}
	var se *admit.StatusError
	if _, err := report.Heartbeat(ctx, "run-1"); !errors.As(err, &se) || se.Code != http.StatusNotFound || se.Temporary() {
		t.Fatalf("heartbeat of another job's run: got %v, want a permanent 404", err)
	}
	hb, err := etl.Heartbeat(ctx, "run-1")
	if err != nil || hb.Terminate != nil {
		t.Fatalf("heartbeat: got %+v, %v; want no order", hb, err)
	}
	if ok, err := svc.OrderTermination(ctx, "acme", "run-1", "anomaly", "denials far above baseline", nil); err != nil || !ok {
		t.Fatalf("order: %v, %v", ok, err)
	}
	hb, err = etl.Heartbeat(ctx, "run-1")
	if err != nil || hb.Terminate == nil || hb.Terminate.Reason != "denials far above baseline" ||
		hb.Terminate.GraceSeconds != admission.TerminationGrace.Seconds() {
		t.Fatalf("heartbeat after the order: got %+v, %v; want the order with the dispatcher's grace", hb, err)
	}
	code := 137
	if err := etl.Finish(ctx, "run-1", admit.FinishRequest{ExitCode: &code, Terminated: true, Signal: "SIGKILL"}); err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'RUN_TERMINATED'
		AND metadata->>'signal' = 'SIGKILL' AND (metadata->>'exit_code')::int = 137`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("RUN_TERMINATED events: got %d (%v), want 1", n, err)
	}
	if err := etl.Finish(ctx, "run-1", admit.FinishRequest{Signal: "SIGSEGV"}); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("finish with a bad signal: got %v, want 400", err)
	}
}
