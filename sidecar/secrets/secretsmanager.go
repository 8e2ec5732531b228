package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/cordon-dev/cordon/internal/jobid"
)

// SecretsManagerAPI is the part of the Secrets Manager client the provider
// uses. *secretsmanager.Client satisfies it.
type SecretsManagerAPI interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
	BatchGetSecretValue(ctx context.Context, in *secretsmanager.BatchGetSecretValueInput, opts ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error)
}

var _ SecretsManagerAPI = (*secretsmanager.Client)(nil)

// batchLimit is the most secret IDs one BatchGetSecretValue call takes.
const batchLimit = 20

// SecretsManager is a Provider backed by AWS Secrets Manager. A secret name
// n is read from /{Env}/{Org}/{n} (seeds/000 "Secrets Naming Convention").
// It uses BatchGetSecretValue (20 names per call) and falls back to one
// GetSecretValue per name when the batch call is not allowed or not
// implemented. Throttling is retried by the client's retryer (see
// NewSecretsManagerClient); everything else fails closed.
type SecretsManager struct {
	client SecretsManagerAPI
	env    string
	org    string
	log    *slog.Logger
}

var _ Provider = (*SecretsManager)(nil)

// SecretsManagerConfig configures a SecretsManager provider.
type SecretsManagerConfig struct {
	// Client talks to Secrets Manager. Required.
	Client SecretsManagerAPI
	// Env is the deployment environment ("prod", "staging"). Required.
	Env string
	// Org is the org slug. Required.
	Org string
	// Logger receives one line per fetch with secret names (never values).
	// If nil, logs are discarded.
	Logger *slog.Logger
}

// NewSecretsManager validates cfg and returns the provider.
func NewSecretsManager(cfg SecretsManagerConfig) (*SecretsManager, error) {
	if cfg.Client == nil {
		return nil, errors.New("secrets manager provider: no client")
	}
	if !jobid.IsSlug(cfg.Env) {
		return nil, fmt.Errorf("secrets manager provider: env %q: want %s", cfg.Env, jobid.SlugRule)
	}
	if !jobid.IsSlug(cfg.Org) {
		return nil, fmt.Errorf("secrets manager provider: org %q: want %s", cfg.Org, jobid.SlugRule)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SecretsManager{client: cfg.Client, env: cfg.Env, org: cfg.Org, log: log}, nil
}

// ClientConfig configures NewSecretsManagerClient.
type ClientConfig struct {
	// Region is the AWS region. If empty, AWS_REGION or
	// AWS_DEFAULT_REGION.
	Region string
	// Endpoint overrides the service endpoint (tests, VPC endpoints). If
	// empty, the SDK's resolver.
	Endpoint string
	// Credentials overrides the sidecar's credential chain (awscreds.go:
	// the environment's keys, else the ECS task role). If nil, that chain.
	Credentials aws.CredentialsProvider
	// MaxAttempts bounds attempts per call, first included. If zero, 5.
	MaxAttempts int
	// MaxBackoff caps the jittered exponential backoff between attempts.
	// If zero, 5s.
	MaxBackoff time.Duration
}

// NewSecretsManagerClient builds the real SDK client with bounded retries:
// the SDK's standard retryer retries throttling (ThrottlingException,
// 429), transient 5xx and connection errors with jittered exponential
// backoff, MaxAttempts times at most.
func NewSecretsManagerClient(cc ClientConfig) (*secretsmanager.Client, error) {
	attempts := cc.MaxAttempts
	if attempts == 0 {
		attempts = 5
	}
	maxBackoff := cc.MaxBackoff
	if maxBackoff == 0 {
		maxBackoff = 5 * time.Second
	}
	reg, err := region(cc.Region, os.Getenv)
	if err != nil {
		return nil, err
	}
	creds := cc.Credentials
	if creds == nil {
		if creds, err = taskCredentials(os.Getenv); err != nil {
			return nil, err
		}
	}
	awsCfg := aws.Config{
		Region:      reg,
		Credentials: creds,
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.MaxBackoff = maxBackoff
				o.Backoff = retry.NewExponentialJitterBackoff(maxBackoff)
			})
		},
	}
	return secretsmanager.NewFromConfig(awsCfg, func(o *secretsmanager.Options) {
		if cc.Endpoint != "" {
			o.BaseEndpoint = aws.String(cc.Endpoint)
		}
	}), nil
}

// Path is where secret name lives: /{env}/{org}/{name}.
func (p *SecretsManager) Path(name string) string {
	return "/" + p.env + "/" + p.org + "/" + name
}

