package admission

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
)

// Client is the sidecar's side of the admission API. The sidecar:
//
//  1. calls Admit before starting the job; when refused, it writes
//     "cordon: run refused: <Reason>" to the job's stderr and exits 75
//     (EX_TEMPFAIL) without starting the job;
//  2. calls Heartbeat every AdmitResponse.HeartbeatSeconds while the job
//     runs; when the answer carries Terminate, it sends SIGTERM to the job's
//     process group, waits GraceSeconds, sends SIGKILL if it is still alive,
//     and then calls Finish with Terminated true and the last signal sent;
//     a heartbeat failing for longer than the lease is not a reason to stop
//     the job (the dispatcher may be down), but the sidecar logs it;
//  3. calls Finish with the exit code when the job exits by itself.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client of the dispatcher at base
// ("https://dispatcher:8443") using tlsConfig (the job's SVID, the bundle,
// and the dispatcher's ID authorised). Each call is bounded by timeout; if
// zero, 10s.
func NewClient(base string, tlsConfig *tls.Config, timeout time.Duration) *Client {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tlsConfig, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// Close releases idle connections. It is idempotent.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// StatusError is a non-200 answer.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("dispatcher answered %d: %s", e.Code, e.Message)
}

// Temporary reports whether retrying may succeed (5xx and 429).
func (e *StatusError) Temporary() bool { return e.Code >= 500 || e.Code == http.StatusTooManyRequests }

// Admit asks whether run runID of the caller's job may start.
func (c *Client) Admit(ctx context.Context, runID string) (AdmitResponse, error) {
	var resp AdmitResponse
	err := c.post(ctx, AdmitPath, AdmitRequest{RunID: runID}, &resp)
	if err != nil {
		return resp, fmt.Errorf("admit run %s: %w", runID, err)
	}
	return resp, nil
}

// Heartbeat renews the run's lease; a non-nil Terminate in the answer is an
// order to stop the job now.
func (c *Client) Heartbeat(ctx context.Context, runID string) (HeartbeatResponse, error) {
	var resp HeartbeatResponse
	err := c.post(ctx, strings.Replace(HeartbeatPath, "{id}", url.PathEscape(runID), 1), struct{}{}, &resp)
	if err != nil {
		return resp, fmt.Errorf("heartbeat run %s: %w", runID, err)
	}
	return resp, nil
}

// Finish reports that the job ended.
func (c *Client) Finish(ctx context.Context, runID string, req FinishRequest) error {
	if err := c.post(ctx, strings.Replace(FinishPath, "{id}", url.PathEscape(runID), 1), req, nil); err != nil {
		return fmt.Errorf("finish run %s: %w", runID, err)
	}
	return nil
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
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
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
		return errors.Join(errors.New("decode answer"), err)
	}
	return nil
}
