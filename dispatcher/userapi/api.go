// Package userapi is the dispatcher's read-only JSON (and CSV) API for the
// people of an org: audit events, usage per job and org, egress denials,
// runs and the current allowlist per job (issue 6, "What users can do").
// Its OpenAPI 3.1 document is embedded and served at /api/v1/openapi.json.
//
// Every query runs in its own read-only REPEATABLE READ transaction that
// first sets the role cordon_service and the caller's org
// (set_config('cordon.org_id', ORG, true)), where ORG always comes from the
// validated token, never from the request. Row-level security in the
// dispatcher's schema (dispatcher/auditstore migrations) then confines
// every statement to that org, whatever its WHERE clause says.
//
// It is not authentication or the permission matrix (dispatcher/authn and
// dispatcher/rbac, which it applies to every route), not the store's
// writers (dispatcher/auditstore, dispatcher/ingest), and it changes
// nothing: there is no write endpoint. The security team's pages
// (dispatcher/webui) call the same query methods (AuditEvents, Usage,
// Denials, Runs, Allowlists).
package userapi

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an API.
type Config struct {
	// Pool reaches the dispatcher's database. Required. It may log in as
	// any role that is a member of cordon_service (or a superuser): every
	// transaction does SET LOCAL ROLE cordon_service itself.
	Pool *pgxpool.Pool
	// Auth authenticates and authorises each request. Required.
	Auth *authn.Authenticator
	// Allowlists returns the allowlists currently in force. If nil,
	// GET /api/v1/allowlists answers an empty list.
	Allowlists func() *allowlist.Set
	// Logger receives the API's logs. If nil, discarded.
	Logger *slog.Logger
	// Registerer gets the metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// CursorKey signs pagination cursors (HMAC-SHA256). If empty, a random
	// key per process: cursors then do not survive a restart and are not
	// accepted by another replica. Replicas behind one load balancer must
	// share a key of at least 32 bytes.
	CursorKey []byte
	// Settings back the admin routes (PUT /api/v1/admin/...). Zero
	// fields answer 501 not_configured.
	Settings Settings
	// Audit receives an ORG_SETTINGS_CHANGED event for every admin change.
	// If nil, audit.Discard.
	Audit audit.Emitter
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// API serves the user API. Create it with New.
type API struct {
	pool       *pgxpool.Pool
	auth       *authn.Authenticator
	allowlists func() *allowlist.Set
	log        *slog.Logger
	now        func() time.Time
	cursorKey  []byte
	routes     []route
	settings   Settings
	audit      audit.Emitter

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// route is one endpoint: the OpenAPI test checks the document against this
// table.
type route struct {
	method, path string // path in OpenAPI form, e.g. /api/v1/runs/{run_id}
	action       rbac.Action
	resource     rbac.Resource // "" for the public OpenAPI document
	name         string        // bounded metric label
	h            http.HandlerFunc
}

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the embedded OpenAPI 3.1 document.
func OpenAPI() []byte { return append([]byte(nil), openAPIDoc...) }

// New returns an API.
func New(cfg Config) (*API, error) {
	if cfg.Pool == nil {
		return nil, errors.New("userapi: Config.Pool is required")
	}
	if cfg.Auth == nil {
		return nil, errors.New("userapi: Config.Auth is required")
	}
	if len(cfg.CursorKey) > 0 && len(cfg.CursorKey) < 32 {
		return nil, fmt.Errorf("userapi: Config.CursorKey has %d bytes; want at least 32", len(cfg.CursorKey))
	}
	a := &API{
		pool:       cfg.Pool,
		auth:       cfg.Auth,
		allowlists: cfg.Allowlists,
		log:        cfg.Logger,
		now:        cfg.Now,
		cursorKey:  cfg.CursorKey,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_userapi_requests_total",
			Help: "User API requests by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cordon_dispatcher_userapi_request_duration_seconds",
			Help:    "User API request latency by endpoint (authorised requests only).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}, []string{"endpoint"}),
	}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if a.now == nil {
		a.now = time.Now
	}
	if len(a.cursorKey) == 0 {
		a.cursorKey = make([]byte, 32)
		rand.Read(a.cursorKey)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.requests, a.duration} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("userapi: register metrics: %w", err)
			}
		}
	}
	a.settings = cfg.Settings
	if a.settings.MaxConcurrentRuns == 0 {
		a.settings.MaxConcurrentRuns = 100
	}
	if a.settings.MaxRunsPerHour == 0 {
		a.settings.MaxRunsPerHour = 1200
	}
	a.audit = cfg.Audit
	if a.audit == nil {
		a.audit = audit.Discard
	}
	a.routes = []route{
		{"GET", "/api/v1/audit-events", rbac.View, rbac.AuditEvents, "audit_events", a.serveAuditEvents},
		{"GET", "/api/v1/usage", rbac.View, rbac.Usage, "usage", a.serveUsage},
		{"GET", "/api/v1/egress-denials", rbac.View, rbac.EgressDenials, "egress_denials", a.serveDenials},
		{"GET", "/api/v1/runs", rbac.View, rbac.Runs, "runs", a.serveRuns},
		{"GET", "/api/v1/runs/{run_id}", rbac.View, rbac.Runs, "run", a.serveRun},
		{"GET", "/api/v1/allowlists", rbac.View, rbac.Allowlists, "allowlists", a.serveAllowlists},
		{"GET", "/api/v1/openapi.json", "", "", "openapi", serveOpenAPI},
		{"PUT", "/api/v1/admin/quota", rbac.Manage, rbac.Settings, "admin_quota", a.setting("quota", a.settings.Quotas != nil, a.serveSetQuota)},
		{"PUT", "/api/v1/admin/budget", rbac.Manage, rbac.Settings, "admin_budget", a.setting("budget", a.settings.Budgets != nil, a.serveSetBudget)},
		{"PUT", "/api/v1/admin/webhook", rbac.Manage, rbac.Settings, "admin_webhook", a.setting("webhook", a.settings.Webhooks != nil, a.serveSetWebhook)},
		{"PUT", "/api/v1/admin/anomaly-policy", rbac.Manage, rbac.Settings, "admin_anomaly_policy", a.setting("anomaly_policy", a.settings.AnomalyPolicy != nil, a.serveSetAnomalyPolicy)},
	}
	return a, nil
}

