// Package admit is the run admission API between the sidecar and the
// dispatcher (issue 6): the endpoints, the wire types, and the client the
// sidecar agent uses to Admit before the job starts, Heartbeat to renew
// the run's lease (an answer may order the job terminated) and Finish when
// it ended. dispatcher/admission serves these types.
//
// It lives apart from dispatcher/admission because the sidecar binary is
// also the job's wrapper, copied into every job container, and must not
// carry the dispatcher's Postgres code; one package on both sides keeps
// the wire format from drifting.
//
// It is not the policy (what to do with an answer is the agent's) and
// sends nothing but the run ID and the job's end: the org and job are the
// SVID's, read by the dispatcher from the mTLS handshake.
package admit

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/dispatcherclient"
)

// Endpoints, as dispatcher/admission serves them. {id} is the run ID.
const (
	AdmitPath     = "/v1/runs/admit"
	HeartbeatPath = "/v1/runs/{id}/heartbeat"
	FinishPath    = "/v1/runs/{id}/finish"
)

// maxAnswer bounds what is read from the dispatcher (answers are a few
// small fields).
const maxAnswer = 64 << 10

// AdmitRequest is the body of POST AdmitPath. The org and job are the
// caller's SPIFFE ID's, never the body's.
type AdmitRequest struct {
	RunID string `json:"run_id"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// AdmitResponse answers Admit. A refusal is Admitted false with a Reason.
type AdmitResponse struct {
	Admitted bool   `json:"admitted"`
	Reason   string `json:"reason,omitempty"`
	// LeaseExpiresAt is when the slot is lost without a heartbeat; zero
	// when refused.
	LeaseExpiresAt time.Time `json:"lease_expires_at,omitzero"`
	// HeartbeatSeconds is how often to heartbeat; zero when refused.
	HeartbeatSeconds float64 `json:"heartbeat_seconds,omitempty"`
}

// HeartbeatResponse answers Heartbeat.
type HeartbeatResponse struct {
	LeaseExpiresAt time.Time `json:"lease_expires_at,omitzero"`
	// Terminate, when not nil, orders the job stopped now.
	Terminate *TerminateOrder `json:"terminate,omitempty"`
}

// TerminateOrder is an order to stop the job: SIGTERM to its process
// group, GraceSeconds, SIGKILL.
type TerminateOrder struct {
	Reason       string    `json:"reason"`
	OrderedAt    time.Time `json:"ordered_at"`
	GraceSeconds float64   `json:"grace_seconds"`
}

// FinishRequest reports the job's end.
type FinishRequest struct {
	// ExitCode is the job's exit status; nil when unknown (it never ran).
	ExitCode *int `json:"exit_code,omitempty"`
	// Terminated is true when the job was stopped on an order.
	Terminated bool `json:"terminated,omitempty"`
	// Signal is the last signal sent on termination ("SIGTERM" or
	// "SIGKILL"); empty otherwise.
	Signal string `json:"signal,omitempty"`
}

// StatusError is a non-200 answer.
type StatusError struct {
	Code    int
	Message string // the dispatcher's error text
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("dispatcher answered %d: %s", e.Code, e.Message)
}

// Temporary reports whether asking again may succeed (429 and 5xx).
func (e *StatusError) Temporary() bool {
	return e.Code == http.StatusTooManyRequests || e.Code >= 500
}

// Client calls the admission API. It is safe for concurrent use.
type Client struct {
	base string
	hc   *http.Client
}

// New returns a client of the dispatcher at base ("https://host:port")
// with tlsConfig (the sidecar's SVID, the dispatcher authorised by its
// SPIFFE ID). Each call is bounded by timeout; if zero, 10s.
func New(base string, tlsConfig *tls.Config, timeout time.Duration) (*Client, error) {
	b, err := dispatcherclient.BaseURL(base)
	if err != nil {
		return nil, fmt.Errorf("admit: %w", err)
	}
	if tlsConfig == nil {
		return nil, errors.New("admit: no TLS configuration (the sidecar's mTLS client config is required)")
	}
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	return &Client{base: b, hc: dispatcherclient.HTTPClient(tlsConfig, timeout)}, nil
}

// Close releases idle connections. It is idempotent.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Admit asks whether run runID may start.
func (c *Client) Admit(ctx context.Context, runID string) (AdmitResponse, error) {
	var resp AdmitResponse
	if err := c.post(ctx, AdmitPath, AdmitRequest{RunID: runID}, &resp); err != nil {
		return AdmitResponse{}, fmt.Errorf("admit run %s: %w", runID, err)
	}
	return resp, nil
}

// Heartbeat renews run runID's lease.
func (c *Client) Heartbeat(ctx context.Context, runID string) (HeartbeatResponse, error) {
	var resp HeartbeatResponse
	if err := c.post(ctx, runPath(HeartbeatPath, runID), struct{}{}, &resp); err != nil {
		return HeartbeatResponse{}, fmt.Errorf("heartbeat run %s: %w", runID, err)
	}
	return resp, nil
}

// Finish reports that run runID's job ended.
func (c *Client) Finish(ctx context.Context, runID string, req FinishRequest) error {
	if err := c.post(ctx, runPath(FinishPath, runID), req, nil); err != nil {
		return fmt.Errorf("finish run %s: %w", runID, err)
	}
	return nil
}

func runPath(tmpl, runID string) string {
	return strings.Replace(tmpl, "{id}", url.PathEscape(runID), 1)
}

func (c *Client) post(ctx context.Context, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}
