package oidc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// Limits on what the issuer may send us.
const (
	maxDocumentBytes = 256 << 10 // discovery document or JWKS
	maxKeys          = 64        // keys in one JWKS
	minRSABits       = 2048
	maxRSABits       = 8192 // bigger keys only cost us verification time
)

// verifyKey is one usable public key from the JWKS.
type verifyKey struct {
	kid  string
	pub  any                              // *rsa.PublicKey or *ecdsa.PublicKey
	algs map[jose.SignatureAlgorithm]bool // the algorithms this key verifies
}

// keySet is an immutable snapshot of the issuer's usable keys.
type keySet struct {
	keys map[string]*verifyKey
}

// acceptedAlgs are the only algorithms a token may use: asymmetric, with
// the hash fixed by the name. HS*, none and everything else are refused
// before any key is looked up.
var acceptedAlgs = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256,
	"PS256": jose.PS256,
	"ES256": jose.ES256,
	"ES384": jose.ES384,
}

// parseJWKS turns a JWKS document into a keySet. Keys that are unusable
// (wrong use, unsupported type, RSA under 2048 bits, private material, a
// kid seen twice) are left out and described in skipped; the document
// itself must be well formed.
func parseJWKS(doc []byte) (ks *keySet, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, nil, fmt.Errorf("decode JWKS: %w", err)
	}
	if len(set.Keys) > maxKeys {
		return nil, nil, fmt.Errorf("JWKS has %d keys, more than the %d we accept", len(set.Keys), maxKeys)
	}
	ks = &keySet{keys: map[string]*verifyKey{}}
	dup := map[string]bool{}
	for i, raw := range set.Keys {
		k, err := parseKey(raw)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		if _, seen := ks.keys[k.kid]; seen || dup[k.kid] {
			dup[k.kid] = true
			delete(ks.keys, k.kid)
			skipped = append(skipped, fmt.Sprintf("key %d: kid %q appears more than once; all its keys are ignored", i, k.kid))
			continue
		}
		ks.keys[k.kid] = k
	}
	return ks, skipped, nil
}

func parseKey(raw json.RawMessage) (*verifyKey, error) {
	var meta struct {
		Kty    string   `json:"kty"`
		Kid    string   `json:"kid"`
		Use    string   `json:"use"`
		Alg    string   `json:"alg"`
		KeyOps []string `json:"key_ops"`
		D      string   `json:"d"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	switch {
	case meta.Kid == "":
		return nil, errors.New("no kid")
	case meta.Use != "" && meta.Use != "sig":
		return nil, fmt.Errorf("use %q is not sig", meta.Use)
	case meta.D != "":
		return nil, errors.New("contains private key material")
	case meta.Kty != "RSA" && meta.Kty != "EC":
		return nil, fmt.Errorf("kty %q is not RSA or EC", meta.Kty)
	}
	if len(meta.KeyOps) > 0 && !contains(meta.KeyOps, "verify") {
		return nil, errors.New("key_ops does not include verify")
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("decode %s key: %w", meta.Kty, err)
	}
	k := &verifyKey{kid: meta.Kid, algs: map[jose.SignatureAlgorithm]bool{}}
	var fits []jose.SignatureAlgorithm
	switch pub := jwk.Key.(type) {
	case *rsa.PublicKey:
		if n := pub.N.BitLen(); n < minRSABits || n > maxRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; want %d to %d", n, minRSABits, maxRSABits)
		}
		k.pub = pub
		fits = []jose.SignatureAlgorithm{jose.RS256, jose.PS256}
	case *ecdsa.PublicKey:
		k.pub = pub
		switch pub.Curve {
		case elliptic.P256():
			fits = []jose.SignatureAlgorithm{jose.ES256}
		case elliptic.P384():
			fits = []jose.SignatureAlgorithm{jose.ES384}
		default:
			return nil, fmt.Errorf("EC curve %s not accepted; want P-256 or P-384", pub.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("key type %T not accepted", jwk.Key)
	}
	for _, a := range fits {
		if meta.Alg == "" || meta.Alg == string(a) {
			k.algs[a] = true
		}
	}
	if len(k.algs) == 0 {
		return nil, fmt.Errorf("alg %q does not fit a %s key", meta.Alg, meta.Kty)
	}
	return k, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkFetchURL refuses URLs we must not fetch keys from: anything but
// https, except plain http to a loopback address (tests, the demo).
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("parse %q: %w", raw, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return fmt.Errorf("%q: scheme %q not allowed; use https", raw, u.Scheme)
	}
	if u.User != nil || u.Host == "" {
		return fmt.Errorf("%q: want an absolute URL without user info", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return nil
		}
		return fmt.Errorf("%q: plain http is allowed only to loopback; use https", raw)
	}
	return fmt.Errorf("%q: scheme %q not allowed; use https", raw, u.Scheme)
}

// get fetches url, refusing redirects, non-200 answers and bodies over
// maxDocumentBytes.
func get(ctx context.Context, client *http.Client, rawURL string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxDocumentBytes))
		return nil, fmt.Errorf("GET %s: status %d, want 200", rawURL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", rawURL, err)
	}
	if len(body) > maxDocumentBytes {
		return nil, fmt.Errorf("GET %s: body larger than %d bytes", rawURL, maxDocumentBytes)
	}
	return body, nil
}

// discover reads the issuer's OpenID configuration and returns its
// jwks_uri. The document's issuer must equal ours exactly (OpenID Connect
// Discovery 1.0, section 4.3).
func discover(ctx context.Context, client *http.Client, issuer string) (string, error) {
	body, err := get(ctx, client, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&doc); err != nil {
		return "", fmt.Errorf("discovery: decode: %w", err)
	}
	if doc.Issuer != issuer {
		return "", fmt.Errorf("discovery: document names issuer %q, want exactly %q", doc.Issuer, issuer)
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("discovery: jwks_uri: %w", err)
	}
	return doc.JWKSURI, nil
}
