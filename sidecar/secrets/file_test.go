package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecodeJSON(t *testing.T) {
	const secret = "hunter2-very-secret"
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr string
	}{
		{name: "ok", in: `{"a": "1", "b_c": "two"}`, want: map[string]string{"a": "1", "b_c": "two"}},
		{name: "empty object", in: `{}`, want: map[string]string{}},
		{name: "escapes", in: `{"k": "line1\nline2\u00e9"}`, want: map[string]string{"k": "line1\nline2é"}},
		{name: "array", in: `["` + secret + `"]`, wantErr: "not a JSON object"},
		{name: "number value", in: `{"k": 12}`, wantErr: "must be a JSON string"},
		{name: "nested", in: `{"k": {"x": "` + secret + `"}}`, wantErr: "must be a JSON string"},
		{name: "duplicate", in: `{"k": "a", "k": "` + secret + `"}`, wantErr: "defined twice"},
		{name: "trailing", in: `{"k": "a"} {"x": "` + secret + `"}`, wantErr: "trailing data"},
		{name: "truncated", in: `{"k": "` + secret, wantErr: "invalid JSON"},
		{name: "bad syntax in value", in: `{"k": "` + secret + `" "x"}`, wantErr: "invalid JSON"},
		{name: "empty input", in: ``, wantErr: "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeJSON([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error %q leaks a value", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d secrets, want %d", len(got), len(tt.want))
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("secret %q: got %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestFileFetch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.json")
	if err := os.WriteFile(path, []byte(`{"monad_rpc_key": "abc", "other": "def"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &File{Path: path}
	got, err := f.Fetch(context.Background(), []string{"monad_rpc_key"})
	if err != nil || len(got) != 1 || got["monad_rpc_key"] != "abc" {
		t.Fatalf("got %v, %v; want map[monad_rpc_key:abc], nil", got, err)
	}
	_, err = f.Fetch(context.Background(), []string{"missing_one"})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"missing_one"`) {
		t.Fatalf("got %v, want ErrNotFound naming missing_one", err)
	}
	if _, err := (&File{Path: path + ".nope"}).Fetch(context.Background(), nil); err == nil {
		t.Fatal("got nil error for a missing file")
	}
}

func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"a": "b"}`))
	f.Add([]byte(`{"a": "b", "a": "c"}`))
	f.Add([]byte(`[1]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeJSON(data)
		if err != nil {
			if m != nil {
				t.Fatal("non-nil map with an error")
			}
			return
		}
		// Whatever was accepted survives a round trip unchanged.
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeJSON(b)
		if err != nil || len(again) != len(m) {
			t.Fatalf("round trip of %q: %v, %d secrets, want %d", b, err, len(again), len(m))
		}
		for k, v := range m {
			if again[k] != v {
				t.Fatalf("round trip changed %q", k)
			}
		}
	})
}
