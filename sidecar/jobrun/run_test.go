package jobrun

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// replaceScrubber is a test double for sidecar/scrub: it buffers the whole
// stream and replaces each value at Close. It keeps these tests about the
// shim, not the scrubber.
type replaceScrubber struct{ values []string }

type replaceStream struct {
	values []string
	dst    io.Writer
	buf    bytes.Buffer
	n      int64
}

func (s replaceScrubber) NewStream(dst io.Writer) Stream {
	return &replaceStream{values: s.values, dst: dst}
}
func (s *replaceStream) Write(p []byte) (int, error) { return s.buf.Write(p) }
func (s *replaceStream) Redactions() int64           { return s.n }
func (s *replaceStream) Close() error {
	out := s.buf.String()
	for _, v := range s.values {
		s.n += int64(strings.Count(out, v))
		out = strings.ReplaceAll(out, v, "***")
	}
	_, err := io.WriteString(s.dst, out)
	return err
}

// syncBuffer is a bytes.Buffer safe for the shim's concurrent writers.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runSh(t *testing.T, script string, mod func(*Config)) (Result, string, string, error) {
	t.Helper()
	var out, errb syncBuffer
	cfg := Config{
		Command:  []string{"/bin/sh", "-c", script},
		Scrubber: replaceScrubber{},
		BaseEnv:  []string{"PATH=/usr/bin:/bin"},
		Stdin:    strings.NewReader(""),
		Stdout:   &out,
		Stderr:   &errb,
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg)
	return res, out.String(), errb.String(), err
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   int
		signal int
	}{
		{name: "zero", script: "exit 0", want: 0},
		{name: "three", script: "exit 3", want: 3},
		{name: "killed by SIGKILL", script: "kill -9 $$", want: 137, signal: 9},
		{name: "killed by SIGTERM", script: "kill -15 $$", want: 143, signal: 15},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _, _, err := runSh(t, tt.script, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tt.want || res.Signal != tt.signal {
				t.Fatalf("got exit %d signal %d, want exit %d signal %d", res.ExitCode, res.Signal, tt.want, tt.signal)
			}
		})
	}
}

func TestRunStartErrors(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want int
	}{
		{name: "not found", argv: []string{"/nonexistent/cordon-job"}, want: ExitNotFound},
		{name: "not found in PATH", argv: []string{"cordon-no-such-job"}, want: ExitNotFound},
		{name: "not executable", argv: []string{"/etc/hostname"}, want: ExitNotExecutable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := runSh(t, "", func(c *Config) { c.Command = tt.argv })
			var se *StartError
			if !errors.As(err, &se) || se.ExitCode != tt.want {
				t.Fatalf("got %v, want a StartError with exit code %d", err, tt.want)
			}
		})
	}
}

func TestRunEnv(t *testing.T) {
	base := []string{
		"PATH=/usr/bin:/bin",
		"KEEP_ME=yes",
		"AWS_REGION=us-east-1",
		"AWS_ACCESS_KEY_ID=AKIATASKROLE",
		"AWS_SECRET_ACCESS_KEY=tasksecret",
		"AWS_SESSION_TOKEN=tasktoken",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/x",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN=tok",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/var/run/tok",
		"AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/wi",
		"AWS_ROLE_ARN=arn:aws:iam::1:role/task",
		"ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/x",
		"ECS_CONTAINER_METADATA_URI=http://169.254.170.2/v3/x",
		"Http_Proxy=http://evil.example:80",
		"SPIFFE_ENDPOINT_SOCKET=unix:///run/spire.sock",
		"MONAD_RPC_KEY=inherited-stale",
	}
	vars := []secrets.Var{{Secret: "monad_rpc_key", Env: "MONAD_RPC_KEY", Value: "rpc-value"}}
	_, out, _, err := runSh(t, "env", func(c *Config) {
		c.BaseEnv = base
		c.Secrets = vars
		c.ProxyURL = "http://127.0.0.1:4000"
	})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = append(env[k], v)
	}
	want := map[string]string{
		"KEEP_ME": "yes", "AWS_REGION": "us-east-1", "MONAD_RPC_KEY": "rpc-value",
		"HTTP_PROXY": "http://127.0.0.1:4000", "HTTPS_PROXY": "http://127.0.0.1:4000",
		"http_proxy": "http://127.0.0.1:4000", "https_proxy": "http://127.0.0.1:4000",
		"NO_PROXY": DefaultNoProxy, "no_proxy": DefaultNoProxy,
	}
	for k, v := range want {
		if got := env[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s: got %q, want exactly [%q]", k, got, v)
		}
	}
	for _, gone := range []string{
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "ECS_CONTAINER_METADATA_URI_V4",
		"ECS_CONTAINER_METADATA_URI", "Http_Proxy", "SPIFFE_ENDPOINT_SOCKET",
	} {
		if got, ok := env[gone]; ok {
			t.Errorf("%s reached the job (%q), want it removed", gone, got)
		}
	}
}

