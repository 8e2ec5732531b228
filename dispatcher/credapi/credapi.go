// Package credapi is the dispatcher's endpoint that hands a run's scoped
// AWS credentials to its sidecar: POST /v1/credentials over mTLS, where the
// sidecar authenticates with its SVID (issue 9, DESIGN.md step 6).
//
// The org and job come only from the caller's SPIFFE ID
// (spiffe://TD/org/ORG/job/JOB), never from the body; the body carries the
// run ID and the job's dataset declaration. The Handler mints through
// dispatcher/credentials and commits the Minter's audit event (issuance or
// refusal) to the audit store before it answers: credentials whose issuance
// is not in the audit log are never handed out. PGGrants is the Postgres
// store of PII grants the Minter consults.
//
// It is not the minting logic (dispatcher/credentials), not the sidecar's
// client (sidecar/credsource) and not the TLS listener: the caller serves
// the Handler with mtls.ServerConfig.
package credapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/smithy-go"
	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/internal/usage"
)

// Path is the endpoint.
const Path = "/v1/credentials"

// MaxBodyBytes bounds a request body (seeds/002: "max 64 KB payload").
const MaxBodyBytes = datasets.MaxPayloadBytes

// Reasons in a refusal's body and the refused counter's label.
const (
	ReasonUnauthenticated   = "unauthenticated"    // no job SVID
	ReasonBadRequest        = "bad_request"        // malformed body
	ReasonInvalidRun        = "invalid_run"        // run ID or declaration invalid
	ReasonNotConfined       = "not_confined"       // a dataset outside the org's roots
	ReasonPIIGrantMissing   = "pii_grant_missing"  // a PII dataset without a grant
	ReasonNoDatasets        = "no_datasets"        // nothing to mint
	ReasonPolicyTooLarge    = "policy_too_large"   // the session policy exceeds STS's limit
	ReasonSTSRefused        = "sts_refused"        // STS refused (role, policy): fix the configuration
	ReasonUnavailable       = "unavailable"        // STS or grant lookup failed: retry
	ReasonAuditUnavailable  = "audit_unavailable"  // the audit store did not take the event: retry
	ReasonTooManyRequests   = "too_many_requests"  // MaxInFlight reached: retry
	reasonMethodNotAllowed  = "method_not_allowed" // not POST
	reasonUnsupportedMedium = "unsupported_media"  // not JSON
)

// Appender stores audit events; *auditstore.Store satisfies it.
type Appender interface {
	Append(ctx context.Context, org string, events []audit.Event, reports []usage.Report) (auditstore.AppendResult, error)
}

var _ Appender = (*auditstore.Store)(nil)

// Config configures a Handler.
type Config struct {
	// Minter configures minting (role ARN template, duration, the org
	// dataset confinement). Required; see credentials.Config.
	Minter credentials.Config
	// STS is the STS client, typically sts.NewFromConfig(awsCfg). Required.
	STS credentials.AssumeRoleAPI
	// Grants answers PII grant lookups, typically a *PGGrants. Required.
	Grants credentials.Grants
	// Audit receives each issuance and refusal, and the answer waits for
	// it. Required.
	Audit Appender
	// TrustDomain is the only trust domain whose jobs get credentials.
	// Required.
	TrustDomain spiffeid.TrustDomain
	// AuditTimeout bounds committing one audit event. If zero, 5s.
	AuditTimeout time.Duration
	// MintTimeout bounds one mint (grant lookup and STS call). If zero, 15s.
	MintTimeout time.Duration
	// MaxInFlight bounds concurrent mints; beyond it requests are answered
	// 429 with Retry-After. If zero, 64.
	MaxInFlight int
	// RetryAfter is the Retry-After of retryable answers. If zero, 2s.
	RetryAfter time.Duration
	// Registry receives the metrics. If nil, they are not registered.
	Registry prometheus.Registerer
	// Log receives operational logs, never credentials. If nil, discarded.
	Log *slog.Logger
}

// Handler serves POST /v1/credentials. It expects r.TLS with a verified
// client certificate (serve it with mtls.ServerConfig); without one
// every request is refused.
type Handler struct {
	cfg     Config
	log     *slog.Logger
	slots   chan struct{}
	issued  prometheus.Counter
	refused *prometheus.CounterVec
	latency prometheus.Histogram
}

var _ http.Handler = (*Handler)(nil)

