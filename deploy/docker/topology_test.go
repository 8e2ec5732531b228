package docker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ecstypes "github.com/aws/aws-sdk-go-v2/service/ecs/types"
)

// renderedTask is the container definitions deploy/terraform renders for
// its test values; that package's test keeps the file equal to what the
// module produces, so this test runs what the module would register.
const renderedTask = "../terraform/testdata/cordon-task.container-definitions.golden.json"

// TestTaskTopology runs the Terraform module's task definition in Docker
// the way Fargate would: the sidecar and job containers with exactly the
// rendered user, read-only root, capabilities, mounts, command and
// entrypoint; one network namespace (awsvpc); the shared volume a fresh
// named volume (which, like a Fargate task volume, starts as a copy of the
// image's VOLUME directory, owner included); the job started only once
// the sidecar is healthy. The dev SPIFFE CA stands in for SPIRE and the
// agent's file provider for Secrets Manager; the job image is cordon-probe
// in place of the module's test job.
func TestTaskTopology(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	buildImages(t, ctx)

	var defs []ecstypes.ContainerDefinition
	if err := json.Unmarshal(readTestFile(t, renderedTask), &defs); err != nil {
		t.Fatalf("decode %s: %v", renderedTask, err)
	}
	sidecar, job := defs[0], defs[1]
	if *sidecar.Name != "cordon-sidecar" || *job.Name != "job" {
		t.Fatalf("%s: got containers %q and %q, want cordon-sidecar and job", renderedTask, *sidecar.Name, *job.Name)
	}

	suffix := make([]byte, 4)
	rand.Read(suffix)
	prefix := "cordon-topology-" + hex.EncodeToString(suffix)
	cleanup := func(args ...string) {
		t.Cleanup(func() { docker(t, context.Background(), nil, args...) })
	}

	// Host side of the task: the SPIRE socket directory and the secrets
	// the file provider serves in place of Secrets Manager.
	dir := t.TempDir()
	spireDir := filepath.Join(dir, "spire")
	if err := os.Mkdir(spireDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(spireDir, 65532, 65532); err != nil {
		t.Skipf("chown the SPIRE socket directory to 65532 (needs root): %v", err)
	}
	const monadKey, dbPassword = "rpc-key-Zq9xW2-value", "db-pass-Hk4vP8-value"
	secrets := filepath.Join(dir, "secrets.json")
	if err := os.WriteFile(secrets, []byte(`{"monad_rpc_key":"`+monadKey+`","db_password":"`+dbPassword+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	volume := prefix + "-cordon"
	cleanup("volume", "rm", "-f", volume)
	if _, stderr, code := docker(t, ctx, nil, "volume", "create", volume); code != 0 {
		t.Fatalf("docker volume create: %s", stderr)
	}
	spool := prefix + "-spool"
	cleanup("volume", "rm", "-f", spool)
	if _, stderr, code := docker(t, ctx, nil, "volume", "create", spool); code != 0 {
		t.Fatalf("docker volume create: %s", stderr)
	}
	sources := map[string]string{
		"cordon":             volume,
		"cordon-spool":       spool,
		"spire-agent-socket": spireDir,
	}

	spiffeSocket := ""
	for _, kv := range sidecar.Environment {
		if *kv.Name == "SPIFFE_ENDPOINT_SOCKET" {
			spiffeSocket = strings.TrimPrefix(*kv.Value, "unix://")
		}
	}
	socketDir := filepath.Dir(spiffeSocket)
	cleanup("rm", "-f", prefix+"-spire")
	if _, stderr, code := docker(t, ctx, nil, "run", "-d", "--name", prefix+"-spire",
		"--read-only", "--user", "65532:65532", "--cap-drop", "ALL", "--network", "none",
		"-v", spireDir+":"+socketDir, "cordon/devspiffe:"+testTag,
		"--trust-domain", "cordon.test", "--serve", spiffeSocket+"=spiffe://cordon.test/org/acme/job/block_follower"); code != 0 {
		t.Fatalf("start the dev SPIFFE CA: %s", stderr)
	}

	// The sidecar, as rendered, with local stand-ins for what is not here.
	agentArgs, extraMounts := localAgentArgs(t, ctx, sidecar.Command)
	args := append([]string{"run", "-d", "--name", prefix + "-sidecar", "--network", "none",
		"-v", secrets + ":/run/cordon-test/secrets.json:ro"}, extraMounts...)
	args = append(args, containerFlags(t, sidecar, sources)...)
	args = append(args, "cordon/sidecar:"+testTag)
	args = append(args, agentArgs...)
	args = append(args, "--provider", "file", "--secrets-file", "/run/cordon-test/secrets.json")
	cleanup("rm", "-f", prefix+"-sidecar")
	if _, stderr, code := docker(t, ctx, nil, args...); code != 0 {
		t.Fatalf("start the sidecar: %s", stderr)
	}
	checkImageHealthCheck(t, ctx, "cordon/sidecar:"+testTag, sidecar.HealthCheck.Command)
	waitHealthy(t, ctx, prefix+"-sidecar")

	// The job: dependsOn HEALTHY is satisfied; same network namespace; the
	// credential variables ECS puts in every container of a task.
	args = append([]string{"run", "--rm", "--network", "container:" + prefix + "-sidecar",
		"-e", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/task-guid",
		"-e", "AWS_SESSION_TOKEN=task-role-token"}, containerFlags(t, job, sources)...)
	args = append(args, "--entrypoint", job.EntryPoint[0], "cordon/probe:"+testTag)
	args = append(args, job.EntryPoint[1:]...)
	args = append(args, "/usr/local/bin/cordon-probe", "secret=MONAD_RPC_KEY", "secret=DB_PASSWORD", "aws-env", "parent-env", "tcp=192.0.2.1:443", "http=http://exfil.example/")
	stdout, stderr, code := docker(t, ctx, nil, args...)
	if code != 0 {
		logs, _, _ := docker(t, ctx, nil, "logs", prefix+"-sidecar")
		t.Fatalf("job: got exit %d, want 0\nstderr: %s\nsidecar logs: %s", code, stderr, logs)
	}
	all := string(stdout) + string(stderr)
	for _, v := range []string{monadKey, dbPassword, "task-role-token", "task-guid"} {
		if strings.Contains(all, v) {
			t.Errorf("%q reached the job's output: want it scrubbed or never given to the job", v)
		}
	}
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		var r struct {
			Probe, Target string
			OK            bool
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("probe line %q: %v", sc.Text(), err)
		}
		switch {
		case r.Probe == "secret" && r.OK:
			seen[r.Target]++
		case (r.Probe == "aws-env" || r.Probe == "parent-env") && r.OK:
			t.Errorf("the job sees the task's credential variables: %s", sc.Text())
		case r.Probe == "tcp" && r.OK:
			t.Errorf("the job connected out of a task with no route: %s", sc.Text())
		case r.Probe == "http" && r.OK:
			t.Errorf("the job reached a host no allowlist names: %s", sc.Text())
		}
	}
	if seen["MONAD_RPC_KEY"] != 6 || seen["DB_PASSWORD"] != 6 {
		t.Errorf("secret lines: got %v, want 6 each (the agent handed both secrets to the shim); stdout:\n%s", seen, stdout)
	}
}

// localAgentArgs adapts the rendered agent command to this machine: the
// control plane becomes the static allowlists in deploy/allowlists (the
// agent's local policy source), and the gateway and dispatcher, which this
// test does not run, are left out. Flags the agent binary does not (yet)
// know are dropped with a log line, so the test follows the agent as it
// grows flags instead of pinning one version of it.
func localAgentArgs(t *testing.T, ctx context.Context, rendered []string) (args, mounts []string) {
	t.Helper()
	_, help, _ := docker(t, ctx, nil, "run", "--rm", "--network", "none", "cordon/sidecar:"+testTag, "agent", "-h")
	known := func(flag string) bool {
		return bytes.Contains(help, []byte("  -"+flag+" ")) || bytes.Contains(help, []byte("  -"+flag+"\n"))
	}
	if len(rendered) == 0 || rendered[0] != "agent" {
		t.Fatalf("rendered sidecar command %q does not start with agent", rendered)
	}
	args = []string{"agent"}
	for i := 1; i+1 < len(rendered); i += 2 {
		flag, value := strings.TrimPrefix(rendered[i], "--"), rendered[i+1]
		switch {
		case flag == "xds" && known("allowlists"):
			abs, err := filepath.Abs("../allowlists")
			if err != nil {
				t.Fatal(err)
			}
			mounts = append(mounts, "-v", abs+":/etc/cordon/allowlists:ro")
			args = append(args, "--allowlists", "/etc/cordon/allowlists")
		case flag == "gateway" || flag == "dispatcher" || flag == "xds":
			t.Logf("agent flag --%s %s: not run here, left out", flag, value)
		case !known(flag):
			t.Logf("agent flag --%s: this cordon-sidecar does not take it yet, left out", flag)
		default:
			args = append(args, "--"+flag, value)
		}
	}
	return args, mounts
}

// containerFlags turns one ECS container definition into docker run flags:
// user, read-only root, privileged, capabilities, environment, mounts.
func containerFlags(t *testing.T, c ecstypes.ContainerDefinition, sources map[string]string) []string {
	t.Helper()
	var f []string
	if c.User != nil {
		f = append(f, "--user", *c.User)
	}
	if c.ReadonlyRootFilesystem != nil && *c.ReadonlyRootFilesystem {
		f = append(f, "--read-only")
	}
	if c.Privileged != nil && *c.Privileged {
		f = append(f, "--privileged")
	}
	if c.LinuxParameters != nil && c.LinuxParameters.Capabilities != nil {
		for _, cp := range c.LinuxParameters.Capabilities.Drop {
			f = append(f, "--cap-drop", cp)
		}
		for _, cp := range c.LinuxParameters.Capabilities.Add {
			f = append(f, "--cap-add", cp)
		}
	}
	for _, kv := range c.Environment {
		f = append(f, "-e", *kv.Name+"="+*kv.Value)
	}
	for _, m := range c.MountPoints {
		src, ok := sources[*m.SourceVolume]
		if !ok {
			// Scratch volumes (job_writable_paths): a tmpfs owned by the
			// task's user stands in for the task's ephemeral storage.
			uid, _, _ := strings.Cut(*c.User, ":")
			f = append(f, "--tmpfs", *m.ContainerPath+":uid="+uid+",gid="+uid+",mode=0755")
			continue
		}
		spec := src + ":" + *m.ContainerPath
		if m.ReadOnly != nil && *m.ReadOnly {
			spec += ":ro"
		}
		f = append(f, "-v", spec)
	}
	return f
}

// checkImageHealthCheck: the image's HEALTHCHECK (what docker and compose
// run) is the task definition's healthCheck (what ECS runs).
func checkImageHealthCheck(t *testing.T, ctx context.Context, ref string, want []string) {
	t.Helper()
	out, _, _ := docker(t, ctx, nil, "image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", ref)
	var got []string
	json.Unmarshal(out, &got)
	if !slices.Equal(got, want) {
		t.Errorf("%s HEALTHCHECK: got %q, want the task definition's %q", ref, got, want)
	}
}

func waitHealthy(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := docker(t, ctx, nil, "inspect", "--format", "{{.State.Health.Status}} {{.State.Status}}", name)
		state := strings.TrimSpace(string(out))
		switch {
		case strings.HasPrefix(state, "healthy"):
			return
		case strings.HasSuffix(state, "exited") || time.Now().After(deadline):
			logs, errLogs, _ := docker(t, ctx, nil, "logs", name)
			t.Fatalf("%s: got state %q, want healthy within 30s\nlogs: %s%s", name, state, logs, errLogs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func readTestFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
