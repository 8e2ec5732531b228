// Package credentials mints each run's short-lived, dataset-scoped AWS
// credentials in the dispatcher (seeds/000 "Credential Handling": read
// access to declared inputs, write access to declared outputs, nothing
// else).
//
// SessionPolicy turns a datasets.Declaration into an STS inline session
// policy (a pure function). Minter calls sts:AssumeRole into the org's data
// role with that policy, a session name, source identity and tags naming
// org/job/run, refuses a run whose PII datasets lack a grant (seeds/000
// "PII gating"), and emits one audit event per issuance or refusal.
//
// It is not the transport to the sidecar (the dispatcher's API carries the
// Credentials), not the grant store (Grants is backed by Postgres in the
// dispatcher) and never stores or logs credentials.
package credentials

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/datasets"
)

// Audit event types.
const (
	EventIssued  = "CREDENTIALS_ISSUED"
	EventRefused = "CREDENTIALS_REFUSED"
)

// Duration bounds. STS accepts 900s to the role's maximum; the issue caps a
// run's credentials at an hour.
const (
	MinDuration     = 15 * time.Minute
	MaxDuration     = time.Hour
	DefaultDuration = 15 * time.Minute
)

// AssumeRoleAPI is the part of *sts.Client the Minter uses.
type AssumeRoleAPI interface {
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
}

var _ AssumeRoleAPI = (*sts.Client)(nil)

// Grants answers whether a job may use a PII dataset.
type Grants interface {
	// PIIGrant returns the ID of the grant that lets job of org use the PII
	// dataset at location (canonical s3:// form), and ok=false when there
	// is none. err is for lookup failures only.
	PIIGrant(ctx context.Context, org, job, location string) (grantID string, ok bool, err error)
}

// Config configures a Minter.
type Config struct {
	// RoleARNTemplate is the per-org data role; "{org}" is replaced by the
	// org slug, e.g. "arn:aws:iam::123456789012:role/cordon-data-{org}".
	// Required, and must contain "{org}".
	RoleARNTemplate string
	// Duration is the credentials' lifetime. If zero, DefaultDuration;
	// otherwise between MinDuration and MaxDuration.
	Duration time.Duration
	// Confinement is where each org's datasets may live. A declaration
	// outside it is refused. If zero, every run with datasets is refused.
	Confinement datasets.Confinement
	// SessionNamePrefix starts every role session name. If empty, "cordon".
	SessionNamePrefix string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if !strings.Contains(c.RoleARNTemplate, "{org}") {
		return fmt.Errorf("credentials config: role_arn_template %q must contain {org} so that every org has its own data role", c.RoleARNTemplate)
	}
	if !roleARNRE.MatchString(strings.ReplaceAll(c.RoleARNTemplate, "{org}", "org")) {
		return fmt.Errorf("credentials config: role_arn_template %q is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)", c.RoleARNTemplate)
	}
	if c.Duration != 0 && (c.Duration < MinDuration || c.Duration > MaxDuration) {
		return fmt.Errorf("credentials config: duration %s must be between %s and %s", c.Duration, MinDuration, MaxDuration)
	}
	if c.Duration%time.Second != 0 {
		return fmt.Errorf("credentials config: duration %s must be whole seconds", c.Duration)
	}
	if c.SessionNamePrefix != "" && !sessionNameRE.MatchString(c.SessionNamePrefix) {
		return fmt.Errorf("credentials config: session_name_prefix %q: use letters, digits and +=,.@_- only", c.SessionNamePrefix)
	}
	if err := c.Confinement.Check(); err != nil {
		return fmt.Errorf("credentials config: %w", err)
	}
	return nil
}

var (
	roleARNRE     = regexp.MustCompile(`^arn:aws:iam::\d{12}:role/[\w+=,.@/-]{1,64}$`)
	sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{1,32}$`)
	slugRE        = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$`)
	runIDRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
)

