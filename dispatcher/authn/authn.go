// Package authn is the dispatcher's user-facing HTTP authentication and
// authorization: middleware that takes the bearer token, validates it
// (dispatcher/oidc), records the user on first login (Users), puts the
// Identity in the request context, and Require, which applies the
// permission matrix (dispatcher/rbac) and audits every denial.
//
// It is not token validation itself (dispatcher/oidc), not the matrix
// (dispatcher/rbac), and not org isolation of queries (row-level security
// in the dispatcher's schema): handlers must still run their queries with
// the caller's org set.
//
// Responses never explain a refusal beyond a generic code: 401 with
// WWW-Authenticate: Bearer realm="cordon", error="invalid_token" (RFC 6750;
// no error attribute when no token was sent), 403 {"error":"forbidden"}.
package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

// Validator validates a bearer token. *oidc.Validator is one.
type Validator interface {
	Validate(ctx context.Context, token string) (oidc.Identity, error)
}

var _ Validator = (*oidc.Validator)(nil)

// Users records users on first login (seeds/000, "User Onboarding Flow").
type Users interface {
	// EnsureUser returns the user for id, inserting it when it is new
	// (created is then true) and refreshing its email and role from the
	// token otherwise. It returns an error wrapping ErrUnknownOrg when
	// id's org has not been provisioned.
	EnsureUser(ctx context.Context, id oidc.Identity) (u User, created bool, err error)
}

// ErrUnknownOrg means the token's custom:org_id names no provisioned org
// ("The org_id claim must match the deployed org", seeds/000).
var ErrUnknownOrg = errors.New("org not provisioned")

// User is a row of the users table.
type User struct {
	ID         string // users.user_id, a UUID
	OrgID      string
	ExternalID string // the token's sub
	Email      string // empty when the token had none
	Role       rbac.Role
	CreatedAt  time.Time
	// PreviousRole is the stored role this login replaced; empty when the
	// role did not change (or the user is new).
	PreviousRole rbac.Role
}

// Audit event types this package emits.
const (
	EventAuthzDenied = "AUTHZ_DENIED"
	EventUserCreated = "USER_CREATED"
	EventRoleChanged = "ROLE_CHANGED"
)

// Options configure an Authenticator.
type Options struct {
	// Validator checks bearer tokens. Required.
	Validator Validator
	// Users records first logins. If nil, users are not recorded and the
	// org is not checked against the database.
	Users Users
	// Audit receives denial, user-created and role-changed events. If
	// nil, audit.Discard.
	Audit audit.Emitter
	// Log receives the middleware's logs. If nil, discarded.
	Log *slog.Logger
	// Registerer gets the metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// UserCacheTTL is how long a user seen with the same sub, org, role
	// and email skips EnsureUser. If zero, 5m.
	UserCacheTTL time.Duration
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// Authenticator is the middleware. Create it with New.
type Authenticator struct {
	v     Validator
	users Users
	audit audit.Emitter
	log   *slog.Logger
	now   func() time.Time
	ttl   time.Duration

	requests *prometheus.CounterVec
	denials  *prometheus.CounterVec

	mu    sync.Mutex // guards the following
	cache map[string]cachedUser
}

type cachedUser struct {
	user    User
	expires time.Time
}

const maxCachedUsers = 10000

// New returns an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Validator == nil {
		return nil, errors.New("authn: a Validator is required")
	}
	a := &Authenticator{
		v:     opts.Validator,
		users: opts.Users,
		audit: opts.Audit,
		log:   opts.Log,
		now:   opts.Now,
		ttl:   opts.UserCacheTTL,
		cache: map[string]cachedUser{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_authn_requests_total",
			Help: "User API requests by authentication result (ok, missing, invalid, unknown_org, unavailable).",
		}, []string{"result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_authz_denials_total",
			Help: "Requests refused by the permission matrix, by action and resource.",
		}, []string{"action", "resource"}),
	}
	if a.audit == nil {
		a.audit = audit.Discard
	}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.ttl == 0 {
		a.ttl = 5 * time.Minute
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(a.requests); err != nil {
			return nil, fmt.Errorf("authn: register metrics: %w", err)
		}
		if err := opts.Registerer.Register(a.denials); err != nil {
			return nil, fmt.Errorf("authn: register metrics: %w", err)
		}
	}
	return a, nil
}

