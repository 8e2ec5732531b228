package credserver_test

import (
	"bytes"
	"context"
	"errors"
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

	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/test/fakeaws"
)

// minterSource is what the agent will do over mTLS, done in-process: ask
// the dispatcher's Minter for the run's credentials.
type minterSource struct {
	minter *credentials.Minter
	run    credentials.Run
}

func (s minterSource) Credentials(ctx context.Context) (credserver.Credentials, error) {
	c, err := s.minter.Mint(ctx, s.run)
	if err != nil {
		return credserver.Credentials{}, err
	}
	return credserver.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey,
		SessionToken: c.SessionToken, Expiration: c.Expiration, RoleARN: c.AssumedRoleARN}, nil
}

type noGrants struct{}

func (noGrants) PIIGrant(context.Context, string, string, string) (string, bool, error) {
	return "", false, nil
}

type recorder struct {
	mu     sync.Mutex // guards events
	events []audit.Event
}

func (r *recorder) Emit(ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

type world struct {
	fake   *fakeaws.STS
	stsURL string
	audit  *recorder
	minter *credentials.Minter
}

func newWorld(t *testing.T, lifetime time.Duration) *world {
	t.Helper()
	fake := fakeaws.NewSTS()
	fake.SetLifetime(lifetime)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := sts.New(sts.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(srv.URL), HTTPClient: &http.Client{Transport: tr},
		Credentials: awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", ""),
	})
	rec := &recorder{}
	m, err := credentials.NewMinter(credentials.Config{
		RoleARNTemplate: "arn:aws:iam::123456789012:role/cordon-data-{org}",
		Confinement:     datasets.Confinement{RootTemplates: []string{"s3://trace-data/{org}/"}},
	}, client, noGrants{}, credentials.WithAudit(rec))
	if err != nil {
		t.Fatal(err)
	}
	return &world{fake: fake, stsURL: srv.URL, audit: rec, minter: m}
}

// startServer primes and serves a credserver for run; it returns the
// server and the job's two env vars.
func startServer(t *testing.T, w *world, run credentials.Run) (*credserver.Server, []string) {
	t.Helper()
	srv, err := credserver.New(credserver.Config{
		Source:       minterSource{minter: w.minter, run: run},
		ExpiryMargin: 500 * time.Millisecond, RetryInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Prime(ctx); err != nil {
		t.Fatalf("Prime: %v", err)
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
			t.Errorf("Serve: %v", err)
		}
	})
	env, err := srv.Env(ln.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return srv, env
}

// runJob starts this test binary as a job (TestMain's runJob) with a
// cleared environment: only the given variables, no AWS credentials, no
// shared config files, no instance metadata.
func runJob(t *testing.T, w *world, env []string, d time.Duration) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append([]string{
		"CREDSERVER_TEST_JOB_FOR=" + d.String(),
		"HOME=" + home,
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_STS=" + w.stsURL,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_MAX_ATTEMPTS=1", // no retry may hide an expired-credentials error
	}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

var scoped = datasets.Declaration{
	Inputs:  []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}},
	Outputs: []datasets.Dataset{{Location: "s3://trace-data/acme/alerts/"}},
}

// TestSDKDefaultChainGetsRefreshedScopedCredentials: a plain SDK program
// gets the run's credentials through the default chain, signs with them
// (the fake STS verifies each signature against the secret it issued), and
// keeps working across several expiries without noticing. With 6s
// credentials and a 500ms margin, the refresh (at 3s) comes at least 1.5s
// before the job's SDK asks again (served expiry, truncated to seconds).
func TestSDKDefaultChainGetsRefreshedScopedCredentials(t *testing.T) {
	w := newWorld(t, 6*time.Second)
	run := credentials.Run{Org: "acme", Job: "alerts", RunID: "run-1", Declaration: scoped}
	_, env := startServer(t, w, run)

	stdout, stderr, err := runJob(t, w, env, 12*time.Second)
	if err != nil {
		t.Fatalf("job failed: %v\nstderr:\n%s", err, stderr)
	}
	wantARN := "arn:aws:sts::123456789012:assumed-role/cordon-data-acme/cordon.acme.alerts.run-1"
	lines := strings.Fields(stdout)
	if len(lines) < 20 {
		t.Fatalf("job made %d calls, want at least 20 over 12s", len(lines))
	}
	for _, l := range lines {
		if l != wantARN {
			t.Fatalf("job ran as %q, want %q", l, wantARN)
		}
	}
	policy, _ := credentials.SessionPolicy(scoped)
	keys := map[string]bool{}
	for _, c := range w.fake.CallerIdentityCalls() {
		keys[c.AccessKeyID] = true
		issued, ok := w.fake.Issued(c.AccessKeyID)
		if !ok || issued.Request.Policy != string(policy) {
			t.Fatalf("job signed with %s, not credentials minted with the run's session policy", c.AccessKeyID)
		}
	}
	if len(keys) < 3 {
		t.Fatalf("job used %d distinct credentials over 12s of 6s-lived ones, want at least 3 (refresh)", len(keys))
	}
}

// TestSDKWithoutTokenGets401: the same program without the token gets no
// credentials.
func TestSDKWithoutTokenGets401(t *testing.T) {
	w := newWorld(t, time.Hour)
	_, env := startServer(t, w, credentials.Run{Org: "acme", Job: "alerts", RunID: "run-2", Declaration: scoped})
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"no token", env[:1]},
		{"wrong token", []string{env[0], credserver.EnvAuthToken + "=" + strings.Repeat("x", 43)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runJob(t, w, tc.env, 0)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("job: got %v, want exit status 1\nstderr:\n%s", err, stderr)
			}
			if !strings.Contains(stderr, "Unauthorized: missing or wrong authorization token") { // the 401 body, as the SDK reports it
				t.Fatalf("job stderr does not show the 401 answer:\n%s", stderr)
			}
		})
	}
	if n := len(w.fake.CallerIdentityCalls()); n != 0 {
		t.Fatalf("got %d signed calls, want none", n)
	}
}

// TestPIIWithoutGrantNeverStarts: the run's first fetch is refused, so the
// agent does not start the job, and the refusal is audited.
func TestPIIWithoutGrantNeverStarts(t *testing.T) {
	w := newWorld(t, time.Hour)
	srv, err := credserver.New(credserver.Config{Source: minterSource{minter: w.minter, run: credentials.Run{
		Org: "acme", Job: "alerts", RunID: "run-3",
		Declaration: datasets.Declaration{Inputs: []datasets.Dataset{{Location: "s3://trace-data/acme/users/", PII: true}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Prime(ctx)
	var pe *credentials.PIIGrantError
	if !errors.As(err, &pe) {
		t.Fatalf("Prime: got %v, want a *credentials.PIIGrantError", err)
	}
	if n := len(w.fake.Requests()); n != 0 {
		t.Fatalf("got %d AssumeRole calls, want none", n)
	}
	w.audit.mu.Lock()
	defer w.audit.mu.Unlock()
	if len(w.audit.events) != 1 || w.audit.events[0].EventType != credentials.EventRefused || w.audit.events[0].Resource.ID != "run-3" {
		t.Fatalf("got audit events %+v, want one CREDENTIALS_REFUSED for run-3", w.audit.events)
	}
}
