package ingestclient

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
)

func sampleEvent(md map[string]any) audit.Event {
	return audit.Event{
		Timestamp: time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.FixedZone("x", 3600)),
		EventType: "EGRESS_ALLOWED",
		EventID:   "evt_01936b2e-8f3a-7cde-9abc-0123456789ab",
		Actor:     audit.Actor{Type: audit.ActorJob, ID: "spiffe://cordon.test/org/acme/job/etl"},
		Resource:  audit.Resource{Type: "EGRESS", ID: "api.example.com:443", TenantID: "acme"},
		Action:    "CONNECT",
		Result:    audit.ResultSuccess,
		Metadata:  md,
		RequestID: "req_1",
	}
}

// decodeAny decodes JSON text into generic values, numbers kept exact.
func decodeAny(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

// TestAppendEventsBodyMatchesEncodingJSON: the hand-written body decodes to
// exactly what encoding/json's encoding of the same events decodes to.
func TestAppendEventsBodyMatchesEncodingJSON(t *testing.T) {
	type point struct{ X, Y int }
	full := sampleEvent(nil)
	full.Actor.IPAddress, full.Actor.UserAgent = "10.0.0.7", "curl/8 <script>&"
	cases := map[string]audit.Event{
		"no metadata":    sampleEvent(nil),
		"empty metadata": sampleEvent(map[string]any{}),
		"every optional": full,
		"no request id":  func() audit.Event { e := sampleEvent(nil); e.RequestID = ""; return e }(),
		"utc":            func() audit.Event { e := sampleEvent(nil); e.Timestamp = e.Timestamp.UTC(); return e }(),
		"scalars": sampleEvent(map[string]any{
			"s": "a\"b\\c\n\t\x00<>&\u2028é", "bad utf8": "x\xffy", "b": true, "f": false, "nil": nil,
			"i": 42, "i32": int32(-7), "i64": int64(math.MinInt64), "u32": uint32(7), "u64": uint64(math.MaxUint64),
		}),
		"floats": sampleEvent(map[string]any{
			"a": 1.5, "b": 1e21, "c": 1e-7, "d": 0.0, "e": -2.5e-9, "f": 123456789.0, "g": float32(0.1), "h": float32(1e-7),
			"i": math.MaxFloat64, "j": 5e-324,
		}),
		"nested": sampleEvent(map[string]any{
			"m":      map[string]any{"z": 1, "a": []any{1, "x", nil, map[string]any{"k": []any{}}}},
			"nilmap": map[string]any(nil), "nilslice": []any(nil),
		}),
		"other types by encoding/json": sampleEvent(map[string]any{
			"strs": []string{"a", "b"}, "pt": point{1, 2}, "n": json.Number("12345678901234567890"), "d": time.Second,
			"ms": map[string]string{"b": "1", "a": "2"},
		}),
		"many keys": sampleEvent(func() map[string]any {
			m := map[string]any{}
			for i := range 40 {
				m[fmt.Sprintf("k%02d", 40-i)] = i
			}
			return m
		}()),
	}
	for name, ev := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := appendEventsBody(nil, []audit.Event{ev, ev})
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(map[string]any{"events": []audit.Event{ev, ev}})
			if err != nil {
				t.Fatal(err)
			}
			if g, w := decodeAny(t, got), decodeAny(t, want); !reflect.DeepEqual(g, w) {
				t.Errorf("got  %s\nwant %s", got, want)
			}
		})
	}
}

func TestAppendEventsBodyRefuses(t *testing.T) {
	loop := map[string]any{}
	loop["self"] = loop
	far := sampleEvent(nil)
	far.Timestamp = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := map[string]audit.Event{
		"NaN":              sampleEvent(map[string]any{"x": math.NaN()}),
		"infinity":         sampleEvent(map[string]any{"x": math.Inf(1)}),
		"map holds itself": sampleEvent(loop),
		"year 10000":       far,
		"channel":          sampleEvent(map[string]any{"c": make(chan int)}),
	}
	for name, ev := range cases {
		t.Run(name, func(t *testing.T) {
			if b, err := appendEventsBody(nil, []audit.Event{ev}); err == nil {
				t.Errorf("got %s, nil; want an error", b)
			}
			if _, err := json.Marshal(ev); err == nil {
				t.Errorf("encoding/json accepts it: the two should agree")
			}
		})
	}
}

// BenchmarkAppendEventsBody is a sidecar's cost to encode a request of 100
// events like the dispatcher bench's.
func BenchmarkAppendEventsBody(b *testing.B) {
	evs := make([]audit.Event, 100)
	for k := range evs {
		evs[k] = sampleEvent(map[string]any{"host": "api.example.com", "port": 443, "bytes_out": 1000 + k, "sni": "api.example.com"})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := appendEventsBody(make([]byte, 0, 64+512*len(evs)), evs); err != nil {
			b.Fatal(err)
		}
	}
}
