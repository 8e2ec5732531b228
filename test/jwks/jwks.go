// Package jwks is a local OIDC issuer for tests and the demo: it serves
// OpenID discovery and a JWKS over real HTTP on loopback, holds real keys
// (RSA 2048 for RS256, ECDSA P-256 for ES256), mints tokens with the claims
// a test gives it, rotates keys (add one, retire one) and mints the hostile
// tokens a validator must refuse (alg none, HS256 signed with the RSA
// public key, a jku header, an unknown kid, ...).
//
// It is for tests only: its keys live in memory, it has no login flow, and
// it signs whatever it is asked to.
package jwks

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Algorithms the issuer can sign with.
const (
	RS256 = "RS256"
	ES256 = "ES256"
)

// DefaultAudience is the app client ID Default claims carry in aud.
const DefaultAudience = "cordon-dispatcher-test-client"

type key struct {
	kid     string
	alg     string
	priv    crypto.Signer
	retired bool
}

// Issuer is a running test issuer. Create it with New and Close it.
type Issuer struct {
	srv *httptest.Server

	discoveryFetches atomic.Int64
	jwksFetches      atomic.Int64

	mu       sync.Mutex // guards the following
	keys     map[string]*key
	order    []string // kids in creation order
	seq      int
	status   int // JWKS response status; 0 = 200
	extraKey []map[string]any
	closed   bool
}

// New starts an issuer on a free port of 127.0.0.1 with one RS256 and one
// ES256 key.
func New() (*Issuer, error) { return NewOn("127.0.0.1:0") }

// NewOn is New on addr, which must be a loopback address (the issuer signs
// whatever it is asked to and must not be reachable from elsewhere).
func NewOn(addr string) (*Issuer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("jwks issuer: listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("jwks issuer: listen address %q is not a loopback IP; the test issuer serves only loopback", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("jwks issuer: listen: %w", err)
	}
	is := &Issuer{keys: map[string]*key{}}
	for _, alg := range []string{RS256, ES256} {
		if _, err := is.AddKey(alg); err != nil {
			l.Close()
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", is.serveDiscovery)
	mux.HandleFunc("GET /jwks.json", is.serveJWKS)
	mux.HandleFunc("GET /mint", is.serveMint)
	is.srv = httptest.NewUnstartedServer(mux)
	is.srv.Listener.Close()
	is.srv.Listener = l
	is.srv.Start()
	return is, nil
}

// URL is the issuer identifier (the iss claim and the discovery base).
func (is *Issuer) URL() string { return is.srv.URL }

// JWKSURL is where the key set is served.
func (is *Issuer) JWKSURL() string { return is.srv.URL + "/jwks.json" }

// Close stops the server. It is idempotent.
func (is *Issuer) Close() {
	is.mu.Lock()
	closed := is.closed
	is.closed = true
	is.mu.Unlock()
	if !closed {
		is.srv.Close()
	}
}

// JWKSFetches is how many times the JWKS was served.
func (is *Issuer) JWKSFetches() int64 { return is.jwksFetches.Load() }

// DiscoveryFetches is how many times the discovery document was served.
func (is *Issuer) DiscoveryFetches() int64 { return is.discoveryFetches.Load() }

// SetJWKSStatus makes the JWKS endpoint answer status with an empty body
// (0 or 200 restores normal service), to simulate an IdP outage.
func (is *Issuer) SetJWKSStatus(status int) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.status = status
}

// PublishRawKey adds a JWK, given as its JSON members, to the served set
// as is: for tests of keys a validator must refuse (a 1024-bit RSA key,
// an "oct" key, a key marked use "enc").
func (is *Issuer) PublishRawKey(jwk map[string]any) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.extraKey = append(is.extraKey, jwk)
}

// AddKey generates a key for alg (RS256: RSA 2048; ES256: P-256), publishes
// it and returns its kid.
func (is *Issuer) AddKey(alg string) (string, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return "", fmt.Errorf("add key: algorithm %q not supported; want RS256 or ES256", alg)
	}
	if err != nil {
		return "", fmt.Errorf("add key: generate %s key: %w", alg, err)
	}
	return is.AddSigner(alg, priv)
}

// AddSigner publishes a key the test made itself (for example a 1024-bit
// RSA key) under a fresh kid and returns the kid.
func (is *Issuer) AddSigner(alg string, priv crypto.Signer) (string, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.seq++
	kid := fmt.Sprintf("test-%s-%d", alg, is.seq)
	is.keys[kid] = &key{kid: kid, alg: alg, priv: priv}
	is.order = append(is.order, kid)
	return kid, nil
}

// RetireKey stops publishing kid. Mint can still sign with it, as a
// leaked or rotated-out key would.
func (is *Issuer) RetireKey(kid string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if k := is.keys[kid]; k != nil {
		k.retired = true
	}
}

// Kid returns the kid of the newest published key for alg.
func (is *Issuer) Kid(alg string) string {
	is.mu.Lock()
	defer is.mu.Unlock()
	for i := len(is.order) - 1; i >= 0; i-- {
		k := is.keys[is.order[i]]
		if k.alg == alg && !k.retired {
			return k.kid
		}
	}
	return ""
}