func TestRunTimeoutKillsGroup(t *testing.T) {
	// The child ignores SIGTERM, so only the SIGKILL after Grace ends it.
	start := time.Now()
	res, _, errOut, err := runSh(t, `trap "" TERM; sleep 30 & sleep 30; wait`, func(c *Config) {
		c.Timeout = 200 * time.Millisecond
		c.Grace = 200 * time.Millisecond
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != 137 {
		t.Fatalf("got timed_out=%v exit=%d, want true and 137", res.TimedOut, res.ExitCode)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("took %s, want the group killed at timeout+grace (~400ms): the backgrounded sleep held the pipes", el)
	}
	if !strings.Contains(errOut, "exceeded its timeout of 200ms") || !strings.Contains(errOut, "SIGKILL") {
		t.Fatalf("stderr %q does not explain the timeout", errOut)
	}
}

func TestRunTimeoutSIGTERMHonoured(t *testing.T) {
	res, _, _, err := runSh(t, `sleep 30`, func(c *Config) {
		c.Timeout = 100 * time.Millisecond
		c.Grace = 10 * time.Second
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != 143 {
		t.Fatalf("got timed_out=%v exit=%d, want true and 143", res.TimedOut, res.ExitCode)
	}
}

func TestRunOutputCap(t *testing.T) {
	// 1 MiB on stdout against a 1000-byte cap: the job must still finish
	// (drained, not blocked) and exit with its own code.
	res, out, _, err := runSh(t, `head -c 1048576 /dev/zero | tr '\0' x; echo done >&2; exit 4`, func(c *Config) {
		c.MaxStdoutBytes = 1000
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 4 {
		t.Fatalf("got exit %d, want 4", res.ExitCode)
	}
	if !res.StdoutTruncated || res.StdoutBytes != 1<<20 {
		t.Fatalf("got truncated=%v bytes=%d, want true and %d", res.StdoutTruncated, res.StdoutBytes, 1<<20)
	}
	if !strings.HasPrefix(out, strings.Repeat("x", 1000)+"\n[cordon: stdout cut after 1000 bytes") {
		t.Fatalf("stdout starts %q..., want 1000 x then the marker", out[:min(len(out), 1100)])
	}
	if strings.Count(out, "x") != 1000 {
		t.Fatalf("got %d x, want 1000", strings.Count(out, "x"))
	}
}

func TestRunHugeLine(t *testing.T) {
	// 8 MiB without a newline passes through whole.
	res, out, _, err := runSh(t, `head -c 8388608 /dev/zero | tr '\0' y`, func(c *Config) { c.MaxStdoutBytes = -1 })
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 8<<20 || res.StdoutBytes != 8<<20 || res.StdoutTruncated {
		t.Fatalf("got %d bytes out (counted %d, truncated %v), want %d", len(out), res.StdoutBytes, res.StdoutTruncated, 8<<20)
	}
}

func TestRunStragglerDoesNotHang(t *testing.T) {
	// A grandchild that leaves the process group keeps stdout open; the shim
	// stops reading DrainTimeout after the job exits.
	start := time.Now()
	res, out, _, err := runSh(t, `echo hi; setsid sleep 2 & exit 0`, func(c *Config) { c.DrainTimeout = 200 * time.Millisecond })
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !strings.Contains(out, "hi") {
		t.Fatalf("got exit %d out %q, want 0 and hi", res.ExitCode, out)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("took %s, want about the drain timeout", el)
	}
}

func TestRunRusage(t *testing.T) {
	res, _, _, err := runSh(t, `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.CPUUserSeconds+res.CPUSystemSeconds <= 0 || res.MaxRSSBytes <= 0 || res.WallSeconds <= 0 {
		t.Fatalf("got cpu %v+%v rss %d wall %v, want all positive", res.CPUUserSeconds, res.CPUSystemSeconds, res.MaxRSSBytes, res.WallSeconds)
	}
}

func TestRunCancelStopsJob(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	res, err := Run(ctx, Config{
		Command: []string{"/bin/sh", "-c", "sleep 30"}, Scrubber: replaceScrubber{},
		BaseEnv: []string{}, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out,
	})
	if err != nil || res.ExitCode != 143 {
		t.Fatalf("got %d, %v; want 143, nil", res.ExitCode, err)
	}
}

func TestRunNeedsScrubber(t *testing.T) {
	_, err := Run(context.Background(), Config{Command: []string{"/bin/true"}})
	if err == nil || !strings.Contains(err.Error(), "scrubber") {
		t.Fatalf("got %v, want an error about the missing scrubber", err)
	}
}

// TestRunTerminationOrder: an order stops the job with SIGTERM, then
// SIGKILL after the order's grace when the job ignores SIGTERM; the result
// says it was terminated and which signal was sent last.
func TestRunTerminationOrder(t *testing.T) {
	for _, tc := range []struct {
		name       string
		script     string
		wantExit   int
		wantSignal string
	}{
		{"honours SIGTERM", "sleep 30 & wait", 128 + int(syscall.SIGTERM), "SIGTERM"},
		{"ignores SIGTERM", "trap '' TERM; sleep 30", 128 + int(syscall.SIGKILL), "SIGKILL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orders := make(chan Termination, 1)
			start := time.Now()
			go func() {
				time.Sleep(200 * time.Millisecond)
				orders <- Termination{Reason: "test order", Grace: 300 * time.Millisecond}
			}()
			res, _, stderr, err := runSh(t, tc.script, func(c *Config) { c.Orders = orders; c.Grace = time.Minute })
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("job stopped after %s, want within the order's grace", took)
			}
			if !res.Terminated || res.ExitCode != tc.wantExit || res.SignalSent != tc.wantSignal {
				t.Errorf("got terminated %v, exit %d, signal %q; want true, %d, %q", res.Terminated, res.ExitCode, res.SignalSent, tc.wantExit, tc.wantSignal)
			}
			if !strings.Contains(stderr, "test order") {
				t.Errorf("stderr %q: want the order's reason", stderr)
			}
		})
	}
}
