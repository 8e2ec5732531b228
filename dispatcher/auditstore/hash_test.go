package auditstore

import (
	"bytes"
	"encoding/hex"
	"testing"
	"time"
)

// TestHashEncodingIsStable: rows already stored must keep verifying, so the
// hash of a row never changes. The wanted hashes were computed by the first
// version of computeHash; a change here needs a new hashVersion, not new
// golden values.
func TestHashEncodingIsStable(t *testing.T) {
	cases := []struct {
		name     string
		metadata []byte
		want     string
	}{
		{"no metadata", nil, "a861fb7dde0ceb6049d9a527496852d385dd671188877cb65ccfd081c0a2d446"},
		{"empty object", []byte("{}"), "fe9f8bdf871e476ebea1369bfdeceb822e01513b516a906bd1032196218d380e"},
		{"larger than the stack buffer", bytes.Repeat([]byte("x"), 1000), "53c0ee39b5d3c439679287e20f61dde03f6df125957f15a87be8ee20b86a7d4f"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := row{org: "acme", class: "standard", month: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), seq: 42 + int64(i),
				ts: time.Date(2026, 11, 23, 12, 0, 0, 123456000, time.UTC), eventType: "EGRESS_DENIED", eventID: "evt_01936b2e-8f3a-7cde-9abc-0123456789ab",
				actorType: "JOB", actorID: "spiffe://x/org/acme/job/etl", actorIP: "10.0.0.7", actorUA: "ua", resourceType: "EGRESS",
				resourceID: "evil.example.com:443", action: "CONNECT", result: "DENIED", metadata: tc.metadata, requestID: "req_1", prevHash: genesis}
			if got := hex.EncodeToString(r.computeHash()); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}
