package credapi_test

import (
	"bytes"
	"context"
	"encoding/json"
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
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/credsource"
	"github.com/cordon-dev/cordon/test/fakeaws"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

const (
	td          = "cordon.test"
	roleARN     = "arn:aws:iam::123456789012:role/cordon-data-{org}"
	datasetRoot = "s3://trace-data/{org}/"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer collects logs written concurrently.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dispatcher is the credentials endpoint as cordon-dispatcher serves it:
// real Postgres, the real STS client against the fake STS, mTLS.
type dispatcher struct {
	t        *testing.T
	ca       *spiffedev.CA
	serverID spiffeid.ID
	dbURL    string
	grants   *credapi.PGGrants
	fake     *fakeaws.STS
	stsURL   string
	base     string // https://127.0.0.1:port
	logs     *syncBuffer
	reg      *prometheus.Registry
}

func newSTSClient(t *testing.T, url string) *sts.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return sts.New(sts.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(url), HTTPClient: &http.Client{Transport: tr},
		Credentials:      awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", ""),
		RetryMaxAttempts: 1, // a test sees each STS answer as it is
	})
}

func startDispatcher(t *testing.T) *dispatcher {
	t.Helper()
	ca, err := spiffedev.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctxT(t), url, nil); err != nil {
		t.Fatal(err)
	}
	store, err := auditstore.Open(ctxT(t), url, auditstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	grants, err := credapi.OpenGrants(ctxT(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(grants.Close)

	fake := fakeaws.NewSTS()
	fake.AllowRoles("arn:aws:iam::123456789012:role/cordon-data-acme")
	stsSrv := httptest.NewServer(fake)
	t.Cleanup(stsSrv.Close)

	// The client cordon-dispatcher builds from --sts-endpoint.
	stsClient, err := credapi.NewSTSClient(ctxT(t), credapi.STSConfig{Endpoint: stsSrv.URL, Region: "us-east-1",
		Credentials: awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", "")})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	h, err := credapi.New(credapi.Config{
		Minter: credentials.Config{
			RoleARNTemplate: roleARN,
			Confinement:     datasets.Confinement{RootTemplates: []string{datasetRoot}},
		},
		STS:         stsClient,
		Grants:      grants,
		Audit:       store,
		TrustDomain: ca.TrustDomain(),
		Registry:    reg,
		Log:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The dispatcher's SPIFFE ID as dispatcher/ingest's tests use it.
	serverID := spiffeid.RequireFromSegments(ca.TrustDomain(), "dispatcher")
	svid, err := ca.MintX509SVID(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST "+credapi.Path, h)
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
	return &dispatcher{t: t, ca: ca, serverID: serverID, dbURL: url, grants: grants, fake: fake,
		stsURL: stsSrv.URL, base: "https://" + ln.Addr().String(), logs: logs, reg: reg}
}

// source is what cordon-sidecar agent builds: a credsource.Source with the
// job's SVID, authorising only the dispatcher's SPIFFE ID.
func (d *dispatcher) source(org, job, run string, decl datasets.Declaration) *credsource.Source {
	d.t.Helper()
	id, err := d.ca.JobID(org, job)
	if err != nil {
		d.t.Fatal(err)
	}
	svid, err := d.ca.MintX509SVID(id, time.Hour)
	if err != nil {
		d.t.Fatal(err)
	}
	src, err := credsource.New(credsource.Config{
		URL: d.base, TLS: mtls.ClientConfig(svid, d.ca.Bundle(), d.serverID), RunID: run, Declaration: decl,
	})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(src.Close)
	return src
}

// serveCredentials primes a credserver backed by src and serves it on
// loopback, as the agent does before it starts the job; it returns the
// job's two environment variables, or Prime's error.
func serveCredentials(t *testing.T, src credserver.Source) ([]string, error) {
	t.Helper()
	srv, err := credserver.New(credserver.Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Prime(ctxT(t)); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("credserver: %v", err)
		}
	})
	return srv.Env(ln.Addr())
}

// runJobProcess starts this test binary as a job (runJob in main_test.go)
// with only env, no AWS credentials, no config files, no instance metadata.
func runJobProcess(t *testing.T, stsURL string, env []string) (string, error) {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append([]string{
		jobEnv + "=1",
		"HOME=" + home,
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_STS=" + stsURL,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_MAX_ATTEMPTS=1",
	}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", errors.Join(err, errors.New(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// auditRow is one stored audit event, read as the superuser.
type auditRow struct {
	org, eventType, resourceID, actorID, result string
	metadata                                    map[string]any
}

func (d *dispatcher) auditRows(run string) []auditRow {
	d.t.Helper()
	c, err := pgx.Connect(ctxT(d.t), d.dbURL)
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close(context.Background())
	rows, err := c.Query(ctxT(d.t), `SELECT org_id, event_type, resource_id, actor_id, result, metadata::text
		FROM audit_events WHERE resource_id = $1 ORDER BY ts, seq`, run)
	if err != nil {
		d.t.Fatal(err)
	}
	var out []auditRow
	for rows.Next() {
		var r auditRow
		var meta string
		if err := rows.Scan(&r.org, &r.eventType, &r.resourceID, &r.actorID, &r.result, &meta); err != nil {
			d.t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(meta), &r.metadata); err != nil {
			d.t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		d.t.Fatal(err)
	}
	return out
}

var scoped = datasets.Declaration{
	Inputs:  []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}},
	Outputs: []datasets.Dataset{{Location: "s3://trace-data/acme/alerts/"}},
}

var withPII = datasets.Declaration{
	Inputs: []datasets.Dataset{
		{Location: "s3://trace-data/acme/blocks/"},
		{Location: "s3://trace-data/acme/users/emails/", PII: true},
	},
}

// TestJobGetsScopedCredentialsThroughTheWholeChain is the check:
// dispatcher endpoint over mTLS → credsource → credserver on loopback → a
// job using only the SDK's default chain, which signs a request with the
// scoped credentials; the fake STS saw exactly the run's session policy,
// and the issuance is in the audit log.
func TestJobGetsScopedCredentialsThroughTheWholeChain(t *testing.T) {
	d := startDispatcher(t)
	env, err := serveCredentials(t, d.source("acme", "alerts", "run-1", scoped))
	if err != nil {
		t.Fatalf("Prime: %v", err)
	}
	arn, err := runJobProcess(t, d.stsURL, env)
	if err != nil {
		t.Fatalf("job: %v", err)
	}
	if want := "arn:aws:sts::123456789012:assumed-role/cordon-data-acme/cordon.acme.alerts.run-1"; arn != want {
		t.Fatalf("job ran as %q, want %q", arn, want)
	}

	reqs := d.fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("got %d AssumeRole calls, want 1", len(reqs))
	}
	policy, err := credentials.SessionPolicy(scoped)
	if err != nil {
		t.Fatal(err)
	}
	got := reqs[0]
	for _, c := range []struct{ name, got, want string }{
		{"policy", got.Policy, string(policy)},
		{"role", got.RoleARN, "arn:aws:iam::123456789012:role/cordon-data-acme"},
		{"session name", got.RoleSessionName, "cordon.acme.alerts.run-1"},
		{"source identity", got.SourceIdentity, "acme.alerts"},
		{"org tag", got.Tags["cordon-org"], "acme"},
	} {
		if c.got != c.want {
			t.Errorf("AssumeRole %s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	calls := d.fake.CallerIdentityCalls()
	if len(calls) != 1 {
		t.Fatalf("got %d signed calls, want 1", len(calls))
	}
	if issued, ok := d.fake.Issued(calls[0].AccessKeyID); !ok || issued.Request.Policy != string(policy) {
		t.Fatalf("job signed with %s, not with credentials minted under the run's policy", calls[0].AccessKeyID)
	}

	rows := d.auditRows("run-1")
	if len(rows) != 1 || rows[0].eventType != credentials.EventIssued || rows[0].org != "acme" ||
		rows[0].actorID != "spiffe://cordon.test/org/acme/job/alerts" {
		t.Fatalf("got audit rows %+v, want one CREDENTIALS_ISSUED in acme by the job's SPIFFE ID", rows)
	}
	issued, _ := d.fake.Issued(calls[0].AccessKeyID)
	if logs := d.logs.String(); strings.Contains(logs, issued.SecretAccessKey) || strings.Contains(logs, issued.SessionToken) {
		t.Fatal("the dispatcher's logs hold the issued credentials")
	}
	if meta, _ := json.Marshal(rows[0].metadata); bytes.Contains(meta, []byte(issued.SecretAccessKey)) {
		t.Fatal("the audit event holds the issued secret")
	}
}

// TestPIIWithoutGrantDoesNotStartAndIsAudited: the run's Prime fails with
// the dispatcher's reason, STS is never called, and the refusal is in the
// org's audit chain. With a grant on a parent prefix the same run is
// issued credentials and the issuance names the grant.
func TestPIIWithoutGrantDoesNotStartAndIsAudited(t *testing.T) {
	d := startDispatcher(t)

	_, err := serveCredentials(t, d.source("acme", "alerts", "run-pii-1", withPII))
	var refused *credsource.RefusedError
	if !errors.As(err, &refused) || !refused.PIIGrantMissing() || refused.Status != http.StatusForbidden {
		t.Fatalf("Prime: got %v, want a 403 pii_grant_missing *credsource.RefusedError", err)
	}
	if want := []string{"s3://trace-data/acme/users/emails/"}; len(refused.Missing) != 1 || refused.Missing[0] != want[0] {
		t.Fatalf("missing: got %v, want %v", refused.Missing, want)
	}
	if !strings.Contains(err.Error(), "no PII grant for s3://trace-data/acme/users/emails/") {
		t.Fatalf("Prime's error does not show the reason: %v", err)
	}
	if n := len(d.fake.Requests()); n != 0 {
		t.Fatalf("got %d AssumeRole calls, want none", n)
	}
	rows := d.auditRows("run-pii-1")
	if len(rows) != 1 || rows[0].eventType != credentials.EventRefused || rows[0].org != "acme" ||
		rows[0].result != "DENIED" || rows[0].metadata["reason"] != "pii_grant_missing" {
		t.Fatalf("got audit rows %+v, want one DENIED CREDENTIALS_REFUSED (pii_grant_missing) in acme", rows)
	}

	// A grant for another job of the org does not count.
	if err := d.grants.AddGrant(ctxT(t), credapi.Grant{Org: "acme", ID: "grant-other", Job: "other",
		Location: "s3://trace-data/acme/users/", GrantedBy: "dpo@acme.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := serveCredentials(t, d.source("acme", "alerts", "run-pii-2", withPII)); !errors.As(err, &refused) {
		t.Fatalf("Prime with another job's grant: got %v, want a refusal", err)
	}

	if err := d.grants.AddGrant(ctxT(t), credapi.Grant{Org: "acme", ID: "grant-7", Job: "alerts",
		Location: "s3://trace-data/acme/users/", GrantedBy: "dpo@acme.example",
		ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := serveCredentials(t, d.source("acme", "alerts", "run-pii-3", withPII)); err != nil {
		t.Fatalf("Prime with a grant: %v", err)
	}
	rows = d.auditRows("run-pii-3")
	if len(rows) != 1 || rows[0].eventType != credentials.EventIssued {
		t.Fatalf("got audit rows %+v, want one CREDENTIALS_ISSUED", rows)
	}
	grants, _ := rows[0].metadata["grants"].(map[string]any)
	if grants["s3://trace-data/acme/users/emails/"] != "grant-7" {
		t.Fatalf("issuance grants: got %v, want s3://trace-data/acme/users/emails/ → grant-7", rows[0].metadata["grants"])
	}
	last, _ := d.fake.LastRequest()
	if !strings.Contains(last.Policy, "trace-data/acme/users/emails/") {
		t.Fatalf("the granted PII prefix is not in the session policy: %s", last.Policy)
	}
}

// TestSidecarTalksOnlyToTheDispatcher: a sidecar authorising another
// SPIFFE ID than the server's refuses the connection (nothing is sent to
// an impostor), and a caller from a foreign trust domain is refused by the
// server's handshake; neither mints.
func TestSidecarTalksOnlyToTheDispatcher(t *testing.T) {
	d := startDispatcher(t)
	id, _ := d.ca.JobID("acme", "alerts")
	svid, err := d.ca.MintX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	impostor := spiffeid.RequireFromSegments(d.ca.TrustDomain(), "not-the-dispatcher")
	src, err := credsource.New(credsource.Config{URL: d.base, TLS: mtls.ClientConfig(svid, d.ca.Bundle(), impostor),
		RunID: "run-x", Declaration: scoped})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var unavail *credsource.UnavailableError
	if _, err := src.Credentials(ctxT(t)); !errors.As(err, &unavail) || unavail.Status != 0 {
		t.Fatalf("against a server with another ID: got %v, want a handshake failure", err)
	}

	foreign, err := spiffedev.NewCA("evil.test")
	if err != nil {
		t.Fatal(err)
	}
	fid, _ := foreign.JobID("acme", "alerts")
	fsvid, err := foreign.MintX509SVID(fid, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The foreign caller trusts our bundle, so only the server's check of
	// the client certificate stands in its way.
	fsrc, err := credsource.New(credsource.Config{URL: d.base, TLS: mtls.ClientConfig(fsvid, d.ca.Bundle(), d.serverID),
		RunID: "run-y", Declaration: scoped})
	if err != nil {
		t.Fatal(err)
	}
	defer fsrc.Close()
	if _, err := fsrc.Credentials(ctxT(t)); !errors.As(err, &unavail) || unavail.Status != 0 {
		t.Fatalf("from a foreign trust domain: got %v, want a handshake failure", err)
	}
	if n := len(d.fake.Requests()); n != 0 {
		t.Fatalf("got %d AssumeRole calls, want none", n)
	}
}
