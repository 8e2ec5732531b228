package terraform

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// module is one Terraform module's HCL, parsed the way a reviewer reads
// it: no provider, no plan, just the expressions evaluated with test
// values for the variables and stand-ins for what the provider would know
// (data sources, resource ARNs and IDs).
type module struct {
	dir       string
	variables map[string]*hclsyntax.Block
	locals    map[string]*hclsyntax.Attribute
	// resources and data are keyed "TYPE.NAME".
	resources map[string]*hclsyntax.Block
	data      map[string]*hclsyntax.Block
}

func loadModule(t *testing.T, dir string) *module {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.tf"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("module %s: no .tf files (%v)", dir, err)
	}
	m := &module{
		dir:       dir,
		variables: map[string]*hclsyntax.Block{},
		locals:    map[string]*hclsyntax.Attribute{},
		resources: map[string]*hclsyntax.Block{},
		data:      map[string]*hclsyntax.Block{},
	}
	p := hclparse.NewParser()
	for _, path := range paths {
		f, diags := p.ParseHCLFile(path)
		if diags.HasErrors() {
			t.Fatalf("parse %s: %s", path, diags.Error())
		}
		for _, b := range f.Body.(*hclsyntax.Body).Blocks {
			switch b.Type {
			case "variable":
				m.variables[b.Labels[0]] = b
			case "locals":
				for name, a := range b.Body.Attributes {
					if _, dup := m.locals[name]; dup {
						t.Fatalf("%s: local %q defined twice", path, name)
					}
					m.locals[name] = a
				}
			case "resource":
				m.resources[b.Labels[0]+"."+b.Labels[1]] = b
			case "data":
				m.data[b.Labels[0]+"."+b.Labels[1]] = b
			}
		}
	}
	return m
}

// functions are the Terraform built-ins the modules use, from cty's
// standard library (Terraform's own implementations wrap the same).
var functions = map[string]function.Function{
	"can":        tryfunc.CanFunc,
	"concat":     stdlib.ConcatFunc,
	"contains":   stdlib.ContainsFunc,
	"floor":      stdlib.FloorFunc,
	"join":       stdlib.JoinFunc,
	"jsonencode": stdlib.JSONEncodeFunc,
	"keys":       stdlib.KeysFunc,
	"length":     stdlib.LengthFunc,
	"lower":      stdlib.LowerFunc,
	"merge":      stdlib.MergeFunc,
	"regex":      stdlib.RegexFunc,
	"setproduct": stdlib.SetProductFunc,
	"toset":      stdlib.MakeToFunc(cty.Set(cty.DynamicPseudoType)),
	"tostring":   stdlib.MakeToFunc(cty.String),
	"upper":      stdlib.UpperFunc,
}

// fixtures stand in for what the provider knows: the data sources, and
// every resource's computed attributes as recognisable placeholder strings
// ("aws_iam_role.task.arn").
var dataFixtures = map[string]cty.Value{
	"aws_region.current":          cty.ObjectVal(map[string]cty.Value{"region": cty.StringVal("us-east-1")}),
	"aws_caller_identity.current": cty.ObjectVal(map[string]cty.Value{"account_id": cty.StringVal("123456789012")}),
	"aws_partition.current":       cty.ObjectVal(map[string]cty.Value{"partition": cty.StringVal("aws")}),
}

// evaluation is the module evaluated for one set of variable values.
type evaluation struct {
	m   *module
	ctx *hcl.EvalContext
}

// evaluate sets the variables (test values over defaults, converted to
// their declared types), then the locals in dependency order.
func (m *module) evaluate(t *testing.T, values map[string]cty.Value) *evaluation {
	t.Helper()
	vars, err := m.variableValues(values)
	if err != nil {
		t.Fatal(err)
	}
	top := map[string]cty.Value{"var": cty.ObjectVal(vars)}
	// Resources: TYPE -> NAME -> {id, arn, name} placeholders.
	byType := map[string]map[string]cty.Value{}
	for key := range m.resources {
		typ, name, _ := strings.Cut(key, ".")
		if byType[typ] == nil {
			byType[typ] = map[string]cty.Value{}
		}
		byType[typ][name] = cty.ObjectVal(map[string]cty.Value{
			"id":   cty.StringVal(key + ".id"),
			"arn":  cty.StringVal(key + ".arn"),
			"name": cty.StringVal(key + ".name"),
		})
	}
	for typ, names := range byType {
		top[typ] = cty.ObjectVal(names)
	}
	data := map[string]map[string]cty.Value{}
	for key := range m.data {
		fx, ok := dataFixtures[key]
		if !ok {
			t.Fatalf("module %s reads data.%s: add a fixture for it", m.dir, key)
		}
		typ, name, _ := strings.Cut(key, ".")
		if data[typ] == nil {
			data[typ] = map[string]cty.Value{}
		}
		data[typ][name] = fx
	}
	dataObj := map[string]cty.Value{}
	for typ, names := range data {
		dataObj[typ] = cty.ObjectVal(names)
	}
	top["data"] = cty.ObjectVal(dataObj)

	ctx := &hcl.EvalContext{Variables: top, Functions: functions}
	locals := map[string]cty.Value{}
	pending := map[string]*hclsyntax.Attribute{}
	for k, v := range m.locals {
		pending[k] = v
	}
	for len(pending) > 0 {
		top["local"] = cty.ObjectVal(locals)
		progress := false
		var lastErr []string
		for name, a := range pending {
			v, diags := a.Expr.Value(ctx)
			if diags.HasErrors() {
				lastErr = append(lastErr, fmt.Sprintf("local.%s: %s", name, diags.Error()))
				continue
			}
			locals[name] = v
			delete(pending, name)
			progress = true
		}
		if !progress {
			sort.Strings(lastErr)
			t.Fatalf("module %s: locals do not evaluate:\n%s", m.dir, strings.Join(lastErr, "\n"))
		}
	}
	top["local"] = cty.ObjectVal(locals)
	return &evaluation{m: m, ctx: ctx}
}

