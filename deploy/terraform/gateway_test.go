package terraform

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

const gatewayModule = "modules/cordon-gateway"

func gatewayValues() map[string]cty.Value {
	return map[string]cty.Value{
		"env":                       cty.StringVal("test"),
		"image":                     cty.StringVal("123456789012.dkr.ecr.us-east-1.amazonaws.com/cordon/egress:1.0.0"),
		"cluster_arn":               cty.StringVal("arn:aws:ecs:us-east-1:123456789012:cluster/cordon"),
		"xds_address":               cty.StringVal("xds.cordon.internal:18000"),
		"xds_security_group_id":     cty.StringVal("sg-0b0b0b0b"),
		"vpc_id":                    cty.StringVal("vpc-0a1b2c3d"),
		"subnet_ids":                cty.ListVal([]cty.Value{cty.StringVal("subnet-0e0e0e0e")}),
		"client_security_group_ids": cty.ListVal([]cty.Value{cty.StringVal("sg-01010101"), cty.StringVal("sg-02020202")}),
		"egress_ports":              cty.ListVal([]cty.Value{cty.NumberIntVal(443), cty.NumberIntVal(8545)}),
	}
}

// checkGateway asserts the gateway's invariants: one hardened container
// listening only on the gateway port, no task role, ingress only from the
// job tasks' security groups on that port, egress to xds and to the
// configured CIDRs on the configured TCP ports. It returns the rules as
// "in|out TARGET:PORT".
func checkGateway(t *testing.T, e *evaluation) ([]string, problems) {
	var p problems
	defs, _ := containerDefinitions(t, e, &p)
	if len(defs) != 1 || deref(defs[0].Name) != "cordon-egress" {
		p.add("containers: got %d, want the one cordon-egress container", len(defs))
		return nil, p
	}
	c := defs[0]
	p = append(p, checkHardened(c, true)...)
	port := e.ctx.Variables["var"].GetAttr("gateway_port")
	portN, _ := port.AsBigFloat().Int64()
	for _, pm := range c.PortMappings {
		if deref(pm.ContainerPort) != int32(portN) || pm.Protocol != "tcp" {
			p.add("cordon-egress: portMapping %d/%s: want only %d/tcp", deref(pm.ContainerPort), pm.Protocol, portN)
		}
	}
	if !hasFlag(c.Command, "--tls-listen", fmt.Sprintf("0.0.0.0:%d", portN)) || !slices.Contains(c.Command, "--xds") {
		p.add("cordon-egress: command: got %q, want serve --tls-listen 0.0.0.0:%d --xds ADDR (gateway mode, policy from the control plane)", c.Command, portN)
	}
	if slices.Contains(c.Command, "--listen") || slices.Contains(c.Command, "--unsafe-allow-cidr") {
		p.add("cordon-egress: command: got %q, want no plain listener and no unsafe CIDRs", c.Command)
	}
	if e.attr(t, "aws_ecs_task_definition.this", "task_role_arn", cty.NilVal) != cty.NilVal {
		p.add("gateway task definition: task_role_arn set, want none (the gateway calls no AWS API)")
	}
	_, pe := checkPolicy("gateway execution role policy", e.attr(t, "aws_iam_role_policy.execution", "policy", cty.NilVal).AsString())
	p = append(p, pe...)

	var rules []string
	for key, b := range e.m.resources {
		typ, _, _ := strings.Cut(key, ".")
		switch typ {
		case "aws_security_group":
			for _, nb := range b.Body.Blocks {
				if nb.Type == "ingress" || nb.Type == "egress" || nb.Type == "dynamic" {
					p.add("%s: inline %s block: want none", key, nb.Type)
				}
			}
		case "aws_security_group_rule":
			p.add("%s: want aws_vpc_security_group_*_rule resources only", key)
		case "aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule":
			dir := "out"
			if typ == "aws_vpc_security_group_ingress_rule" {
				dir = "in"
			}
			for _, each := range e.instances(t, key) {
				get := func(a string) cty.Value { return e.attr(t, key, a, each) }
				from, to := get("from_port"), get("to_port")
				if get("ip_protocol") != cty.StringVal("tcp") || from == cty.NilVal || !from.RawEquals(to) {
					p.add("%s: want one TCP port per rule, got %#v %#v-%#v", key, get("ip_protocol"), from, to)
					continue
				}
				target := get("referenced_security_group_id")
				if dir == "in" && (target == cty.NilVal || get("cidr_ipv4") != cty.NilVal || get("cidr_ipv6") != cty.NilVal) {
					p.add("%s: ingress from %#v: want only the job tasks' security groups", key, get("cidr_ipv4"))
					continue
				}
				if target == cty.NilVal {
					target = get("cidr_ipv4")
				}
				if target == cty.NilVal {
					p.add("%s: want a security group or an IPv4 CIDR", key)
					continue
				}
				n, _ := from.AsBigFloat().Int64()
				if dir == "in" && n != portN {
					p.add("%s: ingress on port %d: want only the gateway port %d", key, n, portN)
				}
				rules = append(rules, fmt.Sprintf("%s %s:%d", dir, target.AsString(), n))
			}
		}
	}
	sort.Strings(rules)
	return rules, p
}

