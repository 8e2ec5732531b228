// Package docker holds Cordon's Dockerfiles and build-images.sh; it has no
// Go code of its own. Its test builds every image with the script and checks
// what a reviewer would: each runs as a non-root numeric user, holds its one
// static binary and nothing else (no shell, no package manager), starts
// under the flags a hardened runtime uses (--read-only, --cap-drop ALL,
// no-new-privileges, no network), and the sidecar's shim injects a secret,
// scrubs it from the job's output in every encoding the probe tries, and
// hides the task's AWS credential variables from the job.
package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testTag keeps this test's images apart from the :dev images a developer
// or the local stack is using.
const testTag = "imagetest"

// images lists every image build-images.sh makes: its binary, and a command
// that prints usage (exit code and a word of the text to expect).
var images = []struct {
	name     string
	binary   string
	help     []string
	wantExit int
	wantText string
	needsCA  bool
	// volumes are the directories the image declares as VOLUMEs, owned by
	// the image's user (a task volume mounted there starts as their copy).
	volumes []string
}{
	{"sidecar", "cordon-sidecar", []string{"--help"}, 0, "cordon-sidecar agent", true, []string{"/cordon", "/var/lib/cordon/spool"}},
	// cordon-egress answers --help with its usage and exit code 2.
	{"egress", "cordon-egress", []string{"--help"}, 2, "cordon-egress serve", false, nil},
	{"xds", "cordon-xds", []string{"--help"}, 0, "usage", false, nil},
	{"dispatcher", "cordon-dispatcher", []string{"--help"}, 0, "usage", true, nil},
	{"devspiffe", "cordon-devspiffe", []string{"--help"}, 0, "trust-domain", false, nil},
	{"fake-internet", "fake-internet", []string{"--help"}, 0, "ca-out", false, nil},
	{"probe", "cordon-probe", []string{"--help"}, 0, "usage: cordon-probe", false, nil},
}

// hardened are the docker run flags matching the ECS task definition:
// read-only root, the non-root user, no capabilities, no privilege gain.
var hardened = []string{
	"run", "--rm", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
	"--security-opt", "no-new-privileges", "--network", "none",
}

func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("docker is not installed: the image tests need a Docker Engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("the Docker daemon is unreachable (docker info: %v: %s)", err, bytes.TrimSpace(out))
	}
}

func docker(t *testing.T, ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr []byte, code int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdin = stdin
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return o.Bytes(), e.Bytes(), code
}

// buildImages runs build-images.sh with its binaries in the user's cache
// directory: go build leaves an up-to-date binary alone, and an unchanged
// binary is a docker build cache hit, so a warm run takes seconds (a cold
// one links every binary once).
func buildImages(t *testing.T, ctx context.Context) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "cordon", "image-binaries")
	cmd := exec.CommandContext(ctx, "./build-images.sh")
	// No VCS stamp: otherwise every commit anywhere in the repository
	// changes every binary and the test relinks and rebuilds them all.
	cmd.Env = append(os.Environ(), "TAG="+testTag, "BIN="+bin, "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -buildvcs=false"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build-images.sh: %v\n%s", err, out)
	}
	t.Logf("build-images.sh:\n%s", out)
	return bin
}

func TestImages(t *testing.T) {
	requireDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin := buildImages(t, ctx)

	for _, img := range images {
		ref := "cordon/" + img.name + ":" + testTag
		t.Run(img.name, func(t *testing.T) {
			t.Run("config", func(t *testing.T) { checkConfig(t, ctx, ref, img.binary, img.volumes) })
			t.Run("filesystem", func(t *testing.T) { checkFilesystem(t, ctx, ref, img.binary, img.needsCA, img.volumes) })
			t.Run("runs hardened", func(t *testing.T) {
				args := append(append(append([]string{}, hardened...), ref), img.help...)
				stdout, stderr, code := docker(t, ctx, nil, args...)
				out := string(stdout) + string(stderr)
				if code != img.wantExit || !strings.Contains(strings.ToLower(out), strings.ToLower(img.wantText)) {
					t.Errorf("docker run %s %s: got exit %d, output %q; want exit %d and %q in the output",
						ref, strings.Join(img.help, " "), code, out, img.wantExit, img.wantText)
				}
			})
		})
	}

	t.Run("sidecar shim injects, scrubs and strips credentials", func(t *testing.T) {
		checkShim(t, ctx, bin)
	})
}

type imageConfig struct {
	Config struct {
		User       string
		Entrypoint []string
		Env        []string
		Volumes    map[string]struct{}
	}
	RootFS struct{ Layers []string }
}

func checkConfig(t *testing.T, ctx context.Context, ref, binary string, volumes []string) {
	out, stderr, code := docker(t, ctx, nil, "image", "inspect", ref)
	if code != 0 {
		t.Fatalf("docker image inspect %s: exit %d: %s", ref, code, stderr)
	}
	var cfgs []imageConfig
	if err := json.Unmarshal(out, &cfgs); err != nil || len(cfgs) != 1 {
		t.Fatalf("docker image inspect %s: got %d configs (%v), want 1", ref, len(cfgs), err)
	}
	c := cfgs[0].Config
	uid, gid, _ := strings.Cut(c.User, ":")
	u, errU := strconv.Atoi(uid)
	g, errG := strconv.Atoi(gid)
	if errU != nil || errG != nil || u == 0 || g == 0 {
		t.Errorf("User: got %q, want numeric non-root uid:gid (scratch has no /etc/passwd to resolve names)", c.User)
	}
	if want := "/usr/local/bin/" + binary; len(c.Entrypoint) != 1 || c.Entrypoint[0] != want {
		t.Errorf("Entrypoint: got %q, want [%q] (exec form, no shell)", c.Entrypoint, want)
	}
	var gotVolumes []string
	for v := range c.Volumes {
		gotVolumes = append(gotVolumes, v)
	}
	slices.Sort(gotVolumes)
	if !slices.Equal(gotVolumes, volumes) {
		t.Errorf("Volumes: got %q, want %q", gotVolumes, volumes)
	}
	for _, e := range c.Env {
		name, _, _ := strings.Cut(e, "=")
		if name != "PATH" {
			t.Errorf("Env: got %q, want nothing but PATH baked into an image", e)
		}
	}
}

