package credentials

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/datasets"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func ds(locs ...string) []datasets.Dataset {
	out := make([]datasets.Dataset, len(locs))
	for i, l := range locs {
		out[i] = datasets.Dataset{Location: l}
	}
	return out
}

// TestSessionPolicyGolden compares generated policies (indented for review)
// with testdata/<name>.json. Regenerate with go test -run Golden -update.
func TestSessionPolicyGolden(t *testing.T) {
	tests := []struct {
		name string
		decl datasets.Declaration
	}{
		{name: "one_input", decl: datasets.Declaration{Inputs: ds("s3://trace-data/acme/blocks/")}},
		{name: "inputs_and_outputs", decl: datasets.Declaration{
			Inputs:  ds("s3://trace-data/acme/blocks/", "s3://trace-data/acme/txs/date=2026-11-23/"),
			Outputs: ds("s3://trace-data/acme/alerts/")}},
		{name: "two_buckets", decl: datasets.Declaration{
			Inputs:  ds("s3://trace-data/acme/blocks/", "arn:aws:s3:::acme-scratch/tmp/in/"),
			Outputs: ds("s3://acme-scratch/tmp/out/")}},
		{name: "nested_prefixes_collapse", decl: datasets.Declaration{
			Inputs: ds("s3://trace-data/acme/blocks/2026/", "s3://trace-data/acme/", "s3://trace-data/acme/blocks/")}},
		{name: "output_only", decl: datasets.Declaration{Outputs: ds("s3://trace-data/acme/out/")}},
		{name: "unsorted_is_sorted", decl: datasets.Declaration{
			Inputs: ds("s3://zz-bucket/b/", "s3://aa-bucket/z/", "s3://aa-bucket/a-b/", "s3://aa-bucket/a/")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SessionPolicy(tt.decl)
			if err != nil {
				t.Fatalf("SessionPolicy: %v", err)
			}
			if !json.Valid(got) || bytes.ContainsAny(got, " \n") {
				t.Fatalf("SessionPolicy: got %q, want compact JSON", got)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, got, "", "  "); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			path := filepath.Join("testdata", tt.name+".json")
			if *update {
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Fatalf("policy differs from %s (rerun with -update if intended):\ngot:\n%s\nwant:\n%s", path, pretty.Bytes(), want)
			}
			// Pure: the same declaration, in another order, gives the same bytes.
			rev := datasets.Declaration{Inputs: slices.Clone(tt.decl.Inputs), Outputs: slices.Clone(tt.decl.Outputs)}
			slices.Reverse(rev.Inputs)
			slices.Reverse(rev.Outputs)
			again, err := SessionPolicy(rev)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("SessionPolicy(reversed): got %s, %v, want %s", again, err, got)
			}
		})
	}
}