// Handler returns the API's routes under /api/v1/. The OpenAPI document is
// public; every other route requires a bearer token and the route's
// permission.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routes {
		var h http.Handler = a.instrument(rt.name, rt.h)
		if rt.resource != "" {
			h = a.auth.Authenticate(a.auth.Require(rt.action, rt.resource)(h))
		}
		mux.Handle(rt.method+" "+rt.path, a.count(rt.name, h))
	}
	mux.Handle("/api/v1/", a.count("unknown", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint; see /api/v1/openapi.json")
	})))
	return mux
}

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(openAPIDoc)
}

// count records every answer of a route, including refusals by authn.
func (a *API) count(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(sw, r)
		a.requests.WithLabelValues(name, strconv.Itoa(sw.code)).Inc()
	})
}

func (a *API) instrument(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h(w, r)
		a.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.code, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ErrNoOrg means a query was attempted without an authenticated caller.
var ErrNoOrg = errors.New("no authenticated org in the request context")

// OrgOf returns the caller's org from the validated token that
// authn.Authenticate put in ctx.
func OrgOf(ctx context.Context) (string, error) {
	id, ok := authn.IdentityFrom(ctx)
	if !ok || id.OrgID == "" {
		return "", ErrNoOrg
	}
	return id.OrgID, nil
}

// inOrg runs fn in a read-only REPEATABLE READ transaction as
// cordon_service with cordon.org_id set to org, so row-level security
// confines every statement fn runs to org.
func (a *API) inOrg(ctx context.Context, org string, fn func(tx pgx.Tx) error) error {
	if org == "" {
		return ErrNoOrg
	}
	return pgx.BeginTxFunc(ctx, a.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue("SET LOCAL ROLE cordon_service")
		b.Queue("SELECT set_config('cordon.org_id', $1, true)", org)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("set the caller's org: %w", err)
		}
		return fn(tx)
	})
}

// apiError is the body of every error answer.
type apiError struct {
	Error     string `json:"error"`
	Message   string `json:"message,omitempty"`
	Parameter string `json:"parameter,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	enc.Encode(v)
}

// fail answers err: a *ParamError as 400 naming the parameter, anything
// else as 500 or 503 with the details only in the log.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var pe *ParamError
	switch {
	case errors.As(err, &pe):
		writeJSON(w, http.StatusBadRequest, apiError{Error: "invalid_parameter", Parameter: pe.Name, Message: pe.Error()})
	case errors.Is(err, ErrNoOrg):
		writeError(w, http.StatusUnauthorized, "unauthorized", "")
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the query did not finish in time; narrow the time range")
	default:
		a.log.Error("user API query failed", "request_id", authn.RequestID(r), "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "the query failed; the request ID is in X-Request-Id")
	}
}