func TestGateway(t *testing.T) {
	m := loadModule(t, gatewayModule)
	if failed, err := m.validate(gatewayValues()); err != nil || len(failed) != 0 {
		t.Fatalf("valid values: got failures %q (%v), want none", failed, err)
	}
	e := m.evaluate(t, gatewayValues())
	rules, p := checkGateway(t, e)
	p.report(t)
	var pd problems
	_, raw := containerDefinitions(t, e, &pd)
	checkGolden(t, "cordon-gateway.container-definitions.golden.json", raw)
	want := []string{
		"in sg-01010101:8443", "in sg-02020202:8443",
		"out 0.0.0.0/0:443", "out 0.0.0.0/0:8545", "out sg-0b0b0b0b:18000",
	}
	if !slices.Equal(rules, want) {
		t.Errorf("security group rules: got %q, want %q", rules, want)
	}
}

func TestGatewayVariableValidation(t *testing.T) {
	m := loadModule(t, gatewayModule)
	cases := []struct {
		name     string
		variable string
		value    cty.Value
	}{
		{"one replica", "desired_count", cty.NumberIntVal(1)},
		{"privileged port", "gateway_port", cty.NumberIntVal(443)},
		{"root", "uid", cty.NumberIntVal(0)},
		{"CIDR as a client", "client_security_group_ids", cty.ListVal([]cty.Value{cty.StringVal("10.0.0.0/8")})},
		{"IPv6 egress CIDR", "egress_cidr_blocks", cty.ListVal([]cty.Value{cty.StringVal("::/0")})},
		{"port 0", "egress_ports", cty.ListVal([]cty.Value{cty.NumberIntVal(0)})},
		{"latest image", "image", cty.StringVal("cordon/egress:latest")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			failed, err := m.validate(with(gatewayValues(), tc.variable, tc.value))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(failed, []string{tc.variable}) {
				t.Errorf("%s = %#v: got failing validations %q, want [%s]", tc.variable, tc.value, failed, tc.variable)
			}
		})
	}
}

func TestGatewayChecksCatchBrokenModules(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"ingress from anywhere", "network.tf", "referenced_security_group_id = each.value", "cidr_ipv4 = \"0.0.0.0/0\"", "ingress from"},
		{"all protocols out", "network.tf", "cidr_ipv4         = each.value.cidr\n  ip_protocol       = \"tcp\"", "cidr_ipv4         = each.value.cidr\n  ip_protocol       = \"-1\"", "one TCP port per rule"},
		{"writable root", "main.tf", "readonlyRootFilesystem = true", "readonlyRootFilesystem = false", "readonlyRootFilesystem"},
		{"task role", "main.tf", "execution_role_arn       = aws_iam_role.execution.arn", "execution_role_arn       = aws_iam_role.execution.arn\n  task_role_arn = aws_iam_role.execution.arn", "task_role_arn"},
		{"extra port", "main.tf", `{ containerPort = var.gateway_port, protocol = "tcp" },`, `{ containerPort = var.gateway_port, protocol = "tcp" }, { containerPort = 9090, protocol = "tcp" },`, "portMapping 9090"},
		{"static allowlists instead of xds", "main.tf", `"--xds", var.xds_address,`, `"--allowlists", "/allowlists",`, "gateway mode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, _ := filepath.Glob(filepath.Join(gatewayModule, "*.tf"))
			for _, f := range files {
				b := readFile(t, f)
				if filepath.Base(f) == tc.file {
					if !strings.Contains(string(b), tc.old) {
						t.Fatalf("%s no longer contains %q: update this mutation", f, tc.old)
					}
					b = []byte(strings.ReplaceAll(string(b), tc.old, tc.new))
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, p := checkGateway(t, loadModule(t, dir).evaluate(t, gatewayValues()))
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Errorf("got problems %q, want one mentioning %q", p, tc.want)
			}
		})
	}
}
