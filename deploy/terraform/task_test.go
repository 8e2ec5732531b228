// Package terraform holds Cordon's Terraform modules (modules/cordon-task,
// modules/cordon-gateway); it has no Go code of its own. Its tests check the
// modules the way a reviewer would when no provider can be downloaded: they
// parse the HCL, evaluate the container definitions and IAM policies with
// test values, decode the containers into the aws-sdk-go-v2 ECS types, and
// assert the isolation invariants of DESIGN.md and seeds/000 (read-only,
// non-root, no capabilities, no privileged mode, the sidecar healthy before
// the job, the shim as the job's entrypoint, secrets scoped to
// /{env}/{org_slug}/*, no ingress, egress only to named security groups and
// prefix lists). terraform fmt runs where terraform is installed.
package terraform

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	ecstypes "github.com/aws/aws-sdk-go-v2/service/ecs/types"
	"github.com/zclconf/go-cty/cty"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const taskModule = "modules/cordon-task"

// taskValues are the variables a caller must set, with test values.
func taskValues() map[string]cty.Value {
	return map[string]cty.Value{
		"env":                       cty.StringVal("test"),
		"org_slug":                  cty.StringVal("acme"),
		"job_name":                  cty.StringVal("block_follower"),
		"sidecar_image":             cty.StringVal("123456789012.dkr.ecr.us-east-1.amazonaws.com/cordon/sidecar:1.0.0"),
		"job_image":                 cty.StringVal("123456789012.dkr.ecr.us-east-1.amazonaws.com/acme/block-follower@sha256:" + strings.Repeat("ab", 32)),
		"job_command":               cty.ListVal([]cty.Value{cty.StringVal("/app/follow"), cty.StringVal("--chain"), cty.StringVal("monad")}),
		"secret_names":              cty.ListVal([]cty.Value{cty.StringVal("monad_rpc_key"), cty.StringVal("db_password")}),
		"job_environment":           cty.MapVal(map[string]cty.Value{"CHAIN": cty.StringVal("monad"), "LOG_LEVEL": cty.StringVal("info")}),
		"xds_address":               cty.StringVal("xds.cordon.internal:18000"),
		"gateway_address":           cty.StringVal("egress.cordon.internal:8443"),
		"dispatcher_url":            cty.StringVal("https://dispatcher.cordon.internal:8443"),
		"vpc_id":                    cty.StringVal("vpc-0a1b2c3d"),
		"subnet_ids":                cty.ListVal([]cty.Value{cty.StringVal("subnet-0a1b2c3d")}),
		"gateway_security_group_id": cty.StringVal("sg-0a0a0a0a"),
		"control_plane_endpoints": cty.ListVal([]cty.Value{
			cty.ObjectVal(map[string]cty.Value{"name": cty.StringVal("xds"), "security_group_id": cty.StringVal("sg-0b0b0b0b"), "port": cty.NumberIntVal(18000)}),
			cty.ObjectVal(map[string]cty.Value{"name": cty.StringVal("dispatcher"), "security_group_id": cty.StringVal("sg-0c0c0c0c"), "port": cty.NumberIntVal(8443)}),
		}),
		"vpc_endpoint_security_group_ids": cty.ListVal([]cty.Value{cty.StringVal("sg-0d0d0d0d")}),
		"vpc_endpoint_prefix_list_ids":    cty.ListVal([]cty.Value{cty.StringVal("pl-63a5400a")}),
		"image_repository_arns": cty.ListVal([]cty.Value{
			cty.StringVal("arn:aws:ecr:us-east-1:123456789012:repository/cordon/sidecar"),
			cty.StringVal("arn:aws:ecr:us-east-1:123456789012:repository/acme/block-follower"),
		}),
	}
}

func with(base map[string]cty.Value, k string, v cty.Value) map[string]cty.Value {
	out := map[string]cty.Value{}
	for kk, vv := range base {
		out[kk] = vv
	}
	out[k] = v
	return out
}

// problems collects invariant violations, so the same checks serve the
// module as written (want none) and deliberately broken copies of it (want
// the right one).
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) report(t *testing.T) {
	t.Helper()
	for _, s := range p {
		t.Error(s)
	}
}

