package allowlist

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"
)

const schemaPath = "../../deploy/allowlists/allowlist.schema.json"

// compileSchema loads the editors' JSON Schema with a maintained draft
// 2020-12 validator, so the test checks the schema as editors will read it.
func compileSchema(t *testing.T) (*jsonschema.Schema, map[string]any) {
	t.Helper()
	data, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("allowlist.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("allowlist.schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	return sch, doc.(map[string]any)
}

// yamlToJSONValue decodes a YAML file into the JSON data model the
// validator expects.
func yamlToJSONValue(t *testing.T, path string) any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%s: to JSON: %v", path, err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSchemaAcceptsValidFiles(t *testing.T) {
	sch, _ := compileSchema(t)
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	deploy, _ := filepath.Glob("../../deploy/allowlists/*.yaml")
	files = append(files, deploy...)
	if len(files) < 3 {
		t.Fatalf("found %d valid files, want the fixtures and deploy/allowlists", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if err := sch.Validate(yamlToJSONValue(t, f)); err != nil {
				t.Errorf("schema refuses valid %s: %v", f, err)
			}
		})
	}
}

// schemaRefuses are invalid fixtures whose problem is structural, so the
// schema must refuse them too (the rest need the parser's semantics).
var schemaRefuses = []string{
	"unknown_field_top", "unknown_field_entry", "unknown_field_job", "unknown_field_set",
	"class_bad", "mode_bad", "missing_class", "missing_version", "missing_org",
	"missing_ports", "missing_entries", "version_2", "version_string",
	"port_zero", "port_too_big", "port_negative", "port_duplicate", "port_empty",
	"wrong_type_ports", "wrong_type_port_string", "wrong_type_host",
	"wrong_type_platform_only", "wrong_type_allow", "null_allow",
	"org_uppercase", "org_dot", "job_name_bad", "set_name_bad",
	"host_uppercase", "host_trailing_dot", "host_star_middle", "host_star_partial",
	"host_underscore", "host_empty_label", "host_long_label", "wildcard_double",
	"host_and_cidr", "neither_host_nor_cidr", "entries_empty", "allow_duplicate",
	"webhook_http", "webhook_userinfo", "webhook_fragment", "webhook_query",
	"webhook_uppercase_host", "webhook_duplicate", "cidr_no_length", "top_level_list",
}

func TestSchemaRefusesStructuralErrors(t *testing.T) {
	sch, _ := compileSchema(t)
	for _, name := range schemaRefuses {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", "invalid", name+".yaml")
			if err := sch.Validate(yamlToJSONValue(t, path)); err == nil {
				t.Errorf("schema accepts %s, want it refused", path)
			}
		})
	}
}

// TestSchemaFieldsMatchParser keeps the schema's property names and the
// parser's accepted fields the same set, object by object.
func TestSchemaFieldsMatchParser(t *testing.T) {
	_, doc := compileSchema(t)
	defs, _ := doc["$defs"].(map[string]any)
	objects := []struct {
		where  string
		schema any
		parser []string
	}{
		{"top level", doc, fileFields},
		{"$defs.endpointSet", defs["endpointSet"], setFields},
		{"$defs.entry", defs["entry"], entryFields},
		{"$defs.job", defs["job"], jobFields},
	}
	for _, o := range objects {
		obj, _ := o.schema.(map[string]any)
		props, _ := obj["properties"].(map[string]any)
		var got []string
		for k := range props {
			got = append(got, k)
		}
		want := slices.Clone(o.parser)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s properties: got %v, want the parser's %v", o.where, got, want)
		}
		if obj["additionalProperties"] != false {
			t.Errorf("%s: additionalProperties must be false, as the parser refuses unknown fields", o.where)
		}
	}
}
