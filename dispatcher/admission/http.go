package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Endpoints of the sidecar API. {id} is the run ID.
const (
	AdmitPath     = "/v1/runs/admit"
	FinishPath    = "/v1/runs/{id}/finish"
	HeartbeatPath = "/v1/runs/{id}/heartbeat"
)

// maxBody bounds request bodies: every request is a few small fields.
const maxBody = 4 << 10

// AdmitRequest is the body of POST /v1/runs/admit. The org and job are the
// caller's SPIFFE ID's, never the body's.
type AdmitRequest struct {
	RunID string `json:"run_id"`
}

// AdmitResponse answers an admission. A refusal is a 200 answer with
// Admitted false: the sidecar prints Reason and does not start the job.
type AdmitResponse struct {
	Admitted       bool      `json:"admitted"`
	Reason         string    `json:"reason,omitempty"`
	LeaseExpiresAt time.Time `json:"lease_expires_at,omitzero"`
	// HeartbeatSeconds is how often the sidecar should heartbeat (a third
	// of the lease).
	HeartbeatSeconds float64 `json:"heartbeat_seconds,omitempty"`
}

// HeartbeatResponse answers a heartbeat.
type HeartbeatResponse struct {
	LeaseExpiresAt time.Time `json:"lease_expires_at,omitzero"`
	// Terminate, when set, orders the sidecar to stop the job now.
	Terminate *TerminateOrder `json:"terminate,omitempty"`
}

// TerminateOrder is TerminationOrder on the wire.
type TerminateOrder struct {
	Reason       string    `json:"reason"`
	OrderedAt    time.Time `json:"ordered_at"`
	GraceSeconds float64   `json:"grace_seconds"`
}

// FinishRequest is the body of POST /v1/runs/{id}/finish.
type FinishRequest struct {
	ExitCode   *int   `json:"exit_code,omitempty"`
	Terminated bool   `json:"terminated,omitempty"`
	Signal     string `json:"signal,omitempty"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Handler is the sidecar API over HTTP. It expects r.TLS with a client
// certificate already verified against the trust bundle (ingest.ServerTLSConfig
// does that); it reads the org and job from the certificate's SPIFFE ID
// spiffe://TD/org/ORG/job/JOB, so a sidecar can only act on its own org's
// runs, and only admit runs of its own job.
type Handler struct {
	svc *Service
	td  spiffeid.TrustDomain
	log *slog.Logger
}

// NewHandler returns the handler for svc, accepting callers of td only.
func NewHandler(svc *Service, td spiffeid.TrustDomain, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{svc: svc, td: td, log: log}
}

// ServeHTTP routes the three endpoints.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux().ServeHTTP(w, r)
}

func (h *Handler) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+AdmitPath, h.admit)
	mux.HandleFunc("POST "+FinishPath, h.finish)
	mux.HandleFunc("POST "+HeartbeatPath, h.heartbeat)
	return mux
}

type caller struct {
	id       spiffeid.ID
	org, job string
}

// callerOf reads the org and job from the client SVID's SPIFFE ID
// spiffe://TD/org/ORG/job/JOB (internal/jobid).
func (h *Handler) callerOf(r *http.Request) (caller, error) {
	j, err := jobid.FromPeer(r, h.td)
	if err != nil {
		return caller{}, err
	}
	return caller{id: j.ID, org: j.Org, job: j.Job}, nil
}

func (h *Handler) reply(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}

// start authenticates the caller and decodes the body into v (when not nil).
func (h *Handler) start(w http.ResponseWriter, r *http.Request, v any) (caller, bool) {
	c, err := h.callerOf(r)
	if err != nil {
		h.log.Warn("admission refused caller", "reason", err.Error())
		h.reply(w, http.StatusForbidden, ErrorResponse{Error: "forbidden: " + err.Error()})
		return c, false
	}
	if v == nil {
		return c, true
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		h.reply(w, http.StatusBadRequest, ErrorResponse{Error: "invalid request body: " + err.Error()})
		return c, false
	}
	return c, true
}

func (h *Handler) fail(w http.ResponseWriter, c caller, op string, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		h.reply(w, http.StatusBadRequest, ErrorResponse{Error: err.Error()})
	case errors.Is(err, ErrUnknownRun):
		h.reply(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("run not admitted in org %s: admit it first", c.org)})
	case errors.Is(err, ErrRunEnded):
		h.reply(w, http.StatusGone, ErrorResponse{Error: err.Error()})
	case errors.Is(err, context.Canceled):
		h.reply(w, http.StatusServiceUnavailable, ErrorResponse{Error: "request cancelled"})
	default:
		h.log.Error("admission failed", "op", op, "caller", c.id.String(), "error", err.Error())
		w.Header().Set("Retry-After", "1")
		h.reply(w, http.StatusServiceUnavailable, ErrorResponse{Error: op + " failed on the dispatcher; retry"})
	}
}

func (h *Handler) admit(w http.ResponseWriter, r *http.Request) {
	var req AdmitRequest
	c, ok := h.start(w, r, &req)
	if !ok {
		return
	}
	d, err := h.svc.Admit(r.Context(), c.org, c.job, req.RunID)
	if err != nil {
		h.fail(w, c, "admit", err)
		return
	}
	resp := AdmitResponse{Admitted: d.Admitted, Reason: d.Reason, LeaseExpiresAt: d.LeaseExpiresAt}
	if d.Admitted {
		resp.HeartbeatSeconds = (h.svc.ttl / 3).Seconds()
	}
	h.reply(w, http.StatusOK, resp)
}

func (h *Handler) heartbeat(w http.ResponseWriter, r *http.Request) {
	c, ok := h.start(w, r, nil)
	if !ok {
		return
	}
	hb, err := h.svc.Heartbeat(r.Context(), c.org, c.job, r.PathValue("id"))
	if err != nil {
		h.fail(w, c, "heartbeat", err)
		return
	}
	resp := HeartbeatResponse{LeaseExpiresAt: hb.LeaseExpiresAt}
	if o := hb.Terminate; o != nil {
		resp.Terminate = &TerminateOrder{Reason: o.Reason, OrderedAt: o.OrderedAt, GraceSeconds: o.Grace.Seconds()}
	}
	h.reply(w, http.StatusOK, resp)
}

func (h *Handler) finish(w http.ResponseWriter, r *http.Request) {
	var req FinishRequest
	c, ok := h.start(w, r, &req)
	if !ok {
		return
	}
	err := h.svc.Finish(r.Context(), c.org, r.PathValue("id"), FinishReport{Job: c.job, ExitCode: req.ExitCode, Terminated: req.Terminated, Signal: req.Signal})
	if err != nil {
		h.fail(w, c, "finish", err)
		return
	}
	h.reply(w, http.StatusOK, struct{}{})
}
