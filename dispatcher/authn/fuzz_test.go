package authn_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/test/jwks"
)

// FuzzAuthorization feeds arbitrary Authorization header values to the
// middleware. It must never panic, answer only 200 or 401, and let a
// request through only with the identity the issuer signed.
func FuzzAuthorization(f *testing.F) {
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
	a, err := authn.New(authn.Options{Validator: v})
	if err != nil {
		f.Fatal(err)
	}
	claims := is.Claims("fuzz", "acme", "reader")
	claims["exp"] = time.Now().Add(23 * time.Hour).Unix()
	tok, err := is.Mint(claims, jwks.MintOptions{Alg: jwks.ES256})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer " + tok)
	f.Add("bearer " + tok)
	f.Add("Basic " + tok)
	f.Add("Bearer  " + tok)
	f.Add("Bearer " + is.MintNone(claims, is.Kid(jwks.RS256)))
	var got oidc.Identity
	h := a.Authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = authn.IdentityFrom(r.Context())
	}))
	f.Fuzz(func(t *testing.T, header string) {
		got = oidc.Identity{}
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("Authorization", header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 401:
			if got != (oidc.Identity{}) {
				t.Fatalf("401 but the handler ran with %+v", got)
			}
		case 200:
			if got.Subject != "fuzz" || got.OrgID != "acme" || got.Role != "reader" {
				t.Fatalf("200 with identity %+v, want the signed one", got)
			}
		default:
			t.Fatalf("status: got %d, want 200 or 401", rec.Code)
		}
	})
}