// Fetch reads every name. Any secret that is missing, denied, binary or
// unreadable fails the whole fetch with an error naming it and the cause.
func (p *SecretsManager) Fetch(ctx context.Context, names []string) (map[string]string, error) {
	for _, n := range names {
		if _, err := EnvName(n); err != nil {
			return nil, err
		}
	}
	names = dedupSorted(names)
	start := time.Now()
	out := make(map[string]string, len(names))
	method := "batch"
	for i := 0; i < len(names); i += batchLimit {
		chunk := names[i:min(i+batchLimit, len(names))]
		err := p.batch(ctx, chunk, out)
		if err != nil && batchUnavailable(err) {
			p.log.Debug("batch get unavailable, fetching one by one", "err_code", apiCode(err))
			method = "single"
			err = p.single(ctx, chunk, out)
		}
		if err != nil {
			p.log.Warn("fetch secrets failed", "env", p.env, "org", p.org, "names", names, "err", err)
			return nil, err
		}
	}
	p.log.Info("fetched secrets", "env", p.env, "org", p.org, "names", names, "count", len(out),
		"method", method, "duration", time.Since(start))
	return out, nil
}

func (p *SecretsManager) batch(ctx context.Context, names []string, out map[string]string) error {
	byPath := make(map[string]string, len(names))
	ids := make([]string, len(names))
	for i, n := range names {
		ids[i] = p.Path(n)
		byPath[ids[i]] = n
	}
	got := make(map[string]bool, len(names))
	var token *string
	for {
		resp, err := p.client.BatchGetSecretValue(ctx, &secretsmanager.BatchGetSecretValueInput{SecretIdList: ids, NextToken: token})
		if err != nil {
			return fmt.Errorf("fetch secrets %q from %s: %w", names, p.Path("*"), classify(err))
		}
		// Errors first: one failed secret fails the fetch, and the error
		// names the first failure in sorted order.
		errs := resp.Errors
		sort.Slice(errs, func(i, j int) bool { return aws.ToString(errs[i].SecretId) < aws.ToString(errs[j].SecretId) })
		for _, e := range errs {
			id := aws.ToString(e.SecretId)
			name, ok := byPath[id]
			if !ok {
				name = id
			}
			cause := &smithy.GenericAPIError{Code: aws.ToString(e.ErrorCode), Message: aws.ToString(e.Message)}
			return fmt.Errorf("fetch secret %q (%s): %w", name, p.Path(name), classify(cause))
		}
		for _, v := range resp.SecretValues {
			name, ok := byPath[aws.ToString(v.Name)]
			if !ok {
				continue // not one we asked for: ignore it, never inject it
			}
			val, err := stringValue(name, v.SecretString, v.SecretBinary)
			if err != nil {
				return err
			}
			out[name] = val
			got[name] = true
		}
		token = resp.NextToken
		if token == nil || *token == "" {
			break
		}
	}
	for _, n := range names {
		if !got[n] {
			return fmt.Errorf("fetch secret %q (%s): not in the batch response: %w", n, p.Path(n), ErrNotFound)
		}
	}
	return nil
}

func (p *SecretsManager) single(ctx context.Context, names []string, out map[string]string) error {
	for _, n := range names {
		resp, err := p.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(p.Path(n))})
		if err != nil {
			return fmt.Errorf("fetch secret %q (%s): %w", n, p.Path(n), classify(err))
		}
		val, err := stringValue(n, resp.SecretString, resp.SecretBinary)
		if err != nil {
			return err
		}
		out[n] = val
	}
	return nil
}

// stringValue accepts only string secrets: an env var cannot hold
// arbitrary bytes.
func stringValue(name string, s *string, bin []byte) (string, error) {
	if s == nil {
		if bin != nil {
			return "", fmt.Errorf("secret %q is stored as binary: store it as a string to inject it as an env var", name)
		}
		return "", fmt.Errorf("secret %q has no value", name)
	}
	return *s, nil
}

// classifiedError adds a sentinel to an AWS error so callers can branch
// with errors.Is, keeping the SDK's message (which names the operation and
// request ID, never a value).
type classifiedError struct {
	sentinel error
	err      error
}

func (e *classifiedError) Error() string   { return e.sentinel.Error() + ": " + e.err.Error() }
func (e *classifiedError) Unwrap() []error { return []error{e.sentinel, e.err} }

func classify(err error) error {
	switch apiCode(err) {
	case "ResourceNotFoundException":
		return &classifiedError{ErrNotFound, err}
	case "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidSignatureException":
		return &classifiedError{ErrAccessDenied, err}
	}
	return err
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// batchUnavailable reports whether a failed BatchGetSecretValue should be
// retried as single calls: the role may allow GetSecretValue but not the
// batch action, or the endpoint may not implement it.
func batchUnavailable(err error) bool {
	switch apiCode(err) {
	case "AccessDeniedException", "UnknownOperationException", "InvalidAction", "NotImplemented":
		return true
	}
	return false
}

func dedupSorted(names []string) []string {
	s := append([]string(nil), names...)
	sort.Strings(s)
	out := s[:0]
	for i, n := range s {
		if i == 0 || n != s[i-1] {
			out = append(out, n)
		}
	}
	return out
}
