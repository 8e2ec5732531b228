package allowlist

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestLoadDirValidFixtures(t *testing.T) {
	s, err := LoadDir("testdata/valid")
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	var ids []string
	for _, p := range s.Policies() {
		ids = append(ids, p.ID())
	}
	want := []string{"acme/block_follower", "acme/price_alert", "full-org/alert", "full-org/ingest", "full-org/nothing", "minimal/sealed"}
	if !slices.Equal(ids, want) {
		t.Errorf("Policies IDs: got %v, want %v", ids, want)
	}
}

func TestPolicyResolution(t *testing.T) {
	s, err := LoadDir("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	tests := []struct {
		org, job string
		want     *JobPolicy
	}{
		{"full-org", "ingest", &JobPolicy{Org: "full-org", Job: "ingest", Class: ClassPlatform, Mode: ModeReport, Rules: []Rule{
			{Host: "*.rpc.example.org", Ports: []uint16{443, 8545}, Source: "endpoint_set:rpc"},
			{Host: "*.s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:storage"},
			{Host: "xn--bcher-kva.example", Ports: []uint16{443, 8443}, Source: "endpoint_set:storage"},
			{CIDR: pfx("10.20.0.0/16"), Ports: []uint16{5432}, Source: "endpoint_set:database"},
			{CIDR: pfx("2001:db8::/32"), Ports: []uint16{5432}, Source: "endpoint_set:database"},
			{CIDR: pfx("192.0.2.0/24"), Ports: []uint16{5432}, Source: "endpoint_set:database"},
		}}},
		{"full-org", "alert", &JobPolicy{Org: "full-org", Job: "alert", Class: ClassUser, Mode: ModeEnforce, Rules: []Rule{
			{Host: "*.s3.us-east-1.amazonaws.com", Ports: []uint16{443}, Source: "endpoint_set:storage"},
			{Host: "xn--bcher-kva.example", Ports: []uint16{443, 8443}, Source: "endpoint_set:storage"},
			{Host: "hooks.slack.com", Ports: []uint16{443}, Source: "webhook:https://hooks.slack.com/services/T0/B0/"},
			{Host: "alerts.example.org", Ports: []uint16{8443}, Source: "webhook:https://alerts.example.org:8443/hook"},
		}}},
		{"full-org", "nothing", &JobPolicy{Org: "full-org", Job: "nothing", Class: ClassUser, Mode: ModeEnforce}},
		{"minimal", "sealed", &JobPolicy{Org: "minimal", Job: "sealed", Class: ClassUser, Mode: ModeEnforce}},
	}
	for _, tc := range tests {
		t.Run(tc.org+"/"+tc.job, func(t *testing.T) {
			got, err := s.Policy(tc.org, tc.job)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("policy:\ngot  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestPolicyIsSelfContained(t *testing.T) {
	s, err := LoadDir("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := s.Policy("acme", "block_follower")
	p1.Rules[0].Ports[0] = 1
	p1.Rules[0].Host = "evil.example"
	p2, _ := s.Policy("acme", "block_follower")
	if p2.Rules[0].Host != "s3.us-east-1.amazonaws.com" || p2.Rules[0].Ports[0] != 443 {
		t.Errorf("changing one resolved policy changed the set: got %+v", p2.Rules[0])
	}
}

func TestPolicyLookupErrors(t *testing.T) {
	s, err := LoadDir("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, org, job string
		isJob, isOrg   bool
	}{
		{"unknown job", "acme", "nope", true, false},
		{"unknown org", "nope", "block_follower", true, true},
		{"job of another org", "minimal", "block_follower", true, false},
		{"empty", "", "", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.Policy(tc.org, tc.job)
			if p != nil || err == nil {
				t.Fatalf("got %v, %v; want an error", p, err)
			}
			if errors.Is(err, ErrUnknownJob) != tc.isJob || errors.Is(err, ErrUnknownOrg) != tc.isOrg {
				t.Errorf("got %v: Is(ErrUnknownJob)=%v Is(ErrUnknownOrg)=%v, want %v %v",
					err, errors.Is(err, ErrUnknownJob), errors.Is(err, ErrUnknownOrg), tc.isJob, tc.isOrg)
			}
		})
	}
	var nilSet *Set
	if _, err := nilSet.Policy("acme", "x"); !errors.Is(err, ErrUnknownOrg) {
		t.Errorf("nil Set: got %v, want ErrUnknownOrg", err)
	}
	if got := nilSet.Policies(); got != nil {
		t.Errorf("nil Set Policies: got %v, want nil", got)
	}
}

func TestWarnings(t *testing.T) {
	data, err := os.ReadFile("testdata/valid/everything.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse("everything.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range f.Warnings() {
		got = append(got, w.Error())
	}
	want := []string{
		"everything.yaml:7:9: warning: `*.s3.us-east-1.amazonaws.com` covers s3.us-east-1.amazonaws.com, a shared suffix where anyone can create names (Public Suffix List, private section): it reaches every tenant of that service, an attacker's included; list the exact hosts if you can",
		"everything.yaml:25:3: warning: endpoint set unused is not allowed by any job: remove it or allow it",
		"everything.yaml:33:3: warning: job ingest is in report mode: it allows every destination and only records would-deny; switch to enforce once the denials are understood",
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\ngot  %q\nwant %q", got, want)
	}
}

// TestParseReportsEveryError checks that one file's many problems come back
// together, in line order, with the file name on each.
func TestParseReportsEveryError(t *testing.T) {
	src := `version: 3
org: Acme
endpoint_sets:
  rpc:
    entries:
      - host: "*.com"
        ports: [0]
      - cidr: 0.0.0.0/0
        ports: [443]
jobs:
  j:
    class: user
    mode: loud
    allow: [rpc, missing]
    color: red
`
	_, err := Parse("multi.yaml", []byte(src))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("got %v, want an ErrorList", err)
	}
	var got []string
	for _, e := range list {
		got = append(got, fmt.Sprintf("%d:%d", e.Pos.Line, e.Pos.Col))
	}
	want := []string{"1:10", "2:6", "6:15", "7:17", "8:15", "13:11", "14:18", "15:5"}
	if !slices.Equal(got, want) {
		t.Errorf("positions: got %v, want %v\n%v", got, want, err)
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != len(want) || !strings.HasPrefix(lines[0], "multi.yaml:1:10: ") {
		t.Errorf("Error(): got %q, want one multi.yaml:LINE:COL line per error", err.Error())
	}
}

func TestParseHostileInput(t *testing.T) {
	big := "version: 1\norg: acme\n# " + strings.Repeat("x", MaxFileSize) + "\n"
	laughs := "version: 1\norg: acme\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	deep := "version: 1\norg: acme\njobs: " + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + "\n"
	tests := []struct {
		name, src, want string
	}{
		{"over 1 MiB", big, "x.yaml:1:1: file is 1048600 bytes, over the 1048576-byte limit"},
		{"billion laughs", laughs, "x.yaml:3:4: YAML anchor &a is not allowed"},
		{"deep nesting", deep, "x.yaml:3:"},
		{"UTF-16 with BOM", "\xff\xfev\x00e\x00r\x00", "x.yaml:1:1: file is not valid UTF-8"},
		{"NUL byte", "version: 1\x00\n", "x.yaml:1:11: file contains a NUL byte"},
		{"tab indentation", "version: 1\norg: acme\njobs:\n\tj:\n", "x.yaml:4:1: invalid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.src))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("got %v, want an error starting %q", err, tc.want)
			}
		})
	}
}

// TestErrorsNeverEchoCredentials: a webhook with userinfo is refused
// without repeating it, since it may be a live credential.
func TestErrorsNeverEchoCredentials(t *testing.T) {
	for _, u := range []string{
		"https://user:s3cretpass@hooks.slack.com/x",
		"https://s3cretpass@hooks.slack.com/x",
		"https://user:s3cretpass@[::1/x",
	} {
		src := "version: 1\norg: acme\nwebhooks:\n  - " + u + "\n"
		_, err := Parse("x.yaml", []byte(src))
		if err == nil || strings.Contains(err.Error(), "s3cretpass") {
			t.Errorf("webhook %q: got %v, want an error without the password", u, err)
		}
	}
}

func TestLoadDir(t *testing.T) {
	valid := "version: 1\norg: %s\njobs:\n  j:\n    class: user\n"
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string // prefix of the error; empty: success
		orgs    []string
	}{
		{"one file", map[string]string{"a.yaml": fmt.Sprintf(valid, "a")}, "", []string{"a"}},
		{"yml too", map[string]string{"a.yaml": fmt.Sprintf(valid, "a"), "b.yml": fmt.Sprintf(valid, "b")}, "", []string{"a", "b"}},
		{"others ignored", map[string]string{"a.yaml": fmt.Sprintf(valid, "a"), ".b.yaml": "junk: [", "c.yaml~": "junk", "README.md": "x", "schema.json": "{}", "sub/d.yaml": "junk: ["}, "", []string{"a"}},
		{"org in two files", map[string]string{"a.yaml": fmt.Sprintf(valid, "a"), "b.yaml": fmt.Sprintf(valid, "a")}, "DIR/b.yaml:2:6: org a is already declared in DIR/a.yaml:2:6: one file per org, merge them", nil},
		{"errors of every file", map[string]string{"a.yaml": "version: 2\norg: a\n", "b.yaml": "version: 1\n"}, "DIR/a.yaml:1:10: unsupported version 2: this parser reads version 1\nDIR/b.yaml:1:1: the file is missing required field \"org\"", nil},
		{"no files", map[string]string{"README.md": "x"}, "load allowlists: DIR has no *.yaml or *.yml files", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range tc.files {
				path := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			s, err := LoadDir(dir)
			if tc.wantErr != "" {
				want := strings.ReplaceAll(tc.wantErr, "DIR", dir)
				if err == nil || err.Error() != want && !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("got %v, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var orgs []string
			for org := range s.Files {
				orgs = append(orgs, org)
			}
			slices.Sort(orgs)
			if !slices.Equal(orgs, tc.orgs) {
				t.Errorf("orgs: got %v, want %v", orgs, tc.orgs)
			}
		})
	}
	if _, err := LoadDir(filepath.Join(t.TempDir(), "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: got %v, want os.ErrNotExist", err)
	}
}

func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile("testdata/valid/everything.yaml")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("everything.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}
