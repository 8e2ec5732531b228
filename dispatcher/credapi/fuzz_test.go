package credapi_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/cordon-dev/cordon/dispatcher/credapi"
)

// FuzzDecodeRequest: whatever the body, DecodeRequest does not panic, and
// what it accepts has a run ID and a declaration that passes Check and
// survives a round trip unchanged.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"run_id":"r1","datasets":{"inputs":[{"location":"s3://trace-data/acme/blocks/"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := credapi.DecodeRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		if req.RunID == "" {
			t.Fatal("accepted an empty run ID")
		}
		if err := req.Datasets.Check(); err != nil {
			t.Fatalf("accepted a declaration Check refuses: %v", err)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, err := credapi.DecodeRequest(bytes.NewReader(again))
		if err != nil {
			t.Fatalf("re-encoded request refused: %v\n%s", err, again)
		}
		if b, _ := json.Marshal(req2); !bytes.Equal(b, again) {
			t.Fatalf("round trip changed the request:\n%s\n%s", again, b)
		}
	})
}
