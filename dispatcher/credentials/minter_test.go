package credentials

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/test/fakeaws"
)

// stsNameRE is STS's RoleSessionName constraint.
var stsNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// grantTable is an in-memory Grants for tests: grants[org/job/location] = ID.
type grantTable struct {
	grants map[string]string
	err    error
}

func (g grantTable) PIIGrant(_ context.Context, org, job, loc string) (string, bool, error) {
	if g.err != nil {
		return "", false, g.err
	}
	id, ok := g.grants[org+"/"+job+"/"+loc]
	return id, ok, nil
}

var _ Grants = grantTable{}

type recorder struct {
	mu     sync.Mutex // guards events
	events []audit.Event
}

func (r *recorder) Emit(ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

var testConfig = Config{
	RoleARNTemplate: "arn:aws:iam::123456789012:role/cordon-data-{org}",
	Confinement:     datasets.Confinement{RootTemplates: []string{"s3://trace-data/{org}/"}},
}

type env struct {
	fake   *fakeaws.STS
	minter *Minter
	audit  *recorder
}

func newEnv(t *testing.T, cfg Config, grants Grants) *env {
	t.Helper()
	fake := fakeaws.NewSTS()
	fake.AllowRoles("arn:aws:iam::123456789012:role/cordon-data-acme")
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	client := sts.New(sts.Options{
		HTTPClient:       &http.Client{Transport: tr},
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(srv.URL),
		Credentials:      awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", ""),
		RetryMaxAttempts: 1,
	})
	rec := &recorder{}
	m, err := NewMinter(cfg, client, grants, WithAudit(rec))
	if err != nil {
		t.Fatalf("NewMinter: %v", err)
	}
	return &env{fake: fake, minter: m, audit: rec}
}

func TestMintSendsExactlyTheScopedRequest(t *testing.T) {
	e := newEnv(t, testConfig, grantTable{})
	decl := datasets.Declaration{
		Inputs:  []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}, {Location: "arn:aws:s3:::trace-data/acme/txs/"}},
		Outputs: []datasets.Dataset{{Location: "s3://trace-data/acme/alerts/"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	creds, err := e.minter.Mint(ctx, Run{Org: "acme", Job: "block_follower", RunID: "run-1", RequestID: "req_1", Declaration: decl})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}

	req, ok := e.fake.LastRequest()
	if !ok {
		t.Fatal("the fake STS received no AssumeRole")
	}
	wantPolicy, _ := SessionPolicy(decl)
	checks := []struct{ name, got, want string }{
		{"policy", req.Policy, string(wantPolicy)},
		{"role", req.RoleARN, "arn:aws:iam::123456789012:role/cordon-data-acme"},
		{"session name", req.RoleSessionName, "cordon.acme.block_follower.run-1"},
		{"source identity", req.SourceIdentity, "acme.block_follower"},
		{"tag org", req.Tags["cordon-org"], "acme"},
		{"tag job", req.Tags["cordon-job"], "block_follower"},
		{"tag run", req.Tags["cordon-run"], "run-1"},
		{"signer", req.SignedBy, "AKIDDISPATCHER"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
	if req.DurationSeconds != 900 || len(req.Tags) != 3 {
		t.Errorf("got duration %d and %d tags, want 900 and 3", req.DurationSeconds, len(req.Tags))
	}

	issued, ok := e.fake.Issued(creds.AccessKeyID)
	if !ok || issued.SecretAccessKey != creds.SecretAccessKey || issued.SessionToken != creds.SessionToken || !issued.Expiration.Equal(creds.Expiration) {
		t.Fatalf("got credentials %v, want the ones the fake issued", creds)
	}
	if s := creds.String() + " " + strings.ReplaceAll(strings.ReplaceAll(strings.TrimSpace(creds.GoString()), "\n", ""), "\t", ""); strings.Contains(s, creds.SecretAccessKey) || strings.Contains(s, creds.SessionToken) {
		t.Fatalf("String/GoString leak the secret: %s", s)
	}

	evs := e.audit.all()
	if len(evs) != 1 {
		t.Fatalf("got %d audit events, want 1", len(evs))
	}
	ev := evs[0]
	if ev.EventType != EventIssued || ev.Result != audit.ResultSuccess || ev.Resource.TenantID != "acme" || ev.Resource.ID != "run-1" || ev.RequestID != "req_1" {
		t.Fatalf("got event %+v, want CREDENTIALS_ISSUED SUCCESS for acme run-1 req_1", ev)
	}
	if got, want := ev.Metadata["expiry"], creds.Expiration.Format(time.RFC3339); got != want {
		t.Errorf("audit expiry: got %v, want %v", got, want)
	}
	if got := ev.Metadata["inputs"].([]string); len(got) != 2 || got[1] != "s3://trace-data/acme/txs/" {
		t.Errorf("audit inputs: got %v, want both inputs in canonical form", got)
	}
	raw, _ := json.Marshal(ev)
	for _, secret := range []string{creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("audit event carries a credential: %s", raw)
		}
	}
}

func TestMintRefusals(t *testing.T) {
	piiDecl := datasets.Declaration{
		Inputs:  []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}, {Location: "s3://trace-data/acme/users/", PII: true}},
		Outputs: []datasets.Dataset{{Location: "s3://trace-data/acme/out/"}},
	}
	tests := []struct {
		name       string
		run        Run
		grants     grantTable
		stsFail    string
		wantErr    func(error) bool
		wantEvent  string // "" = no audit event
		wantResult string
		wantSTS    bool // whether AssumeRole must be called
		wantReason string
	}{
		{
			name: "pii without grant",
			run:  Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: piiDecl},
			wantErr: func(err error) bool {
				var pe *PIIGrantError
				return errors.As(err, &pe) && pe.Missing[0] == "s3://trace-data/acme/users/"
			},
			wantEvent: EventRefused, wantResult: audit.ResultDenied, wantReason: "pii_grant_missing",
		},
		{
			name:      "pii grant of another job does not count",
			run:       Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: piiDecl},
			grants:    grantTable{grants: map[string]string{"acme/other/s3://trace-data/acme/users/": "g1"}},
			wantErr:   func(err error) bool { var pe *PIIGrantError; return errors.As(err, &pe) },
			wantEvent: EventRefused, wantResult: audit.ResultDenied, wantReason: "pii_grant_missing",
		},
		{
			name:      "pii with grant",
			run:       Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: piiDecl},
			grants:    grantTable{grants: map[string]string{"acme/alerts/s3://trace-data/acme/users/": "grant_42"}},
			wantErr:   func(err error) bool { return err == nil },
			wantEvent: EventIssued, wantResult: audit.ResultSuccess, wantSTS: true,
		},
		{
			name:      "grant lookup fails",
			run:       Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: piiDecl},
			grants:    grantTable{err: errors.New("db down")},
			wantErr:   func(err error) bool { return err != nil && strings.Contains(err.Error(), "db down") },
			wantEvent: EventRefused, wantResult: audit.ResultFailure, wantReason: "grant_lookup_failed",
		},
		{
			name: "other org's data",
			run: Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: datasets.Declaration{
				Inputs: []datasets.Dataset{{Location: "s3://trace-data/globex/blocks/"}}}},
			wantErr:   func(err error) bool { return errors.Is(err, ErrInvalidRun) && errors.Is(err, datasets.ErrNotConfined) },
			wantEvent: EventRefused, wantResult: audit.ResultDenied, wantReason: "not_confined",
		},
		{
			name: "hostile location",
			run: Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: datasets.Declaration{
				Outputs: []datasets.Dataset{{Location: "s3://trace-data/acme/${aws:username}/"}}}},
			wantErr:   func(err error) bool { return errors.Is(err, ErrInvalidRun) },
			wantEvent: EventRefused, wantResult: audit.ResultDenied, wantReason: "invalid_declaration",
		},
		{
			name:      "bad org",
			run:       Run{Org: "acme/../globex", Job: "alerts", RunID: "r1", Declaration: piiDecl},
			wantErr:   func(err error) bool { return errors.Is(err, ErrInvalidRun) },
			wantEvent: EventRefused, wantResult: audit.ResultDenied, wantReason: "invalid_run",
		},
		{
			name:    "no datasets",
			run:     Run{Org: "acme", Job: "alerts", RunID: "r1"},
			wantErr: func(err error) bool { return errors.Is(err, ErrNoDatasets) },
		},
		{
			name: "sts denies",
			run: Run{Org: "acme", Job: "alerts", RunID: "r1", Declaration: datasets.Declaration{
				Inputs: []datasets.Dataset{{Location: "s3://trace-data/acme/blocks/"}}}},
			stsFail: "AccessDenied",
			wantErr: func(err error) bool {
				var ae smithy.APIError
				return errors.As(err, &ae) && ae.ErrorCode() == "AccessDenied"
			},
			wantEvent: EventRefused, wantResult: audit.ResultFailure, wantSTS: true, wantReason: "sts_error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, testConfig, tt.grants)
			if tt.stsFail != "" {
				e.fake.FailNextAssumeRole(tt.stsFail, "injected")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := e.minter.Mint(ctx, tt.run)
			if !tt.wantErr(err) {
				t.Fatalf("Mint: got error %v (%T), not the one wanted", err, err)
			}
			if got := len(e.fake.Requests()) > 0; got != tt.wantSTS {
				t.Fatalf("AssumeRole called: got %v, want %v", got, tt.wantSTS)
			}
			evs := e.audit.all()
			if tt.wantEvent == "" {
				if len(evs) != 0 {
					t.Fatalf("got audit events %+v, want none", evs)
				}
				return
			}
			if len(evs) != 1 || evs[0].EventType != tt.wantEvent || evs[0].Result != tt.wantResult {
				t.Fatalf("got audit events %+v, want one %s %s", evs, tt.wantEvent, tt.wantResult)
			}
			if tt.wantReason != "" && evs[0].Metadata["reason"] != tt.wantReason {
				t.Fatalf("got reason %v, want %s", evs[0].Metadata["reason"], tt.wantReason)
			}
			if tt.wantEvent == EventIssued {
				if g := evs[0].Metadata["grants"].(map[string]string); g["s3://trace-data/acme/users/"] != "grant_42" {
					t.Fatalf("got grants %v in the audit event, want grant_42 for the PII dataset", g)
				}
			}
		})
	}
}