// PublicKeyPEM returns kid's public key as PEM ("PUBLIC KEY"), the bytes
// an HMAC-confusion attacker would use as the HS256 secret.
func (is *Issuer) PublicKeyPEM(kid string) []byte {
	is.mu.Lock()
	k := is.keys[kid]
	is.mu.Unlock()
	if k == nil {
		return nil
	}
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Claims returns valid Cognito-style ID-token claims for sub in org with
// role, issued now for an hour. Tests change or delete entries to make
// them invalid.
func (is *Issuer) Claims(sub, org, role string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":            is.URL(),
		"sub":            sub,
		"aud":            DefaultAudience,
		"token_use":      "id",
		"email":          sub + "@example.com",
		"custom:org_id":  org,
		"custom:role":    role,
		"iat":            now.Unix(),
		"auth_time":      now.Unix(),
		"exp":            now.Add(time.Hour).Unix(),
		"cognito:groups": []string{"cordon"},
	}
}

// MintOptions choose the key and extra header members.
type MintOptions struct {
	// Kid is the signing key. If empty, the newest published key of Alg.
	Kid string
	// Alg picks the key when Kid is empty. If empty, RS256.
	Alg string
	// HeaderKid overrides the kid written in the header (for unknown-kid
	// tests). If empty, the signing key's kid.
	HeaderKid string
	// ExtraHeaders are added to the protected header (jku, x5u, crit, ...).
	ExtraHeaders map[string]any
}

// Mint signs claims with a real key using go-jose, as an IdP would.
func (is *Issuer) Mint(claims map[string]any, opts MintOptions) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("mint: marshal claims: %w", err)
	}
	return is.MintPayload(payload, opts)
}

// MintPayload signs payload as given (for payloads json.Marshal cannot
// produce, such as a claim that appears twice).
func (is *Issuer) MintPayload(payload []byte, opts MintOptions) (string, error) {
	k, err := is.pick(opts)
	if err != nil {
		return "", err
	}
	so := &jose.SignerOptions{}
	so.WithType("JWT")
	hkid := k.kid
	if opts.HeaderKid != "" {
		hkid = opts.HeaderKid
	}
	so.WithHeader("kid", hkid)
	for name, v := range opts.ExtraHeaders {
		so.WithHeader(jose.HeaderKey(name), v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(k.alg), Key: k.priv}, so)
	if err != nil {
		return "", fmt.Errorf("mint: new signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("mint: sign: %w", err)
	}
	return jws.CompactSerialize()
}

func (is *Issuer) pick(opts MintOptions) (*key, error) {
	if opts.Kid != "" {
		is.mu.Lock()
		defer is.mu.Unlock()
		if k := is.keys[opts.Kid]; k != nil {
			return k, nil
		}
		return nil, fmt.Errorf("mint: no key %q", opts.Kid)
	}
	alg := opts.Alg
	if alg == "" {
		alg = RS256
	}
	kid := is.Kid(alg)
	if kid == "" {
		return nil, fmt.Errorf("mint: no published %s key", alg)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.keys[kid], nil
}

// Raw builds a compact token from a header and claims as given, with sig
// as the signature bytes: the starting point of hostile tokens.
func Raw(header, claims map[string]any, sig []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString(sig)
}

// MintNone returns an unsigned token (alg none, empty signature) naming
// kid.
func (is *Issuer) MintNone(claims map[string]any, kid string) string {
	return Raw(map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, claims, nil)
}

// MintHS256WithPublicKey returns the classic algorithm-confusion token:
// alg HS256, kid of an RSA key, MACed with that key's public PEM bytes.
func (is *Issuer) MintHS256WithPublicKey(claims map[string]any, kid string) string {
	h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid})
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	mac := hmac.New(sha256.New, is.PublicKeyPEM(kid))
	mac.Write([]byte(input))
	return input + "." + enc.EncodeToString(mac.Sum(nil))
}

func (is *Issuer) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	is.discoveryFetches.Add(1)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                is.URL(),
		"jwks_uri":                              is.JWKSURL(),
		"authorization_endpoint":                is.URL() + "/oauth2/authorize",
		"token_endpoint":                        is.URL() + "/oauth2/token",
		"response_types_supported":              []string{"code", "token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{RS256, ES256},
	})
}

func (is *Issuer) serveJWKS(w http.ResponseWriter, r *http.Request) {
	is.jwksFetches.Add(1)
	is.mu.Lock()
	status := is.status
	var set struct {
		Keys []any `json:"keys"`
	}
	kids := make([]string, 0, len(is.keys))
	for kid, k := range is.keys {
		if !k.retired {
			kids = append(kids, kid)
		}
	}
	sort.Strings(kids)
	for _, kid := range kids {
		k := is.keys[kid]
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: k.alg, Use: "sig"})
	}
	for _, raw := range is.extraKey {
		set.Keys = append(set.Keys, raw)
	}
	is.mu.Unlock()
	if status != 0 && status != http.StatusOK {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(set)
}

// serveMint answers GET /mint?sub=S&org=O&role=R[&alg=ES256] with a fresh
// valid ID token as text, for the demo and browser tests that log in
// from outside the process.
func (is *Issuer) serveMint(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sub, org, role := q.Get("sub"), q.Get("org"), q.Get("role")
	if sub == "" || org == "" || role == "" {
		http.Error(w, "want sub, org and role query parameters", http.StatusBadRequest)
		return
	}
	tok, err := is.Mint(is.Claims(sub, org, role), MintOptions{Alg: q.Get("alg")})
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	fmt.Fprintln(w, tok)
}
