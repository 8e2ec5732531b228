// Package credsource is the sidecar agent's credserver.Source: it asks the
// dispatcher (POST /v1/credentials, dispatcher/credapi) over mTLS with the
// sidecar's SVID for the run's scoped AWS credentials (issue 9).
//
// The dispatcher decides the org and job from the SVID; the Source sends
// only the run ID and the job's dataset declaration. A refusal comes back
// as *RefusedError with the dispatcher's reason (e.g. a PII dataset without
// a grant), so the agent's credserver.Prime fails the run before the job
// starts and shows why; a transient failure is *UnavailableError.
//
// It is not the endpoint the job reads (sidecar/credserver) and never logs
// or prints credentials.
package credsource

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/internal/dispatcherclient"
	"github.com/cordon-dev/cordon/sidecar/credserver"
)

// Path is the dispatcher's endpoint (dispatcher/credapi.Path; a test keeps
// the two equal without the sidecar importing the dispatcher).
const Path = "/v1/credentials"

// maxResponseBytes bounds what is read from the dispatcher.
const maxResponseBytes = 16 << 10

// PIIGrantMissing is the dispatcher's reason for a PII dataset without a
// grant.
const PIIGrantMissing = "pii_grant_missing"

// Config configures a Source.
type Config struct {
	// URL is the dispatcher's base URL, https://host:port. Required.
	URL string
	// TLS is the mTLS client configuration: the sidecar's SVID, and the
	// dispatcher authorised by its SPIFFE ID (mtls.ClientConfig). Required
	// unless HTTPClient is set.
	TLS *tls.Config
	// RunID is the run's ID. Required.
	RunID string
	// Declaration is the job's datasets. Required to hold at least one
	// dataset (a job without datasets needs no credentials).
	Declaration datasets.Declaration
	// HTTPClient is used as given when set (its transport must do the
	// mTLS). If nil, a client over TLS with a 30s timeout.
	HTTPClient *http.Client
}

// Source fetches the run's credentials from the dispatcher. It is safe for
// concurrent use.
type Source struct {
	endpoint string
	body     []byte
	runID    string
	client   *http.Client
	owned    bool // Close closes the client's idle connections
}

var _ credserver.Source = (*Source)(nil)

// New validates cfg and returns a Source. It makes no request.
func New(cfg Config) (*Source, error) {
	base, err := dispatcherclient.BaseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("credsource: %w (credentials travel only over mTLS)", err)
	}
	if cfg.RunID == "" {
		return nil, errors.New("credsource: RunID is required")
	}
	if err := cfg.Declaration.Check(); err != nil {
		return nil, fmt.Errorf("credsource: dataset declaration: %w", err)
	}
	if len(cfg.Declaration.Inputs)+len(cfg.Declaration.Outputs) == 0 {
		return nil, errors.New("credsource: the declaration has no datasets, so the run needs no credentials; do not start a credentials endpoint")
	}
	body, err := json.Marshal(struct {
		RunID    string               `json:"run_id"`
		Datasets datasets.Declaration `json:"datasets"`
	}{cfg.RunID, cfg.Declaration})
	if err != nil {
		return nil, fmt.Errorf("credsource: encode request: %w", err)
	}
	if len(body) > datasets.MaxPayloadBytes {
		return nil, fmt.Errorf("credsource: request is %d bytes, more than the dispatcher's %d", len(body), datasets.MaxPayloadBytes)
	}
	s := &Source{endpoint: base + Path, body: body, runID: cfg.RunID, client: cfg.HTTPClient}
	if s.client == nil {
		if cfg.TLS == nil {
			return nil, errors.New("credsource: TLS (the sidecar's mTLS client config) is required")
		}
		s.client = dispatcherclient.HTTPClient(cfg.TLS, 30*time.Second)
		s.owned = true
	}
	return s, nil
}

// Close releases idle connections of a client New made. It is idempotent.
func (s *Source) Close() {
	if s.owned {
		s.client.CloseIdleConnections()
	}
}

