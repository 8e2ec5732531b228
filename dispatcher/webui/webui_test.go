package webui

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/userapi"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/test/jwks"
	"github.com/cordon-dev/cordon/test/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }

// xssHost is a denied destination and xssJob a job name (both come from
// jobs, through the sidecar) that would run script if not escaped.
const (
	xssHost = `<img src=x onerror="window.__xss=1">.evil.example:443`
	xssJob  = `<script>window.__xss=2</script>`
)

type env struct {
	srv  *httptest.Server
	is   *jwks.Issuer
	evID string // an event the audit search must find
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url := pgtest.Shared(t).NewDatabase(t)
	if _, err := auditstore.Migrate(ctx, url, nil); err != nil {
		t.Fatal(err)
	}
	su, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := su.Exec(ctx, "INSERT INTO orgs (org_id) VALUES ('acme'), ('globex')"); err != nil {
		t.Fatal(err)
	}
	su.Close(ctx)
	store, err := auditstore.Open(ctx, url, auditstore.Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	now := time.Now().UTC().Truncate(time.Minute)
	ev := func(org, typ, job, dest string, ago time.Duration) audit.Event {
		e := audit.Event{Timestamp: now.Add(-ago), EventType: typ, EventID: audit.NewID(),
			Actor:    audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.test/org/" + org + "/job/block_follower"},
			Resource: audit.Resource{Type: "EGRESS", ID: dest, TenantID: org}, Action: "CONNECT",
			Result: audit.ResultDenied, Metadata: map[string]any{"job": job}}
		return e
	}
	var acme []audit.Event
	for i := range 12 {
		acme = append(acme, ev("acme", "EGRESS_DENIED", "block_follower", "evil.example:443", time.Duration(i*2+1)*time.Hour))
	}
	acme = append(acme,
		ev("acme", "EGRESS_DENIED", "block_follower", "pastebin.example:443", 30*time.Minute),
		ev("acme", "EGRESS_DENIED", xssJob, xssHost, 45*time.Minute))
	found := ev("acme", "JOB_STARTED", "block_follower", "run-1", 10*time.Minute)
	found.Result = audit.ResultSuccess
	acme = append(acme, found)
	exit := 0
	rep := usage.Report{ReportID: "usg_1", Org: "acme", Job: "block_follower", RunID: "run-1", Final: true,
		StartedAt: now.Add(-3 * time.Hour), EndedAt: now.Add(-2 * time.Hour), ExitCode: &exit,
		CPUUserSeconds: 12.5, WallSeconds: 3600, MaxRSSBytes: 64 << 20, Denials: 14, Enforcement: "network-only",
		Egress: map[string]usage.Egress{"api.example.com:443": {BytesOut: 5 << 20, BytesIn: 80 << 20, Requests: 40}}}
	if _, err := store.Append(ctx, "acme", acme, []usage.Report{rep}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "globex", []audit.Event{ev("globex", "EGRESS_DENIED", "globex_job", "globex-secret.example:443", time.Hour)}, nil); err != nil {
		t.Fatal(err)
	}

	is, err := jwks.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(is.Close)
	v, err := oidc.New(ctx, oidc.Config{Issuer: is.URL(), Audiences: []string{jwks.DefaultAudience}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	auth, err := authn.New(authn.Options{Validator: v, Users: authn.NewPGUsers(pool)})
	if err != nil {
		t.Fatal(err)
	}
	set := &allowlist.Set{Files: map[string]*allowlist.File{"acme": {
		Org:          "acme",
		EndpointSets: map[string]*allowlist.EndpointSet{"main": {Name: "main", Entries: []allowlist.Entry{{Host: "api.example.com", Ports: []uint16{443}}}}},
		Jobs:         map[string]*allowlist.Job{"block_follower": {Name: "block_follower", Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce, Allow: []string{"main"}}},
	}}}
	api, err := userapi.New(userapi.Config{Pool: pool, Auth: auth, Allowlists: func() *allowlist.Set { return set },
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ui, err := New(Config{API: api, Auth: auth, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(ui.Handler())
	t.Cleanup(srv.Close)
	return &env{srv: srv, is: is, evID: found.EventID}
}

func (e *env) token(t *testing.T, role string) string {
	t.Helper()
	tok, err := e.is.Mint(e.is.Claims("sec-"+role, "acme", role), jwks.MintOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// client is a cookie-keeping HTTPS client of the test server.
func (e *env) client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	c := e.srv.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func TestHeadersLoginAndCSRF(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	resp, err := c.Get(e.srv.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/ui/login" {
		t.Errorf("no cookie: got %d to %q, want 303 to /ui/login", resp.StatusCode, resp.Header.Get("Location"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers: CSP %q, X-Frame-Options %q", csp, resp.Header.Get("X-Frame-Options"))
	}
	post := func(origin, token string) *http.Response {
		req, _ := http.NewRequest("POST", e.srv.URL+"/ui/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := post("https://evil.example", e.token(t, "admin")); r.StatusCode != 403 {
		t.Errorf("cross-origin login: got %d, want 403", r.StatusCode)
	}
	if r := post(e.srv.URL, "not-a-token"); r.StatusCode != 401 {
		t.Errorf("bad token: got %d, want 401", r.StatusCode)
	}
	r := post(e.srv.URL, e.token(t, "reader"))
	if r.StatusCode != 303 {
		t.Fatalf("login: got %d, want 303", r.StatusCode)
	}
	var ck *http.Cookie
	for _, k := range r.Cookies() {
		if k.Name == CookieName {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ui/" {
		t.Fatalf("cookie: got %+v, want HttpOnly, Secure, SameSite=Strict, Path=/ui/", ck)
	}
	for _, tc := range []struct {
		path string
		want int
	}{{"/ui/", 200}, {"/ui/allowlists", 200}, {"/ui/audit", 403}, {"/ui/?bogus=1", 400}} {
		resp, err := c.Get(e.srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("reader GET %s: got %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
}

// findChromium returns the Debian chromium binary, installing the package
// when it is missing and apt-get is there.
func findChromium(t *testing.T) string {
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if _, err := exec.LookPath("apt-get"); err == nil && os.Geteuid() == 0 {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "chromium")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("apt-get install chromium: %v\n%s", err, out)
		}
		if p, err := exec.LookPath("chromium"); err == nil {
			return p
		}
	}
	t.Skip("chromium not found and could not be installed (Debian package chromium)")
	return ""
}

// TestInBrowser logs in with a real token in headless Chromium and checks
// what the pages show, including that hostile names are rendered inert.
func TestInBrowser(t *testing.T) {
	bin := findChromium(t)
	e := newEnv(t)
	shots := os.Getenv("TEST_ARTIFACTS")
	if shots == "" {
		shots = t.TempDir()
	}
	shots = filepath.Join(shots, "webui")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	// Chromium's helper processes may still be writing its profile for a
	// moment after the browser exits, so the profile is removed with
	// retries rather than by t.TempDir's strict cleanup.
	profile, err := os.MkdirTemp("", "webui-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 20; i++ {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("could not remove the Chromium profile %s", profile)
	})
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		// CI runs tests as root, and Chromium refuses to start as root
		// with its sandbox on; the page is our own on loopback.
		chromedp.NoSandbox,
		chromedp.Flag("headless", "new"),
		chromedp.Flag("ignore-certificate-errors", true), // httptest's self-signed certificate
		chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(profile),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	shot := func(name string) chromedp.Action {
		return chromedp.ActionFunc(func(ctx context.Context) error {
			var buf []byte
			if err := chromedp.FullScreenshot(&buf, 100).Do(ctx); err != nil { // quality 100 means PNG
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644)
		})
	}
	var dots, topRows int
	var topText, xssText, auditText, allowText, usageText string
	var xss bool
	err = chromedp.Run(bctx,
		chromedp.Navigate(e.srv.URL+"/ui/"),
		chromedp.WaitVisible("#token", chromedp.ByID),
		shot("login"),
		chromedp.SetValue("#token", e.token(t, "admin"), chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("svg.chart", chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll("svg.chart circle").length`, &dots),
		chromedp.Evaluate(`document.querySelectorAll("#top-destinations tr").length - 1`, &topRows),
		chromedp.Text("#top-destinations", &topText, chromedp.ByQuery),
		chromedp.Text("#usage", &usageText, chromedp.ByQuery),
		chromedp.Evaluate(`window.__xss !== undefined || document.querySelector("#top-destinations img, #top-destinations script") !== null`, &xss),
		shot("overview"),
		// The search form, as a person would use it.
		chromedp.Click(`a[href="/ui/audit"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#search", chromedp.ByID),
		chromedp.SetValue(`input[name="event_type"]`, "JOB_STARTED", chromedp.ByQuery),
		chromedp.Click("#search", chromedp.ByID),
		// The unfiltered page listed denials; wait for the answer that has none.
		chromedp.WaitNotPresent(`#audit tr[data-event-type="EGRESS_DENIED"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#audit tr[data-event-type="JOB_STARTED"]`, chromedp.ByQuery),
		chromedp.Text("#audit", &auditText, chromedp.ByID),
		shot("audit"),
		chromedp.Navigate(e.srv.URL+"/ui/allowlists"),
		chromedp.WaitVisible("main", chromedp.ByQuery),
		chromedp.Text("main", &allowText, chromedp.ByQuery),
		shot("allowlists"),
		chromedp.Navigate(e.srv.URL+"/ui/audit"),
		chromedp.WaitVisible("#audit", chromedp.ByID),
		chromedp.Text("#audit", &xssText, chromedp.ByID),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	t.Logf("screenshots in %s", shots)
	if dots != 24 {
		t.Errorf("chart: got %d points, want 24 (one per hour of the last day)", dots)
	}
	if topRows != 3 || !strings.Contains(topText, "evil.example:443") || !strings.Contains(topText, "pastebin.example:443") {
		t.Errorf("top destinations: got %d rows %q, want 3 with evil.example:443 and pastebin.example:443", topRows, topText)
	}
	if !strings.Contains(usageText, "block_follower") || !strings.Contains(usageText, "80.0 MiB") {
		t.Errorf("usage per job: got %q, want block_follower with 80.0 MiB in", usageText)
	}
	if xss {
		t.Error("the XSS payload in a host or job name ran or became markup")
	}
	if !strings.Contains(topText, xssHost) || !strings.Contains(topText, xssJob) {
		t.Errorf("hostile names: want them shown as text, got %q", topText)
	}
	if !strings.Contains(auditText, e.evID) || strings.Contains(auditText, "EGRESS_DENIED") {
		t.Errorf("audit search for JOB_STARTED: got %q, want only event %s", auditText, e.evID)
	}
	if strings.Contains(xssText+topText, "globex") {
		t.Error("a page shows globex's data to acme's admin")
	}
	if !strings.Contains(allowText, "block_follower") || !strings.Contains(allowText, "api.example.com") {
		t.Errorf("allowlists: got %q", allowText)
	}
	// Close the browser and wait for its process before the test ends.
	if err := chromedp.Cancel(bctx); err != nil {
		t.Logf("close the browser: %v", err)
	}
	acancel()
}

func TestBucketLabel(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{{time.Hour, "1h"}, {10 * time.Minute, "10m"}, {90 * time.Minute, "1h30m"}, {20 * time.Hour, "20h"}, {time.Minute, "1m"}} {
		if got := bucketLabel(tc.in); got != tc.want {
			t.Errorf("bucketLabel(%s): got %q, want %q", tc.in, got, tc.want)
		}
		if d, err := time.ParseDuration(bucketLabel(tc.in)); err != nil || d != tc.in {
			t.Errorf("bucketLabel(%s) = %q does not parse back: %v, %v", tc.in, bucketLabel(tc.in), d, err)
		}
	}
}
