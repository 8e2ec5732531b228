package oidc

import "errors"

// Errors Validate returns, wrapped with what was wrong (never the token
// itself). Callers branch with errors.Is.
var (
	// ErrMalformed: not a compact JWS of three base64url parts with JSON
	// header and claims.
	ErrMalformed = errors.New("malformed token")
	// ErrTooLarge: longer than Config.MaxTokenBytes.
	ErrTooLarge = errors.New("token too large")
	// ErrBadHeader: a header member other than alg, kid and typ (jku, x5u,
	// jwk, x5c, crit, ...), a missing kid, or a wrong typ.
	ErrBadHeader = errors.New("token header refused")
	// ErrBadAlgorithm: alg is none, symmetric, not one we accept, or not
	// the one the key is for.
	ErrBadAlgorithm = errors.New("token algorithm refused")
	// ErrUnknownKey: kid is not in the issuer's JWKS, even after a refresh.
	ErrUnknownKey = errors.New("token signing key unknown")
	// ErrBadSignature: the signature does not verify with the key.
	ErrBadSignature = errors.New("token signature invalid")
	// ErrExpired: exp is in the past by more than the leeway.
	ErrExpired = errors.New("token expired")
	// ErrNotYetValid: nbf or iat is in the future by more than the leeway.
	ErrNotYetValid = errors.New("token not yet valid")
	// ErrBadClaims: iss, aud/client_id, token_use, sub, email,
	// custom:org_id or custom:role missing or wrong.
	ErrBadClaims = errors.New("token claims refused")
	// ErrJWKSUnavailable: the issuer's discovery document or JWKS could not
	// be fetched or used.
	ErrJWKSUnavailable = errors.New("issuer keys unavailable")
)

// result is the metric label for err: a fixed, bounded set.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrBadHeader):
		return "bad_header"
	case errors.Is(err, ErrBadAlgorithm):
		return "bad_algorithm"
	case errors.Is(err, ErrUnknownKey):
		return "unknown_key"
	case errors.Is(err, ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrNotYetValid):
		return "not_yet_valid"
	case errors.Is(err, ErrBadClaims):
		return "bad_claims"
	case errors.Is(err, ErrJWKSUnavailable):
		return "jwks_unavailable"
	}
	return "error"
}
