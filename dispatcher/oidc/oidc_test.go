package oidc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/rbac"
	"github.com/cordon-dev/cordon/test/jwks"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const org = "acme"

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func issuer(t *testing.T) *jwks.Issuer {
	t.Helper()
	is, err := jwks.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(is.Close)
	return is
}

func validator(t *testing.T, is *jwks.Issuer, mod func(*oidc.Config)) *oidc.Validator {
	t.Helper()
	cfg := oidc.Config{Issuer: is.URL(), Audiences: []string{jwks.DefaultAudience}}
	if mod != nil {
		mod(&cfg)
	}
	v, err := oidc.New(ctxT(t), cfg)
	if err != nil {
		t.Fatalf("oidc.New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

func mint(t *testing.T, is *jwks.Issuer, claims map[string]any, opts jwks.MintOptions) string {
	t.Helper()
	tok, err := is.Mint(claims, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAccepts(t *testing.T) {
	is := issuer(t)
	v := validator(t, is, func(c *oidc.Config) { c.AcceptAccessTokens = true })
	const uuidOrg = "3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f"
	for _, tc := range []struct {
		name   string
		alg    string
		mod    func(map[string]any)
		wantID oidc.Identity
	}{
		{"RS256 ID token", jwks.RS256, nil, oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"ES256 ID token", jwks.ES256, nil, oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"aud array with ours", jwks.RS256, func(c map[string]any) { c["aud"] = []string{"other", jwks.DefaultAudience} },
			oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"no email", jwks.RS256, func(c map[string]any) { delete(c, "email") }, oidc.Identity{Subject: "u1", OrgID: org, Role: rbac.Writer}},
		{"org as UUID", jwks.ES256, func(c map[string]any) { c["custom:org_id"] = uuidOrg },
			oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: uuidOrg, Role: rbac.Writer}},
		{"reader", jwks.RS256, func(c map[string]any) { c["custom:role"] = "reader" },
			oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Reader}},
		{"admin", jwks.RS256, func(c map[string]any) { c["custom:role"] = "admin" },
			oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Admin}},
		{"expired within leeway", jwks.RS256, func(c map[string]any) {
			c["iat"] = time.Now().Add(-time.Hour).Unix()
			c["exp"] = time.Now().Add(-30 * time.Second).Unix()
		}, oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"nbf and iat ahead within leeway", jwks.RS256, func(c map[string]any) {
			c["nbf"] = time.Now().Add(30 * time.Second).Unix()
			c["iat"] = time.Now().Add(30 * time.Second).Unix()
		}, oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"access token with client_id", jwks.RS256, func(c map[string]any) {
			delete(c, "aud")
			c["token_use"] = "access"
			c["client_id"] = jwks.DefaultAudience
		}, oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
		{"generic OIDC without token_use", jwks.ES256, func(c map[string]any) { delete(c, "token_use") },
			oidc.Identity{Subject: "u1", Email: "u1@example.com", OrgID: org, Role: rbac.Writer}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := is.Claims("u1", org, "writer")
			if tc.mod != nil {
				tc.mod(c)
			}
			id, err := v.Validate(ctxT(t), mint(t, is, c, jwks.MintOptions{Alg: tc.alg}))
			if err != nil {
				t.Fatalf("Validate: got %v, want nil", err)
			}
			if id.ExpiresAt.IsZero() {
				t.Errorf("ExpiresAt: got zero, want the exp claim")
			}
			id.ExpiresAt = time.Time{}
			if id != tc.wantID {
				t.Errorf("identity: got %+v, want %+v", id, tc.wantID)
			}
		})
	}
}

func TestRefuses(t *testing.T) {
	is := issuer(t)
	v := validator(t, is, func(c *oidc.Config) { c.MinRefreshInterval = time.Hour })
	rsaKid := is.Kid(jwks.RS256)
	ecKid := is.Kid(jwks.ES256)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weakKid, _ := is.AddSigner(jwks.RS256, weak)
	now := time.Now()
	valid := func() map[string]any { return is.Claims("u1", org, "writer") }
	with := func(mod func(map[string]any)) map[string]any { c := valid(); mod(c); return c }
	signed := func(c map[string]any, opts jwks.MintOptions) string {
		if opts.Kid == "" {
			opts.Kid = rsaKid // not the weak key, the newest RS256 one
		}
		return mint(t, is, c, opts)
	}
	good := signed(valid(), jwks.MintOptions{})
	parts := strings.Split(good, ".")

	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"empty", "", oidc.ErrMalformed},
		{"garbage", "not a token", oidc.ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], oidc.ErrMalformed},
		{"four parts", good + ".x", oidc.ErrMalformed},
		{"empty signature", parts[0] + "." + parts[1] + ".", oidc.ErrMalformed},
		{"padded base64 header", parts[0] + "=." + parts[1] + "." + parts[2], oidc.ErrMalformed},
		{"oversized", signed(with(func(c map[string]any) { c["pad"] = strings.Repeat("a", 9000) }), jwks.MintOptions{}), oidc.ErrTooLarge},
		{"alg none with an empty signature", is.MintNone(valid(), rsaKid), oidc.ErrMalformed},
		{"alg none with a signature", jwks.Raw(map[string]any{"alg": "none", "kid": rsaKid}, valid(), []byte("x")), oidc.ErrBadAlgorithm},
		{"alg NONE", jwks.Raw(map[string]any{"alg": "NONE", "kid": rsaKid}, valid(), []byte("x")), oidc.ErrBadAlgorithm},
		{"HS256 signed with the RSA public key", is.MintHS256WithPublicKey(valid(), rsaKid), oidc.ErrBadAlgorithm},
		{"RS256 header on the EC key", jwks.Raw(map[string]any{"alg": "RS256", "kid": ecKid}, valid(), []byte(parts[2])), oidc.ErrBadAlgorithm},
		{"ES256 header on the RSA key", jwks.Raw(map[string]any{"alg": "ES256", "kid": rsaKid}, valid(), []byte(parts[2])), oidc.ErrBadAlgorithm},
		{"no alg", jwks.Raw(map[string]any{"kid": rsaKid}, valid(), []byte("x")), oidc.ErrBadHeader},
		{"no kid", jwks.Raw(map[string]any{"alg": "RS256"}, valid(), []byte("x")), oidc.ErrBadHeader},
		{"kid not a string", jwks.Raw(map[string]any{"alg": "RS256", "kid": 7}, valid(), []byte("x")), oidc.ErrBadHeader},
		{"jku header", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"jku": "http://127.0.0.1:1/keys"}}), oidc.ErrBadHeader},
		{"x5u header", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"x5u": "http://127.0.0.1:1/cert"}}), oidc.ErrBadHeader},
		{"embedded jwk header", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"jwk": map[string]any{"kty": "oct", "k": "AAAA"}}}), oidc.ErrBadHeader},
		{"crit header", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"crit": []string{"exp"}, "exp": 1}}), oidc.ErrBadHeader},
		{"unknown header member", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"zzz": 1}}), oidc.ErrBadHeader},
		{"typ not JWT", signed(valid(), jwks.MintOptions{ExtraHeaders: map[string]any{"typ": "JWE"}}), oidc.ErrBadHeader},
		{"unknown kid", signed(valid(), jwks.MintOptions{HeaderKid: "no-such-kid"}), oidc.ErrUnknownKey},
		{"RSA 1024 key", signed(valid(), jwks.MintOptions{Kid: weakKid}), oidc.ErrUnknownKey},
		{"signature of another token", parts[0] + "." + strings.Split(signed(with(func(c map[string]any) { c["custom:role"] = "admin" }), jwks.MintOptions{}), ".")[1] + "." + parts[2], oidc.ErrBadSignature},
		{"signed by a key with the same kid", func() string {
			other, _ := jwks.New()
			defer other.Close()
			return mint(t, other, valid(), jwks.MintOptions{HeaderKid: rsaKid})
		}(), oidc.ErrBadSignature},
		{"expired", signed(with(func(c map[string]any) {
			c["iat"] = now.Add(-2 * time.Hour).Unix()
			c["exp"] = now.Add(-2 * time.Minute).Unix()
		}), jwks.MintOptions{}), oidc.ErrExpired},
		{"nbf in the future", signed(with(func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() }), jwks.MintOptions{}), oidc.ErrNotYetValid},
		{"iat in the future", signed(with(func(c map[string]any) {
			c["iat"] = now.Add(5 * time.Minute).Unix()
			c["exp"] = now.Add(time.Hour).Unix()
		}), jwks.MintOptions{}), oidc.ErrNotYetValid},
		{"no exp", signed(with(func(c map[string]any) { delete(c, "exp") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no iat", signed(with(func(c map[string]any) { delete(c, "iat") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"exp as string", signed(with(func(c map[string]any) { c["exp"] = "9999999999" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"lifetime over 24h", signed(with(func(c map[string]any) { c["exp"] = now.Add(48 * time.Hour).Unix() }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"wrong iss", signed(with(func(c map[string]any) { c["iss"] = "https://evil.example" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"iss with trailing slash", signed(with(func(c map[string]any) { c["iss"] = is.URL() + "/" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no iss", signed(with(func(c map[string]any) { delete(c, "iss") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"wrong aud", signed(with(func(c map[string]any) { c["aud"] = "other-client" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no aud", signed(with(func(c map[string]any) { delete(c, "aud") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"aud as number", signed(with(func(c map[string]any) { c["aud"] = 5 }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"access token not accepted", signed(with(func(c map[string]any) {
			delete(c, "aud")
			c["token_use"] = "access"
			c["client_id"] = jwks.DefaultAudience
		}), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"token_use refresh", signed(with(func(c map[string]any) { c["token_use"] = "refresh" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"role superadmin", signed(with(func(c map[string]any) { c["custom:role"] = "superadmin" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"role Admin", signed(with(func(c map[string]any) { c["custom:role"] = "Admin" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"role array", signed(with(func(c map[string]any) { c["custom:role"] = []string{"admin"} }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no role", signed(with(func(c map[string]any) { delete(c, "custom:role") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no org", signed(with(func(c map[string]any) { delete(c, "custom:org_id") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"org with SQL", signed(with(func(c map[string]any) { c["custom:org_id"] = "acme' OR '1'='1" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"org upper case", signed(with(func(c map[string]any) { c["custom:org_id"] = "ACME" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"no sub", signed(with(func(c map[string]any) { delete(c, "sub") }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"sub with newline", signed(with(func(c map[string]any) { c["sub"] = "u1\nadmin" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"email without at", signed(with(func(c map[string]any) { c["email"] = "nobody" }), jwks.MintOptions{}), oidc.ErrBadClaims},
		{"duplicate claim", func() string {
			// Sign a payload with "custom:role" twice: parsers that keep the
			// first and parsers that keep the last disagree, so refuse it.
			return signedRaw(t, is, rsaKid, `{"iss":"`+is.URL()+`","sub":"u1","aud":"`+jwks.DefaultAudience+`","token_use":"id","custom:org_id":"acme","custom:role":"reader","custom:role":"admin","iat":`+fmt.Sprint(now.Unix())+`,"exp":`+fmt.Sprint(now.Add(time.Hour).Unix())+`}`)
		}(), oidc.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Validate(ctxT(t), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Validate: got %v (identity %+v), want %v", err, id, tc.want)
			}
			if id != (oidc.Identity{}) {
				t.Errorf("identity on error: got %+v, want zero", id)
			}
			if len(tc.token) > 20 && strings.Contains(err.Error(), tc.token[len(tc.token)-20:]) {
				t.Errorf("error %q echoes the token", err)
			}
		})
	}
}

// signedRaw signs an exact payload with the issuer's RSA key, for payloads
// json.Marshal cannot produce (duplicate members).
func signedRaw(t *testing.T, is *jwks.Issuer, kid, payload string) string {
	t.Helper()
	tok, err := is.MintPayload([]byte(payload), jwks.MintOptions{Kid: kid})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRotation(t *testing.T) {
	is := issuer(t)
	v := validator(t, is, func(c *oidc.Config) { c.MinRefreshInterval = time.Millisecond })
	oldKid := is.Kid(jwks.RS256)
	newKid, err := is.AddKey(jwks.RS256)
	if err != nil {
		t.Fatal(err)
	}
	before := is.JWKSFetches()
	tok := mint(t, is, is.Claims("u1", org, "reader"), jwks.MintOptions{Kid: newKid})
	if _, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("token signed by a key added after start: got %v, want accepted after a refresh", err)
	}
	if got := is.JWKSFetches() - before; got != 1 {
		t.Errorf("JWKS fetches for a new kid: got %d, want 1", got)
	}
	// The old key still works until retired; after retirement and a
	// refresh, its tokens are refused.
	oldTok := mint(t, is, is.Claims("u1", org, "reader"), jwks.MintOptions{Kid: oldKid})
	if _, err := v.Validate(ctxT(t), oldTok); err != nil {
		t.Fatalf("token of the old key before retirement: got %v, want accepted", err)
	}
	is.RetireKey(oldKid)
	time.Sleep(5 * time.Millisecond)
	// A refresh happens when some unknown kid shows up.
	unknown := mint(t, is, is.Claims("u1", org, "reader"), jwks.MintOptions{HeaderKid: "trigger"})
	if _, err := v.Validate(ctxT(t), unknown); !errors.Is(err, oidc.ErrUnknownKey) {
		t.Fatalf("unknown kid: got %v, want ErrUnknownKey", err)
	}
	if _, err := v.Validate(ctxT(t), oldTok); !errors.Is(err, oidc.ErrUnknownKey) {
		t.Fatalf("token of the retired key after refresh: got %v, want ErrUnknownKey", err)
	}
}

func TestPeriodicRefresh(t *testing.T) {
	is := issuer(t)
	v := validator(t, is, func(c *oidc.Config) {
		c.RefreshInterval = 20 * time.Millisecond
		c.MinRefreshInterval = time.Hour // unknown kids never refresh here
	})
	kid, err := is.AddKey(jwks.ES256)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a periodic refresh to have picked the new key up.
	start := is.JWKSFetches()
	deadline := time.Now().Add(5 * time.Second)
	for is.JWKSFetches() < start+2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	tok := mint(t, is, is.Claims("u1", org, "reader"), jwks.MintOptions{Kid: kid})
	if _, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("key added before a periodic refresh: got %v, want accepted", err)
	}
	// An outage keeps the last good keys.
	is.SetJWKSStatus(503)
	n := is.JWKSFetches()
	for is.JWKSFetches() < n+2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("during a JWKS outage: got %v, want the cached key to keep working", err)
	}
}

// TestUnknownKidSprayIsRateLimited: many tokens with random kids, many at
// once, cause at most one fetch per MinRefreshInterval.
func TestUnknownKidSprayIsRateLimited(t *testing.T) {
	is := issuer(t)
	reg := prometheus.NewRegistry()
	v := validator(t, is, func(c *oidc.Config) {
		c.MinRefreshInterval = time.Hour
		c.Registerer = reg
	})
	// New fetched once; the first unknown kid is within MinRefreshInterval
	// of that, so no fetch at all is allowed now.
	before := is.JWKSFetches()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := is.Mint(is.Claims("u1", org, "reader"), jwks.MintOptions{Alg: jwks.ES256, HeaderKid: fmt.Sprintf("spray-%d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := v.Validate(context.Background(), tok); !errors.Is(err, oidc.ErrUnknownKey) {
				t.Errorf("spray %d: got %v, want ErrUnknownKey", i, err)
			}
		}()
	}
	wg.Wait()
	if got := is.JWKSFetches() - before; got != 0 {
		t.Errorf("JWKS fetches during the spray: got %d, want 0", got)
	}
	if got := counter(t, reg, "cordon_dispatcher_oidc_validations_total", "unknown_key"); got != 200 {
		t.Errorf("unknown_key validations: got %v, want 200", got)
	}
}

// TestUnknownKidSingleFlight: when a refresh is allowed, concurrent
// unknown kids share one fetch.
func TestUnknownKidSingleFlight(t *testing.T) {
	is := issuer(t)
	var now time.Time
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	mu.Lock()
	now = time.Now()
	mu.Unlock()
	v := validator(t, is, func(c *oidc.Config) { c.MinRefreshInterval = time.Minute; c.Now = clock })
	kid, err := is.AddKey(jwks.RS256)
	if err != nil {
		t.Fatal(err)
	}
	tok := mint(t, is, is.Claims("u1", org, "reader"), jwks.MintOptions{Kid: kid})
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	before := is.JWKSFetches()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Validate(context.Background(), tok)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	if got := is.JWKSFetches() - before; got != 1 {
		t.Errorf("JWKS fetches for 50 concurrent new-kid tokens: got %d, want 1", got)
	}
	ok := 0
	for err := range errs {
		if err == nil {
			ok++
		}
	}
	// Callers that arrive after the shared fetch finished find the key in
	// the cache; all must succeed.
	if ok != 50 {
		t.Errorf("accepted: got %d, want 50", ok)
	}
}

func TestJWKSRefusesWeakAndForeignKeys(t *testing.T) {
	is := issuer(t)
	is.PublishRawKey(map[string]any{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
	is.PublishRawKey(map[string]any{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"})
	var logs bytes.Buffer
	v := validator(t, is, func(c *oidc.Config) { c.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
	hs := jwks.Raw(map[string]any{"alg": "HS256", "kid": "hmac"}, is.Claims("u1", org, "admin"), []byte("x"))
	if _, err := v.Validate(ctxT(t), hs); !errors.Is(err, oidc.ErrBadAlgorithm) {
		t.Errorf("HS256 with an oct key in the JWKS: got %v, want ErrBadAlgorithm", err)
	}
	for _, want := range []string{`kty \"oct\"`, `use \"enc\"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs: got %q, want a line mentioning %s", logs.String(), want)
		}
	}
}

func TestNewFailsWithoutKeys(t *testing.T) {
	is := issuer(t)
	is.SetJWKSStatus(500)
	_, err := oidc.New(ctxT(t), oidc.Config{Issuer: is.URL(), Audiences: []string{"x"}})
	if !errors.Is(err, oidc.ErrJWKSUnavailable) {
		t.Fatalf("New with a failing JWKS: got %v, want ErrJWKSUnavailable", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  oidc.Config
		want string
	}{
		{"no issuer", oidc.Config{Audiences: []string{"a"}}, "issuer is required"},
		{"plain http issuer", oidc.Config{Issuer: "http://idp.example.com", Audiences: []string{"a"}}, "only to loopback"},
		{"no audiences", oidc.Config{Issuer: "https://idp.example.com"}, "audiences is required"},
		{"empty audience", oidc.Config{Issuer: "https://idp.example.com", Audiences: []string{""}}, "empty string"},
		{"file JWKS", oidc.Config{Issuer: "https://idp.example.com", Audiences: []string{"a"}, JWKSURL: "file:///etc/keys"}, "scheme"},
		{"huge leeway", oidc.Config{Issuer: "https://idp.example.com", Audiences: []string{"a"}, Leeway: time.Hour}, "leeway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := (oidc.Config{Issuer: "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc", Audiences: []string{"a"}}).Validate(); err != nil {
		t.Errorf("Cognito config: got %v, want nil", err)
	}
}

func TestMaskEmail(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.com": "a***@example.com",
		"":                  "",
		"nobody":            "***",
		"@example.com":      "***",
		"élodie@example.fr": "é***@example.fr",
	} {
		if got := oidc.MaskEmail(in); got != want {
			t.Errorf("MaskEmail(%q): got %q, want %q", in, got, want)
		}
	}
}

// TestLogsHoldNoTokensOrEmails validates and refuses with debug logging
// on, then searches the logs for the token and the email.
func TestLogsHoldNoTokensOrEmails(t *testing.T) {
	is := issuer(t)
	var logs bytes.Buffer
	v := validator(t, is, func(c *oidc.Config) {
		c.Log = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := is.Claims("alice", org, "admin")
	c["email"] = "alice.secret@example.com"
	good := mint(t, is, c, jwks.MintOptions{})
	if _, err := v.Validate(ctxT(t), good); err != nil {
		t.Fatal(err)
	}
	c["iss"] = "https://evil.example"
	bad := mint(t, is, c, jwks.MintOptions{})
	if _, err := v.Validate(ctxT(t), bad); err == nil {
		t.Fatal("wrong iss accepted")
	}
	for _, secret := range []string{strings.Split(good, ".")[2], strings.Split(bad, ".")[2], "alice.secret"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("logs contain %q:\n%s", secret, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "a***@example.com") {
		t.Errorf("logs: got %s, want the masked email a***@example.com", logs.String())
	}
}

// counter reads the counter name{result=label} from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestKeySource(t *testing.T) {
	t.Run("configured JWKS URL skips discovery", func(t *testing.T) {
		is := issuer(t)
		v := validator(t, is, func(c *oidc.Config) { c.JWKSURL = is.JWKSURL() })
		if n := is.DiscoveryFetches(); n != 0 {
			t.Errorf("discovery fetches: got %d, want 0", n)
		}
		if _, err := v.Validate(ctxT(t), mint(t, is, is.Claims("u", org, "reader"), jwks.MintOptions{})); err != nil {
			t.Errorf("Validate: got %v, want nil", err)
		}
	})
	t.Run("discovery document for another issuer", func(t *testing.T) {
		is := issuer(t)
		// Same server, but we claim the issuer is a sub-path: the
		// document's issuer does not match exactly.
		_, err := oidc.New(ctxT(t), oidc.Config{Issuer: is.URL() + "/", Audiences: []string{"a"}})
		if !errors.Is(err, oidc.ErrJWKSUnavailable) || !strings.Contains(err.Error(), "want exactly") {
			t.Fatalf("New: got %v, want ErrJWKSUnavailable naming the issuer mismatch", err)
		}
	})
	t.Run("JWKS with no usable key", func(t *testing.T) {
		is := issuer(t)
		is.RetireKey(is.Kid(jwks.RS256))
		is.RetireKey(is.Kid(jwks.ES256))
		_, err := oidc.New(ctxT(t), oidc.Config{Issuer: is.URL(), Audiences: []string{"a"}})
		if !errors.Is(err, oidc.ErrJWKSUnavailable) {
			t.Fatalf("New: got %v, want ErrJWKSUnavailable", err)
		}
	})
}
