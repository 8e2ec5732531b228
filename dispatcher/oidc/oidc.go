// Package oidc validates the OIDC JWTs users present to the dispatcher
// (Cognito-style ID tokens, and access tokens where allowed) and maps their
// claims to an Identity: sub, email, custom:org_id and custom:role
// (seeds/000, "JWT Claims").
//
// Signatures are checked with github.com/go-jose/go-jose/v4 against the
// issuer's JWKS, found through OpenID discovery or configured, cached,
// refreshed periodically and on an unknown kid (single-flight and rate
// limited, so a flood of random kids cannot make us hammer the IdP).
// Before go-jose sees a token this package refuses what a hostile token
// can carry: more than MaxTokenBytes, any header member but alg, kid and
// typ (so jku, x5u, jwk, x5c and crit are refused and keys are never taken
// from a token), any alg but RS256, PS256, ES256 and ES384 (so none and
// HMAC are refused, including HS256 "signed" with the RSA public key), an
// alg the key is not for, and duplicate JSON members. Keys under 2048 bits
// (RSA) or on curves other than P-256/P-384 are never loaded.
//
// Claims: iss must equal Config.Issuer exactly; exp and iat are required
// and nbf honoured, each with Config.Leeway; a token may live at most
// Config.MaxLifetime. The audience rule follows Cognito: an ID token
// (token_use "id", or no token_use from a generic OIDC issuer) must list one
// of Config.Audiences in aud; an access token (token_use "access") carries
// no aud but client_id, which must be one of Config.Audiences, and is
// accepted only when Config.AcceptAccessTokens is set (Cognito puts custom
// attributes only in ID tokens unless a pre-token-generation trigger adds
// them). custom:org_id must be a valid Cordon org identifier (the
// orgs.org_id pattern: lowercase letters, digits, '-' and '_'; a lowercase
// UUID fits), and custom:role one of reader, writer, admin.
//
// It is not for authorization (dispatcher/rbac) or the HTTP middleware and
// first-login user records (dispatcher/authn). Errors never contain the
// token; logs never contain tokens and mask emails.
package oidc

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Identity is who a valid token says the caller is.
type Identity struct {
	// Subject is the IdP's subject (sub), stored as users.external_id.
	Subject string
	// Email is the email claim; empty when the token has none.
	Email string
	// OrgID is custom:org_id, the caller's org.
	OrgID string
	// Role is custom:role.
	Role rbac.Role
	// ExpiresAt is the token's exp.
	ExpiresAt time.Time
}

// LogValue keeps the email masked whenever an Identity is logged.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("sub", id.Subject),
		slog.String("email", MaskEmail(id.Email)),
		slog.String("org", id.OrgID),
		slog.String("role", string(id.Role)),
	)
}

// MaskEmail keeps the first character of the local part and the domain:
// "alice@example.com" becomes "a***@example.com". Anything that is not an
// address becomes "***".
func MaskEmail(email string) string {
	local, domain, ok := strings.Cut(email, "@")
	if !ok || local == "" || domain == "" {
		if email == "" {
			return ""
		}
		return "***"
	}
	r, _ := utf8.DecodeRuneInString(local)
	return string(r) + "***@" + domain
}

// Config configures a Validator. Decode it strictly, then Validate.
type Config struct {
	// Issuer is the exact iss every token must carry, and the base of
	// OpenID discovery (for Cognito
	// https://cognito-idp.REGION.amazonaws.com/POOL_ID). Required; https,
	// or http to a loopback address.
	Issuer string `json:"issuer"`
	// Audiences are the app client IDs we accept in aud (ID tokens) or
	// client_id (access tokens). Required.
	Audiences []string `json:"audiences"`
	// JWKSURL is where the keys are. If empty, discovered from Issuer.
	JWKSURL string `json:"jwks_url,omitempty"`
	// AcceptAccessTokens accepts token_use "access" (audience in
	// client_id). If false, only ID tokens are accepted.
	AcceptAccessTokens bool `json:"accept_access_tokens,omitempty"`
	// Leeway is the clock skew allowed on exp, nbf and iat. If zero, 60s;
	// at most 5m.
	Leeway time.Duration `json:"leeway,omitempty"`
	// MaxLifetime is the longest exp - iat we accept. If zero, 24h.
	MaxLifetime time.Duration `json:"max_lifetime,omitempty"`
	// MaxTokenBytes is the longest token we parse. If zero, 8192.
	MaxTokenBytes int `json:"max_token_bytes,omitempty"`
	// RefreshInterval is how often the JWKS is refetched. If zero, 1h.
	RefreshInterval time.Duration `json:"refresh_interval,omitempty"`
	// MinRefreshInterval is the least time between two fetches triggered
	// by unknown kids. If zero, 30s.
	MinRefreshInterval time.Duration `json:"min_refresh_interval,omitempty"`
	// FetchTimeout bounds one discovery + JWKS fetch. If zero, 10s.
	FetchTimeout time.Duration `json:"fetch_timeout,omitempty"`

	// HTTPClient fetches discovery and keys. If nil, a client of our own
	// that follows no redirects; New's Close closes its idle connections.
	HTTPClient *http.Client `json:"-"`
	// Log receives the validator's logs. If nil, discarded.
	Log *slog.Logger `json:"-"`
	// Registerer gets the validator's metrics. If nil, they are not
	// registered.
	Registerer prometheus.Registerer `json:"-"`
	// Now is the clock. If nil, time.Now.
	Now func() time.Time `json:"-"`
}

