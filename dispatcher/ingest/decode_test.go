package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/audit"
)

// strictV1 is the decoding DecodeEvents did with encoding/json before the
// hand-written decoder, kept as the reference the fuzz test compares with.
func strictV1(body []byte) ([]audit.Event, []json.RawMessage, error) {
	var v struct {
		Events []struct {
			audit.Event
			Metadata json.RawMessage `json:"metadata,omitempty"`
		} `json:"events"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("data after the top-level object")
	}
	evs := make([]audit.Event, len(v.Events))
	mds := make([]json.RawMessage, len(v.Events))
	for i, w := range v.Events {
		evs[i], mds[i] = w.Event, w.Metadata
	}
	return evs, mds, nil
}

func TestDecodeEventsBody(t *testing.T) {
	cases := []struct {
		name    string
		body    string
		want    int    // events, when wantErr is ""
		wantErr string // "" for success
	}{
		{"good", `{"events":[` + goodEvent + `]}`, 1, ""},
		{"whitespace everywhere", " {\n\"events\" : [ " + goodEvent + " , " + goodEvent + " ] }\n", 2, ""},
		{"null body", `null`, 0, ""},
		{"null events", `{"events":null}`, 0, ""},
		{"null fields", `{"events":[{"event_id":null,"actor":null,"metadata":null}]}`, 1, ""},
		{"escaped field", `{"events":[{"event_id":"evt_\u0031"}]}`, 1, ""},
		{"unknown top-level field", `{"events":[],"x":1}`, 0, `unknown field "x"`},
		{"unknown event field", `{"events":[{"evil":1}]}`, 0, `unknown field "evil"`},
		{"unknown actor field", `{"events":[{"actor":{"role":"admin"}}]}`, 0, `unknown field "role"`},
		{"field in the wrong case", `{"events":[{"Event_ID":"x"}]}`, 0, `unknown field "Event_ID"`},
		{"duplicate field", `{"events":[{"event_id":"a","event_id":"b"}]}`, 0, "duplicate"},
		{"number for a string", `{"events":[{"action":1}]}`, 0, "action: want a string, got number"},
		{"object for a string", `{"events":[{"actor":{"id":{}}}]}`, 0, "actor.id: want a string"},
		{"bad time", `{"events":[{"timestamp":"yesterday"}]}`, 0, "timestamp"},
		{"array at top", `[]`, 0, "want an object"},
		{"events not an array", `{"events":{}}`, 0, "want an array"},
		{"trailing data", `{"events":[]} {}`, 0, "data after"},
		{"trailing garbage", `{"events":[]}x`, 0, "data after"},
		{"truncated", `{"events":[{"action":"A"`, 0, "malformed JSON"},
		{"not JSON", `events=1`, 0, "malformed JSON"},
		{"invalid UTF-8", "{\"events\":[{\"action\":\"\xff\"}]}", 0, "malformed JSON"},
		{"too many", `{"events":[{},{},{}]}`, 0, "limit is 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := decodeEventsBody([]byte(tc.body), 2)
			if tc.wantErr == "" {
				if err != nil || len(recs) != tc.want {
					t.Fatalf("got %d events, %v; want %d, nil", len(recs), err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzDecodeEventsBody: whatever the hand-written decoder accepts,
// encoding/json's strict decoding accepted too, with the same fields; and
// what encoding/json accepted, it accepts too, but for the few things it
// refuses on purpose (duplicate names, names in another case, invalid UTF-8
// and unpaired surrogates, which encoding/json silently replaced).
func FuzzDecodeEventsBody(f *testing.F) {
	f.Add([]byte(`{"events":[` + goodEvent + `]}`))
	f.Add([]byte(`{"events":[{"actor":{"id":"a\"b\\u0000"},"metadata":{"k":[1,{"x":null}]}}]}`))
	f.Add([]byte(`{"events":null}`))
	f.Add([]byte(`{"events":[{"timestamp":"2026-11-23T11:59:00.123456789+01:00","request_id":null}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, err := decodeEventsBody(body, 1000)
		evs, mds, v1err := strictV1(body)
		if err != nil {
			if v1err == nil && utf8.Valid(body) && !strings.Contains(err.Error(), "duplicate") &&
				!strings.Contains(err.Error(), "unknown field") && !strings.Contains(err.Error(), "surrogate") &&
				!(len(evs) > 1000 && strings.Contains(err.Error(), "limit")) {
				t.Fatalf("refused what encoding/json accepted: %v\nbody %q", err, body)
			}
			return
		}
		if v1err != nil {
			t.Fatalf("accepted what encoding/json refused (%v)\nbody %q", v1err, body)
		}
		if len(recs) != len(evs) {
			t.Fatalf("got %d events, encoding/json %d", len(recs), len(evs))
		}
		for i := range recs {
			got := recs[i].Event
			got.Metadata = nil
			if !reflect.DeepEqual(got, evs[i]) {
				t.Errorf("event %d: got %+v, encoding/json %+v", i, got, evs[i])
			}
			if !bytes.Equal(bytes.TrimSpace(recs[i].RawMetadata), bytes.TrimSpace(mds[i])) {
				t.Errorf("event %d: metadata %q, encoding/json %q", i, recs[i].RawMetadata, mds[i])
			}
		}
	})
}

// FuzzMayHoldSecret: the one-pass test answers yes wherever the plain one
// (every literal searched for in turn, in the lowercased text) does.
func FuzzMayHoldSecret(f *testing.F) {
	for _, s := range []string{`{"host":"h"}`, `{"Token":"x"}`, `{"u":"s://a:b@h"}`, `{"k":"AKIAIOSFODNN7EXAMPLE"}`,
		`{"h":"BEARER x"}`, `{"to` + "\u212a" + `en":"x"}`, `{"x":"xo"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		plain := false
		for _, h := range secretHints {
			plain = plain || bytes.Contains(raw, []byte(h))
		}
		lower := bytes.ToLower(raw)
		for _, h := range foldHints {
			plain = plain || bytes.Contains(lower, []byte(h))
		}
		if plain && !mayHoldSecret(raw) {
			t.Errorf("mayHoldSecret(%q) = false, the plain search finds a literal", raw)
		}
	})
}

// benchBody is a request as the dispatcher bench's sidecars send it.
func benchBody(n int) []byte {
	evs := make([]audit.Event, n)
	for k := range evs {
		evs[k] = audit.Event{
			Timestamp: now.Add(-time.Second),
			EventType: "EGRESS_ALLOWED",
			EventID:   audit.NewID(),
			Actor:     audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.bench/org/org-1/job/job-1"},
			Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: "org-1"},
			Action:    "CONNECT",
			Result:    audit.ResultSuccess,
			Metadata:  map[string]any{"host": "api.example.com", "port": 443, "bytes_out": 1000 + k, "sni": "api.example.com"},
			RequestID: fmt.Sprintf("req_1_%d", k),
		}
	}
	b, err := json.Marshal(map[string]any{"events": evs})
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkDecodeEvents is the dispatcher's cost per request of 100 events
// (reading, decoding, validating, redacting).
func BenchmarkDecodeEvents(b *testing.B) {
	body := benchBody(100)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := DecodeEvents(bytes.NewReader(body), Limits{}, now); err != nil {
			b.Fatal(err)
		}
	}
}
