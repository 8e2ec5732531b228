package oidc_test

import (
	"context"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/test/jwks"
)

// BenchmarkValidate measures a full validation (header checks, key lookup,
// signature, claims) of a cached-key token, and the cost of refusing junk.
func BenchmarkValidate(b *testing.B) {
	is, err := jwks.New()
	if err != nil {
		b.Fatal(err)
	}
	defer is.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := oidc.New(ctx, oidc.Config{Issuer: is.URL(), Audiences: []string{jwks.DefaultAudience}, MinRefreshInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	for _, tc := range []struct{ name, token string }{
		{"RS256", must(is.Mint(is.Claims("u", "acme", "reader"), jwks.MintOptions{Alg: jwks.RS256}))},
		{"ES256", must(is.Mint(is.Claims("u", "acme", "reader"), jwks.MintOptions{Alg: jwks.ES256}))},
		{"refuse_alg_none", is.MintNone(is.Claims("u", "acme", "admin"), "k")},
		{"refuse_unknown_kid", must(is.Mint(is.Claims("u", "acme", "reader"), jwks.MintOptions{HeaderKid: "nope"}))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v.Validate(ctx, tc.token)
			}
		})
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}
