package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxBody bounds request bodies: every request is a few small fields.
const maxBody = 4 << 10

// Handler is the sidecar API over HTTP. It expects r.TLS with a client
// certificate already verified against the trust bundle (mtls.ServerConfig
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
	mux.HandleFunc("POST "+admit.AdmitPath, h.admit)
	mux.HandleFunc("POST "+admit.FinishPath, h.finish)
	mux.HandleFunc("POST "+admit.HeartbeatPath, h.heartbeat)
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
		h.reply(w, http.StatusForbidden, admit.ErrorResponse{Error: "forbidden: " + err.Error()})
		return c, false
	}
	if v == nil {
		return c, true
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		h.reply(w, http.StatusBadRequest, admit.ErrorResponse{Error: "invalid request body: " + err.Error()})
		return c, false
	}
	return c, true
}

func (h *Handler) fail(w http.ResponseWriter, c caller, op string, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		h.reply(w, http.StatusBadRequest, admit.ErrorResponse{Error: err.Error()})
	case errors.Is(err, ErrUnknownRun):
		h.reply(w, http.StatusNotFound, admit.ErrorResponse{Error: fmt.Sprintf("run not admitted in org %s: admit it first", c.org)})
	case errors.Is(err, ErrRunEnded):
		h.reply(w, http.StatusGone, admit.ErrorResponse{Error: err.Error()})
	case errors.Is(err, context.Canceled):
		h.reply(w, http.StatusServiceUnavailable, admit.ErrorResponse{Error: "request cancelled"})
	default:
		h.log.Error("admission failed", "op", op, "caller", c.id.String(), "error", err.Error())
		w.Header().Set("Retry-After", "1")
		h.reply(w, http.StatusServiceUnavailable, admit.ErrorResponse{Error: op + " failed on the dispatcher; retry"})
	}
}

func (h *Handler) admit(w http.ResponseWriter, r *http.Request) {
	var req admit.AdmitRequest
	c, ok := h.start(w, r, &req)
	if !ok {
		return
	}
	d, err := h.svc.Admit(r.Context(), c.org, c.job, req.RunID)
	if err != nil {
		h.fail(w, c, "admit", err)
		return
	}
	resp := admit.AdmitResponse{Admitted: d.Admitted, Reason: d.Reason, LeaseExpiresAt: d.LeaseExpiresAt}
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
	resp := admit.HeartbeatResponse{LeaseExpiresAt: hb.LeaseExpiresAt}
	if o := hb.Terminate; o != nil {
		resp.Terminate = &admit.TerminateOrder{Reason: o.Reason, OrderedAt: o.OrderedAt, GraceSeconds: o.Grace.Seconds()}
	}
	h.reply(w, http.StatusOK, resp)
}

func (h *Handler) finish(w http.ResponseWriter, r *http.Request) {
	var req admit.FinishRequest
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
