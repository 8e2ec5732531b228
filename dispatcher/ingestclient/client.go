// Package ingestclient is the sidecar's client for the dispatcher's ingest
// API (dispatcher/ingest). It sends batches and classifies failures so a
// spool knows what to do: *RetryableError (keep the batch, retry after
// After) or *PermanentError (the dispatcher will never accept this batch:
// drop it and report it).
//
// It does not spool, batch or retry by itself; that is the sidecar's job.
package ingestclient

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
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/dispatcherclient"
	"github.com/cordon-dev/cordon/internal/usage"
)

// Result is what the dispatcher stored of a batch: Stored new items and
// Duplicates of items it already had. Both are durably committed.
type Result struct {
	Stored     int `json:"stored"`
	Duplicates int `json:"duplicates"`
}

// RetryableError means the batch was not stored (or may not have been) and
// should be sent again, unchanged, after After. Redelivery is safe: the
// dispatcher stores each event and report once.
type RetryableError struct {
	After  time.Duration
	Status int // HTTP status, or 0 for a network error
	Err    error
}

func (e *RetryableError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("dispatcher ingest: HTTP %d, retry after %s: %v", e.Status, e.After, e.Err)
	}
	return fmt.Sprintf("dispatcher ingest: retry after %s: %v", e.After, e.Err)
}

func (e *RetryableError) Unwrap() error { return e.Err }

// PermanentError means the dispatcher refused the batch for good (invalid,
// too large, or not this sidecar's to write). Sending it again cannot help.
type PermanentError struct {
	Status  int
	Message string // the dispatcher's explanation
	Index   int    // the offending item, or -1
}

func (e *PermanentError) Error() string {
	return fmt.Sprintf("dispatcher ingest: HTTP %d: %s", e.Status, e.Message)
}

// Client sends batches to one dispatcher.
type Client struct {
	base    string
	http    *http.Client
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds each request. The default is 30s.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// DefaultRetryAfter is used when a retryable answer carries no Retry-After.
const DefaultRetryAfter = time.Second

// New returns a client for the dispatcher at baseURL (https://host:port),
// authenticating with tlsConfig (an mTLS config with the sidecar's SVID,
// from mtls.ClientConfig).
func New(baseURL string, tlsConfig *tls.Config, opts ...Option) *Client {
	c := &Client{
		base:    strings.TrimRight(baseURL, "/"),
		http:    dispatcherclient.HTTPClient(tlsConfig, 0),
		timeout: 30 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close releases idle connections. It is idempotent.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// SendEvents sends audit events (at most 10,000 per call).
func (c *Client) SendEvents(ctx context.Context, events []audit.Event) (Result, error) {
	// About 450 bytes an event, so the buffer rarely grows.
	b, err := appendEventsBody(make([]byte, 0, 64+512*len(events)), events)
	if err != nil {
		return Result{}, &PermanentError{Message: "encode batch: " + err.Error(), Index: -1}
	}
	return c.send(ctx, "/v1/ingest/events", b)
}

// SendUsage sends usage reports (at most 10,000 per call).
func (c *Client) SendUsage(ctx context.Context, reports []usage.Report) (Result, error) {
	b, err := json.Marshal(map[string]any{"reports": reports})
	if err != nil {
		return Result{}, &PermanentError{Message: "encode batch: " + err.Error(), Index: -1}
	}
	return c.send(ctx, "/v1/ingest/usage", b)
}

func (c *Client) send(ctx context.Context, path string, b []byte) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		return Result{}, &PermanentError{Message: "build request: " + err.Error(), Index: -1}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return Result{}, &RetryableError{After: DefaultRetryAfter, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Result{}, &RetryableError{After: DefaultRetryAfter, Status: resp.StatusCode, Err: fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode == http.StatusOK {
		var r Result
		if err := json.Unmarshal(data, &r); err != nil {
			// Stored, but the answer is unreadable: resending is harmless.
			return Result{}, &RetryableError{After: DefaultRetryAfter, Status: resp.StatusCode, Err: fmt.Errorf("decode answer: %w", err)}
		}
		return r, nil
	}
	var e struct {
		Error string `json:"error"`
		Index *int   `json:"index"`
	}
	_ = json.Unmarshal(data, &e)
	if e.Error == "" {
		e.Error = http.StatusText(resp.StatusCode)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return Result{}, &RetryableError{After: retryAfter(resp.Header.Get("Retry-After")), Status: resp.StatusCode, Err: errors.New(e.Error)}
	default:
		idx := -1
		if e.Index != nil {
			idx = *e.Index
		}
		return Result{}, &PermanentError{Status: resp.StatusCode, Message: e.Error, Index: idx}
	}
}

// retryAfter parses a Retry-After header in seconds, bounded to [0, 5m].
func retryAfter(h string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(h))
	if err != nil || n < 0 {
		return DefaultRetryAfter
	}
	return min(time.Duration(n)*time.Second, 5*time.Minute)
}