// Validate checks the configuration without contacting the issuer.
func (c Config) Validate() error {
	if c.Issuer == "" {
		return errors.New("oidc config: issuer is required")
	}
	if err := checkFetchURL(c.Issuer); err != nil {
		return fmt.Errorf("oidc config: issuer: %w", err)
	}
	if len(c.Audiences) == 0 {
		return errors.New("oidc config: audiences is required (the app client IDs tokens are issued to)")
	}
	for _, a := range c.Audiences {
		if a == "" {
			return errors.New("oidc config: audiences contains an empty string")
		}
	}
	if c.JWKSURL != "" {
		if err := checkFetchURL(c.JWKSURL); err != nil {
			return fmt.Errorf("oidc config: jwks_url: %w", err)
		}
	}
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		return fmt.Errorf("oidc config: leeway %s out of range; want 0 to 5m", c.Leeway)
	}
	if c.MaxLifetime < 0 || c.MaxTokenBytes < 0 || c.RefreshInterval < 0 || c.MinRefreshInterval < 0 || c.FetchTimeout < 0 {
		return errors.New("oidc config: durations and sizes must not be negative")
	}
	if c.MaxTokenBytes != 0 && c.MaxTokenBytes < 512 {
		return fmt.Errorf("oidc config: max_token_bytes %d too small; want at least 512", c.MaxTokenBytes)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Leeway == 0 {
		c.Leeway = 60 * time.Second
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = 24 * time.Hour
	}
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = 8 << 10
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = time.Hour
	}
	if c.MinRefreshInterval == 0 {
		c.MinRefreshInterval = 30 * time.Second
	}
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

type metrics struct {
	validations *prometheus.CounterVec
	refreshes   *prometheus.CounterVec
	keys        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		validations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_oidc_validations_total",
			Help: "Bearer token validations by result (ok, expired, bad_signature, unknown_key, ...).",
		}, []string{"result"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_oidc_jwks_refreshes_total",
			Help: "JWKS refreshes by result (ok, error, rate_limited).",
		}, []string{"result"}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_dispatcher_oidc_jwks_keys",
			Help: "Usable keys in the cached JWKS.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.validations, m.refreshes, m.keys)
	}
	return m
}

// Validator validates tokens from one issuer. It is safe for concurrent
// use. Create it with New and Close it.
type Validator struct {
	cfg      Config
	log      *slog.Logger
	client   *http.Client
	ownedTr  *http.Transport // non-nil when we made client; closed by Close
	m        *metrics
	audience map[string]bool

	keys atomic.Pointer[keySet]
	sf   singleflight.Group

	mu          sync.Mutex // guards the following
	jwksURL     string     // resolved; empty until discovery succeeds
	lastRefresh time.Time  // start of the last fetch attempt
	fetching    bool       // a fetch is in flight: callers join it

	baseCtx   context.Context // cancelled by Close; parent of fetches
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New checks cfg, fetches the issuer's keys once (failing if it cannot,
// with ErrJWKSUnavailable) and starts the periodic refresh.
func New(ctx context.Context, cfg Config) (*Validator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	v := &Validator{
		cfg:      cfg,
		log:      cfg.Log,
		client:   cfg.HTTPClient,
		m:        newMetrics(cfg.Registerer),
		audience: map[string]bool{},
		jwksURL:  cfg.JWKSURL,
	}
	for _, a := range cfg.Audiences {
		v.audience[a] = true
	}
	if v.client == nil {
		v.ownedTr = http.DefaultTransport.(*http.Transport).Clone()
		v.client = &http.Client{
			Transport: v.ownedTr,
			Timeout:   cfg.FetchTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("redirects are not followed when fetching keys")
			},
		}
	}
	v.baseCtx, v.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := v.refresh(ctx, true); err != nil {
		v.Close()
		return nil, err
	}
	v.wg.Add(1)
	go v.refreshLoop()
	return v, nil
}