// Run is one run to mint credentials for.
type Run struct {
	Org   string // org slug; required
	Job   string // job name; required
	RunID string // required: 1 to 128 of A-Z a-z 0-9 _ . - starting with a letter or digit
	// Actor is who asked, for the audit event (typically the job's SPIFFE
	// ID). If zero, {Type: JOB, ID: "org/<org>/job/<job>"}.
	Actor audit.Actor
	// RequestID correlates the audit event. If empty, none.
	RequestID   string
	Declaration datasets.Declaration
}

// Credentials are a run's temporary AWS credentials. They are secret:
// String and GoString redact them; JSON is the caller's responsibility (the
// dispatcher sends them to the sidecar over mTLS and nowhere else).
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	// AssumedRoleARN is the session's ARN (arn:aws:sts::…:assumed-role/…).
	AssumedRoleARN string
}

// String never prints the secret parts.
func (c Credentials) String() string {
	return fmt.Sprintf("credentials{role=%s expires=%s secret=REDACTED}", c.AssumedRoleARN, c.Expiration.UTC().Format(time.RFC3339))
}

// GoString never prints the secret parts (%#v).
func (c Credentials) GoString() string { return c.String() }

// PIIGrantError refuses a run whose PII datasets lack a grant.
type PIIGrantError struct {
	Org, Job string
	Missing  []string // canonical locations without a grant
}

func (e *PIIGrantError) Error() string {
	return fmt.Sprintf("job %s/%s has no PII grant for %s; ask the data owners for a grant or remove the datasets", e.Org, e.Job, strings.Join(e.Missing, ", "))
}

// ErrInvalidRun is wrapped when a Run or its declaration is invalid
// (including org confinement); errors.As to *datasets.Error for the field.
var ErrInvalidRun = errors.New("invalid run")

// Minter mints run credentials. It is safe for concurrent use.
type Minter struct {
	cfg    Config
	sts    AssumeRoleAPI
	grants Grants
	audit  audit.Emitter
	log    *slog.Logger
	now    func() time.Time
}

// Option configures a Minter.
type Option func(*Minter)

// WithAudit sets the audit emitter. If unset, audit.Discard.
func WithAudit(e audit.Emitter) Option { return func(m *Minter) { m.audit = e } }

// WithLogger sets the logger. If unset, logs are discarded.
func WithLogger(l *slog.Logger) Option { return func(m *Minter) { m.log = l } }

// WithClock sets the clock. If unset, time.Now.
func WithClock(now func() time.Time) Option { return func(m *Minter) { m.now = now } }

