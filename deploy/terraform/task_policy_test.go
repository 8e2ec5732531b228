package terraform

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

// policyDoc is an IAM policy document as the modules jsonencode it.
type policyDoc struct {
	Version   string
	Statement []statement
}

type statement struct {
	Sid         string
	Effect      string
	Principal   map[string]any
	Action      stringOrList
	NotAction   stringOrList
	Resource    stringOrList
	NotResource stringOrList
	Condition   map[string]map[string]any
}

// stringOrList decodes IAM's "a" or ["a", "b"].
type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings: %w", err)
	}
	*s = many
	return nil
}

// resourceStarActions may (must) use Resource "*": they support no
// resource-level permission, and each is harmless alone.
var resourceStarActions = map[string]string{
	"ecr:GetAuthorizationToken":          "a registry login token; pulling still needs the repository-scoped actions",
	"secretsmanager:BatchGetSecretValue": "each secret in a batch is still authorised against the scoped GetSecretValue",
}

// checkPolicy asserts a permissions policy grants nothing broad: Allow
// only, explicit actions without wildcards, no role assumption or IAM, and
// Resource "*" only for resourceStarActions.
func checkPolicy(name, doc string) (policyDoc, problems) {
	var p problems
	var pd policyDoc
	if err := json.Unmarshal([]byte(doc), &pd); err != nil {
		p.add("%s: not a policy document: %v", name, err)
		return pd, p
	}
	if pd.Version != "2012-10-17" {
		p.add("%s: Version: got %q, want 2012-10-17", name, pd.Version)
	}
	for i, s := range pd.Statement {
		where := fmt.Sprintf("%s statement %d (%s)", name, i, s.Sid)
		if s.Effect != "Allow" {
			p.add("%s: Effect: got %q, want Allow (a grant-only policy)", where, s.Effect)
		}
		if len(s.NotAction) > 0 || len(s.NotResource) > 0 {
			p.add("%s: NotAction/NotResource grant everything else: want Action and Resource", where)
		}
		if len(s.Action) == 0 || len(s.Resource) == 0 {
			p.add("%s: want explicit Action and Resource", where)
		}
		for _, a := range s.Action {
			if strings.Contains(a, "*") {
				p.add("%s: Action %q: want no wildcard actions", where, a)
			}
			if svc, _, _ := strings.Cut(strings.ToLower(a), ":"); svc == "sts" || svc == "iam" {
				p.add("%s: Action %q: want no role assumption or IAM (seeds/000: no IAM role assumption)", where, a)
			}
		}
		for _, r := range s.Resource {
			if r != "*" {
				continue
			}
			for _, a := range s.Action {
				if _, ok := resourceStarActions[a]; !ok {
					p.add("%s: Resource \"*\" for %s: want a scoped ARN", where, a)
				}
			}
		}
	}
	return pd, p
}

func grants(pd policyDoc, action string) []string {
	var rs []string
	for _, s := range pd.Statement {
		if slices.Contains(s.Action, action) {
			rs = append(rs, s.Resource...)
		}
	}
	return rs
}

// checkTaskIAM checks both roles of the task module.
func checkTaskIAM(t *testing.T, e *evaluation, wantSecretsARN string) problems {
	task, p := checkPolicy("task role policy", e.attr(t, "aws_iam_role_policy.task", "policy", cty.NilVal).AsString())
	if got := grants(task, "secretsmanager:GetSecretValue"); !slices.Equal(got, []string{wantSecretsARN}) {
		p.add("task role: GetSecretValue on %q, want exactly [%s] (seeds/000 /{env}/{org_slug}/{secret_name})", got, wantSecretsARN)
	}
	for _, s := range task.Statement {
		for _, a := range s.Action {
			if a != "secretsmanager:GetSecretValue" && a != "secretsmanager:BatchGetSecretValue" && a != "kms:Decrypt" {
				p.add("task role: grants %s: want only reading the org's secrets (every container of the task holds this role)", a)
			}
		}
	}
	exec, pe := checkPolicy("execution role policy", e.attr(t, "aws_iam_role_policy.execution", "policy", cty.NilVal).AsString())
	p = append(p, pe...)
	for _, r := range grants(exec, "logs:PutLogEvents") {
		if r != "aws_cloudwatch_log_group.this.arn:log-stream:*" {
			p.add("execution role: PutLogEvents on %q, want only the module's log group", r)
		}
	}
	for _, role := range []string{"aws_iam_role.task", "aws_iam_role.execution"} {
		var trust policyDoc
		if err := json.Unmarshal([]byte(e.attr(t, role, "assume_role_policy", cty.NilVal).AsString()), &trust); err != nil {
			p.add("%s: assume_role_policy: %v", role, err)
			continue
		}
		for _, s := range trust.Statement {
			if fmt.Sprint(s.Principal) != "map[Service:ecs-tasks.amazonaws.com]" {
				p.add("%s: trust principal: got %v, want only ecs-tasks.amazonaws.com", role, s.Principal)
			}
			if s.Condition["StringEquals"]["aws:SourceAccount"] != "123456789012" {
				p.add("%s: trust condition: got %v, want aws:SourceAccount pinned (confused deputy)", role, s.Condition)
			}
		}
	}
	return p
}

