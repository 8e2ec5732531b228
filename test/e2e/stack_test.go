package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cordon-dev/cordon/test/pgtest"
)

// imageTag keeps the images this test builds apart from the :dev images a
// developer's stack runs and the deploy/docker test's :imagetest.
const imageTag = "e2e"

// repoRoot is the repository root, from this file's location.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller: no file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// requireDocker skips when the Docker daemon is unreachable or no
// PostgreSQL server binaries are installed, the capabilities whose absence
// excuses this test. A missing docker-compose on a machine with Docker is
// a setup error and fails.
func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("docker is not installed: the end-to-end tests need a Docker Engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("the Docker daemon is unreachable (docker info: %v: %s)", err, bytes.TrimSpace(out))
	}
	// The stack's Postgres runs on the host (up.sh), from the same
	// packages test/pgtest uses.
	if _, err := pgtest.FindBinDir(); errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err.Error())
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatalf("docker-compose is not on PATH (apt-get install docker-compose): the stack is deploy/compose/docker-compose.yml: %v", err)
	}
}

// run runs a command and returns its stdout, stderr and exit code; it
// fails the test only when the command cannot be started at all.
func run(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// buildImages runs build-images.sh: go build leaves up-to-date binaries
// alone and unchanged binaries are docker build cache hits, so images are
// rebuilt exactly when missing or stale, and a warm run takes seconds.
func buildImages(t *testing.T, ctx context.Context, root string) {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	// Its own binary directory: the deploy/docker test builds into another
	// one at the same time.
	bin := filepath.Join(cache, "cordon", "e2e-binaries")
	// No VCS stamp: a commit anywhere would otherwise relink every binary.
	env := []string{"TAG=" + imageTag, "BIN=" + bin, "GOFLAGS=" + strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false")}
	out, errOut, code := run(t, ctx, root, env, "deploy/docker/build-images.sh")
	if code != 0 {
		t.Fatalf("build-images.sh: exit %d\n%s%s", code, out, errOut)
	}
}

// stack is one running copy of deploy/compose under its own project name.
type stack struct {
	t        *testing.T
	root     string
	dir      string // deploy/compose
	project  string
	runDir   string // CORDON_RUN_DIR
	allow    string // the allowlist directory cordon-xds watches
	subnet   string // the outside network
	runID    string // the sidecar's current CORDON_RUN_ID
	secrets  map[string]string
	fakeIPv4 string
}

// with returns a copy of s that reports to t: each subtest fails (and
// cleans up) itself, never its parent from the wrong goroutine.
func (s *stack) with(t *testing.T) *stack {
	c := *s
	c.t = t
	return &c
}

func (s *stack) env() []string {
	return []string{
		"COMPOSE_PROJECT_NAME=" + s.project,
		"CORDON_RUN_DIR=" + s.runDir,
		"CORDON_ALLOWLISTS=" + s.allow,
		"CORDON_OUTSIDE_SUBNET=" + s.subnet,
		"CORDON_TAG=" + imageTag,
		"CORDON_RUN_ID=" + s.runID,
		"CORDON_NO_BUILD=1",
	}
}

// compose runs docker-compose on the stack's project.
func (s *stack) compose(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	return run(s.t, ctx, s.dir, s.env(), "docker-compose", args...)
}

// mustCompose runs docker-compose and fails the test on a non-zero exit.
func (s *stack) mustCompose(ctx context.Context, args ...string) string {
	s.t.Helper()
	out, errOut, code := s.compose(ctx, args...)
	if code != 0 {
		s.t.Fatalf("docker-compose %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// startStack brings deploy/compose up with up.sh under a fresh project
// name, run directory and outside subnet, and registers down.sh (after a
// dump of every service's logs if the test failed) for the end of the
// test, whatever happens.
func startStack(t *testing.T, ctx context.Context, root string, allowlist []byte, secrets map[string]string) *stack {
	t.Helper()
	dir := filepath.Join(root, "deploy", "compose")
	sweepOrphans(t, ctx, dir)
	runDir, err := os.MkdirTemp("", "cordon-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	allow := filepath.Join(runDir, "allowlists")
	s := &stack{
		t: t, root: root, dir: dir,
		project: "cordone2e" + randHex(4), runDir: runDir, allow: allow,
		runID: "run-" + randHex(4), secrets: secrets,
	}
	// Who owns this stack, for sweepOrphans should this process die
	// before its cleanup runs (a test timeout, a kill).
	if err := os.WriteFile(filepath.Join(runDir, "owner"), fmt.Appendf(nil, "%d %s\n", os.Getpid(), s.project), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A fresh context: the test's may be spent.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if t.Failed() {
			logs, _, _ := run(t, ctx, s.dir, s.env(), "docker-compose", "logs", "--no-color", "--tail", "60")
			t.Logf("stack logs:\n%s", logs)
		}
		out, errOut, code := run(t, ctx, s.dir, s.env(), "./down.sh")
		if code != 0 {
			t.Errorf("down.sh: exit %d\n%s%s", code, out, errOut)
		}
	})
	if err := os.Mkdir(allow, 0o755); err != nil {
		t.Fatal(err)
	}
	s.writeAllowlist(allowlist)
	js, err := json.Marshal(secrets)
	if err != nil {
		t.Fatal(err)
	}
	// Docker picks the internal network's subnet; the outside one is ours
	// to name (the gateway's --unsafe-allow-cidr), so pick a random /24
	// outside Docker's default pools (172.17-31/16, 192.168/16, where
	// other stacks' networks land) and try another if one already holds it.
	for attempt := 0; ; attempt++ {
		n, _ := rand.Int(rand.Reader, big.NewInt(250))
		s.subnet = fmt.Sprintf("10.203.%d.0/24", n.Int64()+1)
		out, errOut, code := run(t, ctx, s.dir, append(s.env(), "CORDON_SECRETS_JSON="+string(js)), "./up.sh")
		if code == 0 {
			break
		}
		if attempt < 3 && strings.Contains(errOut, "overlap") {
			t.Logf("outside subnet %s is taken, trying another", s.subnet)
			run(t, ctx, s.dir, s.env(), "docker-compose", "down", "--volumes", "--remove-orphans", "--timeout", "1")
			continue
		}
		t.Fatalf("up.sh: exit %d\n%s%s", code, out, errOut)
	}
	id := strings.TrimSpace(s.mustCompose(ctx, "ps", "-q", "fake-internet"))
	ip, errOut, code := run(t, ctx, "", nil, "docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id)
	if code != 0 {
		t.Fatalf("docker inspect fake-internet: %s", errOut)
	}
	s.fakeIPv4 = strings.TrimSpace(ip)
	return s
}

// sweepOrphans tears down stacks whose test process is gone: down.sh
// with the project and run directory their owner file names.
func sweepOrphans(t *testing.T, ctx context.Context, composeDir string) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "cordon-e2e-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			continue
		}
		var pid int
		var project string
		if _, err := fmt.Sscan(string(b), &pid, &project); err != nil || pid <= 0 || !strings.HasPrefix(project, "cordone2e") {
			continue
		}
		if syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // its owner is alive (or not ours to judge)
		}
		out, errOut, code := run(t, ctx, composeDir, []string{"COMPOSE_PROJECT_NAME=" + project, "CORDON_RUN_DIR=" + d}, "./down.sh")
		t.Logf("removed stack %s left by dead process %d (down.sh exit %d)\n%s%s", project, pid, code, out, errOut)
	}
}

// writeAllowlist replaces the org's allowlist file the way an editor or a
// deploy does: a temporary file renamed over the old one.
func (s *stack) writeAllowlist(b []byte) {
	s.t.Helper()
	tmp := filepath.Join(s.allow, ".acme.yaml.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.allow, "acme.yaml")); err != nil {
		s.t.Fatal(err)
	}
}

// containerID is the ID of a service's (first) container.
func (s *stack) containerID(ctx context.Context, service string) string {
	s.t.Helper()
	id := strings.TrimSpace(s.mustCompose(ctx, "ps", "-q", service))
	if id == "" {
		s.t.Fatalf("service %s has no container", service)
	}
	return id
}

// waitLog waits until a service's logs contain want (the sidecar says
// "xds policy applied" once its proxy has a policy to enforce).
func (s *stack) waitLog(ctx context.Context, service, want string, limit time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		out, _, _ := s.compose(ctx, "logs", "--no-color", service)
		if strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: no %q in its logs within %s\n%s", service, want, limit, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// newTask starts a fresh sidecar (one task runs one job: the agent hands
// the job's env out once) under a new run ID, and waits until it is
// healthy and holds a policy.
func (s *stack) newTask(ctx context.Context) {
	s.t.Helper()
	s.runID = "run-" + randHex(4)
	s.mustCompose(ctx, "up", "-d", "--no-deps", "--force-recreate", "--renew-anon-volumes", "sidecar")
	s.waitHealthy(ctx)
}

func (s *stack) waitHealthy(ctx context.Context) {
	s.t.Helper()
	id := s.containerID(ctx, "sidecar")
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _, _ := run(s.t, ctx, "", nil, "docker", "inspect", "--format", "{{.State.Health.Status}} {{.State.Status}}", id)
		state := strings.TrimSpace(out)
		if strings.HasPrefix(state, "healthy") {
			break
		}
		if strings.HasSuffix(state, "exited") || time.Now().After(deadline) {
			s.t.Fatalf("sidecar: got state %q, want healthy within 60s", state)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Healthy means identity, secrets, shim and handoff are ready; the
	// first policy can arrive later (until then the proxy denies
	// everything with no_policy, failing closed).
	healthy := time.Now()
	s.waitLog(ctx, "sidecar", "xds policy applied", 45*time.Second)
	s.t.Logf("sidecar: first policy %s after it reported healthy", time.Since(healthy).Round(100*time.Millisecond))
}

// runJob runs the job service (the probe under the shim, in the sidecar's
// network namespace) to completion and returns its exit code and its
// container logs, which is where the task's output goes.
func (s *stack) runJob(ctx context.Context, attempts ...string) (code int, logs string) {
	s.t.Helper()
	return s.waitJob(ctx, s.startJob(ctx, attempts...))
}

// startJob starts the job service detached and returns its container name.
func (s *stack) startJob(ctx context.Context, attempts ...string) string {
	s.t.Helper()
	name := s.project + "-job-" + randHex(3)
	s.t.Cleanup(func() {
		run(s.t, context.Background(), "", nil, "docker", "rm", "-f", name)
	})
	args := append([]string{"run", "-d", "-T", "--no-deps", "--name", name, "job", "/usr/local/bin/cordon-probe", "--timeout", "2s"}, attempts...)
	s.mustCompose(ctx, args...)
	return name
}

// waitJob waits for a job container to exit and returns its exit code and
// logs.
func (s *stack) waitJob(ctx context.Context, name string) (code int, logs string) {
	s.t.Helper()
	out, errOut, c := run(s.t, ctx, "", nil, "docker", "wait", name)
	if c != 0 {
		s.t.Fatalf("docker wait %s: %s", name, errOut)
	}
	if _, err := fmt.Sscan(strings.TrimSpace(out), &code); err != nil {
		s.t.Fatalf("docker wait %s: exit code %q: %v", name, out, err)
	}
	stdout, stderr, c := run(s.t, ctx, "", nil, "docker", "logs", name)
	if c != 0 {
		s.t.Fatalf("docker logs %s: %s", name, stderr)
	}
	return code, stdout + stderr
}

// probeInTask runs cordon-probe in the sidecar's network namespace with
// HTTP_PROXY pointing at the sidecar, but not under the shim: a process
// of the task that can be started again and again while the sidecar
// runs, to watch its decisions change.
func (s *stack) probeInTask(ctx context.Context, attempts ...string) []probeResult {
	s.t.Helper()
	return s.probeVia(ctx, s.containerID(ctx, "sidecar"), attempts...)
}

// probeVia runs cordon-probe in container's network namespace with
// HTTP_PROXY=http://127.0.0.1:3128.
func (s *stack) probeVia(ctx context.Context, container string, attempts ...string) []probeResult {
	s.t.Helper()
	// The fake internet's certificate, for --ca /ca/fake-internet.pem.
	args := append([]string{"run", "--rm", "--network", "container:" + container,
		"--read-only", "--user", "65532:65532", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"-v", filepath.Join(s.runDir, "fake-ca") + ":/ca:ro",
		"-e", "HTTP_PROXY=http://127.0.0.1:3128", "-e", "HTTPS_PROXY=http://127.0.0.1:3128",
		"cordon/probe:" + imageTag, "--timeout", "3s"}, attempts...)
	out, errOut, code := run(s.t, ctx, "", nil, "docker", args...)
	if code != 0 {
		s.t.Fatalf("probe via %s: exit %d\n%s%s", container, code, out, errOut)
	}
	return parseProbe(s.t, out)
}

// startRogueSidecar starts a second sidecar with the job's identity whose
// own policy is a static allowlist (allow) instead of the control plane's,
// chained to the gateway: a compromised or stale sidecar. What it lets
// through, only the gateway's own check can stop. It returns the
// container's name.
func (s *stack) startRogueSidecar(ctx context.Context, allow []byte) string {
	s.t.Helper()
	dir := filepath.Join(s.runDir, "rogue-allowlists")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "acme.yaml"), allow, 0o644); err != nil {
		s.t.Fatal(err)
	}
	name := s.project + "-rogue-" + randHex(3)
	s.t.Cleanup(func() {
		// -v: the anonymous volumes of the image's VOLUMEs go too.
		run(s.t, context.Background(), "", nil, "docker", "rm", "-f", "-v", name)
	})
	_, errOut, code := run(s.t, ctx, "", nil, "docker", "run", "-d", "--name", name,
		"--network", s.project+"_internal",
		"--read-only", "--user", "65532:65532", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"-e", "SPIFFE_ENDPOINT_SOCKET=unix:///run/spire/sockets/agent.sock",
		"-v", filepath.Join(s.runDir, "spiffe", "sidecar")+":/run/spire/sockets:ro",
		"-v", filepath.Join(s.runDir, "secrets.json")+":/run/cordon/secrets.json:ro",
		"-v", dir+":/etc/cordon/allowlists:ro",
		"cordon/sidecar:"+imageTag,
		"agent", "--env", "local", "--shared-dir", "/cordon", "--job-uid", "65532",
		"--secrets", "monad_rpc_key", "--provider", "file", "--secrets-file", "/run/cordon/secrets.json",
		"--allowlists", "/etc/cordon/allowlists", "--gateway", "gateway:8443")
	if code != 0 {
		s.t.Fatalf("start the rogue sidecar: exit %d: %s", code, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := run(s.t, ctx, "", nil, "docker", "inspect", "--format", "{{.State.Health.Status}} {{.State.Status}}", name)
		state := strings.TrimSpace(out)
		if strings.HasPrefix(state, "healthy") {
			return name
		}
		if strings.HasSuffix(state, "exited") || time.Now().After(deadline) {
			logs, errLogs, _ := run(s.t, ctx, "", nil, "docker", "logs", name)
			s.t.Fatalf("rogue sidecar: got state %q, want healthy within 30s\n%s%s", state, logs, errLogs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// fakeInternetSaw reports whether the fake internet logged a request for
// path.
func (s *stack) fakeInternetSaw(ctx context.Context, path string) bool {
	s.t.Helper()
	out, _, _ := s.compose(ctx, "logs", "--no-color", "fake-internet")
	return strings.Contains(out, `"path":"`+path+`"`)
}

// db connects to the stack's Postgres through its unix socket.
func (s *stack) db(ctx context.Context) *pgx.Conn {
	s.t.Helper()
	conn, err := pgx.Connect(ctx, "postgres://postgres@/cordon?host="+filepath.Join(s.runDir, "postgres"))
	if err != nil {
		s.t.Fatalf("connect to the stack's Postgres: %v", err)
	}
	s.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// probeResult is one JSON line of cordon-probe.
type probeResult struct {
	Probe, Target, Reason, Error, Form, Value string
	OK                                        bool
	Status                                    int
}

// parseProbe reads the probe's JSON lines from the job's output; other
// lines (the shim's usage line) are skipped.
func parseProbe(t *testing.T, out string) []probeResult {
	t.Helper()
	var rs []probeResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte(`{"probe"`)) {
			continue
		}
		var r probeResult
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("probe line %q: %v", line, err)
		}
		rs = append(rs, r)
	}
	return rs
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