// RefusedError is the dispatcher's refusal of this run: asking again will
// not help (a PII dataset without a grant, a dataset outside the org's
// roots, an invalid declaration, STS refusing the role).
type RefusedError struct {
	Status  int      // HTTP status
	Reason  string   // the dispatcher's reason code, e.g. "pii_grant_missing"
	Message string   // the dispatcher's explanation
	Missing []string // PII locations without a grant, for pii_grant_missing
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the dispatcher refused the run's credentials (%d %s): %s", e.Status, e.Reason, e.Message)
}

// PIIGrantMissing reports whether the refusal is a missing PII grant.
func (e *RefusedError) PIIGrantMissing() bool { return e.Reason == PIIGrantMissing }

// UnavailableError is a failure worth retrying: the dispatcher unreachable
// or answering 429/5xx.
type UnavailableError struct {
	Status     int           // HTTP status; 0 when no answer came
	RetryAfter time.Duration // the dispatcher's Retry-After; 0 if none
	Err        error
}

func (e *UnavailableError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("dispatcher credentials endpoint unavailable: %v", e.Err)
	}
	return fmt.Sprintf("dispatcher credentials endpoint unavailable (%d): %v", e.Status, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

type wireCredentials struct {
	AccessKeyID     string    `json:"access_key_id"`
	SecretAccessKey string    `json:"secret_access_key"`
	SessionToken    string    `json:"session_token"`
	Expiration      time.Time `json:"expiration"`
	RoleARN         string    `json:"role_arn"`
}

type wireError struct {
	Error   string   `json:"error"`
	Reason  string   `json:"reason"`
	Missing []string `json:"missing"`
}

// Credentials asks the dispatcher for the run's credentials.
func (s *Source) Credentials(ctx context.Context) (credserver.Credentials, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, bytes.NewReader(s.body))
	if err != nil {
		return credserver.Credentials{}, fmt.Errorf("credsource: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return credserver.Credentials{}, &UnavailableError{Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return credserver.Credentials{}, &UnavailableError{Status: resp.StatusCode, Err: fmt.Errorf("read answer: %w", err)}
	}
	if len(raw) > maxResponseBytes {
		return credserver.Credentials{}, &UnavailableError{Status: resp.StatusCode, Err: fmt.Errorf("answer exceeds %d bytes", maxResponseBytes)}
	}
	if resp.StatusCode != http.StatusOK {
		var we wireError
		if json.Unmarshal(raw, &we) != nil || we.Reason == "" {
			we = wireError{Error: "unreadable answer", Reason: "unknown"}
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 && resp.StatusCode != http.StatusBadGateway {
			return credserver.Credentials{}, &UnavailableError{Status: resp.StatusCode,
				RetryAfter: retryAfter(resp.Header.Get("Retry-After")), Err: fmt.Errorf("%s: %s", we.Reason, we.Error)}
		}
		return credserver.Credentials{}, &RefusedError{Status: resp.StatusCode, Reason: we.Reason, Message: we.Error, Missing: we.Missing}
	}
	var wc wireCredentials
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wc); err != nil {
		// Never quote the body: it holds credentials.
		return credserver.Credentials{}, &UnavailableError{Status: resp.StatusCode, Err: errors.New("the dispatcher's answer is not the credentials JSON")}
	}
	if wc.AccessKeyID == "" || wc.SecretAccessKey == "" || wc.SessionToken == "" || wc.Expiration.IsZero() {
		return credserver.Credentials{}, &UnavailableError{Status: resp.StatusCode, Err: errors.New("the dispatcher's answer lacks a credential field or the expiration")}
	}
	return credserver.Credentials{
		AccessKeyID: wc.AccessKeyID, SecretAccessKey: wc.SecretAccessKey, SessionToken: wc.SessionToken,
		Expiration: wc.Expiration, RoleARN: wc.RoleARN,
	}, nil
}

// retryAfter parses a Retry-After in seconds; 0 when absent or malformed.
func retryAfter(h string) time.Duration {
	n, err := strconv.Atoi(h)
	if err != nil || n < 0 || n > 3600 {
		return 0
	}
	return time.Duration(n) * time.Second
}