// checkTaskNetwork checks the security group: no ingress anywhere, egress
// only by security group or prefix list, one TCP port per rule. It returns
// the egress targets as "TARGET:PORT".
func checkTaskNetwork(t *testing.T, e *evaluation) ([]string, problems) {
	var p problems
	var targets []string
	for key, b := range e.m.resources {
		typ, _, _ := strings.Cut(key, ".")
		switch typ {
		case "aws_security_group":
			for _, a := range []string{"ingress", "egress"} {
				if _, ok := b.Body.Attributes[a]; ok {
					p.add("%s: inline %s attribute: want none (rules are separate resources)", key, a)
				}
			}
			for _, nb := range b.Body.Blocks {
				if nb.Type == "ingress" || nb.Type == "egress" || nb.Type == "dynamic" {
					p.add("%s: inline %s block: want none", key, nb.Type)
				}
			}
		case "aws_vpc_security_group_ingress_rule", "aws_security_group_rule":
			p.add("%s: want no ingress rules and no legacy rule resources (seeds/000: no inbound connections)", key)
		case "aws_vpc_security_group_egress_rule":
			for _, each := range e.instances(t, key) {
				get := func(a string) cty.Value { return e.attr(t, key, a, each) }
				where := key
				if each != cty.NilVal {
					where += fmt.Sprintf("[%s]", each.GetAttr("key").AsString())
				}
				if get("security_group_id") != cty.StringVal("aws_security_group.task.id") {
					p.add("%s: security_group_id: want the task's group", where)
				}
				for _, a := range []string{"cidr_ipv4", "cidr_ipv6"} {
					if v := get(a); v != cty.NilVal {
						p.add("%s: %s = %#v: want no CIDR egress (only the gateway, control plane and VPC endpoints)", where, a, v)
					}
				}
				sg, pl := get("referenced_security_group_id"), get("prefix_list_id")
				if (sg == cty.NilVal) == (pl == cty.NilVal) {
					p.add("%s: want exactly one of referenced_security_group_id and prefix_list_id", where)
					continue
				}
				if get("ip_protocol") != cty.StringVal("tcp") {
					p.add("%s: ip_protocol: got %#v, want tcp (no UDP, no all-protocols)", where, get("ip_protocol"))
				}
				from, to := get("from_port"), get("to_port")
				if from == cty.NilVal || !from.RawEquals(to) {
					p.add("%s: ports %#v-%#v: want one port per rule", where, from, to)
					continue
				}
				target := sg
				if target == cty.NilVal {
					target = pl
				}
				port, _ := from.AsBigFloat().Int64()
				targets = append(targets, fmt.Sprintf("%s:%d", target.AsString(), port))
			}
		}
	}
	sort.Strings(targets)
	return targets, p
}

const testSecretsARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:/test/acme/*"

func TestTaskIAM(t *testing.T) {
	m := loadModule(t, taskModule)
	cases := []struct {
		name      string
		values    map[string]cty.Value
		wantBatch bool
		wantKMS   bool
	}{
		{"default: GetSecretValue only", taskValues(), false, false},
		{"batch allowed", with(taskValues(), "allow_batch_get_secrets", cty.True), true, false},
		{"customer-managed key", with(taskValues(), "secrets_kms_key_arns", cty.ListVal([]cty.Value{cty.StringVal("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")})), false, true},
		{"other env and org", with(with(taskValues(), "env", cty.StringVal("prod")), "org_slug", cty.StringVal("globex")), false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := m.evaluate(t, tc.values)
			want := testSecretsARN
			if tc.values["org_slug"].AsString() == "globex" {
				want = "arn:aws:secretsmanager:us-east-1:123456789012:secret:/prod/globex/*"
			}
			checkTaskIAM(t, e, want).report(t)
			task, _ := checkPolicy("task", e.attr(t, "aws_iam_role_policy.task", "policy", cty.NilVal).AsString())
			if got := len(grants(task, "secretsmanager:BatchGetSecretValue")) > 0; got != tc.wantBatch {
				t.Errorf("BatchGetSecretValue granted: got %v, want %v", got, tc.wantBatch)
			}
			kms := grants(task, "kms:Decrypt")
			if (len(kms) > 0) != tc.wantKMS {
				t.Errorf("kms:Decrypt granted on %q: want granted=%v", kms, tc.wantKMS)
			}
			for _, s := range task.Statement {
				if slices.Contains(s.Action, "kms:Decrypt") && s.Condition["StringEquals"]["kms:ViaService"] != "secretsmanager.us-east-1.amazonaws.com" {
					t.Errorf("kms:Decrypt condition: got %v, want kms:ViaService secretsmanager.us-east-1.amazonaws.com", s.Condition)
				}
			}
		})
	}
}

func TestTaskNetwork(t *testing.T) {
	m := loadModule(t, taskModule)
	targets, p := checkTaskNetwork(t, m.evaluate(t, taskValues()))
	p.report(t)
	want := []string{"pl-63a5400a:443", "sg-0a0a0a0a:8443", "sg-0b0b0b0b:18000", "sg-0c0c0c0c:8443", "sg-0d0d0d0d:443"}
	if !slices.Equal(targets, want) {
		t.Errorf("egress: got %q, want %q (gateway, xds, dispatcher, interface and gateway endpoints)", targets, want)
	}
}

// TestTaskChecksCatchBrokenModules breaks a copy of the module in one way
// each and requires the checks above to say so: the checks can fail.
func TestTaskChecksCatchBrokenModules(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"writable root", "main.tf", "readonlyRootFilesystem = true", "readonlyRootFilesystem = false", "readonlyRootFilesystem: got false"},
		{"misspelt ECS key", "main.tf", "readonlyRootFilesystem = true", "readOnlyRootFilesystem = true", `key "readOnlyRootFilesystem" is not an ECS`},
		{"privileged", "main.tf", "privileged             = false", "privileged             = true", "privileged: got true"},
		{"root user", "main.tf", `user         = "${var.task_uid}:${var.task_uid}"`, `user         = "0:0"`, `user: got "0:0"`},
		{"SYS_PTRACE added", "main.tf", "add  = []", `add  = ["SYS_PTRACE"]`, "capabilities: got"},
		{"capabilities kept", "main.tf", `drop = ["ALL"]`, `drop = ["NET_RAW"]`, "capabilities: got"},
		{"sidecar without the gateway", "main.tf", `"--gateway", var.gateway_address,`, ``, "want --xds and --gateway"},
		{"job starts before the sidecar is healthy", "main.tf", `condition = "HEALTHY"`, `condition = "START"`, "dependsOn"},
		{"job bypasses the shim", "main.tf", `entryPoint             = [local.shim, "run", "--"]`, `entryPoint             = ["/app/follow"]`, "entryPoint"},
		{"job can write the shim", "main.tf", "containerPath = local.shared_path, readOnly = true", "containerPath = local.shared_path, readOnly = false", "job: mount /cordon"},
		{"job gets the Workload API", "main.tf", "[for v, p in local.scratch_volumes", `[{ sourceVolume = local.spire_volume, containerPath = "/spire", readOnly = true }], [for v, p in local.scratch_volumes`, "SPIRE socket"},
		{"credentials in the job env", "main.tf", "environment = [for k, v in var.job_environment : { name = k, value = v }]", `environment = [{ name = "AWS_SECRET_ACCESS_KEY", value = "x" }]`, "AWS_SECRET_ACCESS_KEY"},
		{"sidecar not health-checked", "main.tf", `command     = ["CMD", "/usr/local/bin/cordon-sidecar", "health"]`, `command     = ["CMD-SHELL", "true"]`, "healthCheck"},
		{"no log configuration", "main.tf", "logDriver = \"awslogs\"", "logDriver = \"none\"", "logConfiguration"},
		{"ECS secrets", "main.tf", "stopTimeout      = 30\n    logConfiguration = local.log_configuration\n  }\n\n  job_container", "stopTimeout      = 30\n    secrets = [{ name = \"X\", valueFrom = \"arn\" }]\n    logConfiguration = local.log_configuration\n  }\n\n  job_container", "ECS secrets"},
		{"every secret of the account", "iam.tf", `secret:/${var.env}/${var.org_slug}/*"`, `secret:*"`, "GetSecretValue on"},
		{"another org's secrets", "iam.tf", `secret:/${var.env}/${var.org_slug}/*"`, `secret:/${var.env}/*"`, "GetSecretValue on"},
		{"wildcard action", "iam.tf", `Action   = ["secretsmanager:GetSecretValue"]`, `Action   = ["secretsmanager:*"]`, "wildcard actions"},
		{"role assumption", "iam.tf", `Action   = ["secretsmanager:GetSecretValue"]`, `Action   = ["secretsmanager:GetSecretValue", "sts:AssumeRole"]`, "no role assumption"},
		{"logs anywhere", "iam.tf", `Resource = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]`, `Resource = ["*"]`, `Resource "*" for logs:`},
		{"open egress", "network.tf", "prefix_list_id    = each.value", "cidr_ipv4 = \"0.0.0.0/0\"", "cidr_ipv4"},
		{"port range", "network.tf", "to_port                      = var.gateway_port", "to_port = 65535", "one port per rule"},
		{"ingress rule", "network.tf", "resource \"aws_vpc_security_group_egress_rule\" \"gateway\"", "resource \"aws_vpc_security_group_ingress_rule\" \"gateway\"", "no ingress rules"},
		{"inline ingress", "network.tf", "vpc_id      = var.vpc_id", "vpc_id      = var.vpc_id\n  ingress {\n    from_port = 0\n  }", "inline ingress"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, _ := filepath.Glob(filepath.Join(taskModule, "*.tf"))
			for _, f := range files {
				b := readFile(t, f)
				if filepath.Base(f) == tc.file {
					if strings.Count(string(b), tc.old) == 0 {
						t.Fatalf("%s no longer contains %q: update this mutation", f, tc.old)
					}
					b = []byte(strings.ReplaceAll(string(b), tc.old, tc.new))
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			m := loadModule(t, dir)
			e := m.evaluate(t, taskValues())
			var p problems
			defs, _ := containerDefinitions(t, e, &p)
			p = append(p, checkContainers(defs, testSecretEnv)...)
			p = append(p, checkTaskIAM(t, e, testSecretsARN)...)
			_, pn := checkTaskNetwork(t, e)
			p = append(p, pn...)
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Errorf("got problems %q, want one mentioning %q", p, tc.want)
			}
		})
	}
}

func TestTaskVariableValidation(t *testing.T) {
	m := loadModule(t, taskModule)
	if failed, err := m.validate(taskValues()); err != nil || len(failed) != 0 {
		t.Fatalf("valid values: got failures %q (%v), want none", failed, err)
	}
	str := cty.StringVal
	list := func(vs ...string) cty.Value {
		var out []cty.Value
		for _, v := range vs {
			out = append(out, str(v))
		}
		return cty.ListVal(out)
	}
	cases := []struct {
		name     string
		variable string
		value    cty.Value
	}{
		{"org climbing out of its prefix", "org_slug", str("../globex")},
		{"org with a wildcard", "org_slug", str("acme*")},
		{"org with a slash", "org_slug", str("acme/x")},
		{"uppercase org", "org_slug", str("Acme")},
		{"empty org", "org_slug", str("")},
		{"env with a slash", "env", str("prod/acme")},
		{"secret name with a path", "secret_names", list("../../prod/globex/key")},
		{"secret name with a wildcard", "secret_names", list("*")},
		{"root uid", "task_uid", cty.NumberIntVal(0)},
		{"fractional uid", "task_uid", cty.NumberFloatVal(1.5)},
		{"latest sidecar", "sidecar_image", str("cordon/sidecar:latest")},
		{"untagged job image", "job_image", str("acme/job")},
		{"empty job command", "job_command", cty.ListValEmpty(cty.String)},
		{"credential in job env", "job_environment", cty.MapVal(map[string]cty.Value{"AWS_SECRET_ACCESS_KEY": str("x")})},
		{"token in job env", "job_environment", cty.MapVal(map[string]cty.Value{"GITHUB_TOKEN": str("x")})},
		{"proxy override in job env", "job_environment", cty.MapVal(map[string]cty.Value{"HTTPS_PROXY": str("http://evil:3128")})},
		{"writable /cordon", "job_writable_paths", list("/cordon/bin")},
		{"relative writable path", "job_writable_paths", list("tmp")},
		{"writable path climbing out", "job_writable_paths", list("/tmp/../cordon")},
		{"cpu not a Fargate size", "cpu", cty.NumberIntVal(300)},
		{"wildcard ECR repository", "image_repository_arns", list("arn:aws:ecr:us-east-1:123456789012:repository/*")},
		{"KMS alias", "secrets_kms_key_arns", list("arn:aws:kms:us-east-1:123456789012:alias/secrets")},
		{"CIDR for the gateway", "gateway_security_group_id", str("0.0.0.0/0")},
		{"prefix list that is a CIDR", "vpc_endpoint_prefix_list_ids", list("0.0.0.0/0")},
		{"plain-HTTP dispatcher", "dispatcher_url", str("http://dispatcher.cordon.internal:8080")},
		{"xds without a port", "xds_address", str("xds.cordon.internal")},
		{"gateway address with a scheme", "gateway_address", str("https://egress.cordon.internal:8443")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			failed, err := m.validate(with(taskValues(), tc.variable, tc.value))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(failed, []string{tc.variable}) {
				t.Errorf("%s = %#v: got failing validations %q, want [%s]", tc.variable, tc.value, failed, tc.variable)
			}
		})
	}
}