// NewMinter validates cfg and returns a Minter. client is typically
// sts.NewFromConfig(awsCfg); grants is required.
func NewMinter(cfg Config, client AssumeRoleAPI, grants Grants, opts ...Option) (*Minter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil || grants == nil {
		return nil, errors.New("new minter: an STS client and a Grants are required")
	}
	if cfg.Duration == 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.SessionNamePrefix == "" {
		cfg.SessionNamePrefix = "cordon"
	}
	m := &Minter{cfg: cfg, sts: client, grants: grants, audit: audit.Discard,
		log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, o := range opts {
		o(m)
	}
	return m, nil
}

// Mint validates run, checks PII grants, assumes the org's data role with
// the run's session policy and returns the credentials. A refusal returns
// *PIIGrantError, an error wrapping ErrInvalidRun, ErrNoDatasets (nothing to
// mint; not audited) or ErrPolicyTooLarge; an STS failure is returned
// wrapped. Every outcome but ErrNoDatasets emits one audit event.
func (m *Minter) Mint(ctx context.Context, run Run) (Credentials, error) {
	ev := m.event(run)
	if err := checkRun(run); err != nil {
		return Credentials{}, m.refuse(ev, "invalid_run", fmt.Errorf("mint credentials: %w: %w", ErrInvalidRun, err))
	}
	inputs, outputs, err := run.Declaration.Parsed()
	if err != nil {
		return Credentials{}, m.refuse(ev, "invalid_declaration", fmt.Errorf("mint credentials for %s/%s run %s: %w: %w", run.Org, run.Job, run.RunID, ErrInvalidRun, err))
	}
	ev.Metadata["inputs"] = locations(inputs)
	ev.Metadata["outputs"] = locations(outputs)
	if len(inputs)+len(outputs) == 0 {
		return Credentials{}, fmt.Errorf("mint credentials for %s/%s run %s: %w", run.Org, run.Job, run.RunID, ErrNoDatasets)
	}
	if err := run.Declaration.Validate(run.Org, m.cfg.Confinement); err != nil {
		return Credentials{}, m.refuse(ev, "not_confined", fmt.Errorf("mint credentials for %s/%s run %s: %w: %w", run.Org, run.Job, run.RunID, ErrInvalidRun, err))
	}

	// PII: every PII dataset needs a grant, or the run gets nothing.
	grants := map[string]string{}
	var pii, missing []string
	for _, d := range append(inputs, outputs...) {
		if !d.PII {
			continue
		}
		loc := d.Location.String()
		if _, dup := grants[loc]; dup || containsString(missing, loc) {
			continue
		}
		pii = append(pii, loc)
		id, ok, err := m.grants.PIIGrant(ctx, run.Org, run.Job, loc)
		if err != nil {
			ev.Result = audit.ResultFailure
			return Credentials{}, m.refuse(ev, "grant_lookup_failed", fmt.Errorf("mint credentials for %s/%s run %s: look up PII grant for %s: %w", run.Org, run.Job, run.RunID, loc, err))
		}
		if !ok {
			missing = append(missing, loc)
			continue
		}
		grants[loc] = id
	}
	ev.Metadata["pii_datasets"] = nonNil(pii)
	ev.Metadata["grants"] = grants
	if len(missing) > 0 {
		ev.Metadata["missing_grants"] = missing
		return Credentials{}, m.refuse(ev, "pii_grant_missing", &PIIGrantError{Org: run.Org, Job: run.Job, Missing: missing})
	}

	policy, err := SessionPolicy(run.Declaration)
	if err != nil {
		return Credentials{}, m.refuse(ev, "policy", fmt.Errorf("mint credentials for %s/%s run %s: %w", run.Org, run.Job, run.RunID, err))
	}
	roleARN := strings.ReplaceAll(m.cfg.RoleARNTemplate, "{org}", run.Org)
	in := &sts.AssumeRoleInput{
		RoleArn:         aws.String(roleARN),
		RoleSessionName: aws.String(SessionName(m.cfg.SessionNamePrefix, run.Org, run.Job, run.RunID)),
		SourceIdentity:  aws.String(SourceIdentity(run.Org, run.Job)),
		Policy:          aws.String(string(policy)),
		DurationSeconds: aws.Int32(int32(m.cfg.Duration / time.Second)),
		Tags: []ststypes.Tag{
			{Key: aws.String("cordon-org"), Value: aws.String(run.Org)},
			{Key: aws.String("cordon-job"), Value: aws.String(run.Job)},
			{Key: aws.String("cordon-run"), Value: aws.String(run.RunID)},
		},
	}
	ev.Metadata["role_arn"] = roleARN
	ev.Metadata["session_name"] = *in.RoleSessionName
	ev.Metadata["source_identity"] = *in.SourceIdentity
	ev.Metadata["duration_seconds"] = *in.DurationSeconds

	start := m.now()
	out, err := m.sts.AssumeRole(ctx, in)
	if err != nil {
		ev.Result = audit.ResultFailure
		return Credentials{}, m.refuse(ev, "sts_error", fmt.Errorf("mint credentials for %s/%s run %s: assume role %s: %w", run.Org, run.Job, run.RunID, roleARN, err))
	}
	c := out.Credentials
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.SessionToken == nil || c.Expiration == nil {
		ev.Result = audit.ResultFailure
		return Credentials{}, m.refuse(ev, "sts_error", fmt.Errorf("mint credentials for %s/%s run %s: assume role %s: response lacks credentials", run.Org, run.Job, run.RunID, roleARN))
	}
	creds := Credentials{
		AccessKeyID:     *c.AccessKeyId,
		SecretAccessKey: *c.SecretAccessKey,
		SessionToken:    *c.SessionToken,
		Expiration:      c.Expiration.UTC(),
	}
	if out.AssumedRoleUser != nil && out.AssumedRoleUser.Arn != nil {
		creds.AssumedRoleARN = *out.AssumedRoleUser.Arn
	}
	ev.Result = audit.ResultSuccess
	ev.EventType = EventIssued
	ev.Metadata["expiry"] = creds.Expiration.Format(time.RFC3339)
	ev.Metadata["assumed_role_arn"] = creds.AssumedRoleARN
	m.audit.Emit(ev)
	m.log.LogAttrs(ctx, slog.LevelInfo, "credentials issued",
		slog.String("org", run.Org), slog.String("job", run.Job), slog.String("run", run.RunID),
		slog.Time("expiry", creds.Expiration), slog.Duration("sts_latency", m.now().Sub(start)))
	return creds, nil
}

func (m *Minter) event(run Run) audit.Event {
	actor := run.Actor
	if actor == (audit.Actor{}) {
		actor = audit.Actor{Type: audit.ActorJob, ID: "org/" + run.Org + "/job/" + run.Job}
	}
	return audit.Event{
		Timestamp: m.now().UTC(),
		EventType: EventRefused,
		EventID:   audit.NewID(),
		Actor:     actor,
		Resource:  audit.Resource{Type: "RUN", ID: run.RunID, TenantID: run.Org},
		Action:    "MINT_CREDENTIALS",
		Result:    audit.ResultDenied,
		Metadata:  map[string]any{"job": run.Job},
		RequestID: run.RequestID,
	}
}

// refuse emits ev as a refusal and returns err.
func (m *Minter) refuse(ev audit.Event, reason string, err error) error {
	ev.EventType = EventRefused
	ev.Metadata["reason"] = reason
	ev.Metadata["error"] = err.Error() // errors here never carry credentials
	m.audit.Emit(ev)
	m.log.LogAttrs(context.Background(), slog.LevelWarn, "credentials refused",
		slog.String("org", ev.Resource.TenantID), slog.String("run", ev.Resource.ID),
		slog.String("reason", reason), slog.String("error", err.Error()))
	return err
}

func checkRun(r Run) error {
	switch {
	case !slugRE.MatchString(r.Org):
		return fmt.Errorf("org %q is not a slug (1 to 63 of a-z, 0-9, '-', '_')", r.Org)
	case !slugRE.MatchString(r.Job):
		return fmt.Errorf("job %q is not a slug (1 to 63 of a-z, 0-9, '-', '_')", r.Job)
	case !runIDRE.MatchString(r.RunID):
		return fmt.Errorf("run ID %q: use 1 to 128 of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit", r.RunID)
	}
	return nil
}

func locations(ds []datasets.ParsedDataset) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Location.String()
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func containsString(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// maxSessionName is STS's RoleSessionName limit, as is maxSourceIdentity's.
const (
	maxSessionName    = 64
	maxSourceIdentity = 64
)

// SessionName is the role session name for a run: "<prefix>.<org>.<job>.<run>"
// with any character outside [\w+=,.@-] replaced by '-'. When that is longer
// than 64 characters it is cut to 51 and "-" plus 12 hex digits of the
// SHA-256 of the full name are appended, so distinct runs keep distinct,
// deterministic names that still start with org and job.
func SessionName(prefix, org, job, run string) string {
	return fitName(prefix+"."+org+"."+job+"."+run, maxSessionName)
}

// SourceIdentity is the run's STS source identity, "<org>.<job>", fitted
// like SessionName. It stays on the session for CloudTrail.
func SourceIdentity(org, job string) string { return fitName(org+"."+job, maxSourceIdentity) }

func fitName(s string, limit int) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_+=,.@-", c) >= 0) {
			b[i] = '-'
		}
	}
	if len(b) <= limit {
		return string(b)
	}
	sum := sha256.Sum256([]byte(s))
	const hashLen = 12
	return string(b[:limit-hashLen-1]) + "-" + hex.EncodeToString(sum[:])[:hashLen]
}