type ctxKey int

const (
	identityKey ctxKey = iota
	userKey
	requestIDKey
)

// IdentityFrom returns the caller's Identity that Authenticate stored.
func IdentityFrom(ctx context.Context) (oidc.Identity, bool) {
	id, ok := ctx.Value(identityKey).(oidc.Identity)
	return id, ok
}

// UserFrom returns the caller's users row, when Options.Users is set.
func UserFrom(ctx context.Context) (User, bool) {
	u, ok := ctx.Value(userKey).(User)
	return u, ok
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// RequestID returns the request's ID: the one Authenticate settled on, else
// a well-formed X-Request-Id header, else a fresh "req_" + UUID.
func RequestID(r *http.Request) string {
	if id, ok := r.Context().Value(requestIDKey).(string); ok {
		return id
	}
	if h := r.Header.Get("X-Request-Id"); requestIDPattern.MatchString(h) {
		return h
	}
	return "req_" + uuid.NewString()
}

// bearer extracts the token from exactly one "Authorization: Bearer T"
// header (scheme case-insensitive). present is false when no Authorization
// header was sent; token is empty when one was sent but is malformed (two
// headers, another scheme, no token, a space in the token).
func bearer(r *http.Request) (token string, present bool) {
	hs := r.Header.Values("Authorization")
	if len(hs) == 0 {
		return "", false
	}
	if len(hs) > 1 {
		return "", true
	}
	scheme, tok, found := strings.Cut(hs[0], " ")
	if !found || !strings.EqualFold(scheme, "Bearer") || tok == "" || strings.ContainsAny(tok, " \t") {
		return "", true
	}
	return tok, true
}

// Authenticate requires a valid bearer token, records a first login and
// puts the Identity (and User) in the request's context.
func (a *Authenticator) Authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqID := RequestID(r)
		ctx := context.WithValue(r.Context(), requestIDKey, reqID)
		w.Header().Set("X-Request-Id", reqID)
		token, present := bearer(r)
		if !present {
			a.requests.WithLabelValues("missing").Inc()
			unauthorized(w, false)
			return
		}
		if token == "" {
			a.requests.WithLabelValues("invalid").Inc()
			a.log.Info("authorization header malformed", "request_id", reqID)
			unauthorized(w, true)
			return
		}
		id, err := a.v.Validate(ctx, token)
		if err != nil {
			a.requests.WithLabelValues("invalid").Inc()
			a.log.Info("bearer token refused", "request_id", reqID, "err", err)
			unauthorized(w, true)
			return
		}
		ctx = context.WithValue(ctx, identityKey, id)
		if a.users != nil {
			u, err := a.ensureUser(ctx, r, reqID, id)
			switch {
			case errors.Is(err, ErrUnknownOrg):
				a.requests.WithLabelValues("unknown_org").Inc()
				a.log.Warn("token for an org that is not provisioned", "request_id", reqID, "identity", id)
				writeError(w, http.StatusForbidden, "forbidden")
				return
			case err != nil:
				a.requests.WithLabelValues("unavailable").Inc()
				a.log.Error("record user login", "request_id", reqID, "identity", id, "err", err)
				writeError(w, http.StatusServiceUnavailable, "unavailable")
				return
			}
			ctx = context.WithValue(ctx, userKey, u)
		}
		a.requests.WithLabelValues("ok").Inc()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (a *Authenticator) ensureUser(ctx context.Context, r *http.Request, reqID string, id oidc.Identity) (User, error) {
	key := id.OrgID + "\x00" + id.Subject + "\x00" + string(id.Role) + "\x00" + id.Email
	now := a.now()
	a.mu.Lock()
	if c, ok := a.cache[key]; ok && now.Before(c.expires) {
		a.mu.Unlock()
		return c.user, nil
	}
	a.mu.Unlock()

	u, created, err := a.users.EnsureUser(ctx, id)
	if err != nil {
		return User{}, err
	}
	actor := actorOf(r, id)
	switch {
	case created:
		a.audit.Emit(audit.Event{
			Timestamp: now.UTC(), EventType: EventUserCreated, EventID: audit.NewID(),
			Actor:    actor,
			Resource: audit.Resource{Type: "USER", ID: u.ID, TenantID: id.OrgID},
			Action:   "CREATE", Result: audit.ResultSuccess,
			Metadata:  map[string]any{"role": string(u.Role), "email": oidc.MaskEmail(u.Email), "first_login": true},
			RequestID: reqID,
		})
		a.log.Info("first login: user created", "request_id", reqID, "identity", id, "user_id", u.ID)
	case u.PreviousRole != "" && u.PreviousRole != u.Role:
		a.audit.Emit(audit.Event{
			Timestamp: now.UTC(), EventType: EventRoleChanged, EventID: audit.NewID(),
			Actor:    actor,
			Resource: audit.Resource{Type: "USER", ID: u.ID, TenantID: id.OrgID},
			Action:   "UPDATE", Result: audit.ResultSuccess,
			Metadata:  map[string]any{"from": string(u.PreviousRole), "to": string(u.Role), "source": "idp_claim"},
			RequestID: reqID,
		})
		a.log.Info("role changed by the IdP", "request_id", reqID, "identity", id, "from", string(u.PreviousRole))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCachedUsers {
		for k, c := range a.cache {
			if !now.Before(c.expires) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= maxCachedUsers {
			clear(a.cache)
		}
	}
	a.cache[key] = cachedUser{user: u, expires: now.Add(a.ttl)}
	return u, nil
}

// Require answers 403 unless the caller's role may do action to resource
// (rbac.Allow), and emits an AUTHZ_DENIED audit event for every denial. It
// must run inside Authenticate; without an Identity it answers 401.
func (a *Authenticator) Require(action rbac.Action, resource rbac.Resource) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, ok := IdentityFrom(r.Context())
			if !ok {
				a.log.Error("authn.Require used without Authenticate; refusing", "path", r.URL.Path)
				unauthorized(w, false)
				return
			}
			d := rbac.Allow(id.Role, action, resource)
			if !d.Allowed {
				reqID := RequestID(r)
				ev := DenialEvent(id, action, resource, reqID)
				ev.Actor = actorOf(r, id)
				a.audit.Emit(ev)
				a.denials.WithLabelValues(string(action), string(resource)).Inc()
				a.log.Info("request denied", "request_id", reqID, "identity", id,
					"action", string(action), "resource", string(resource), "reason", d.Reason)
				writeError(w, http.StatusForbidden, "forbidden")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// DenialEvent is the audit event for id being refused action on resource:
// AUTHZ_DENIED, actor USER with the token's sub, the resource's tenant the
// caller's org, result DENIED, and the matrix's reason and the role in
// metadata. It holds no email.
func DenialEvent(id oidc.Identity, action rbac.Action, resource rbac.Resource, requestID string) audit.Event {
	return audit.Event{
		Timestamp: time.Now().UTC(),
		EventType: EventAuthzDenied,
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorUser, ID: id.Subject},
		Resource: audit.Resource{
			Type:     strings.ToUpper(string(resource)),
			ID:       string(resource),
			TenantID: id.OrgID,
		},
		Action: strings.ToUpper(string(action)),
		Result: audit.ResultDenied,
		Metadata: map[string]any{
			"role":   string(id.Role),
			"reason": rbac.Allow(id.Role, action, resource).Reason,
		},
		RequestID: requestID,
	}
}

func actorOf(r *http.Request, id oidc.Identity) audit.Actor {
	act := audit.Actor{Type: audit.ActorUser, ID: id.Subject}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil && net.ParseIP(host) != nil {
		act.IPAddress = host
	}
	if ua := r.UserAgent(); ua != "" {
		if len(ua) > 256 {
			ua = ua[:256]
		}
		act.UserAgent = strings.ToValidUTF8(ua, "")
	}
	return act
}

func unauthorized(w http.ResponseWriter, invalid bool) {
	if invalid {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cordon", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "invalid_token")
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="cordon"`)
	writeError(w, http.StatusUnauthorized, "unauthorized")
}

func writeError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code})
}