// checkFilesystem exports a created (never started) container and lists
// it: the image's files are the binary and, where needed, the CA bundle;
// everything else is what Docker itself adds at create time.
func checkFilesystem(t *testing.T, ctx context.Context, ref, binary string, needsCA bool, volumes []string) {
	idOut, stderr, code := docker(t, ctx, nil, "create", ref)
	if code != 0 {
		t.Fatalf("docker create %s: exit %d: %s", ref, code, stderr)
	}
	id := strings.TrimSpace(string(idOut))
	defer docker(t, context.Background(), nil, "rm", "-f", id)
	tarOut, stderr, code := docker(t, ctx, nil, "export", id)
	if code != 0 {
		t.Fatalf("docker export %s: exit %d: %s", ref, code, stderr)
	}
	want := map[string]bool{"usr/local/bin/" + binary: false}
	if needsCA {
		want["etc/ssl/certs/ca-certificates.crt"] = false
	}
	for _, v := range volumes {
		want[strings.TrimPrefix(v, "/")] = false
	}
	// Docker creates these in every container's writable layer.
	dockerAdds := map[string]bool{".dockerenv": true, "etc/hostname": true, "etc/hosts": true, "etc/resolv.conf": true, "etc/mtab": true, "dev/console": true}
	tr := tar.NewReader(bytes.NewReader(tarOut))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read export of %s: %v", ref, err)
		}
		name := strings.TrimPrefix(filepath.Clean(h.Name), "/")
		if h.Typeflag == tar.TypeDir {
			if _, isVolume := want[name]; isVolume {
				want[name] = true
				if h.Uid != 65532 || h.Gid != 65532 {
					t.Errorf("%s: /%s owned by %d:%d, want 65532:65532 (the agent writes there)", ref, name, h.Uid, h.Gid)
				}
			}
			continue
		}
		base := filepath.Base(name)
		if base == "sh" || base == "bash" || base == "busybox" || base == "ash" || base == "dash" {
			t.Errorf("%s holds a shell at /%s: want none", ref, name)
		}
		if _, ok := want[name]; ok {
			want[name] = true
			if name == "usr/local/bin/"+binary && h.Mode&0o111 == 0 {
				t.Errorf("%s: /%s mode %o is not executable", ref, name, h.Mode)
			}
			continue
		}
		if !dockerAdds[name] {
			t.Errorf("%s holds unexpected file /%s (type %c): want only the binary", ref, name, h.Typeflag)
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("%s: /%s is missing", ref, name)
		}
	}
}

// checkShim runs the probe as a job under the sidecar image's shim, as the
// job container runs on Fargate, with credential variables of the kind ECS
// gives every container of a task.
func checkShim(t *testing.T, ctx context.Context, bin string) {
	const secret = "s3cr3t-Zq9xW2-value"
	dir := t.TempDir()
	secretsFile := filepath.Join(dir, "secrets.json")
	if err := os.WriteFile(secretsFile, []byte(`{"monad_rpc_key":"`+secret+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, hardened...),
		"-e", "AWS_SESSION_TOKEN=task-role-token",
		"-e", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/task",
		"-v", secretsFile+":/run/cordon/secrets.json:ro",
		"-v", filepath.Join(bin, "cordon-probe")+":/job/cordon-probe:ro",
		"cordon/sidecar:"+testTag,
		"run", "--secrets-file", "/run/cordon/secrets.json", "--",
		"/job/cordon-probe", "secret=MONAD_RPC_KEY", "aws-env", "parent-env")
	stdout, stderr, code := docker(t, ctx, nil, args...)
	if code != 0 {
		t.Fatalf("shim run: got exit %d, want 0; stderr: %s", code, stderr)
	}
	forbidden := map[string]string{
		"raw":       secret,
		"base64":    base64.StdEncoding.EncodeToString([]byte(secret)),
		"base64url": base64.RawURLEncoding.EncodeToString([]byte(secret)),
		"hex":       hex.EncodeToString([]byte(secret)),
		"url":       url.QueryEscape(secret),
	}
	all := string(stdout) + string(stderr)
	for form, v := range forbidden {
		if strings.Contains(all, v) {
			t.Errorf("the secret's %s form %q reached the container's output: want it scrubbed", form, v)
		}
	}
	if strings.Contains(all, "task-role-token") {
		t.Error("the task role's session token reached the container's output")
	}
	var secretLines int
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		var r struct {
			Probe string
			OK    bool
			Value string
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("probe line %q is not JSON: %v", sc.Text(), err)
		}
		switch r.Probe {
		case "secret":
			secretLines++
			if !r.OK {
				t.Errorf("the job did not see MONAD_RPC_KEY: got %s, want the secret injected as an env var", sc.Text())
			}
		case "aws-env", "parent-env":
			if r.OK {
				t.Errorf("the job sees the task's AWS credential variables %s (%s): want them removed by the shim, and the shim's /proc/1/environ unreadable", r.Value, r.Probe)
			}
		}
	}
	if secretLines != 6 {
		t.Errorf("got %d secret lines from the probe, want 6 (five encodings and one split write); stdout:\n%s", secretLines, stdout)
	}
}