// New validates cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.STS == nil:
		return nil, errors.New("credapi: Config.STS is required")
	case cfg.Grants == nil:
		return nil, errors.New("credapi: Config.Grants is required")
	case cfg.Audit == nil:
		return nil, errors.New("credapi: Config.Audit is required: every issuance and refusal is audited")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("credapi: Config.TrustDomain is required")
	}
	// Validate the minting configuration once, at start-up.
	if _, err := credentials.NewMinter(cfg.Minter, cfg.STS, cfg.Grants); err != nil {
		return nil, fmt.Errorf("credapi: %w", err)
	}
	if cfg.AuditTimeout == 0 {
		cfg.AuditTimeout = 5 * time.Second
	}
	if cfg.MintTimeout == 0 {
		cfg.MintTimeout = 15 * time.Second
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = 2 * time.Second
	}
	if cfg.AuditTimeout < 0 || cfg.MintTimeout < 0 || cfg.MaxInFlight < 0 || cfg.RetryAfter < 0 {
		return nil, errors.New("credapi: timeouts, MaxInFlight and RetryAfter must not be negative")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		cfg:   cfg,
		log:   log,
		slots: make(chan struct{}, cfg.MaxInFlight),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_credentials_issued_total",
			Help: "Run credentials issued to sidecars.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_credentials_refused_total",
			Help: "Credential requests not answered with credentials, by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cordon_dispatcher_credentials_request_seconds",
			Help:    "Time to answer a credential request, audit commit included.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{h.issued, h.refused, h.latency} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("credapi: register metrics: %w", err)
			}
		}
	}
	return h, nil
}

// Request is the body of POST /v1/credentials.
type Request struct {
	// RunID is the run's ID. Required (credentials.Run's rules).
	RunID string `json:"run_id"`
	// Datasets is the job's declaration. Required.
	Datasets datasets.Declaration `json:"datasets"`
}

// Response is the body of a 200 answer. It is secret.
type Response struct {
	AccessKeyID     string    `json:"access_key_id"`
	SecretAccessKey string    `json:"secret_access_key"`
	SessionToken    string    `json:"session_token"`
	Expiration      time.Time `json:"expiration"`
	// RoleARN is the assumed-role session ARN; empty when STS gave none.
	RoleARN string `json:"role_arn,omitempty"`
}

// ErrorResponse is the body of every other answer.
type ErrorResponse struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
	// Missing lists the PII locations without a grant (reason
	// pii_grant_missing).
	Missing []string `json:"missing,omitempty"`
}

// ErrTooLarge is DecodeRequest's error for a body over MaxBodyBytes.
var ErrTooLarge = fmt.Errorf("request body exceeds %d bytes; declare fewer datasets", MaxBodyBytes)

// DecodeRequest reads a request body strictly: one JSON object with exactly
// the keys run_id and datasets, each once, no unknown keys (so an org or
// job in the body is refused, not ignored), nothing after it, and a
// declaration that datasets.Decode accepts. r is read to at most
// MaxBodyBytes+1.
func DecodeRequest(r io.Reader) (Request, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return Request{}, fmt.Errorf("read request: %w", err)
	}
	if len(body) > MaxBodyBytes {
		return Request{}, ErrTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return Request{}, errors.New("request body must be a JSON object")
	}
	var req Request
	var rawDatasets json.RawMessage
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return Request{}, fmt.Errorf("request body: %w", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return Request{}, fmt.Errorf("request body: duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "run_id":
			if err := dec.Decode(&req.RunID); err != nil {
				return Request{}, fmt.Errorf("request body: run_id must be a string: %w", err)
			}
		case "datasets":
			if err := dec.Decode(&rawDatasets); err != nil {
				return Request{}, fmt.Errorf("request body: datasets: %w", err)
			}
		default:
			return Request{}, fmt.Errorf("request body: unknown key %q (the org and job come from the client certificate)", truncate(key))
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return Request{}, fmt.Errorf("request body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Request{}, errors.New("request body: data after the JSON object")
	}
	if req.RunID == "" {
		return Request{}, errors.New("request body: run_id is required")
	}
	if rawDatasets == nil {
		return Request{}, errors.New("request body: datasets is required")
	}
	if req.Datasets, err = datasets.Decode(bytes.NewReader(rawDatasets)); err != nil {
		return Request{}, fmt.Errorf("request body: datasets: %w", err)
	}
	return req, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// job is the authenticated caller.
type job struct {
	id       spiffeid.ID
	org, job string
}

// callerOf reads org and job from the client SVID's SPIFFE ID
// spiffe://TD/org/ORG/job/JOB (internal/jobid).
func (h *Handler) callerOf(r *http.Request) (job, error) {
	j, err := jobid.FromPeer(r, h.cfg.TrustDomain)
	if err != nil {
		return job{}, err
	}
	return job{id: j.ID, org: j.Org, job: j.Job}, nil
}

// requestID is the caller's X-Request-Id when it is 1 to 128 of
// A-Z a-z 0-9 . _ : -, else none: it lands in the audit row.
func requestID(h string) string {
	if len(h) == 0 || len(h) > 128 {
		return ""
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return ""
		}
	}
	return h
}

// collector keeps the events one Mint emits, for the Handler to commit.
type collector struct{ events []audit.Event }

func (c *collector) Emit(ev audit.Event) { c.events = append(c.events, ev) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() { h.latency.Observe(time.Since(start).Seconds()) }()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, r, http.StatusMethodNotAllowed, reasonMethodNotAllowed, "use POST", nil)
		return
	}
	caller, err := h.callerOf(r)
	if err != nil {
		h.fail(w, r, http.StatusForbidden, ReasonUnauthenticated, err.Error(), nil)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		h.fail(w, r, http.StatusUnsupportedMediaType, reasonUnsupportedMedium, "send application/json", nil)
		return
	}
	req, err := DecodeRequest(http.MaxBytesReader(w, r.Body, MaxBodyBytes+1))
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		h.fail(w, r, code, ReasonBadRequest, err.Error(), nil)
		return
	}

	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		h.retryLater(w, r, http.StatusTooManyRequests, ReasonTooManyRequests, "too many credential requests in flight; retry")
		return
	}

	// One Minter per request, whose emitter collects this request's event
	// so the answer can wait for its commit. A Minter is a small struct;
	// its configuration was validated in New.
	events := &collector{}
	minter, err := credentials.NewMinter(h.cfg.Minter, h.cfg.STS, h.cfg.Grants,
		credentials.WithAudit(events), credentials.WithLogger(h.log))
	if err != nil { // cannot happen after New; fail closed
		h.fail(w, r, http.StatusInternalServerError, ReasonUnavailable, "minter configuration", nil)
		return
	}
	mctx, cancel := context.WithTimeout(r.Context(), h.cfg.MintTimeout)
	creds, mintErr := minter.Mint(mctx, credentials.Run{
		Org: caller.org, Job: caller.job, RunID: req.RunID,
		Actor:       audit.Actor{Type: audit.ActorJob, ID: caller.id.String()},
		RequestID:   requestID(r.Header.Get("X-Request-Id")),
		Declaration: req.Datasets,
	})
	cancel()

	// Commit the audit event even if the caller went away, bounded.
	if len(events.events) > 0 {
		actx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.cfg.AuditTimeout)
		_, err := h.cfg.Audit.Append(actx, caller.org, events.events, nil)
		cancel()
		if err != nil {
			h.log.LogAttrs(r.Context(), slog.LevelError, "credential audit event not stored; answering 503",
				slog.String("org", caller.org), slog.String("job", caller.job), slog.String("run", req.RunID),
				slog.String("event_id", events.events[0].EventID), slog.String("error", err.Error()))
			h.retryLater(w, r, http.StatusServiceUnavailable, ReasonAuditUnavailable, "the audit log is unavailable; retry")
			return
		}
	}

	if mintErr != nil {
		h.mintFailed(w, r, mintErr)
		return
	}
	h.issued.Inc()
	writeJSON(w, http.StatusOK, Response{
		AccessKeyID: creds.AccessKeyID, SecretAccessKey: creds.SecretAccessKey, SessionToken: creds.SessionToken,
		Expiration: creds.Expiration.UTC(), RoleARN: creds.AssumedRoleARN,
	})
}

