package datasets

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzDecode checks that whatever Decode accepts is canonical and safe to
// put into an IAM policy: only the prefix alphabet, a trailing "/", no
// relative segments, and that it round-trips.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"location":"s3://trace-data/acme/blocks/","pii":true}],"outputs":[{"location":"arn:aws:s3:::trace-data/acme/out/"}]}`))
	f.Add([]byte(`{"inputs":[{"location":"s3://trace-data/acme/*"}]}`))
	f.Add([]byte(`{"inputs":[],"inputs":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		in, out, err := d.Parsed()
		if err != nil {
			t.Fatalf("Decode accepted %q but Parsed refused it: %v", data, err)
		}
		for _, ds := range append(in, out...) {
			l := ds.Location
			if strings.ContainsAny(l.Prefix, `*?$"\ `) || strings.ContainsAny(l.Bucket, `*?$"\/ `) {
				t.Fatalf("accepted unsafe location %+v", l)
			}
			if !strings.HasSuffix(l.Prefix, "/") || strings.Contains(l.Prefix, "//") || strings.HasPrefix(l.Prefix, "/") {
				t.Fatalf("accepted malformed prefix %q", l.Prefix)
			}
			for _, seg := range strings.Split(l.Prefix, "/") {
				if seg == "." || seg == ".." {
					t.Fatalf("accepted relative segment in %q", l.Prefix)
				}
			}
			if back, err := ParseLocation(l.String()); err != nil || back != l {
				t.Fatalf("canonical form %q does not round-trip: %+v, %v", l.String(), back, err)
			}
		}
		again, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(bytes.NewReader(again)); err != nil {
			t.Fatalf("re-encoded declaration %s refused: %v", again, err)
		}
	})
}
