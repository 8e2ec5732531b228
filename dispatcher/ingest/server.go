// Package ingest is the dispatcher's HTTPS API for sidecars: POST
// /v1/ingest/events and /v1/ingest/usage over mTLS with SPIFFE SVIDs. It
// authorises each item against the caller's SPIFFE ID (a sidecar writes
// only its own org and job), validates and redacts it, and hands it to a
// group of writers that coalesce requests into transactions. A request is
// answered 200 only after its transaction committed; when the store is slow
// or down the answer is 503 or 429 with Retry-After, so the sidecar's spool
// keeps the events and nothing acknowledged is lost.
//
// It is not the store (dispatcher/auditstore) and not the user API.
package ingest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Endpoints.
const (
	EventsPath = "/v1/ingest/events"
	UsagePath  = "/v1/ingest/usage"
)

// Config configures a Server.
type Config struct {
	// Store receives the batches. Required.
	Store Appender
	// TrustDomain is the only trust domain whose jobs may write. Required.
	TrustDomain spiffeid.TrustDomain
	// Limits bound requests; the zero value has sane defaults.
	Limits Limits
	// Writers is the number of writer goroutines. If zero, 4.
	Writers int
	// MaxBatchItems caps the items one writer takes into one round of
	// transactions. If zero, 8192.
	MaxBatchItems int
	// MaxQueuedItems is how many accepted items may wait for a writer
	// before requests are answered 429. If zero, 200,000.
	MaxQueuedItems int
	// MaxInFlight bounds the requests being read, decoded or waiting for
	// their commit at once (each may hold a body of Limits.MaxBodyBytes);
	// beyond it requests are answered 429. If zero, 256.
	MaxInFlight int
	// CommitTimeout bounds one transaction, and how long a request waits
	// for its commit before it is answered 503. If zero, 10s.
	CommitTimeout time.Duration
	// Registry receives the metrics. If nil, they are not registered.
	Registry prometheus.Registerer
	// Log receives logs. If nil, discarded.
	Log *slog.Logger
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// Server is the ingest API.
type Server struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	w      *writers
	cancel context.CancelFunc // stops the writers
	slots  chan struct{}      // one per request in flight, MaxInFlight in all

	mu       sync.Mutex // guards the following
	http     *http.Server
	inflight sync.WaitGroup
	stopped  bool
}

// New returns a Server and starts its writers; Shutdown or Close stops them.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("ingest: Config.Store is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ingest: Config.TrustDomain is required")
	}
	if cfg.Writers == 0 {
		cfg.Writers = 4
	}
	if cfg.MaxBatchItems == 0 {
		cfg.MaxBatchItems = 8192
	}
	if cfg.MaxQueuedItems == 0 {
		cfg.MaxQueuedItems = 200_000
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.CommitTimeout == 0 {
		cfg.CommitTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Limits = cfg.Limits.withDefaults()
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := newMetrics(cfg.Registry)
	registerStoreStats(cfg.Registry, cfg.Store)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, log: log, m: m, cancel: cancel, slots: make(chan struct{}, cfg.MaxInFlight),
		w: &writers{
			store:    cfg.Store,
			maxQueue: int64(cfg.MaxQueuedItems),
			maxBatch: cfg.MaxBatchItems,
			timeout:  cfg.CommitTimeout,
			m:        m,
			log:      log,
		},
	}
	s.w.start(ctx, cfg.Writers, 4096)
	return s, nil
}

// Handler is the API's HTTP handler (it expects r.TLS with a verified
// client certificate).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+EventsPath, s.handleEvents)
	mux.HandleFunc("POST "+UsagePath, s.handleUsage)
	return mux
}

// Serve serves the API over TLS on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener, tlsConfig *tls.Config) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.http = hs
	s.mu.Unlock()
	return hs.ServeTLS(l, "", "")
}

// Shutdown stops accepting requests, waits for in-flight requests to be
// committed and answered, then stops the writers. If ctx ends first, it
// falls back to Close. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	hs := s.http
	s.mu.Unlock()
	var err error
	if hs != nil {
		err = hs.Shutdown(ctx)
	}
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.Join(err, ctx.Err())
	}
	s.cancel()
	s.w.stop()
	s.w.drainQueue()
	<-done
	return err
}

