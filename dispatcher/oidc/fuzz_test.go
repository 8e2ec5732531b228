package oidc_test

import (
	"context"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/test/jwks"
)

// FuzzValidate feeds arbitrary bytes as a bearer token. Validate must never
// panic, and whatever it accepts must carry exactly the claims the issuer
// signed (signature malleability of unused base64 bits is harmless; a
// changed claim is a forgery).
func FuzzValidate(f *testing.F) {
	is, err := jwks.New()
	if err != nil {
		f.Fatal(err)
	}
	defer is.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := oidc.New(ctx, oidc.Config{Issuer: is.URL(), Audiences: []string{jwks.DefaultAudience}, MinRefreshInterval: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	defer v.Close()
	claims := is.Claims("fuzz-user", "acme", "reader")
	claims["exp"] = time.Now().Add(23 * time.Hour).Unix()
	want := oidc.Identity{Subject: "fuzz-user", Email: "fuzz-user@example.com", OrgID: "acme", Role: "reader"}
	for _, alg := range []string{jwks.RS256, jwks.ES256} {
		tok, err := is.Mint(claims, jwks.MintOptions{Alg: alg})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
		if _, err := v.Validate(ctx, tok); err != nil {
			f.Fatalf("seed %s token refused: %v", alg, err)
		}
	}
	f.Add(is.MintNone(claims, is.Kid(jwks.RS256)))
	f.Add(is.MintHS256WithPublicKey(claims, is.Kid(jwks.RS256)))
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Validate(ctx, token)
		if err != nil {
			return
		}
		id.ExpiresAt = time.Time{}
		if id != want {
			t.Fatalf("accepted a token carrying %+v; the issuer signed %+v", id, want)
		}
	})
}
