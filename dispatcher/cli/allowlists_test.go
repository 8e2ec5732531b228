package cli

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAllowlistsReloadKeepsLastGoodSet(t *testing.T) {
	dir := t.TempDir()
	example, err := os.ReadFile("../../internal/allowlist/testdata/valid/design_example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	write := func(data []byte) {
		if err := os.WriteFile(filepath.Join(dir, "acme.yaml"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(example)
	var logs bytes.Buffer
	a, err := loadAllowlists(dir, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if a.File("acme") == nil {
		t.Fatal("acme not loaded")
	}
	write([]byte("version: 1\norg: acme\njobs: [broken\n"))
	a.reload()
	if a.File("acme") == nil || a.File("acme").Jobs["block_follower"] == nil {
		t.Error("a broken reload replaced the last good set")
	}
	if !strings.Contains(logs.String(), "keeping the last good set") {
		t.Errorf("logs %q, want the failed reload logged", logs.String())
	}
	write(bytes.Replace(example, []byte("block_follower:"), []byte("block_leader:"), 1))
	a.reload()
	if a.File("acme").Jobs["block_leader"] == nil || a.File("acme").Jobs["block_follower"] != nil {
		t.Error("a good reload was not taken")
	}
	if _, err := loadAllowlists(t.TempDir(), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("empty directory at start: got nil error, want one (a wrong path must fail the start)")
	}
	none, err := loadAllowlists("", slog.New(slog.DiscardHandler))
	if err != nil || none.File("acme") != nil || none.Set() == nil {
		t.Errorf("no directory: got %v, %v; want an empty set", none, err)
	}
}
