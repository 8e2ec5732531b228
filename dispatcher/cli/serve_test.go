package cli_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/cli"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/dispatcher/userapi"
	"github.com/cordon-dev/cordon/dispatcher/webui"
	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/fakeaws"
	"github.com/cordon-dev/cordon/test/jwks"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

const dataRole = "arn:aws:iam::123456789012:role/cordon-data-acme"

// TestServeEverything runs cli.Serve with every part on (real Postgres,
// a real Workload API, a real OIDC issuer, a wire-compatible STS) and
// walks one run through it as a sidecar, then reads it back as users of
// two orgs, then stops it and checks nothing is left running.
func TestServeEverything(t *testing.T) {
	ctx, cancelTest := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancelTest()
	db := pgtest.Shared(t).NewDatabase(t)
	if code, out := run(t, "migrate", "--db", db); code != 0 {
		t.Fatalf("migrate: exit %d %s", code, out)
	}
	su, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := su.Exec(ctx, "INSERT INTO orgs (org_id) VALUES ('acme'), ('globex')"); err != nil {
		t.Fatal(err)
	}
	su.Close(ctx)

	// The dispatcher's SVID comes from a real Workload API server.
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
	wl, err := spiffedev.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	wsCtx, stopWS := context.WithCancel(ctx)
	wsDone := make(chan error, 1)
	go func() { wsDone <- ws.Serve(wsCtx, wl) }()

	is, err := jwks.New()
	if err != nil {
		t.Fatal(err)
	}
	fake := fakeaws.NewSTS()
	fake.AllowRoles(dataRole)
	stsSrv := httptest.NewServer(fake)

	alDir := t.TempDir()
	example, err := os.ReadFile("../../internal/allowlist/testdata/valid/design_example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(alDir, "acme.yaml"), example, 0o600); err != nil {
		t.Fatal(err)
	}

	userCert, userKey, userRoots := selfSigned(t)

	ready := make(chan cli.Addrs, 1)
	serveCtx, stopServe := context.WithCancel(ctx)
	serveDone := make(chan error, 1)
	go func() {
		serveDone <- cli.Serve(serveCtx, cli.ServeConfig{
			Database: db, TrustDomain: "cordon.test", WorkloadAPI: "unix://" + sock,
			Listen: "127.0.0.1:0", UserListen: "127.0.0.1:0", Metrics: "127.0.0.1:0",
			DataRoleARNTemplate: "arn:aws:iam::123456789012:role/cordon-data-{org}",
			DatasetsRoots:       []string{"s3://trace-data/{org}/"},
			STSEndpoint:         stsSrv.URL, STSRegion: "us-east-1",
			STSCredentials: awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", ""),
			OIDCIssuer:     is.URL(), OIDCAudiences: []string{jwks.DefaultAudience}, UserTLSCert: userCert, UserTLSKey: userKey,
			Allowlists: alDir, AnomalyEvery: 200 * time.Millisecond, ShutdownTimeout: 10 * time.Second,
			Ready: func(a cli.Addrs) { ready <- a },
		})
	}()
	var addrs cli.Addrs
	select {
	case addrs = <-ready:
	case err := <-serveDone:
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve not ready after 30s")
	}

	// As the sidecar of acme/etl.
	jobID, _ := ca.JobID("acme", "etl")
	svid, err := ca.MintX509SVID(jobID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A config per client: an HTTP/2 transport adds "h2" to the
	// config's NextProtos, which would break an HTTP/1 client sharing it.
	tlsc := func() *tls.Config {
		return mtls.ClientConfig(svid, ca.Bundle(), dispatcherID)
	}
	base := "https://" + addrs.Sidecar
	const runID = "run-everything-1"

	adm, err := admit.New(base, tlsc(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := adm.Admit(ctx, runID); err != nil || !d.Admitted {
		t.Fatalf("admit: got %+v, %v; want admitted", d, err)
	}
	ing := ingestclient.New(base, tlsc())
	var evs []audit.Event
	for range 3 {
		evs = append(evs, audit.Event{
			Timestamp: time.Now(), EventType: "JOB_STARTED", EventID: audit.NewID(),
			Actor:    audit.Actor{Type: audit.ActorJob, ID: jobID.String()},
			Resource: audit.Resource{Type: "JOB", ID: "etl", TenantID: "acme"}, Action: "START", Result: audit.ResultSuccess,
		})
	}
	if res, err := ing.SendEvents(ctx, evs); err != nil || res.Stored != len(evs) {
		t.Fatalf("ingest events: got %+v, %v; want %d stored", res, err, len(evs))
	}
	exit := 0
	rep := usage.Report{
		ReportID: "usg_" + uuid.Must(uuid.NewV7()).String(), Org: "acme", Job: "etl", RunID: runID, Final: true,
		StartedAt: time.Now().Add(-time.Minute), EndedAt: time.Now(), ExitCode: &exit,
		CPUUserSeconds: 12, CPUSystemSeconds: 3, MaxRSSBytes: 1 << 20, WallSeconds: 60, Enforcement: "network-only",
	}
	if res, err := ing.SendUsage(ctx, []usage.Report{rep}); err != nil || res.Stored != 1 {
		t.Fatalf("ingest usage: got %+v, %v; want 1 stored", res, err)
	}

	sidecarHTTP := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsc()}, Timeout: 10 * time.Second}
	body := `{"run_id":"` + runID + `","datasets":{"inputs":[{"location":"s3://trace-data/acme/blocks/"}],"outputs":[]}}`
	resp, err := sidecarHTTP.Post(base+credapi.Path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var cred credapi.Response
	json.NewDecoder(resp.Body).Decode(&cred)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || cred.AccessKeyID == "" || cred.SessionToken == "" {
		t.Fatalf("credentials: got %d with key %q, want 200 with credentials", resp.StatusCode, cred.AccessKeyID)
	}
	if req, ok := fake.LastRequest(); !ok || req.RoleARN != dataRole {
		t.Errorf("STS saw %+v, want AssumeRole into %s", req, dataRole)
	}
	if _, err := adm.Heartbeat(ctx, runID); err != nil {
		t.Errorf("heartbeat: %v", err)
	}
	if err := adm.Finish(ctx, runID, admit.FinishRequest{ExitCode: &exit}); err != nil {
		t.Errorf("finish: %v", err)
	}
	adm.Close()
	ing.Close()
	sidecarHTTP.CloseIdleConnections()

	// As users.
	userBase := "https://" + addrs.User
	userHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: userRoots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	token := func(org string) string {
		tok, err := is.Mint(is.Claims("admin-of-"+org, org, "admin"), jwks.MintOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	get := func(path, tok string, v any) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", userBase+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := userHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if v != nil && resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
		}
		return resp.StatusCode
	}
	ids := func(p userapi.AuditPage) map[string]bool {
		m := map[string]bool{}
		for _, e := range p.Items {
			m[e.EventID] = true
		}
		return m
	}
	acme, globex := token("acme"), token("globex")
	var page userapi.AuditPage
	if code := get("/api/v1/audit-events?limit=500", acme, &page); code != http.StatusOK {
		t.Fatalf("acme audit events: got %d, want 200", code)
	}
	for _, ev := range evs {
		if !ids(page)[ev.EventID] {
			t.Errorf("acme audit events: %s missing from %d items", ev.EventID, len(page.Items))
		}
	}
	var types []string
	for _, e := range page.Items {
		types = append(types, e.EventType)
	}
	for _, want := range []string{admission.EventRunAdmitted} {
		if !strings.Contains(strings.Join(types, ","), want) {
			t.Errorf("acme audit events: types %v, want one %s", types, want)
		}
	}
	page = userapi.AuditPage{}
	if code := get("/api/v1/audit-events?limit=500", globex, &page); code != http.StatusOK {
		t.Fatalf("globex audit events: got %d, want 200", code)
	}
	for _, ev := range evs {
		if ids(page)[ev.EventID] {
			t.Errorf("globex sees acme's event %s", ev.EventID)
		}
	}
	var u userapi.Usage
	if code := get("/api/v1/usage", acme, &u); code != http.StatusOK || u.Org.Runs != 1 || u.Org.CPUSeconds != 15 {
		t.Errorf("acme usage: got %d %+v, want 200 with 1 run of 15 CPU seconds", code, u.Org)
	}
	var gu userapi.Usage
	if code := get("/api/v1/usage", globex, &gu); code != http.StatusOK || gu.Org.Runs != 0 {
		t.Errorf("globex usage: got %d %+v, want 200 with no runs", code, gu.Org)
	}
	var lists map[string]any
	if code := get("/api/v1/allowlists", acme, &lists); code != http.StatusOK || !strings.Contains(mustJSON(lists), "block_follower") {
		t.Errorf("acme allowlists: got %d %s, want 200 naming block_follower", code, mustJSON(lists))
	}
	if code := get("/api/v1/audit-events", "not-a-token", nil); code != http.StatusUnauthorized {
		t.Errorf("bad token: got %d, want 401", code)
	}

	// An org admin's settings, through the real admission service: the
	// quota is in force at the next admission; a writer may not change it.
	put := func(path, tok, body string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "PUT", userBase+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := userHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	writerTok, err := is.Mint(is.Claims("writer-of-acme", "acme", "writer"), jwks.MintOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if code := put("/api/v1/admin/quota", writerTok, `{"max_concurrent_runs":5,"max_runs_per_hour":5}`); code != http.StatusForbidden {
		t.Errorf("writer sets quota: got %d, want 403", code)
	}
	if code := put("/api/v1/admin/quota", acme, `{"max_concurrent_runs":0,"max_runs_per_hour":10}`); code != http.StatusOK {
		t.Errorf("admin sets quota: got %d, want 200", code)
	}
	adm2, err := admit.New(base, tlsc(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := adm2.Admit(ctx, "run-everything-2"); err != nil || d.Admitted {
		t.Errorf("admit with a quota of 0 concurrent runs: got %+v, %v; want refused", d, err)
	}
	adm2.Close()
	if code := put("/api/v1/admin/anomaly-policy", acme, `{"policy":"terminate"}`); code != http.StatusOK {
		t.Errorf("admin sets anomaly policy: got %d, want 200", code)
	}

	// Those changes are audited in acme's store (asynchronously, through
	// the user side's audit queue).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var changes userapi.AuditPage
		get("/api/v1/audit-events?event_type="+userapi.EventSettingsChanged, acme, &changes)
		if len(changes.Items) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("settings changes in the audit store: got %d, want 2", len(changes.Items))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The web UI: log in with the token, then the page with the cookie.
	resp, err = userHTTP.PostForm(userBase+"/ui/login", url.Values{"token": {acme}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == webui.CookieName {
			cookie = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == nil || !cookie.Secure {
		t.Fatalf("login: got %d with cookie %v, want 303 with a Secure %s", resp.StatusCode, cookie, webui.CookieName)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", userBase+"/ui/", nil)
	req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	resp, err = userHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page2, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page2, []byte("etl")) {
		t.Errorf("GET /ui/: got %d (%d bytes), want 200 mentioning job etl", resp.StatusCode, len(page2))
	}
	userHTTP.CloseIdleConnections()

	// One registry for all.
	resp, err = http.Get("http://" + addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	for _, m := range []string{"cordon_dispatcher_userapi_requests_total", "go_goroutines"} {
		if !bytes.Contains(metrics, []byte(m)) {
			t.Errorf("/metrics: %s missing", m)
		}
	}

	stopServe()
	select {
	case err := <-serveDone:
		if err != nil {
			t.Errorf("serve returned %v after cancel, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve still running 20s after cancel")
	}
	stopWS()
	<-wsDone
	stsSrv.Close()
	is.Close()
	goleak.VerifyNone(t)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key,
// and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dispatcher users"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "user.crt"), filepath.Join(dir, "user.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// TestServeRefusesToStart: a start that cannot work fails at once, with
// the flag to fix, and leaves nothing running.
func TestServeRefusesToStart(t *testing.T) {
	empty := t.TempDir()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"empty allowlist directory", []string{"serve", "--db", "postgres://x", "--allowlists", empty}, "--allowlists"},
		{"cursor key too short", []string{"serve", "--db", "postgres://x", "--user-listen", ":0", "--oidc-issuer", "https://i", "--oidc-audience", "a",
			"--user-insecure-http", "--cursor-key-file", writeFile(t, "short")}, "--cursor-key-file"},
		{"user side without TLS", []string{"serve", "--db", "postgres://x", "--user-listen", ":0", "--oidc-issuer", "https://i", "--oidc-audience", "a"}, "--user-tls-cert"},
		{"datasets without a role", []string{"serve", "--db", "postgres://x", "--datasets-root", "s3://b/{org}/"}, "--data-role-arn-template"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(t, tc.args...)
			if code != cli.ExitError || !strings.Contains(out, tc.want) {
				t.Errorf("got exit %d %q, want exit %d naming %s", code, out, cli.ExitError, tc.want)
			}
		})
	}
	goleak.VerifyNone(t)
}

func TestServeCheck(t *testing.T) {
	alDir := t.TempDir()
	example, err := os.ReadFile("../../internal/allowlist/testdata/valid/design_example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(alDir, "acme.yaml"), example, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key, _ := selfSigned(t)
	user := []string{"--user-listen", ":0", "--oidc-issuer", "https://i", "--oidc-audience", "a"}
	cases := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"good", append([]string{"--allowlists", alDir, "--user-tls-cert", cert, "--user-tls-key", key,
			"--cursor-key-file", writeFile(t, strings.Repeat("k", 32))}, user...), cli.ExitOK, "ok"},
		{"key is not the certificate's", append([]string{"--user-tls-cert", cert, "--user-tls-key", cert}, user...), cli.ExitError, "--user-tls-cert"},
		{"broken allowlist", []string{"--allowlists", filepath.Dir(writeFile(t, "x"))}, cli.ExitError, "--allowlists"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(t, append([]string{"serve", "--check", "--db", "postgres://nowhere.invalid/x"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(out, tc.want) {
				t.Errorf("got exit %d %q, want exit %d containing %q", code, out, tc.wantCode, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