// containerDefinitions evaluates the task definition's container_definitions
// and decodes it into the ECS API types, refusing any JSON key that is not
// exactly an ECS field name (encoding/json alone matches keys
// case-insensitively, which would let "readOnlyRootFilesystem" through).
func containerDefinitions(t *testing.T, e *evaluation, p *problems) ([]ecstypes.ContainerDefinition, []byte) {
	t.Helper()
	v := e.attr(t, "aws_ecs_task_definition.this", "container_definitions", cty.NilVal)
	if v.Type() != cty.String {
		t.Fatalf("container_definitions: got %s, want a jsonencode string", v.Type().FriendlyName())
	}
	raw := []byte(v.AsString())
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatalf("container_definitions is not JSON: %v", err)
	}
	checkExactKeys(p, "containerDefinitions", generic, reflect.TypeOf([]ecstypes.ContainerDefinition{}))
	var defs []ecstypes.ContainerDefinition
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&defs); err != nil {
		t.Fatalf("container_definitions do not decode into []types.ContainerDefinition: %v", err)
	}
	return defs, raw
}

// checkExactKeys walks JSON against the Go type: every object key must be
// the lowerCamel name of a field (the ECS JSON names), except in maps.
func checkExactKeys(p *problems, path string, v any, typ reflect.Type) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch x := v.(type) {
	case []any:
		if typ.Kind() == reflect.Slice {
			for i, el := range x {
				checkExactKeys(p, path+"["+strconv.Itoa(i)+"]", el, typ.Elem())
			}
		}
	case map[string]any:
		if typ.Kind() == reflect.Map {
			for k, el := range x {
				checkExactKeys(p, path+"."+k, el, typ.Elem())
			}
			return
		}
		if typ.Kind() != reflect.Struct {
			return
		}
		for k, el := range x {
			f, ok := typ.FieldByName(string(unicode.ToUpper(rune(k[0]))) + k[1:])
			if !ok || !f.IsExported() {
				p.add("%s: key %q is not an ECS %s field (ECS JSON keys are case-sensitive)", path, k, typ.Name())
				continue
			}
			checkExactKeys(p, path+"."+k, el, f.Type)
		}
	}
}

func deref[T any](ptr *T) T {
	var zero T
	if ptr == nil {
		return zero
	}
	return *ptr
}

// credentialName matches environment names that carry credentials.
var credentialName = regexp.MustCompile(`(?i)^AWS_|SECRET|TOKEN|PASSW|CREDENTIAL|PRIVATE|_KEY$`)

// checkHardened asserts one container's isolation (seeds/000 "Container
// Isolation"): read-only root, numeric non-root user, not privileged, every
// capability dropped and none added, no ECS-injected secrets, no links or
// host devices, awslogs to the module's group, essential. Port mappings
// only where allowPorts (the gateway's listener).
func checkHardened(c ecstypes.ContainerDefinition, allowPorts bool) problems {
	var p problems
	name := deref(c.Name)
	if !deref(c.ReadonlyRootFilesystem) {
		p.add("%s: readonlyRootFilesystem: got false, want true (seeds/000: read-only root filesystem)", name)
	}
	uid, gid, _ := strings.Cut(deref(c.User), ":")
	u, errU := strconv.Atoi(uid)
	g, errG := strconv.Atoi(gid)
	if errU != nil || errG != nil || u <= 0 || g <= 0 {
		p.add("%s: user: got %q, want numeric non-root uid:gid", name, deref(c.User))
	}
	if deref(c.Privileged) {
		p.add("%s: privileged: got true, want false or absent (seeds/000: no privileged mode)", name)
	}
	if c.LinuxParameters == nil || c.LinuxParameters.Capabilities == nil {
		p.add("%s: linuxParameters.capabilities: absent, want drop [ALL]", name)
	} else {
		caps := c.LinuxParameters.Capabilities
		if !slices.Equal(caps.Drop, []string{"ALL"}) || len(caps.Add) != 0 {
			p.add("%s: capabilities: got drop %q add %q, want drop [ALL] add []", name, caps.Drop, caps.Add)
		}
		if lp := c.LinuxParameters; lp.Devices != nil || lp.SharedMemorySize != nil || lp.Tmpfs != nil {
			p.add("%s: linuxParameters: got devices/sharedMemorySize/tmpfs, want none (no host devices; Fargate refuses them)", name)
		}
	}
	if len(c.Secrets) != 0 {
		p.add("%s: secrets: got %d ECS secrets, want none: ECS would put them in the environment; the agent fetches them itself", name, len(c.Secrets))
	}
	if len(c.PortMappings) != 0 && !allowPorts {
		p.add("%s: portMappings: got %v, want none (no inbound connections)", name, c.PortMappings)
	}
	if len(c.VolumesFrom) != 0 || len(c.Links) != 0 || len(c.DockerSecurityOptions) != 0 || len(c.SystemControls) != 0 {
		p.add("%s: volumesFrom/links/dockerSecurityOptions/systemControls: got some, want none", name)
	}
	lc := c.LogConfiguration
	if lc == nil || lc.LogDriver != ecstypes.LogDriverAwslogs ||
		lc.Options["awslogs-group"] != "aws_cloudwatch_log_group.this.name" || lc.Options["awslogs-region"] != "us-east-1" || lc.Options["awslogs-stream-prefix"] == "" {
		p.add("%s: logConfiguration: got %+v, want awslogs to the module's log group in the task's region", name, lc)
	}
	if !deref(c.Essential) {
		p.add("%s: essential: got false, want true (either container dying ends the task)", name)
	}
	return p
}