// Close stops at once, as a crash would: connections are cut, the writers'
// transactions are cancelled (rolled back) and queued requests fail. What
// was acknowledged stays committed. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopped = true
	hs := s.http
	s.mu.Unlock()
	var err error
	if hs != nil {
		err = hs.Close()
	}
	s.cancel()
	s.w.stop()
	s.w.drainQueue()
	s.inflight.Wait()
	return err
}

// caller is the authenticated sidecar.
type caller struct {
	id       spiffeid.ID
	org, job string
}

// callerOf reads the org and job from the client SVID's SPIFFE ID
// spiffe://TD/org/ORG/job/JOB (internal/jobid).
func (s *Server) callerOf(r *http.Request) (caller, error) {
	j, err := jobid.FromPeer(r, s.cfg.TrustDomain)
	if err != nil {
		return caller{}, err
	}
	return caller{id: j.ID, org: j.Org, job: j.Job}, nil
}

// Response is the body of a 200 answer.
type Response struct {
	Stored     int `json:"stored"`
	Duplicates int `json:"duplicates"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
	// Index is the offending item, when there is one.
	Index *int `json:"index,omitempty"`
}

func (s *Server) reply(w http.ResponseWriter, endpoint string, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	}
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
	s.m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
}

func (s *Server) replyError(w http.ResponseWriter, endpoint string, code int, msg string, index int) {
	e := ErrorResponse{Error: msg}
	if index >= 0 {
		e.Index = &index
	}
	s.reply(w, endpoint, code, e)
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	s.handle(w, r, EventsPath, s.m.events)
}

func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	s.handle(w, r, UsagePath, s.m.reports)
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request, endpoint string, counter *prometheus.CounterVec) {
	start := time.Now()
	s.inflight.Add(1)
	defer s.inflight.Done()
	defer func() { s.m.ackSeconds.WithLabelValues(endpoint).Observe(time.Since(start).Seconds()) }()

	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		counter.WithLabelValues(resultThrottled).Inc()
		s.replyError(w, endpoint, http.StatusTooManyRequests, "too many requests in flight, retry later", -1)
		return
	}
	c, err := s.callerOf(r)
	if err != nil {
		s.log.Warn("ingest refused", "reason", err.Error())
		s.replyError(w, endpoint, http.StatusForbidden, "forbidden: "+err.Error(), -1)
		return
	}
	now := s.cfg.Now()
	wk := &work{org: c.org, done: make(chan outcome, 1)}
	var n int
	if endpoint == EventsPath {
		var redactions int
		wk.events, redactions, err = DecodeEvents(r.Body, s.cfg.Limits, now)
		s.m.redactions.Add(float64(redactions))
		n = len(wk.events)
	} else {
		wk.reports, err = DecodeUsage(r.Body, s.cfg.Limits, now)
		n = len(wk.reports)
	}
	var tooLarge *TooLargeError
	var inv *InvalidError
	switch {
	case errors.As(err, &tooLarge):
		counter.WithLabelValues(resultInvalid).Inc()
		s.replyError(w, endpoint, http.StatusRequestEntityTooLarge, err.Error(), -1)
		return
	case errors.As(err, &inv):
		counter.WithLabelValues(resultInvalid).Inc()
		s.log.Info("ingest invalid", "caller", c.id.String(), "error", MaskEmails(err.Error()))
		s.replyError(w, endpoint, http.StatusBadRequest, "invalid request: "+err.Error(), inv.Index)
		return
	case err != nil:
		s.replyError(w, endpoint, http.StatusBadRequest, err.Error(), -1)
		return
	}

	if idx, reason := authorize(c, wk); idx >= 0 {
		counter.WithLabelValues(resultDenied).Add(float64(n))
		s.log.Warn("ingest denied", "caller", c.id.String(), "endpoint", endpoint, "index", idx, "reason", MaskEmails(reason))
		if err := s.auditDenial(r.Context(), c, endpoint, idx, reason, now); err != nil {
			// A refusal that cannot be recorded is not answered as final:
			// the sidecar retries and is refused (and audited) again.
			s.log.Error("ingest denial not audited", "caller", c.id.String(), "error", err.Error())
			s.replyError(w, endpoint, http.StatusServiceUnavailable, "audit store unavailable, retry later", -1)
			return
		}
		s.replyError(w, endpoint, http.StatusForbidden, "forbidden: "+reason, idx)
		return
	}

	o, code := s.submit(r.Context(), wk)
	switch code {
	case http.StatusOK:
		counter.WithLabelValues(resultStored).Add(float64(o.stored))
		counter.WithLabelValues(resultDuplicate).Add(float64(o.duplicates))
		s.reply(w, endpoint, http.StatusOK, Response{Stored: o.stored, Duplicates: o.duplicates})
	case http.StatusTooManyRequests:
		counter.WithLabelValues(resultThrottled).Add(float64(n))
		s.replyError(w, endpoint, code, "ingest queue full, retry later", -1)
	case http.StatusBadRequest:
		counter.WithLabelValues(resultInvalid).Add(float64(n))
		s.replyError(w, endpoint, code, "rejected by the audit store: "+o.err.Error(), -1)
	default:
		counter.WithLabelValues(resultUnavailable).Add(float64(n))
		s.replyError(w, endpoint, http.StatusServiceUnavailable, "audit store unavailable, retry later", -1)
	}
}

// submit queues wk and waits for its commit, mapping the outcome to a status.
func (s *Server) submit(ctx context.Context, wk *work) (outcome, int) {
	switch err := s.w.enqueue(wk); {
	case errors.Is(err, errQueueFull):
		return outcome{}, http.StatusTooManyRequests
	case err != nil:
		return outcome{}, http.StatusServiceUnavailable
	}
	t := time.NewTimer(s.cfg.CommitTimeout)
	defer t.Stop()
	select {
	case o := <-wk.done:
		switch {
		case o.err == nil:
			return o, http.StatusOK
		case isDataError(o.err):
			return o, http.StatusBadRequest
		default:
			return o, http.StatusServiceUnavailable
		}
	case <-t.C:
		// It may still commit; the retry is then stored as a duplicate.
		return outcome{}, http.StatusServiceUnavailable
	case <-ctx.Done():
		return outcome{}, http.StatusServiceUnavailable
	}
}

// authorize returns the first item the caller may not write (and why), or
// -1. A sidecar writes only events whose resource tenant is its org and
// that concern its job (the job is the actor or the resource), and only
// usage of its own org and job.
func authorize(c caller, wk *work) (int, string) {
	for i := range wk.events {
		ev := &wk.events[i].Event
		if ev.Resource.TenantID != c.org {
			return i, fmt.Sprintf("event for org %q, caller is org %q", truncate(ev.Resource.TenantID), c.org)
		}
		actorIsJob := ev.Actor.Type == audit.ActorJob && (ev.Actor.ID == c.id.String() || ev.Actor.ID == c.job)
		resourceIsJob := ev.Resource.Type == "JOB" && ev.Resource.ID == c.job
		if !actorIsJob && !resourceIsJob {
			return i, fmt.Sprintf("event does not concern job %q (actor %s %q, resource %s %q)",
				c.job, ev.Actor.Type, truncate(ev.Actor.ID), ev.Resource.Type, truncate(ev.Resource.ID))
		}
	}
	for i := range wk.reports {
		r := &wk.reports[i]
		if r.Org != c.org || r.Job != c.job {
			return i, fmt.Sprintf("usage for %s/%s, caller is %s/%s", r.Org, r.Job, c.org, c.job)
		}
	}
	return -1, ""
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// auditDenial records an AUTHZ_DENIED event in the caller's own org chain
// (never the org it tried to write: a job must not be able to fill another
// org's audit log) and waits for it to commit.
func (s *Server) auditDenial(ctx context.Context, c caller, endpoint string, idx int, reason string, now time.Time) error {
	reason, _ = RedactString(reason)
	ev := audit.Event{
		Timestamp: now,
		EventType: "AUTHZ_DENIED",
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: c.id.String()},
		Resource:  audit.Resource{Type: "JOB", ID: c.job, TenantID: c.org},
		Action:    "INGEST",
		Result:    audit.ResultDenied,
		Metadata:  map[string]any{"endpoint": endpoint, "item": idx, "reason": reason},
	}
	wk := &work{org: c.org, events: []auditstore.Record{{Event: ev}}, done: make(chan outcome, 1)}
	if o, code := s.submit(ctx, wk); code != http.StatusOK {
		if o.err != nil {
			return o.err
		}
		return errUnavailable
	}
	return nil
}
