package jwks

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func fetchJWKS(t *testing.T, is *Issuer) jose.JSONWebKeySet {
	t.Helper()
	resp, err := http.Get(is.JWKSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	return set
}

// TestTokensVerifyWithPublishedKeys checks the issuer independently of
// dispatcher/oidc: go-jose verifies its tokens with the served keys, which
// are real RSA 2048 and P-256 public keys.
func TestTokensVerifyWithPublishedKeys(t *testing.T) {
	is, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	defer http.DefaultClient.CloseIdleConnections()
	set := fetchJWKS(t, is)
	if len(set.Keys) != 2 {
		t.Fatalf("keys: got %d, want 2", len(set.Keys))
	}
	for _, k := range set.Keys {
		switch pub := k.Key.(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() != 2048 || k.Algorithm != RS256 {
				t.Errorf("RSA key: got %d bits %s, want 2048 RS256", pub.N.BitLen(), k.Algorithm)
			}
		case *ecdsa.PublicKey:
			if pub.Curve.Params().Name != "P-256" || k.Algorithm != ES256 {
				t.Errorf("EC key: got %s %s, want P-256 ES256", pub.Curve.Params().Name, k.Algorithm)
			}
		default:
			t.Errorf("key type: got %T, want RSA or ECDSA public key", k.Key)
		}
	}
	for _, alg := range []string{RS256, ES256} {
		tok, err := is.Mint(is.Claims("u", "acme", "reader"), MintOptions{Alg: alg})
		if err != nil {
			t.Fatal(err)
		}
		jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
		if err != nil {
			t.Fatal(err)
		}
		keys := set.Key(jws.Signatures[0].Header.KeyID)
		if len(keys) != 1 {
			t.Fatalf("%s: kid %q not published", alg, jws.Signatures[0].Header.KeyID)
		}
		if _, err := jws.Verify(keys[0].Key); err != nil {
			t.Errorf("%s token does not verify with the published key: %v", alg, err)
		}
	}
}

func TestRotation(t *testing.T) {
	is, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	defer http.DefaultClient.CloseIdleConnections()
	old := is.Kid(RS256)
	nk, err := is.AddKey(RS256)
	if err != nil {
		t.Fatal(err)
	}
	if is.Kid(RS256) != nk {
		t.Errorf("newest RS256 kid: got %q, want %q", is.Kid(RS256), nk)
	}
	is.RetireKey(old)
	set := fetchJWKS(t, is)
	if len(set.Key(old)) != 0 || len(set.Key(nk)) != 1 {
		t.Errorf("after rotation: old published %d, new %d; want 0 and 1", len(set.Key(old)), len(set.Key(nk)))
	}
	if _, err := is.Mint(is.Claims("u", "acme", "reader"), MintOptions{Kid: old}); err != nil {
		t.Errorf("minting with a retired key: got %v, want it to work (leaked key)", err)
	}
	if n := is.JWKSFetches(); n != 1 {
		t.Errorf("JWKSFetches: got %d, want 1", n)
	}
}

func TestNewOnRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.0.0.1:0", "localhost:0"} {
		if is, err := NewOn(addr); err == nil {
			is.Close()
			t.Errorf("NewOn(%q): got nil error, want a refusal", addr)
		}
	}
}

func TestServeAndMint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServeConfig{Org: "acme", Roles: []string{"reader", "admin"}, Out: pw})
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var issuer string
	tokens := map[string]string{}
	for len(tokens) < 2 && sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "issuer":
			issuer = f[1]
		case len(f) == 3 && f[0] == "token":
			tokens[f[1]] = f[2]
		}
	}
	if issuer == "" || tokens["reader"] == "" || tokens["admin"] == "" {
		t.Fatalf("Serve output: got issuer %q tokens %v, want both", issuer, tokens)
	}
	resp, err := http.Get(issuer + "/mint?sub=bob&org=acme&role=writer&alg=ES256")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != 200 || strings.Count(strings.TrimSpace(string(body)), ".") != 2 {
		t.Errorf("/mint: got %d %q, want 200 and a token", resp.StatusCode, body)
	}
	cancel()
	go io.Copy(io.Discard, pr)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