// checkContainers asserts the invariants of DESIGN.md "How a task runs
// (Fargate)" and seeds/000 "Container Isolation" on the decoded containers.
// secretEnv are the env names the declared secrets become: they must never
// be in the task definition.
func checkContainers(defs []ecstypes.ContainerDefinition, secretEnv []string) problems {
	var p problems
	var names []string
	var sidecar, job *ecstypes.ContainerDefinition
	for i, c := range defs {
		names = append(names, deref(c.Name))
		switch deref(c.Name) {
		case "cordon-sidecar":
			sidecar = &defs[i]
		case "job":
			job = &defs[i]
		}
	}
	if !slices.Equal(names, []string{"cordon-sidecar", "job"}) || sidecar == nil || job == nil {
		p.add("containers: got %q, want [cordon-sidecar job]: a task holds the sidecar and the job, nothing else", names)
		return p
	}
	for _, c := range defs {
		p = append(p, checkHardened(c, false)...)
	}

	if sidecar.Command == nil || sidecar.Command[0] != "agent" || !hasFlag(sidecar.Command, "--shared-dir", "/cordon") {
		p.add("cordon-sidecar: command: got %q, want agent ... --shared-dir /cordon", sidecar.Command)
	}
	if !slices.Contains(sidecar.Command, "--gateway") || !slices.Contains(sidecar.Command, "--xds") || slices.Contains(sidecar.Command, "--allowlists") || slices.Contains(sidecar.Command, "--unsafe-allow-cidr") {
		p.add("cordon-sidecar: command: got %q, want --xds and --gateway (on Fargate the gateway is the second check) and no local-only flags", sidecar.Command)
	}
	if hc := sidecar.HealthCheck; hc == nil || !slices.Equal(hc.Command, []string{"CMD", "/usr/local/bin/cordon-sidecar", "health"}) {
		p.add("cordon-sidecar: healthCheck: got %+v, want CMD /usr/local/bin/cordon-sidecar health (exec form: the image has no shell)", hc)
	}
	if !strings.HasPrefix(envOf(*sidecar)["SPIFFE_ENDPOINT_SOCKET"], "unix:///") {
		p.add("cordon-sidecar: SPIFFE_ENDPOINT_SOCKET: got %q, want a unix:/// socket", envOf(*sidecar)["SPIFFE_ENDPOINT_SOCKET"])
	}
	if m := mount(*sidecar, "/cordon"); m == nil || deref(m.ReadOnly) {
		p.add("cordon-sidecar: mount /cordon: got %+v, want the shared volume read-write (the agent writes the shim and socket)", m)
	}

	if len(job.DependsOn) != 1 || deref(job.DependsOn[0].ContainerName) != "cordon-sidecar" || job.DependsOn[0].Condition != ecstypes.ContainerConditionHealthy {
		p.add("job: dependsOn: got %+v, want [{cordon-sidecar HEALTHY}]", job.DependsOn)
	}
	if want := []string{"/cordon/bin/cordon-sidecar", "run", "--"}; !slices.Equal(job.EntryPoint, want) {
		p.add("job: entryPoint: got %q, want %q (the shim)", job.EntryPoint, want)
	}
	for _, kv := range job.Environment {
		n := deref(kv.Name)
		if credentialName.MatchString(n) || slices.Contains(secretEnv, n) {
			p.add("job: environment: got %s, want no credential or secret in the task definition", n)
		}
	}
	if m := mount(*job, "/cordon"); m == nil || !deref(m.ReadOnly) || deref(m.SourceVolume) != deref(mount(*sidecar, "/cordon").SourceVolume) {
		p.add("job: mount /cordon: got %+v, want the sidecar's shared volume, read-only", m)
	}
	for _, m := range job.MountPoints {
		if deref(m.ContainerPath) != "/cordon" && slices.ContainsFunc(sidecar.MountPoints, func(s ecstypes.MountPoint) bool { return deref(s.SourceVolume) == deref(m.SourceVolume) }) {
			p.add("job: mount %s: shares the sidecar's volume %s (the SPIRE socket would give the job the task's SVID)", deref(m.ContainerPath), deref(m.SourceVolume))
		}
	}
	return p
}

