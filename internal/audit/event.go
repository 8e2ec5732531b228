// Package audit defines the audit event every Cordon component emits and the
// dispatcher stores. The shape is the audit log format of seeds/002
// ("Audit Log Format"); Cordon's org is the resource's tenant.
//
// It is only the type and the emitter interface: storage lives in
// dispatcher/, delivery (spooling, retries) in sidecar/.
package audit

import (
	"time"

	"github.com/google/uuid"
)

// Event is one audit record.
type Event struct {
	Timestamp time.Time      `json:"timestamp"`
	EventType string         `json:"event_type"` // e.g. EGRESS_DENIED, JOB_STARTED
	EventID   string         `json:"event_id"`   // "evt_" + UUIDv7; makes delivery idempotent
	Actor     Actor          `json:"actor"`
	Resource  Resource       `json:"resource"`
	Action    string         `json:"action"` // e.g. CONNECT, CREATE
	Result    string         `json:"result"` // SUCCESS, FAILURE, DENIED, WOULD_DENY
	Metadata  map[string]any `json:"metadata,omitempty"`
	RequestID string         `json:"request_id,omitempty"`
}

// Actor is who did it: a user, or a job identified by its SPIFFE ID.
type Actor struct {
	Type      string `json:"type"` // USER, JOB, SERVICE
	ID        string `json:"id"`
	IPAddress string `json:"ip_address,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
}

// Resource is what it was done to. TenantID carries the org slug.
type Resource struct {
	Type     string `json:"type"` // JOB, RUN, EGRESS, SECRET, ALLOWLIST
	ID       string `json:"id"`
	TenantID string `json:"tenant_id"`
}

// Results.
const (
	ResultSuccess   = "SUCCESS"
	ResultFailure   = "FAILURE"
	ResultDenied    = "DENIED"
	ResultWouldDeny = "WOULD_DENY"
)

// Actor types.
const (
	ActorUser    = "USER"
	ActorJob     = "JOB"
	ActorService = "SERVICE"
)

// NewID returns a fresh, time-ordered event ID.
func NewID() string { return "evt_" + uuid.Must(uuid.NewV7()).String() }

// Emitter receives audit events. Emit must not block the caller for long:
// an implementation buffers or spools, and reports (never silently drops)
// what it cannot keep.
type Emitter interface {
	Emit(ev Event)
}

// Discard is an Emitter that drops every event. It is the default for
// libraries used without an audit sink (tests, lint).
var Discard Emitter = discard{}

type discard struct{}

func (discard) Emit(Event) {}