func (m *module) variableValues(values map[string]cty.Value) (map[string]cty.Value, error) {
	for name := range values {
		if _, ok := m.variables[name]; !ok {
			return nil, fmt.Errorf("module %s has no variable %q", m.dir, name)
		}
	}
	out := map[string]cty.Value{}
	for name, b := range m.variables {
		ty := cty.DynamicPseudoType
		if a, ok := b.Body.Attributes["type"]; ok {
			var diags hcl.Diagnostics
			ty, diags = typeexpr.TypeConstraint(a.Expr)
			if diags.HasErrors() {
				return nil, fmt.Errorf("variable %s: type: %s", name, diags.Error())
			}
		}
		v, ok := values[name]
		if !ok {
			a, hasDefault := b.Body.Attributes["default"]
			if !hasDefault {
				return nil, fmt.Errorf("variable %s has no default: the test must give it a value", name)
			}
			var diags hcl.Diagnostics
			v, diags = a.Expr.Value(nil)
			if diags.HasErrors() {
				return nil, fmt.Errorf("variable %s: default: %s", name, diags.Error())
			}
		}
		cv, err := convert.Convert(v, ty)
		if err != nil {
			return nil, fmt.Errorf("variable %s: value %#v does not convert to its type: %v", name, v, err)
		}
		out[name] = cv
	}
	return out, nil
}

// validate evaluates every validation block of the variables and returns
// the names of the variables whose conditions fail.
func (m *module) validate(values map[string]cty.Value) ([]string, error) {
	vars, err := m.variableValues(values)
	if err != nil {
		return nil, err
	}
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(vars)}, Functions: functions}
	var failed []string
	for name, b := range m.variables {
		for _, vb := range b.Body.Blocks {
			if vb.Type != "validation" {
				continue
			}
			v, diags := vb.Body.Attributes["condition"].Expr.Value(ctx)
			if diags.HasErrors() {
				return nil, fmt.Errorf("variable %s: validation: %s", name, diags.Error())
			}
			if v.False() {
				failed = append(failed, name)
			}
		}
	}
	sort.Strings(failed)
	return failed, nil
}

// attr evaluates attribute name of resource key ("TYPE.NAME"), with each
// set for a for_each instance when each is not cty.NilVal.
func (e *evaluation) attr(t *testing.T, key, name string, each cty.Value) cty.Value {
	t.Helper()
	b, ok := e.m.resources[key]
	if !ok {
		t.Fatalf("module %s has no resource %s", e.m.dir, key)
	}
	a, ok := b.Body.Attributes[name]
	if !ok {
		return cty.NilVal
	}
	ctx := e.ctx
	if each != cty.NilVal {
		ctx = e.ctx.NewChild()
		ctx.Variables = map[string]cty.Value{"each": each}
	}
	v, diags := a.Expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatalf("%s.%s: %s", key, name, diags.Error())
	}
	return v
}

// instances expands a resource's for_each into each objects ({key,
// value}); a resource without for_each has one instance, cty.NilVal.
func (e *evaluation) instances(t *testing.T, key string) []cty.Value {
	t.Helper()
	fe := e.attr(t, key, "for_each", cty.NilVal)
	if fe == cty.NilVal {
		return []cty.Value{cty.NilVal}
	}
	var out []cty.Value
	for it := fe.ElementIterator(); it.Next(); {
		k, v := it.Element()
		if fe.Type().IsSetType() {
			k = v
		}
		out = append(out, cty.ObjectVal(map[string]cty.Value{"key": k, "value": v}))
	}
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
