package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run go test ./xds/cli -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test ./xds/cli -update and review)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestLint runs lint over one fixture directory per failure mode and checks
// the exit code and the blamed FILE:LINE:COL.
func TestLint(t *testing.T) {
	tests := []struct {
		dir      string
		wantCode int
		want     string // the line (prefix) lint must print
	}{
		{"clean", ExitOK, ""},
		{"public_suffix_wildcard", ExitFail, "testdata/lint/public_suffix_wildcard/acme.yaml:6:15: `*.com` covers the public suffix com"},
		{"unknown_field", ExitFail, "testdata/lint/unknown_field/acme.yaml:19:5: unknown field \"timeout\""},
		{"port_out_of_range", ExitFail, "testdata/lint/port_out_of_range/acme.yaml:12:22: port 70000 is out of range"},
		{"uppercase_host", ExitFail, "testdata/lint/uppercase_host/acme.yaml:11:15: host \"RPC.monad.example\" is not canonical"},
		{"undefined_set", ExitFail, "testdata/lint/undefined_set/acme.yaml:19:13: job price_alert allows undefined endpoint set \"storag\""},
		{"user_platform_only", ExitFail, "testdata/lint/user_platform_only/acme.yaml:19:22: user-class job price_alert may not use platform_only"},
		{"missing_class", ExitFail, "testdata/lint/missing_class/acme.yaml:18:5: job price_alert is missing required field \"class\""},
		{"ip_literal_host", ExitFail, "testdata/lint/ip_literal_host/acme.yaml:11:15: host \"169.254.169.254\" is an IP address"},
		{"syntax_error", ExitFail, "testdata/lint/syntax_error/acme.yaml:19:5: invalid YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			code, out, errOut := run("lint", filepath.Join("testdata", "lint", tt.dir))
			if code != tt.wantCode {
				t.Fatalf("got exit %d, want %d (stdout %q, stderr %q)", code, tt.wantCode, out, errOut)
			}
			if tt.want == "" {
				if strings.TrimSpace(out) != "" {
					t.Errorf("got output %q for a clean directory, want none", out)
				}
				return
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.want) {
				t.Errorf("got\n%s\nwant one line starting %q", out, tt.want)
			}
		})
	}
}

func TestLintReportsEveryErrorAtOnce(t *testing.T) {
	args := []string{"lint"}
	dirs, _ := filepath.Glob("testdata/lint/*")
	args = append(args, dirs...)
	code, out, _ := run(args...)
	if code != ExitFail {
		t.Fatalf("got exit %d, want %d", code, ExitFail)
	}
	if got, want := strings.Count(out, "\n"), len(dirs)-1; got != want {
		t.Errorf("got %d lines, want %d (one per broken fixture):\n%s", got, want, out)
	}
}

func TestLintFileAndMissingPath(t *testing.T) {
	if code, out, _ := run("lint", "testdata/lint/unknown_field/acme.yaml"); code != ExitFail || !strings.Contains(out, "acme.yaml:19:5:") {
		t.Errorf("lint FILE: got exit %d output %q, want 1 and the error", code, out)
	}
	if code, out, _ := run("lint", "testdata/lint/nope"); code != ExitFail || !strings.Contains(out, "testdata/lint/nope: cannot read it") {
		t.Errorf("lint missing dir: got exit %d output %q, want 1 and the reason", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"frobnicate"}},
		{"lint without paths", []string{"lint"}},
		{"diff with one dir", []string{"diff", "testdata/diff/old"}},
		{"diff bad flag", []string{"diff", "--yaml", "a", "b"}},
		{"dump without job", []string{"dump", "--allowlists", "testdata/diff/new"}},
		{"dump bad job", []string{"dump", "--allowlists", "testdata/diff/new", "--job", "acme"}},
		{"serve without listen", []string{"serve", "--allowlists", "testdata/diff/new"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _, errOut := run(tt.args...); code != ExitUsage || !strings.Contains(errOut, "usage:") {
				t.Errorf("got exit %d stderr %q, want %d and the usage", code, errOut, ExitUsage)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	code, out, errOut := run("diff", "testdata/diff/old", "testdata/diff/new")
	if code != ExitOK {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	golden(t, "diff/plan.txt", []byte(out))

	code, out, _ = run("diff", "testdata/diff/old", "testdata/diff/new", "--json")
	if code != ExitOK {
		t.Fatalf("got exit %d, want 0", code)
	}
	golden(t, "diff/plan.json", []byte(out))
	var plan Plan
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatal(err)
	}
	if plan.Summary != (Summary{Added: 1, Removed: 1, Changed: 2}) {
		t.Errorf("got summary %+v, want 1 added, 1 removed, 2 changed", plan.Summary)
	}

	if code, out, _ := run("diff", "testdata/diff/new", "testdata/diff/new"); code != ExitOK || out != "no policy changes\n" {
		t.Errorf("same dirs: got exit %d output %q, want 0 and no changes", code, out)
	}
	if code, _, errOut := run("diff", "testdata/diff/old", "testdata/lint/port_out_of_range"); code != ExitFail ||
		!strings.Contains(errOut, "acme.yaml:12:22") {
		t.Errorf("broken new dir: got exit %d stderr %q, want 1 and the error", code, errOut)
	}
}

func TestDump(t *testing.T) {
	code, out, errOut := run("dump", "--allowlists", "testdata/diff/new", "--job", "acme/cryo_ingest")
	if code != ExitOK {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	golden(t, "dump/acme_cryo_ingest.json", []byte(out))
	if code, _, errOut := run("dump", "--allowlists", "testdata/diff/new", "--job", "acme/nope"); code != ExitFail || !strings.Contains(errOut, "unknown job") {
		t.Errorf("unknown job: got exit %d stderr %q, want 1 and unknown job", code, errOut)
	}
}