func hasFlag(args []string, flag, value string) bool {
	i := slices.Index(args, flag)
	return i >= 0 && i+1 < len(args) && args[i+1] == value
}

func envOf(c ecstypes.ContainerDefinition) map[string]string {
	env := map[string]string{}
	for _, kv := range c.Environment {
		env[deref(kv.Name)] = deref(kv.Value)
	}
	return env
}

func containersByName(defs []ecstypes.ContainerDefinition) (sidecar, job ecstypes.ContainerDefinition) {
	for _, d := range defs {
		switch deref(d.Name) {
		case "cordon-sidecar":
			sidecar = d
		case "job":
			job = d
		}
	}
	return sidecar, job
}

var testSecretEnv = []string{"MONAD_RPC_KEY", "DB_PASSWORD"}

func TestTaskContainerDefinitions(t *testing.T) {
	m := loadModule(t, taskModule)
	var p problems
	defs, raw := containerDefinitions(t, m.evaluate(t, taskValues()), &p)
	p = append(p, checkContainers(defs, testSecretEnv)...)
	p.report(t)
	sidecar, job := containersByName(defs)

	// What the module's inputs must become, beyond the invariants.
	wantCmd := []string{
		"agent", "--env", "test", "--shared-dir", "/cordon", "--job-uid", "65532",
		"--xds", "xds.cordon.internal:18000", "--gateway", "egress.cordon.internal:8443",
		"--spool-dir", "/var/lib/cordon/spool",
		"--secrets", "monad_rpc_key,db_password",
		"--dispatcher", "https://dispatcher.cordon.internal:8443",
	}
	if !slices.Equal(sidecar.Command, wantCmd) {
		t.Errorf("sidecar command: got %q, want %q", sidecar.Command, wantCmd)
	}
	if got := envOf(sidecar)["SPIFFE_ENDPOINT_SOCKET"]; got != "unix:///run/spire/sockets/agent.sock" {
		t.Errorf("SPIFFE_ENDPOINT_SOCKET: got %q, want unix:///run/spire/sockets/agent.sock", got)
	}
	if m := mount(sidecar, "/var/lib/cordon/spool"); m == nil || deref(m.ReadOnly) {
		t.Errorf("sidecar mount /var/lib/cordon/spool: got %+v, want a writable spool volume", m)
	}
	if sidecar.Cpu != 128 || deref(sidecar.Memory) != 256 {
		t.Errorf("sidecar cpu/memory: got %d/%d, want 128/256", sidecar.Cpu, deref(sidecar.Memory))
	}
	if want := []string{"/app/follow", "--chain", "monad"}; !slices.Equal(job.Command, want) {
		t.Errorf("job command: got %q, want %q", job.Command, want)
	}
	if got := envOf(job); len(got) != 2 || got["CHAIN"] != "monad" || got["LOG_LEVEL"] != "info" {
		t.Errorf("job environment: got %v, want CHAIN=monad LOG_LEVEL=info", got)
	}
	if m := mount(job, "/tmp"); m == nil || deref(m.ReadOnly) {
		t.Errorf("job mount /tmp: got %+v, want a writable scratch volume", m)
	}
	if job.HealthCheck != nil {
		t.Error("job healthCheck: got one, want none (the job's exit ends the task)")
	}

	checkGolden(t, "cordon-task.container-definitions.golden.json", raw)
}

// checkGolden compares rendered JSON with testdata/name; -update rewrites
// it (review the diff first: it is what ECS will run).
func checkGolden(t *testing.T, name string, raw []byte) {
	t.Helper()
	golden := filepath.Join("testdata", name)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	pretty.WriteByte('\n')
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want := readFile(t, golden); !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("rendered container definitions differ from %s (review the change, then go test ./deploy/terraform -update):\ngot:\n%s", golden, pretty.Bytes())
	}
}

func mount(c ecstypes.ContainerDefinition, path string) *ecstypes.MountPoint {
	for i, m := range c.MountPoints {
		if deref(m.ContainerPath) == path {
			return &c.MountPoints[i]
		}
	}
	return nil
}