func TestSessionPolicyErrors(t *testing.T) {
	many := make([]string, 0, datasets.MaxInputs)
	for i := range datasets.MaxInputs {
		many = append(many, fmt.Sprintf("s3://trace-data/acme/a-rather-long-dataset-name-%02d/", i))
	}
	tests := []struct {
		name    string
		decl    datasets.Declaration
		wantIs  error
		wantErr string
	}{
		{name: "empty", decl: datasets.Declaration{}, wantIs: ErrNoDatasets},
		{name: "too large", decl: datasets.Declaration{Inputs: ds(many...)}, wantIs: ErrPolicyTooLarge, wantErr: "STS allows 2048"},
		{name: "wildcard", decl: datasets.Declaration{Inputs: ds("s3://trace-data/*/")}, wantErr: "inputs[0].location"},
		{name: "policy variable", decl: datasets.Declaration{Outputs: ds("s3://trace-data/${aws:PrincipalTag/org}/")}, wantErr: "outputs[0].location"},
		{name: "quote", decl: datasets.Declaration{Inputs: ds(`s3://trace-data/a"],"Action":"*/`)}, wantErr: "inputs[0].location"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SessionPolicy(tt.decl)
			if err == nil {
				t.Fatalf("SessionPolicy: got %s, want an error", got)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("SessionPolicy: got %v, want errors.Is %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SessionPolicy: got %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// checkScope fails t unless policy grants nothing beyond decl: only Allow
// statements, only the three actions, resources that are exactly the
// declared buckets or declared prefixes followed by one final '*', a single
// StringLike s3:prefix condition on ListBucket naming declared input
// prefixes, and no Not*/Principal element.
func checkScope(t *testing.T, decl datasets.Declaration, policy []byte) {
	t.Helper()
	inputs, outputs, err := decl.Parsed()
	if err != nil {
		t.Fatalf("policy %s was produced for a declaration Parsed refuses: %v", policy, err)
	}
	declared := func(ds []datasets.ParsedDataset) map[string]bool {
		m := map[string]bool{}
		for _, d := range ds {
			m[d.Location.Bucket+"/"+d.Location.Prefix] = true
		}
		return m
	}
	in, out := declared(inputs), declared(outputs)
	inBuckets := map[string]bool{}
	for _, d := range inputs {
		inBuckets[d.Location.Bucket] = true
	}

	if len(policy) > MaxPolicyBytes {
		t.Fatalf("policy is %d bytes, over %d", len(policy), MaxPolicyBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(policy))
	dec.DisallowUnknownFields()
	var doc struct {
		Version   string
		Statement []struct {
			Sid       string
			Effect    string
			Action    string
			Resource  []string
			Condition map[string]map[string][]string
		}
	}
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("policy %s has an unexpected shape (Not*, Principal, extra keys?): %v", policy, err)
	}
	if doc.Version != "2012-10-17" {
		t.Fatalf("got Version %q, want 2012-10-17", doc.Version)
	}
	if strings.Contains(string(policy), "${") || strings.Contains(string(policy), "?") {
		t.Fatalf("policy %s contains a policy variable or '?'", policy)
	}
	for _, st := range doc.Statement {
		if st.Effect != "Allow" {
			t.Fatalf("statement %s: got Effect %q, want Allow", st.Sid, st.Effect)
		}
		for _, r := range st.Resource {
			if strings.Count(r, "*") > 1 || (strings.Contains(r, "*") && !strings.HasSuffix(r, "/*")) {
				t.Fatalf("statement %s: resource %q has a wildcard other than one after its prefix", st.Sid, r)
			}
		}
		switch st.Action {
		case actionGet, actionPut:
			want := in
			if st.Action == actionPut {
				want = out
			}
			if st.Condition != nil {
				t.Fatalf("statement %s: unexpected condition %v", st.Sid, st.Condition)
			}
			for _, r := range st.Resource {
				p, ok := strings.CutPrefix(r, "arn:aws:s3:::")
				p, star := strings.CutSuffix(p, "*")
				if !ok || !star || !coveredByDeclared(p, want) {
					t.Fatalf("statement %s (%s): resource %q is not a declared prefix", st.Sid, st.Action, r)
				}
			}
		case actionList:
			if len(st.Resource) != 1 {
				t.Fatalf("statement %s: got %d resources, want one bucket", st.Sid, len(st.Resource))
			}
			b, ok := strings.CutPrefix(st.Resource[0], "arn:aws:s3:::")
			if !ok || !inBuckets[b] {
				t.Fatalf("statement %s: ListBucket on %q, not a declared input bucket", st.Sid, st.Resource[0])
			}
			sl, ok := st.Condition["StringLike"]
			if !ok || len(st.Condition) != 1 || len(sl) != 1 || len(sl["s3:prefix"]) == 0 {
				t.Fatalf("statement %s: got condition %v, want only StringLike s3:prefix", st.Sid, st.Condition)
			}
			for _, p := range sl["s3:prefix"] {
				p, star := strings.CutSuffix(p, "*")
				if !star || !coveredByDeclared(b+"/"+p, in) {
					t.Fatalf("statement %s: s3:prefix %q is not a declared input prefix of %s", st.Sid, p, b)
				}
			}
		default:
			t.Fatalf("statement %s: action %q is not allowed", st.Sid, st.Action)
		}
	}
}

// coveredByDeclared: bp ("bucket/prefix") is declared itself. Collapsing
// only ever keeps declared prefixes, so no "covering" is needed.
func coveredByDeclared(bp string, declared map[string]bool) bool { return declared[bp] }

// hostileLocation builds a location from pieces an attacker would try.
func hostileLocation(r *rand.Rand) string {
	if r.IntN(10) < 7 {
		// A well-formed location, so that whole declarations get accepted
		// and their policies checked, not only refused.
		safe := []string{"acme", "blocks", "a", "date=2026-11-23", "x_y", "v1.2", "-", "globex"}
		var b strings.Builder
		b.WriteString([]string{"s3://", "arn:aws:s3:::"}[r.IntN(2)])
		b.WriteString([]string{"trace-data", "acme-scratch", "other.bucket"}[r.IntN(3)])
		b.WriteByte('/')
		for range 1 + r.IntN(3) {
			b.WriteString(safe[r.IntN(len(safe))])
			b.WriteByte('/')
		}
		return b.String()
	}
	schemes := []string{"s3://", "arn:aws:s3:::", "arn:aws:s3:::*", "s3:/", "arn:aws:s3:us-east-1:123456789012:", ""}
	buckets := []string{"trace-data", "acme-scratch", "*", "trace-*", "trace-data?", "${aws:username}", "TRACE", "a", "trace-data/..", "xn--a"}
	pieces := []string{"acme", "blocks", "/", "//", "*", "?", "..", ".", "${aws:userid}", "${*}", "$", `"`, `\`, "]", "}", ",", " ", "é", "＊",
		"\u202e", "\x00", "\n", "date=2026", "a_b", "-", "%2a", "\"Action\":\"*\"", "arn:aws:s3:::other/"}
	var b strings.Builder
	b.WriteString(schemes[r.IntN(len(schemes))])
	b.WriteString(buckets[r.IntN(len(buckets))])
	b.WriteByte('/')
	for range r.IntN(6) {
		b.WriteString(pieces[r.IntN(len(pieces))])
	}
	if r.IntN(2) == 0 {
		b.WriteByte('/')
	}
	return b.String()
}

// TestSessionPolicyNeverWidens: random declarations mixing valid and hostile
// locations either fail or yield a policy inside the declaration.
func TestSessionPolicyNeverWidens(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	accepted, refused := 0, 0
	for range 20000 {
		var decl datasets.Declaration
		for range r.IntN(4) {
			decl.Inputs = append(decl.Inputs, datasets.Dataset{Location: hostileLocation(r), PII: r.IntN(2) == 0})
		}
		for range r.IntN(3) {
			decl.Outputs = append(decl.Outputs, datasets.Dataset{Location: hostileLocation(r)})
		}
		policy, err := SessionPolicy(decl)
		if err != nil {
			refused++
			continue
		}
		accepted++
		checkScope(t, decl, policy)
	}
	// The generator must exercise both paths or the test proves nothing.
	if accepted < 100 || refused < 100 {
		t.Fatalf("got %d accepted and %d refused declarations, want at least 100 of each", accepted, refused)
	}
}

// FuzzSessionPolicy is the same property driven by the fuzzer.
func FuzzSessionPolicy(f *testing.F) {
	f.Add("s3://trace-data/acme/blocks/", "s3://trace-data/acme/out/", false)
	f.Add("s3://trace-data/${aws:userid}/", "arn:aws:s3:::trace-data/acme/*", true)
	f.Add("arn:aws:s3:::trace-data/acme/", "s3://trace-data/acme/../x/", false)
	f.Fuzz(func(t *testing.T, in, out string, pii bool) {
		decl := datasets.Declaration{Inputs: []datasets.Dataset{{Location: in, PII: pii}}, Outputs: []datasets.Dataset{{Location: out}}}
		policy, err := SessionPolicy(decl)
		if err != nil {
			return
		}
		checkScope(t, decl, policy)
	})
}

func BenchmarkSessionPolicy(b *testing.B) {
	decl := datasets.Declaration{
		Inputs:  ds("s3://trace-data/acme/blocks/", "s3://trace-data/acme/txs/", "s3://acme-scratch/tmp/in/"),
		Outputs: ds("s3://trace-data/acme/alerts/"),
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SessionPolicy(decl); err != nil {
			b.Fatal(err)
		}
	}
}