func TestSessionName(t *testing.T) {
	long := strings.Repeat("j", 63)
	tests := []struct {
		name, org, job, run, want string
	}{
		{name: "plain", org: "acme", job: "block_follower", run: "run-1", want: "cordon.acme.block_follower.run-1"},
		{name: "sanitised", org: "acme", job: "x", run: "a/b c:d", want: "cordon.acme.x.a-b-c-d"},
		{name: "truncated with hash", org: "acme", job: long, run: "0190c9a2-7b1e-7cc0-8000-000000000001",
			want: "cordon.acme.jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SessionName("cordon", tt.org, tt.job, tt.run)
			if !stsNameRE.MatchString(got) {
				t.Fatalf("SessionName: got %q (%d chars), want at most 64 of [\\w+=,.@-]", got, len(got))
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("SessionName: got %q, want prefix %q", got, tt.want)
			}
		})
	}
	a := SessionName("cordon", "acme", long, "run-000000000000000001")
	b := SessionName("cordon", "acme", long, "run-000000000000000002")
	if a == b || len(a) != 64 || a != SessionName("cordon", "acme", long, "run-000000000000000001") {
		t.Fatalf("truncated names: got %q and %q, want distinct, deterministic, 64 characters", a, b)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{name: "ok", mutate: func(*Config) {}},
		{name: "no org in role", mutate: func(c *Config) { c.RoleARNTemplate = "arn:aws:iam::123456789012:role/shared" }, wantErr: "must contain {org}"},
		{name: "not a role", mutate: func(c *Config) { c.RoleARNTemplate = "arn:aws:iam::123456789012:user/{org}" }, wantErr: "not an IAM role ARN"},
		{name: "duration over an hour", mutate: func(c *Config) { c.Duration = 2 * time.Hour }, wantErr: "between 15m0s and 1h0m0s"},
		{name: "duration under STS minimum", mutate: func(c *Config) { c.Duration = time.Minute }, wantErr: "between"},
		{name: "shared root", mutate: func(c *Config) { c.Confinement.RootTemplates = []string{"s3://trace-data/"} }, wantErr: "{org}"},
		{name: "bad prefix", mutate: func(c *Config) { c.SessionNamePrefix = "cordon/x" }, wantErr: "session_name_prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate: got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
