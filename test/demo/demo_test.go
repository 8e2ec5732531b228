// Package demo tests `make demo` (test/scripts/demo.sh) so that the first
// command the README gives a newcomer keeps working: it builds the binaries
// the script uses, runs it, and checks what it shows.
package demo

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	for _, tool := range []string{"curl", "openssl", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("demo needs %s: %v", tool, err)
		}
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/",
		"./egress-proxy/cmd/cordon-egress", "./sidecar/cmd/cordon-sidecar",
		"./xds/cmd/cordon-xds", "./test/cmd/fake-internet")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	cmd := exec.Command(filepath.Join(root, "test/scripts/demo.sh"), bin)
	cmd.Dir = root
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("demo did not finish in 2m; output so far:\n%s", out)
	}
	text := string(out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, text)
	}

	for _, want := range []string{
		"GET http://rpc.monad.example:8545/ (allowlisted)           200",
		"GET https://rpc.monad.example/ via CONNECT + SNI           200",
		"403 (not_allowed)",
		"GET http://169.254.169.254/ (instance metadata)            403 (metadata_address)",
		"403 (ip_literal)",
		"CONNECT rds host:5432, DNS answers 169.254.169.254         403 (metadata_address)",
		"403 (host_mismatch)",
		"tunnel closed (domain fronting refused)",
		"task credentials visible to the job: none",
		"job exit code, passed through by the wrapper: 3",
		`"api_key": "sk_live_***REDACTED***"`,
		"onca***@acme.example",
		"deploy/allowlists: clean",
		"may not use platform_only endpoint set",
		"mode: enforce -> report",
		"demo done",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q\n--- output ---\n%s", want, text)
		}
	}
	// Nothing secret may come out of the job, in any form the script prints.
	for _, secret := range []string{
		"mrk_live_5f2a9c1e7b3d48aa90c1",
		"bXJrX2xpdmVfNWYyYTljMWU3YjNkNDhhYTkwYzE",  // base64
		"6d726b5f6c6976655f3566326139633165376233", // hex prefix
		"xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
		"AKIAIOSFODNN7EXAMPLE",
		"sk_live_abc123xyz",
		"oncall@acme.example",
	} {
		if strings.Contains(text, secret) {
			t.Errorf("demo output leaks %q", secret)
		}
	}
	// Only the two allowed requests reached the fake internet.
	if got := strings.Count(text, "rpc.monad.example:8545/block") + strings.Count(text, "https GET rpc.monad.example/"); got != 2 {
		t.Errorf("requests that reached the internet: got %d, want 2\n%s", got, text)
	}
}
