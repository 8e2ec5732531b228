package main

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/test/fakeaws"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

// runControl is the dispatcher's sidecar API for runs as cordon-dispatcher
// serves it: admission and the credentials endpoint, over mTLS, on real
// Postgres, with the real STS client against the fake STS.
type runControl struct {
	t     *testing.T
	ca    *spiffedev.CA
	dbURL string
	base  string
	adm   *admission.Service
}

func startRunControl(t *testing.T) *runControl {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dbURL := pgtest.Start(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctx, dbURL, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
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
	adm, err := admission.New(admission.Config{DB: pool, Audit: store, TrustDomain: testTD})
	if err != nil {
		t.Fatal(err)
	}
	grants, err := credapi.OpenGrants(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(grants.Close)
	fake := fakeaws.NewSTS()
	fake.AllowRoles("arn:aws:iam::123456789012:role/cordon-data-acme")
	stsSrv := httptest.NewServer(fake)
	t.Cleanup(stsSrv.Close)
	stsClient, err := credapi.NewSTSClient(ctx, credapi.STSConfig{Endpoint: stsSrv.URL, Region: "us-east-1",
		Credentials: awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", "")})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := credapi.New(credapi.Config{
		Minter: credentials.Config{
			RoleARNTemplate: "arn:aws:iam::123456789012:role/cordon-data-{org}",
			Confinement:     datasets.Confinement{RootTemplates: []string{"s3://trace-data/{org}/"}},
		},
		STS: stsClient, Grants: grants, Audit: store, TrustDomain: ca.TrustDomain(),
	})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.MintX509SVID(spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/runs/", admission.NewHandler(adm, ca.TrustDomain(), nil))
	mux.Handle("POST "+credapi.Path, cred)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, TLSConfig: mtls.ServerConfig(svid, ca.Bundle(), ca.TrustDomain()),
		ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return &runControl{t: t, ca: ca, dbURL: dbURL, base: "https://" + ln.Addr().String(), adm: adm}
}

func (rc *runControl) count(sql string, args ...any) int {
	rc.t.Helper()
	d := &dispatcher{t: rc.t, dbURL: rc.dbURL}
	return d.count(sql, args...)
}

// agentFor starts an agent for org/job whose runs go through rc; the
// delivery to ingest is not served here and just retries.
func (rc *runControl) agentFor(t *testing.T, org, job, runID string, args ...string) (shared string, a *agentProc) {
	t.Helper()
	dir := t.TempDir()
	endpoint := devWorkloadAPI(t, rc.ca, "spiffe://cordon.test/org/"+org+"/job/"+job, dir)
	shared = filepath.Join(dir, "cordon")
	a = startAgent(t, endpoint, append([]string{"--provider", "file", "--secrets-file", secretsFile(t, `{}`),
		"--shared-dir", shared, "--allowlists", writeAllowlist(t, 1), "--proxy-addr", freeAddr(t),
		"--dispatcher", rc.base, "--spool-dir", filepath.Join(dir, "spool"), "--run-id", runID}, args...)...)
	return shared, a
}

// job runs sh -c script through the copied wrapper, as the job container
// does; it returns stdout, stderr and the exit code.
func job(t *testing.T, shared, script string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(shared, "bin", "cordon-sidecar"), "run", "--grace", "30s",
		"--agent-socket", filepath.Join(shared, "run", "agent.sock"), "--", "/bin/sh", "-c", script)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run job: %v", err)
	}
	return stdout.String(), stderr.String(), code
}

func writeDeclaration(t *testing.T, decl string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "datasets.json")
	if err := os.WriteFile(p, []byte(decl), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRunControl is issues 6 and 9 on the sidecar side, against the
// dispatcher's real handlers: a job gets its scoped credentials from the
// agent's loopback endpoint (and only with the token, which its output
// never shows); a run refused for a missing PII grant or by its org's
// quota never starts and its stderr says why; a termination order stops a
// job that ignores SIGTERM within seconds, and the end is recorded.
func TestRunControl(t *testing.T) {
	rc := startRunControl(t)

	t.Run("scoped credentials", func(t *testing.T) {
		shared, a := rc.agentFor(t, "acme", "block_follower", "run-creds-1", "--datasets-file",
			writeDeclaration(t, `{"inputs": [{"location": "s3://trace-data/acme/blocks/"}], "outputs": [{"location": "s3://trace-data/acme/alerts/"}]}`))
		stdout, stderr, code := job(t, shared, `
echo "tok=$AWS_CONTAINER_AUTHORIZATION_TOKEN"
curl -s -o /dev/null -w 'without=%{http_code}\n' "$AWS_CONTAINER_CREDENTIALS_FULL_URI"
curl -s -w '\nwith=%{http_code}\n' -H "Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN" "$AWS_CONTAINER_CREDENTIALS_FULL_URI"
env | grep -c '^AWS_ACCESS_KEY_ID=' || true`)
		if code != 0 {
			t.Fatalf("job exit %d, stderr %q", code, stderr)
		}
		for _, want := range []string{"tok=[REDACTED:AWS_CONTAINER_AUTHORIZATION_TOKEN]", "without=401", "with=200", `"AccessKeyId":"`, `"Token":"`} {
			if !strings.Contains(stdout, want) {
				t.Errorf("job stdout %q: want %q in it", stdout, want)
			}
		}
		if err := a.stop(); err != nil {
			t.Fatalf("agent exit: %v", err)
		}
		logs := a.Logs()
		if strings.Contains(logs, "SecretAccessKey") || strings.Contains(logs, "dispatcher-secret") {
			t.Errorf("agent logs show credentials:\n%s", logs)
		}
		if n := rc.count(`SELECT count(*) FROM audit_events WHERE event_type = 'CREDENTIALS_ISSUED' AND org_id = 'acme'`); n != 1 {
			t.Errorf("CREDENTIALS_ISSUED events: got %d, want 1", n)
		}
	})

	t.Run("PII without a grant", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "started")
		shared, _ := rc.agentFor(t, "acme", "block_follower", "run-pii-1", "--datasets-file",
			writeDeclaration(t, `{"inputs": [{"location": "s3://trace-data/acme/users/emails/", "pii": true}]}`))
		_, stderr, code := job(t, shared, "touch "+marker)
		if code != 75 || !strings.Contains(stderr, "cordon: run refused: ") || !strings.Contains(stderr, "pii_grant_missing") {
			t.Fatalf("job: exit %d, stderr %q; want 75 and the refusal with pii_grant_missing", code, stderr)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the refused job ran")
		}
		if n := rc.count(`SELECT count(*) FROM audit_events WHERE event_type = 'CREDENTIALS_REFUSED' AND org_id = 'acme'`); n != 1 {
			t.Errorf("CREDENTIALS_REFUSED events: got %d, want 1", n)
		}
		// Admitted first, so its slot was given back.
		if n := rc.count(`SELECT count(*) FROM run_admissions WHERE run_id = 'run-pii-1' AND ended_at IS NOT NULL`); n != 1 {
			t.Errorf("ended admissions of the refused run: got %d, want 1", n)
		}
	})

	t.Run("org quota", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rc.adm.SetQuota(ctx, "beta", 0, 0); err != nil {
			t.Fatal(err)
		}
		marker := filepath.Join(t.TempDir(), "started")
		shared, _ := rc.agentFor(t, "beta", "etl", "run-quota-1")
		_, stderr, code := job(t, shared, "touch "+marker)
		if code != 75 || !strings.Contains(stderr, "cordon: run refused: ") {
			t.Fatalf("job: exit %d, stderr %q; want 75 and the refusal", code, stderr)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the refused job ran")
		}
		if n := rc.count(`SELECT count(*) FROM audit_events WHERE event_type = 'RUN_REFUSED' AND org_id = 'beta'`); n != 1 {
			t.Errorf("RUN_REFUSED events: got %d, want 1", n)
		}
	})

	t.Run("termination order", func(t *testing.T) {
		shared, a := rc.agentFor(t, "acme", "block_follower", "run-term-1", "--heartbeat-interval", "200ms")
		type result struct {
			stderr string
			code   int
		}
		done := make(chan result, 1)
		go func() {
			_, stderr, code := job(t, shared, `trap '' TERM; sleep 60`)
			done <- result{stderr, code}
		}()
		// Wait until the job runs (admitted, env handed out).
		for deadline := time.Now().Add(15 * time.Second); !strings.Contains(a.Logs(), `"msg":"env handed out"`); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("job did not start:\n%s", a.Logs())
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ordered := time.Now()
		if ok, err := rc.adm.OrderTermination(ctx, "acme", "run-term-1", "anomaly", "egress far above the baseline", nil); err != nil || !ok {
			t.Fatalf("OrderTermination: %v, %v", ok, err)
		}
		var r result
		select {
		case r = <-done:
		case <-time.After(admission.TerminationGrace + 10*time.Second):
			t.Fatalf("job still running %s after the order:\n%s", time.Since(ordered), a.Logs())
		}
		took := time.Since(ordered)
		t.Logf("job stopped %s after the order (grace %s)", took.Round(10*time.Millisecond), admission.TerminationGrace)
		if r.code != 128+int(syscall.SIGKILL) {
			t.Errorf("job exit: got %d, want %d (SIGKILL: it ignored SIGTERM)", r.code, 128+int(syscall.SIGKILL))
		}
		if !strings.Contains(r.stderr, "egress far above the baseline") {
			t.Errorf("job stderr %q: want the order's reason", r.stderr)
		}
		if took < admission.TerminationGrace {
			t.Errorf("job killed %s after the order, before the %s grace", took, admission.TerminationGrace)
		}
		d := &dispatcher{t: t, dbURL: rc.dbURL, logs: a.Logs}
		d.waitCount("the run's end", 1, `SELECT count(*) FROM run_admissions WHERE run_id = 'run-term-1'
			AND end_reason = 'terminated' AND exit_code = 137`)
		d.waitCount("RUN_TERMINATED with SIGKILL", 1, `SELECT count(*) FROM audit_events WHERE event_type = 'RUN_TERMINATED'
			AND org_id = 'acme' AND metadata->>'signal' = 'SIGKILL'`)
	})
}