// retryableSTSCodes are STS error codes worth retrying.
var retryableSTSCodes = map[string]bool{
	"Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true,
	"IDPCommunicationError": true, "ServiceUnavailable": true, "InternalFailure": true,
	"InternalError": true, "RequestTimeout": true,
}

// mintFailed maps a Mint error to an answer.
func (h *Handler) mintFailed(w http.ResponseWriter, r *http.Request, err error) {
	var pii *credentials.PIIGrantError
	var apiErr smithy.APIError
	switch {
	case errors.As(err, &pii):
		h.fail(w, r, http.StatusForbidden, ReasonPIIGrantMissing, err.Error(), pii.Missing)
	case errors.Is(err, datasets.ErrNotConfined):
		h.fail(w, r, http.StatusForbidden, ReasonNotConfined, err.Error(), nil)
	case errors.Is(err, credentials.ErrInvalidRun):
		h.fail(w, r, http.StatusBadRequest, ReasonInvalidRun, err.Error(), nil)
	case errors.Is(err, credentials.ErrNoDatasets):
		h.fail(w, r, http.StatusUnprocessableEntity, ReasonNoDatasets, "the declaration has no datasets, so the run needs no credentials", nil)
	case errors.Is(err, credentials.ErrPolicyTooLarge):
		h.fail(w, r, http.StatusUnprocessableEntity, ReasonPolicyTooLarge, err.Error(), nil)
	case errors.As(err, &apiErr) && !retryableSTSCodes[apiErr.ErrorCode()]:
		// A configuration problem (role trust, policy, region): retrying
		// does not help; the operators must fix it. The code only: the
		// message names account internals.
		h.fail(w, r, http.StatusBadGateway, ReasonSTSRefused, "STS refused the request ("+apiErr.ErrorCode()+"); the dispatcher's data role configuration needs fixing", nil)
	default:
		// STS throttling or unreachable, grant lookup failed, timeout.
		h.log.LogAttrs(r.Context(), slog.LevelWarn, "credentials unavailable", slog.String("error", err.Error()))
		h.retryLater(w, r, http.StatusServiceUnavailable, ReasonUnavailable, "credentials are temporarily unavailable; retry")
	}
}

func (h *Handler) retryLater(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(int((h.cfg.RetryAfter+time.Second-1)/time.Second)))
	h.fail(w, r, code, reason, msg, nil)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, code int, reason, msg string, missing []string) {
	h.refused.WithLabelValues(reason).Inc()
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "credential request refused",
		slog.Int("status", code), slog.String("reason", reason), slog.String("remote", r.RemoteAddr))
	writeJSON(w, code, ErrorResponse{Error: msg, Reason: reason, Missing: missing})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
