package userapi

import (
	"bytes"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

type openAPIDocument struct {
	OpenAPI string `json:"openapi"`
	Paths   map[string]map[string]struct {
		Parameters []struct {
			Name string `json:"name"`
			In   string `json:"in"`
		} `json:"parameters"`
		Responses map[string]struct {
			Content map[string]struct {
				Schema json.RawMessage `json:"schema"`
			} `json:"content"`
		} `json:"responses"`
	} `json:"paths"`
}

func loadOpenAPI(t *testing.T) openAPIDocument {
	t.Helper()
	var doc openAPIDocument
	dec := json.NewDecoder(bytes.NewReader(OpenAPI()))
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi: got %q, want 3.1.0", doc.OpenAPI)
	}
	return doc
}

// TestOpenAPIMatchesRoutes: every documented path and method is routed and
// every route is documented.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	a, err := New(Config{Pool: nil, Auth: nil})
	if err == nil || a != nil {
		t.Fatal("New without Pool: got no error")
	}
	e := newEnv(t)
	var routed, documented []string
	for _, r := range e.api.routes {
		routed = append(routed, r.method+" "+r.path)
	}
	for p, ops := range doc.Paths {
		for m := range ops {
			documented = append(documented, strings.ToUpper(m)+" "+p)
		}
	}
	sort.Strings(routed)
	sort.Strings(documented)
	if !slices.Equal(routed, documented) {
		t.Errorf("routes and document differ:\nrouted     %v\ndocumented %v", routed, documented)
	}
	// Every documented path answers something other than the catch-all 404
	// (a real request through Handler, not just the table).
	tok := e.token(t, "alice", "acme", "admin")
	for _, r := range e.api.routes {
		path := strings.ReplaceAll(r.path, "{run_id}", "run-acme")
		resp, body := request(t, e.srv.URL, r.method, tok, path, "{}")
		if resp.StatusCode == 404 && contains(body, "no such endpoint") {
			t.Errorf("%s %s: not routed", r.method, path)
		}
	}
}

// TestResponsesMatchSchemas validates real answers (and real errors)
// against the document's response schemas with a JSON Schema 2020-12
// validator (OpenAPI 3.1 schemas are JSON Schema 2020-12).
func TestResponsesMatchSchemas(t *testing.T) {
	e := newEnv(t)
	e.seed(t, "acme", "block_follower", 5)
	tok := e.token(t, "alice", "acme", "admin")
	reader := e.token(t, "rita", "acme", "reader")

	var raw any
	if err := json.Unmarshal(OpenAPI(), &raw); err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	const base = "https://cordon.invalid/openapi.json"
	if err := c.AddResource(base, raw); err != nil {
		t.Fatal(err)
	}
	doc := loadOpenAPI(t)
	schemaFor := func(path, status, ctype string) *jsonschema.Schema {
		t.Helper()
		op, ok := doc.Paths[path]["get"]
		if !ok {
			t.Fatalf("%s: not documented", path)
		}
		if _, ok := op.Responses[status].Content[ctype]; !ok {
			t.Fatalf("%s %s %s: not documented", path, status, ctype)
		}
		ptr := "#/paths/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(path) + "/get/responses/" + status + "/content/" +
			strings.ReplaceAll(ctype, "/", "~1") + "/schema"
		s, err := c.Compile(base + ptr)
		if err != nil {
			t.Fatalf("compile %s: %v", ptr, err)
		}
		return s
	}
	tests := []struct {
		name, token, path, docPath, status string
	}{
		{"audit events", tok, "/api/v1/audit-events?limit=2", "/api/v1/audit-events", "200"},
		{"audit events last page", tok, "/api/v1/audit-events?limit=1000", "/api/v1/audit-events", "200"},
		{"audit events 400", tok, "/api/v1/audit-events?x=1", "/api/v1/audit-events", "400"},
		{"audit events 401", "", "/api/v1/audit-events", "/api/v1/audit-events", "401"},
		{"audit events 403", reader, "/api/v1/audit-events", "/api/v1/audit-events", "403"},
		{"usage", tok, "/api/v1/usage", "/api/v1/usage", "200"},
		{"usage empty", tok, "/api/v1/usage?to=2026-01-01T00:00:00Z", "/api/v1/usage", "200"},
		{"denials", reader, "/api/v1/egress-denials", "/api/v1/egress-denials", "200"},
		{"runs", reader, "/api/v1/runs?limit=1", "/api/v1/runs", "200"},
		{"run", reader, "/api/v1/runs/run-acme", "/api/v1/runs/{run_id}", "200"},
		{"run 404", reader, "/api/v1/runs/nope", "/api/v1/runs/{run_id}", "404"},
		{"allowlists", reader, "/api/v1/allowlists", "/api/v1/allowlists", "200"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get(t, tc.token, tc.path)
			if got := resp.Status[:3]; got != tc.status {
				t.Fatalf("got %s %s, want %s", resp.Status, body, tc.status)
			}
			inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("answer is not JSON: %v: %s", err, body)
			}
			if err := schemaFor(tc.docPath, tc.status, "application/json").Validate(inst); err != nil {
				t.Errorf("answer does not match the documented schema: %v\n%s", err, body)
			}
		})
	}
}
