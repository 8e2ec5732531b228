package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestStaticExec: only a static, position-dependent executable may have
// its read-only pages dropped; a PIE or dynamically linked one was
// written by its loader.
func TestStaticExec(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want bool
	}{
		{"static", []string{"build"}, true},
		{"pie", []string{"build", "-buildmode=pie"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, tc.name)
			cmd := exec.Command("go", append(tc.args, "-o", out, src)...)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build: %v\n%s", err, b)
			}
			if got := staticExec(out); got != tc.want {
				t.Fatalf("staticExec(%s): got %v, want %v", tc.name, got, tc.want)
			}
		})
	}
	if staticExec(src) {
		t.Fatal("staticExec(a Go source file): got true, want false")
	}
}
