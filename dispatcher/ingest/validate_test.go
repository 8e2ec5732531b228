package ingest

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

const goodEvent = `{"timestamp":"2026-11-23T11:59:00Z","event_type":"EGRESS_DENIED","event_id":"evt_01936b2e-8f3a-7cde-9abc-0123456789ab",
"actor":{"type":"JOB","id":"spiffe://cordon.test/org/acme/job/etl","ip_address":"10.0.0.7"},
"resource":{"type":"EGRESS","id":"evil.example.com:443","tenant_id":"acme"},"action":"CONNECT","result":"DENIED",
"metadata":{"reason":"not in allowlist","n":12345678901234567890},"request_id":"req_1"}`

func TestDecodeEventsValidation(t *testing.T) {
	cases := []struct {
		name    string
		body    string
		wantErr string // "" for success
	}{
		{"good", `{"events":[` + goodEvent + `]}`, ""},
		{"unknown field", `{"events":[` + goodEvent + `],"x":1}`, `unknown field "x"`},
		{"missing events", `{}`, "missing or empty"},
		{"null", `null`, "missing or empty"},
		{"array at top", `[]`, "malformed JSON"},
		{"trailing garbage", `{"events":[` + goodEvent + `]}x`, "data after"},
		{"uppercase uuid", `{"events":[` + strings.Replace(goodEvent, "evt_01936b2e", "evt_01936B2E", 1) + `]}`, "event_id"},
		{"old", `{"events":[` + strings.Replace(goodEvent, "2026-11-23T11:59:00Z", "2026-09-01T00:00:00Z", 1) + `]}`, "in the past"},
		{"zero time", `{"events":[` + strings.Replace(goodEvent, "2026-11-23T11:59:00Z", "0001-01-01T00:00:00Z", 1) + `]}`, "timestamp: is required"},
		{"lowercase type", `{"events":[` + strings.Replace(goodEvent, "EGRESS_DENIED", "egress_denied", 1) + `]}`, "event_type"},
		{"bad actor type", `{"events":[` + strings.Replace(goodEvent, `"type":"JOB"`, `"type":"ROOT"`, 1) + `]}`, "actor.type"},
		{"bad ip", `{"events":[` + strings.Replace(goodEvent, "10.0.0.7", "10.0.0.300", 1) + `]}`, "ip_address"},
		{"bad tenant", `{"events":[` + strings.Replace(goodEvent, `"tenant_id":"acme"`, `"tenant_id":"Acme Corp"`, 1) + `]}`, "tenant_id"},
		{"bad result", `{"events":[` + strings.Replace(goodEvent, `"DENIED"`, `"MAYBE"`, 1) + `]}`, "result"},
		{"newline in id", `{"events":[` + strings.Replace(goodEvent, `job/etl"`, `job/etl\nFAKE LOG LINE"`, 1) + `]}`, "control characters"},
		{"deep metadata", `{"events":[` + strings.Replace(goodEvent, `"metadata":{`, `"metadata":{"d":[[[[[[[[[[1]]]]]]]]]],`, 1) + `]}`, "deeper"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs, _, err := DecodeEvents(strings.NewReader(tc.body), Limits{}, now)
			if tc.wantErr == "" {
				if err != nil || len(evs) != 1 {
					t.Fatalf("got %d events, %v; want 1, nil", len(evs), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Errorf("got %T, want *InvalidError", err)
			}
		})
	}
}

func TestDecodeKeepsExactNumbers(t *testing.T) {
	evs, _, err := DecodeEvents(strings.NewReader(`{"events":[`+goodEvent+`]}`), Limits{}, now)
	if err != nil {
		t.Fatal(err)
	}
	b := evs[0].RawMetadata
	if !strings.Contains(string(b), "12345678901234567890") {
		t.Errorf("got metadata %s, want the number kept exactly", b)
	}
}

func TestDecodeLimits(t *testing.T) {
	body := `{"events":[` + goodEvent + `,` + goodEvent + `]}`
	_, _, err := DecodeEvents(strings.NewReader(body), Limits{MaxItems: 1}, now)
	if err == nil || !strings.Contains(err.Error(), "limit is 1") {
		t.Errorf("two events with MaxItems 1: got %v, want the limit named", err)
	}
	_, _, err = DecodeEvents(strings.NewReader(body), Limits{MaxBodyBytes: int64(len(body) - 1)}, now)
	var tl *TooLargeError
	if !errors.As(err, &tl) {
		t.Errorf("body one byte over: got %v, want *TooLargeError", err)
	}
	if _, _, err := DecodeEvents(strings.NewReader(body), Limits{MaxBodyBytes: int64(len(body))}, now); err != nil {
		t.Errorf("body exactly at the limit: got %v, want nil", err)
	}
}

func TestRedact(t *testing.T) {
	cases := []struct {
		name   string
		in     map[string]any
		secret string // must not survive
		keep   string // must survive
	}{
		{"password key", map[string]any{"password": "hunter2", "user": "bob"}, "hunter2", "bob"},
		{"nested token key", map[string]any{"a": map[string]any{"GitHub_Token": "abc"}}, "abc", ""},
		{"authorization key", map[string]any{"Authorization": "Basic Ym9iOnB3"}, "Ym9iOnB3", ""},
		{"aws key id in text", map[string]any{"msg": "using AKIAIOSFODNN7EXAMPLE now"}, "AKIAIOSFODNN7EXAMPLE", "using"},
		{"jwt in a list", map[string]any{"l": []any{"x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}}, "eyJzdWIiOiIxIn0", "x"},
		{"private key", map[string]any{"pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"}, "MIIEow", ""},
		{"url credentials", map[string]any{"dsn": "postgres://app:pa55@db:5432/x"}, "pa55", "db:5432"},
		{"github token", map[string]any{"m": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}, "ghp_abcdefghij", ""},
		{"bearer", map[string]any{"hdr": "Bearer abc.def.ghi-123"}, "abc.def.ghi-123", ""},
		{"aws secret line", map[string]any{"cfg": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}, "wJalrXUtnFEMI", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, n := RedactMetadata(tc.in)
			b, _ := json.Marshal(out)
			if strings.Contains(string(b), tc.secret) || n == 0 {
				t.Errorf("got %s (%d redactions), want %q redacted", b, n, tc.secret)
			}
			if tc.keep != "" && !strings.Contains(string(b), tc.keep) {
				t.Errorf("got %s, want %q kept", b, tc.keep)
			}
		})
	}
	in := map[string]any{"password": "x"}
	RedactMetadata(in)
	if in["password"] != "x" {
		t.Error("RedactMetadata changed its input, want a copy")
	}
}

func TestMaskEmails(t *testing.T) {
	cases := map[string]string{
		"user mallory.smith@example.com denied": "user mall***@example.com denied",
		"bob@ex.io":                             "bob***@ex.io",
		"no email here":                         "no email here",
	}
	for in, want := range cases {
		if got := MaskEmails(in); got != want {
			t.Errorf("MaskEmails(%q) = %q, want %q", in, got, want)
		}
	}
}

var (
	eventIDRE = regexp.MustCompile(`^evt_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	upperRE   = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)
	slugRE    = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$`)
	runIDRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
)

// FuzzNameChecks: the hand-written checks accept exactly what their
// regexps accept.
func FuzzNameChecks(f *testing.F) {
	for _, s := range []string{"", "a", "acme", "a-", "-a", "a_b", "ACME", "EGRESS_DENIED", "_X", "X1",
		"evt_01936b2e-8f3a-7cde-9abc-0123456789ab", "evt_01936b2e-8f3a-7cde-9abc-0123456789aB", "run-1", "r:1.2_3", ".r",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("A", 64), strings.Repeat("A", 65), "a\n", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isPrefixedUUID(s, "evt_"), eventIDRE.MatchString(s); got != want {
			t.Errorf("isPrefixedUUID(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := isUpperName(s), upperRE.MatchString(s); got != want {
			t.Errorf("isUpperName(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := isSlug(s), slugRE.MatchString(s); got != want {
			t.Errorf("isSlug(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := isRunID(s), runIDRE.MatchString(s); got != want {
			t.Errorf("isRunID(%q) = %v, regexp says %v", s, got, want)
		}
	})
}

// FuzzDecodeEvents: no body panics the decoder, and nothing accepted still
// carries a recognisable secret or a control character.
func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(`{"events":[` + goodEvent + `]}`))
	f.Add([]byte(`{"events":[{"metadata":{"password":"x"}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, _, err := DecodeEvents(strings.NewReader(string(body)), Limits{MaxBodyBytes: 1 << 16}, now)
		if err != nil {
			return
		}
		for _, rec := range evs {
			ev := rec.Event
			if b := rec.RawMetadata; b != nil {
				// What is stored holds nothing redaction would change.
				dec := json.NewDecoder(strings.NewReader(string(b)))
				dec.UseNumber()
				var m map[string]any
				if err := dec.Decode(&m); err != nil {
					t.Fatalf("stored metadata %s is not a JSON object: %v", b, err)
				}
				if _, n := RedactMetadata(m); n != 0 {
					t.Errorf("stored metadata %s still holds %d redactable values", b, n)
				}
			}
			if strings.ContainsAny(ev.Actor.ID+ev.Resource.ID+ev.RequestID, "\x00\n\r") {
				t.Errorf("accepted control characters in %+v", ev)
			}
		}
	})
}

func TestPrepareMetadata(t *testing.T) {
	cases := []struct {
		name    string
		raw     string
		want    string // stored JSON, exactly
		wantErr string
	}{
		{"plain is stored as sent, compacted", `{ "host" : "api.example.com", "n": 1.50 }`, `{"host":"api.example.com","n":1.50}`, ""},
		{"null", `null`, "", ""},
		{"secret key, any case", `{"Password":"hunter2","host":"h"}`, `{"Password":"[REDACTED]","host":"h"}`, ""},
		{"escaped AWS key", `{"note":"key \u0041KIAIOSFODNN7EXAMPLE"}`, `{"note":"key [REDACTED]"}`, ""},
		{"escaped URL credentials", `{"dsn":"postgres:\/\/app:pa55@db\/x"}`, `{"dsn":"postgres://[REDACTED]@db/x"}`, ""},
		{"JWT", `{"t":["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"]}`, `{"t":["[REDACTED]"]}`, ""},
		{"array", `[1]`, "", "must be a JSON object"},
		{"string", `"x"`, "", "must be a JSON object"},
		{"deep", `{"a":[[[[[[[[[1]]]]]]]]]}`, "", "deeper than 8"},
		{"deep with escapes", `{"a\u0062":[[[[[[[[[1]]]]]]]]]}`, "", "deeper than 8"},
		{"too large", `{"a":"` + strings.Repeat("x", 17<<10) + `"}`, "", "the limit is"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, _, _, err := prepareMetadata(nil, json.RawMessage(tc.raw), Limits{}.withDefaults())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %s, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("got %s, %v; want %s, nil", got, err, tc.want)
			}
		})
	}
}

// FuzzPrepareMetadata: whatever metadata is accepted is stored as a JSON
// object holding nothing redaction would change, whether it took the fast
// path or not.
func FuzzPrepareMetadata(f *testing.F) {
	for _, s := range []string{`{"host":"h"}`, `{"Token":"x"}`, `{"u":"s:\/\/a:b@h"}`, `{"k":"\u0041KIAIOSFODNN7EXAMPLE"}`,
		`{"a":{"b":["Bearer abcdefghij"]}}`, `{"x":"AKIAIOSFODNN7EXAMPLE"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		out, _, _, err := prepareMetadata(nil, raw, Limits{}.withDefaults())
		if err != nil || out == nil {
			return
		}
		dec := json.NewDecoder(strings.NewReader(string(out)))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("stored %s is not a JSON object: %v", out, err)
		}
		if _, n := RedactMetadata(m); n != 0 {
			t.Errorf("stored %s (from %s) still holds %d redactable values", out, raw, n)
		}
	})
}

func TestPrepareMetadataInvalidUTF8(t *testing.T) {
	got, _, _, err := prepareMetadata(nil, json.RawMessage("{\"a\":\"\xff\"}"), Limits{}.withDefaults())
	if err != nil || !utf8.Valid(got) {
		t.Errorf("got %q, %v; want valid UTF-8", got, err)
	}
}
