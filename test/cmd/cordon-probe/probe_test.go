package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// fakeProxy answers like Cordon's egress proxy: it allows plain HTTP to
// allowed.test and denies everything else (including every CONNECT) with
// 403 and a reason header.
func fakeProxy(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect && r.URL.Hostname() == "allowed.test" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set(DenyReasonHeader, "host_not_allowed")
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(s.Close)
	return s
}

func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// closedAddr is a loopback TCP address nothing listens on.
func closedAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := pc.LocalAddr().String()
		pc.Close()
		return a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func runProbe(t *testing.T, cfg Config, args ...string) []Result {
	t.Helper()
	attempts, err := ParseAttempts(args)
	if err != nil {
		t.Fatalf("ParseAttempts(%q): %v", args, err)
	}
	var out bytes.Buffer
	cfg.Attempts = attempts
	cfg.Out = &out
	cfg.Timeout = 2 * time.Second
	if cfg.Getenv == nil {
		cfg.Getenv = func(string) string { return "" }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Run(ctx, cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	var rs []Result
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line %q is not a Result: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs
}

func TestProbeNetwork(t *testing.T) {
	proxy := fakeProxy(t)
	proxyURL, _ := url.Parse(proxy.URL)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer origin.Close()
	cfg := Config{Proxy: http.ProxyURL(proxyURL)}

	cases := []struct {
		name       string
		arg        string
		wantOK     bool
		wantStatus int
		wantReason string
	}{
		{"allowed via proxy", "http=http://allowed.test/x", true, 200, ""},
		{"denied via proxy", "http=http://denied.test/x", false, 403, "host_not_allowed"},
		{"denied CONNECT keeps status and reason", "http=https://denied.test/", false, 403, "host_not_allowed"},
		{"direct GET to an open origin", "direct=" + origin.URL + "/", true, 200, ""},
		{"tcp connect to a listener", "tcp=" + origin.Listener.Addr().String(), true, 0, ""},
		{"tcp connect to a closed port", "tcp=" + closedAddr(t, "tcp"), false, 0, ""},
		{"udp answered", "udp=" + udpEcho(t), true, 0, ""},
		{"udp unanswered", "udp=" + closedAddr(t, "udp"), false, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := runProbe(t, cfg, tc.arg)
			if len(rs) != 1 {
				t.Fatalf("got %d results, want 1: %+v", len(rs), rs)
			}
			r := rs[0]
			if r.OK != tc.wantOK || r.Status != tc.wantStatus || r.Reason != tc.wantReason {
				t.Errorf("got ok=%v status=%d reason=%q (error %q), want ok=%v status=%d reason=%q",
					r.OK, r.Status, r.Reason, r.Error, tc.wantOK, tc.wantStatus, tc.wantReason)
			}
			if !r.OK && r.Status == 0 && r.Error == "" {
				t.Errorf("failed attempt has no error: %+v", r)
			}
		})
	}
}

func TestProbeMetadataTriesEveryTarget(t *testing.T) {
	closed := "http://" + closedAddr(t, "tcp") + "/"
	rs := runProbe(t, Config{MetadataTargets: []string{closed, closed}}, "metadata")
	if len(rs) != 2 {
		t.Fatalf("got %d results, want 2", len(rs))
	}
	for _, r := range rs {
		if r.OK || r.Probe != "metadata" || r.Error == "" {
			t.Errorf("got %+v, want a failed metadata attempt with an error", r)
		}
	}
	if len(metadataTargets) != 3 {
		t.Errorf("got %d default metadata targets, want IMDS, ECS credentials and IMDS over IPv6", len(metadataTargets))
	}
}

func TestProbeSecretForms(t *testing.T) {
	const secret = "s3cr3t-value/with+chars"
	env := map[string]string{"MONAD_RPC_KEY": secret}
	rs := runProbe(t, Config{Getenv: func(k string) string { return env[k] }}, "secret=MONAD_RPC_KEY", "secret=MISSING")
	forms := map[string]string{}
	for _, r := range rs {
		if r.Target == "MONAD_RPC_KEY" {
			forms[r.Form] = r.Value
		}
	}
	decoded, _ := base64.StdEncoding.DecodeString(forms["base64"])
	checks := []struct{ form, got, want string }{
		{"raw", forms["raw"], secret},
		{"split", forms["split"], secret},
		{"base64", string(decoded), secret},
		{"url", forms["url"], url.QueryEscape(secret)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("form %s: got %q, want %q", c.form, c.got, c.want)
		}
	}
	if len(forms) != len(secretForms)+1 {
		t.Errorf("got forms %v, want %d", forms, len(secretForms)+1)
	}
	last := rs[len(rs)-1]
	if last.Target != "MISSING" || last.OK || last.Error != "not set" {
		t.Errorf("got %+v for an unset variable, want ok=false error=\"not set\"", last)
	}
}

func TestProbeAWSEnvReportsNamesNotValues(t *testing.T) {
	const token = "FwoGZXIvYXdzEXAMPLETOKEN"
	env := map[string]string{"AWS_SESSION_TOKEN": token, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}
	rs := runProbe(t, Config{Getenv: func(k string) string { return env[k] }}, "aws-env")
	r := rs[0]
	if !r.OK || r.Value != "AWS_SESSION_TOKEN,AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" {
		t.Errorf("got ok=%v value=%q, want ok=true and the two names", r.OK, r.Value)
	}
	rs = runProbe(t, Config{}, "aws-env")
	if rs[0].OK || rs[0].Value != "" {
		t.Errorf("got %+v with a clean environment, want ok=false", rs[0])
	}
}

func TestParseAttemptsRejects(t *testing.T) {
	cases := []struct{ name, arg string }{
		{"unknown kind", "smtp=mail:25"},
		{"relative URL", "http=/x"},
		{"non-http scheme", "http=ftp://x/"},
		{"tcp without port", "tcp=1.2.3.4"},
		{"bare IPv6 without brackets", "tcp=::1:80:90"},
		{"secret without a name", "secret="},
		{"metadata with a target", "metadata=x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseAttempts([]string{tc.arg}); err == nil {
				t.Errorf("ParseAttempts(%q): got nil error, want one", tc.arg)
			}
		})
	}
	if _, err := ParseAttempts(nil); err == nil {
		t.Error("ParseAttempts(nil): got nil error, want one")
	}
}

// The parent-env test runs this binary twice more: a "parent" started with
// a credential variable, which starts a "child" with a clean environment
// that runs the probe and so reads the parent's /proc/PID/environ.
const helperEnv = "CORDON_PROBE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "parent":
		cmd := exec.Command(os.Args[0])
		cmd.Env = []string{helperEnv + "=child"}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	case "child":
		err := Run(context.Background(), Config{Attempts: []Attempt{{Kind: "parent-env"}}, Out: os.Stdout, Getenv: os.Getenv})
		if err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func TestProbeParentEnv(t *testing.T) {
	cases := []struct {
		name      string
		parentEnv []string
		wantOK    bool
		wantValue string
	}{
		{"parent holds a task credential URI", []string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/x", "PATH=/bin"}, true, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"},
		{"parent holds none", []string{"PATH=/bin"}, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0])
			cmd.Env = append([]string{helperEnv + "=parent"}, tc.parentEnv...)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("helper: %v", err)
			}
			var r Result
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("helper output %q: %v", out, err)
			}
			if r.OK != tc.wantOK || r.Value != tc.wantValue || strings.Contains(string(out), "/v2/credentials/x") {
				t.Errorf("got %s, want ok=%v value=%q and never the variable's value", out, tc.wantOK, tc.wantValue)
			}
		})
	}
}
