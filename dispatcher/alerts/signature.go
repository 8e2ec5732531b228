package alerts

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Webhook request headers.
const (
	// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256>": the
	// HMAC, keyed with the org's webhook secret, of "<t>." followed by the
	// exact body bytes.
	SignatureHeader = "X-Cordon-Signature"
	// IdempotencyHeader carries the alert's event ID, the same on every
	// redelivery: a receiver that has seen it already can ignore the request.
	IdempotencyHeader = "Idempotency-Key"
	// EventTypeHeader carries the event type (COST_ALERT).
	EventTypeHeader = "X-Cordon-Event"
)

// DefaultTolerance is how far a signature's timestamp may be from the
// receiver's clock; older requests are refused as possible replays.
const DefaultTolerance = 5 * time.Minute

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrBadSignatureHeader = errors.New("malformed signature header")
	ErrSignatureMismatch  = errors.New("signature does not match")
	ErrSignatureExpired   = errors.New("signature timestamp outside the tolerance")
)

// Verify checks a SignatureHeader value against body for a receiver whose
// clock reads now, accepting timestamps within tolerance (DefaultTolerance
// if zero). Comparison is constant-time; several v1= values (a secret
// being rotated) are accepted if any matches.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance == 0 {
		tolerance = DefaultTolerance
	}
	if len(header) > 1024 {
		return fmt.Errorf("%w: longer than 1024 bytes", ErrBadSignatureHeader)
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("%w: %q is not key=value", ErrBadSignatureHeader, part)
		}
		switch k {
		case "t":
			if ts != "" {
				return fmt.Errorf("%w: t given twice", ErrBadSignatureHeader)
			}
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return fmt.Errorf("%w: v1 is not %d hex-encoded bytes", ErrBadSignatureHeader, sha256.Size)
			}
			sigs = append(sigs, b)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=...,v1=...", ErrBadSignatureHeader)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sec <= 0 || strconv.FormatInt(sec, 10) != ts {
		return fmt.Errorf("%w: t is not a positive decimal Unix time", ErrBadSignatureHeader)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed at %s, now %s", ErrSignatureExpired, time.Unix(sec, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrSignatureMismatch
	}
	return nil
}