func TestTaskVariantsRender(t *testing.T) {
	m := loadModule(t, taskModule)
	cases := []struct {
		name   string
		values map[string]cty.Value
		check  func(t *testing.T, sidecar, job ecstypes.ContainerDefinition)
	}{
		{
			"no secrets: no --secrets flag",
			with(taskValues(), "secret_names", cty.ListValEmpty(cty.String)),
			func(t *testing.T, sidecar, _ ecstypes.ContainerDefinition) {
				if slices.Contains(sidecar.Command, "--secrets") {
					t.Errorf("command: got %q, want no --secrets", sidecar.Command)
				}
			},
		},
		{
			"no dispatcher: reporting off, no --dispatcher flag",
			with(taskValues(), "dispatcher_url", cty.NullVal(cty.String)),
			func(t *testing.T, sidecar, _ ecstypes.ContainerDefinition) {
				if slices.Contains(sidecar.Command, "--dispatcher") {
					t.Errorf("command: got %q, want no --dispatcher", sidecar.Command)
				}
			},
		},
		{
			"writable paths: one volume each, nothing else writable",
			with(taskValues(), "job_writable_paths", cty.ListVal([]cty.Value{cty.StringVal("/out"), cty.StringVal("/var/cache/job")})),
			func(t *testing.T, _, job ecstypes.ContainerDefinition) {
				var writable []string
				for _, mp := range job.MountPoints {
					if !deref(mp.ReadOnly) {
						writable = append(writable, deref(mp.ContainerPath))
					}
				}
				if !slices.Equal(writable, []string{"/out", "/var/cache/job"}) {
					t.Errorf("writable mounts: got %q, want [/out /var/cache/job]", writable)
				}
			},
		},
		{
			"custom uid reaches both containers and the agent's --job-uid",
			with(taskValues(), "task_uid", cty.NumberIntVal(10001)),
			func(t *testing.T, sidecar, job ecstypes.ContainerDefinition) {
				if deref(sidecar.User) != "10001:10001" || deref(job.User) != "10001:10001" {
					t.Errorf("users: got %q and %q, want 10001:10001", deref(sidecar.User), deref(job.User))
				}
				i := slices.Index(sidecar.Command, "--job-uid")
				if i < 0 || sidecar.Command[i+1] != "10001" {
					t.Errorf("command: got %q, want --job-uid 10001", sidecar.Command)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var p problems
			defs, _ := containerDefinitions(t, m.evaluate(t, tc.values), &p)
			p = append(p, checkContainers(defs, testSecretEnv)...)
			p.report(t)
			sidecar, job := containersByName(defs)
			tc.check(t, sidecar, job)
		})
	}
}

func TestTaskDefinitionAttributes(t *testing.T) {
	m := loadModule(t, taskModule)
	e := m.evaluate(t, taskValues())
	const td = "aws_ecs_task_definition.this"
	if got := e.attr(t, td, "network_mode", cty.NilVal); got != cty.StringVal("awsvpc") {
		t.Errorf("network_mode: got %#v, want awsvpc", got)
	}
	if got := e.attr(t, td, "requires_compatibilities", cty.NilVal); !got.RawEquals(cty.TupleVal([]cty.Value{cty.StringVal("FARGATE")})) {
		t.Errorf("requires_compatibilities: got %#v, want [FARGATE]", got)
	}
	for _, a := range []string{"pid_mode", "ipc_mode"} {
		if e.attr(t, td, a, cty.NilVal) != cty.NilVal {
			t.Errorf("%s: set, want unset (a shared namespace lets the job see the agent)", a)
		}
	}
	if got := e.attr(t, td, "task_role_arn", cty.NilVal); got != cty.StringVal("aws_iam_role.task.arn") {
		t.Errorf("task_role_arn: got %#v, want the module's task role", got)
	}
	var volumes []string
	for _, b := range m.resources[td].Body.Blocks {
		if b.Type == "volume" {
			volumes = append(volumes, string(b.Body.Attributes["name"].SrcRange.SliceBytes(readFile(t, b.Body.Attributes["name"].SrcRange.Filename))))
		}
		if b.Type == "volume" && len(b.Body.Blocks) > 0 {
			t.Errorf("volume block has nested %q: want plain task (ephemeral) volumes, no EFS or docker volumes", b.Body.Blocks[0].Type)
		}
	}
	if len(volumes) < 2 {
		t.Errorf("volumes: got %q, want the shared cordon volume and the SPIRE socket volume at least", volumes)
	}
}