// Close stops the periodic refresh and waits for it. It is idempotent.
func (v *Validator) Close() {
	v.closeOnce.Do(func() {
		v.cancel()
		v.wg.Wait()
		if v.ownedTr != nil {
			v.ownedTr.CloseIdleConnections()
		}
	})
}

func (v *Validator) refreshLoop() {
	defer v.wg.Done()
	t := time.NewTicker(v.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-v.baseCtx.Done():
			return
		case <-t.C:
			if err := v.refresh(v.baseCtx, true); err != nil {
				v.log.Warn("periodic JWKS refresh failed; keeping the last good keys", "err", err)
			}
		}
	}
}

var errRateLimited = errors.New("JWKS refresh rate limited")

func (v *Validator) rateLimited() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !v.fetching && !v.lastRefresh.IsZero() && v.cfg.Now().Sub(v.lastRefresh) < v.cfg.MinRefreshInterval
}

// refresh fetches the keys, at most one fetch at a time: concurrent
// callers share the running fetch. Unless force is set, it refuses to
// fetch sooner than MinRefreshInterval after the last attempt.
func (v *Validator) refresh(ctx context.Context, force bool) error {
	if !force && v.rateLimited() {
		// Fast path for a spray of unknown kids: no goroutine, no fetch.
		v.m.refreshes.WithLabelValues("rate_limited").Inc()
		return errRateLimited
	}
	ch := v.sf.DoChan("refresh", func() (any, error) {
		v.mu.Lock()
		now := v.cfg.Now()
		if !force && !v.lastRefresh.IsZero() && now.Sub(v.lastRefresh) < v.cfg.MinRefreshInterval {
			v.mu.Unlock()
			v.m.refreshes.WithLabelValues("rate_limited").Inc()
			return nil, errRateLimited
		}
		v.lastRefresh = now
		v.fetching = true
		jwksURL := v.jwksURL
		v.mu.Unlock()
		defer func() {
			v.mu.Lock()
			v.fetching = false
			v.mu.Unlock()
		}()

		fctx, cancel := context.WithTimeout(v.baseCtx, v.cfg.FetchTimeout)
		defer cancel()
		err := v.fetch(fctx, jwksURL)
		if err != nil {
			v.m.refreshes.WithLabelValues("error").Inc()
			return nil, fmt.Errorf("%w: %v", ErrJWKSUnavailable, err)
		}
		v.m.refreshes.WithLabelValues("ok").Inc()
		return nil, nil
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *Validator) fetch(ctx context.Context, jwksURL string) error {
	if jwksURL == "" {
		u, err := discover(ctx, v.client, v.cfg.Issuer)
		if err != nil {
			return err
		}
		jwksURL = u
		v.mu.Lock()
		v.jwksURL = u
		v.mu.Unlock()
	}
	body, err := get(ctx, v.client, jwksURL)
	if err != nil {
		return fmt.Errorf("fetch JWKS: %w", err)
	}
	ks, skipped, err := parseJWKS(body)
	if err != nil {
		return fmt.Errorf("fetch JWKS from %s: %w", jwksURL, err)
	}
	for _, s := range skipped {
		v.log.Warn("JWKS key ignored", "jwks_url", jwksURL, "why", s)
	}
	if len(ks.keys) == 0 {
		return fmt.Errorf("fetch JWKS from %s: no usable keys", jwksURL)
	}
	v.keys.Store(ks)
	v.m.keys.Set(float64(len(ks.keys)))
	v.log.Debug("JWKS refreshed", "jwks_url", jwksURL, "keys", len(ks.keys))
	return nil
}

// lookup finds kid, refreshing the keys once (rate limited) when it is
// unknown.
func (v *Validator) lookup(ctx context.Context, kid string) (*verifyKey, error) {
	if k := v.keys.Load().keys[kid]; k != nil {
		return k, nil
	}
	err := v.refresh(ctx, false)
	if k := v.keys.Load().keys[kid]; k != nil {
		return k, nil
	}
	switch {
	case errors.Is(err, errRateLimited):
		return nil, fmt.Errorf("%w: kid not in the issuer's JWKS (refresh rate limited)", ErrUnknownKey)
	case err != nil:
		return nil, fmt.Errorf("%w: kid not in the cached JWKS and refresh failed: %v", ErrUnknownKey, err)
	}
	return nil, fmt.Errorf("%w: kid not in the issuer's JWKS", ErrUnknownKey)
}

// Validate checks token and returns the Identity it carries. token is the
// bearer token alone (no "Bearer " prefix). The error wraps one of the
// package's sentinels and never contains the token.
func (v *Validator) Validate(ctx context.Context, token string) (Identity, error) {
	id, err := v.validate(ctx, token)
	res := result(err)
	v.m.validations.WithLabelValues(res).Inc()
	if err != nil {
		v.log.Debug("bearer token refused", "result", res, "err", err)
		return Identity{}, fmt.Errorf("validate token: %w", err)
	}
	v.log.Debug("bearer token accepted", "identity", id)
	return id, nil
}

var b64 = base64.RawURLEncoding.Strict()

// allowedHeader lists the only header members a token may carry.
var allowedHeader = map[string]bool{"alg": true, "kid": true, "typ": true}

// namedHeaders are refused members we name in errors (anything else is
// reported as "unexpected", so the error never repeats token bytes).
var namedHeaders = map[string]bool{"jku": true, "x5u": true, "jwk": true, "x5c": true, "x5t": true, "x5t#S256": true, "crit": true, "b64": true, "cty": true, "zip": true, "enc": true}

func (v *Validator) validate(ctx context.Context, token string) (Identity, error) {
	if len(token) > v.cfg.MaxTokenBytes {
		return Identity{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(token), v.cfg.MaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return Identity{}, fmt.Errorf("%w: want three non-empty dot-separated parts", ErrMalformed)
	}
	hb, err := b64.DecodeString(parts[0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: header is not base64url", ErrMalformed)
	}
	header, err := decodeObject(hb)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	for name := range header {
		if !allowedHeader[name] {
			if namedHeaders[name] {
				return Identity{}, fmt.Errorf("%w: member %q not accepted", ErrBadHeader, name)
			}
			return Identity{}, fmt.Errorf("%w: unexpected member", ErrBadHeader)
		}
	}
	var alg, kid, typ string
	if err := stringMember(header, "alg", &alg); err != nil || alg == "" {
		return Identity{}, fmt.Errorf("%w: alg missing or not a string", ErrBadHeader)
	}
	sigAlg, ok := acceptedAlgs[alg]
	if !ok {
		return Identity{}, fmt.Errorf("%w: only RS256, PS256, ES256 and ES384 are accepted", ErrBadAlgorithm)
	}
	if err := stringMember(header, "kid", &kid); err != nil || kid == "" || len(kid) > 256 {
		return Identity{}, fmt.Errorf("%w: kid missing, not a string or too long", ErrBadHeader)
	}
	if err := stringMember(header, "typ", &typ); err != nil {
		return Identity{}, fmt.Errorf("%w: typ not a string", ErrBadHeader)
	}
	switch strings.ToLower(typ) {
	case "", "jwt", "at+jwt", "application/at+jwt":
	default:
		return Identity{}, fmt.Errorf("%w: typ is not JWT", ErrBadHeader)
	}

	key, err := v.lookup(ctx, kid)
	if err != nil {
		return Identity{}, err
	}
	if !key.algs[sigAlg] {
		return Identity{}, fmt.Errorf("%w: key is not for %s", ErrBadAlgorithm, alg)
	}
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{sigAlg})
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	payload, err := jws.Verify(key.pub)
	if err != nil {
		return Identity{}, ErrBadSignature
	}
	return v.claims(payload)
}

// orgPattern is orgs.org_id's CHECK in the dispatcher's schema.
var orgPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

func (v *Validator) claims(payload []byte) (Identity, error) {
	c, err := decodeObject(payload)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	var iss, sub, tokenUse, clientID, email, org, role string
	for name, dst := range map[string]*string{
		"iss": &iss, "sub": &sub, "token_use": &tokenUse, "client_id": &clientID,
		"email": &email, "custom:org_id": &org, "custom:role": &role,
	} {
		if err := stringMember(c, name, dst); err != nil {
			return Identity{}, fmt.Errorf("%w: %s is not a string", ErrBadClaims, name)
		}
	}
	if iss != v.cfg.Issuer {
		return Identity{}, fmt.Errorf("%w: iss is not the configured issuer", ErrBadClaims)
	}

	now := v.cfg.Now()
	leeway := v.cfg.Leeway
	exp, hasExp, err := timeMember(c, "exp")
	if err != nil || !hasExp {
		return Identity{}, fmt.Errorf("%w: exp missing or not a number", ErrBadClaims)
	}
	iat, hasIat, err := timeMember(c, "iat")
	if err != nil || !hasIat {
		return Identity{}, fmt.Errorf("%w: iat missing or not a number", ErrBadClaims)
	}
	nbf, hasNbf, err := timeMember(c, "nbf")
	if err != nil {
		return Identity{}, fmt.Errorf("%w: nbf not a number", ErrBadClaims)
	}
	if now.After(exp.Add(leeway)) {
		return Identity{}, fmt.Errorf("%w: exp passed %s ago", ErrExpired, now.Sub(exp).Truncate(time.Second))
	}
	if iat.After(now.Add(leeway)) {
		return Identity{}, fmt.Errorf("%w: iat is %s in the future", ErrNotYetValid, iat.Sub(now).Truncate(time.Second))
	}
	if hasNbf && nbf.After(now.Add(leeway)) {
		return Identity{}, fmt.Errorf("%w: nbf is %s in the future", ErrNotYetValid, nbf.Sub(now).Truncate(time.Second))
	}
	if !exp.After(iat) || exp.Sub(iat) > v.cfg.MaxLifetime {
		return Identity{}, fmt.Errorf("%w: lifetime exp-iat must be positive and at most %s", ErrBadClaims, v.cfg.MaxLifetime)
	}

	aud, hasAud, err := audienceMember(c)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: aud is not a string or array of strings", ErrBadClaims)
	}
	switch tokenUse {
	case "id", "":
		if !hasAud || !v.anyAudience(aud) {
			return Identity{}, fmt.Errorf("%w: aud does not name an accepted client", ErrBadClaims)
		}
	case "access":
		if !v.cfg.AcceptAccessTokens {
			return Identity{}, fmt.Errorf("%w: access tokens are not accepted; present an ID token", ErrBadClaims)
		}
		if !v.audience[clientID] || (hasAud && !v.anyAudience(aud)) {
			return Identity{}, fmt.Errorf("%w: client_id does not name an accepted client", ErrBadClaims)
		}
	default:
		return Identity{}, fmt.Errorf("%w: token_use must be id or access", ErrBadClaims)
	}

	if sub == "" || len(sub) > 255 || !printable(sub) {
		return Identity{}, fmt.Errorf("%w: sub missing, longer than 255 bytes or not printable", ErrBadClaims)
	}
	if email != "" && (len(email) > 254 || !printable(email) || strings.Count(email, "@") != 1 || strings.ContainsAny(email, " ")) {
		return Identity{}, fmt.Errorf("%w: email is not an address", ErrBadClaims)
	}
	if !orgPattern.MatchString(org) {
		return Identity{}, fmt.Errorf("%w: custom:org_id missing or not an org identifier", ErrBadClaims)
	}
	r, err := rbac.ParseRole(role)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: custom:role must be reader, writer or admin", ErrBadClaims)
	}
	return Identity{Subject: sub, Email: email, OrgID: org, Role: r, ExpiresAt: exp}, nil
}

func (v *Validator) anyAudience(aud []string) bool {
	for _, a := range aud {
		if v.audience[a] {
			return true
		}
	}
	return false
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// decodeObject decodes a JSON object into its members, refusing duplicate
// names (which parsers resolve differently) and trailing data.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, errors.New("not JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	m := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("invalid JSON")
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("invalid JSON")
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, errors.New("invalid JSON")
		}
		if _, dup := m[name]; dup {
			return nil, errors.New("duplicate member")
		}
		m[name] = val
	}
	if _, err := dec.Token(); err != nil {
		return nil, errors.New("invalid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the object")
	}
	return m, nil
}

// stringMember sets *dst to member name when it is a JSON string; an
// absent member leaves *dst empty; any other type is an error.
func stringMember(m map[string]json.RawMessage, name string, dst *string) error {
	raw, ok := m[name]
	if !ok {
		return nil
	}
	return json.Unmarshal(raw, dst)
}

// timeMember reads a NumericDate (seconds since the epoch, possibly
// fractional).
func timeMember(m map[string]json.RawMessage, name string) (time.Time, bool, error) {
	raw, ok := m[name]
	if !ok {
		return time.Time{}, false, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return time.Time{}, true, err
	}
	if math.IsNaN(f) || f < 0 || f > 1e11 {
		return time.Time{}, true, errors.New("out of range")
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true, nil
}

func audienceMember(m map[string]json.RawMessage) ([]string, bool, error) {
	raw, ok := m["aud"]
	if !ok {
		return nil, false, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, true, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, true, err
	}
	return many, true, nil
}
