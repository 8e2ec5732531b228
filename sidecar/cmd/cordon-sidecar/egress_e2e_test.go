package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/test/spiffedev"
)

// upstream is a loopback HTTP server standing in for an allowed
// destination.
func upstream(t *testing.T) (*httptest.Server, int) {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream says hi")
	}))
	t.Cleanup(up.Close)
	return up, up.Listener.Addr().(*net.TCPAddr).Port
}

func proxyClient(proxyAddr string) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr}), DisableKeepAlives: true},
	}
}

// TestAgentEmbedsEgressProxy: the agent serves its job's allowlist on
// --proxy-addr: an allowed destination is reached, anything else is
// refused with the reason, including tricks a job would try.
func TestAgentEmbedsEgressProxy(t *testing.T) {
	dir := t.TempDir()
	ca, err := spiffedev.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := devWorkloadAPI(t, ca, "spiffe://cordon.test/org/acme/job/block_follower", dir)
	_, port := upstream(t)
	_, otherPort := upstream(t)
	proxyAddr := freeAddr(t)
	a := startAgent(t, endpoint, "--provider", "file", "--secrets-file", secretsFile(t, `{}`),
		"--shared-dir", filepath.Join(dir, "cordon"), "--allowlists", writeAllowlist(t, port),
		"--unsafe-allow-cidr", "127.0.0.0/8", "--proxy-addr", proxyAddr)
	c := proxyClient(proxyAddr)

	resp, err := c.Get("http://localhost:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatalf("allowed request through the proxy: %v\n%s", err, a.Logs())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "upstream says hi" {
		t.Fatalf("allowed request: got %s %q, want 200 from the upstream", resp.Status, body)
	}

	for _, tc := range []struct {
		name, url, reason string
	}{
		{"port not in the allowlist", "http://localhost:" + strconv.Itoa(otherPort) + "/", "not_allowed"},
		{"IP literal of the allowed host", "http://127.0.0.1:" + strconv.Itoa(port) + "/", ""},
		{"host not in the allowlist", "http://example.com/", "not_allowed"},
		{"the metadata endpoint", "http://169.254.169.254/latest/meta-data/", ""},
		{"the proxy itself", "http://" + proxyAddr + "/", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Get(tc.url)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.url, err)
			}
			resp.Body.Close()
			got := resp.Header.Get("X-Cordon-Deny-Reason")
			if resp.StatusCode != http.StatusForbidden || got == "" || (tc.reason != "" && got != tc.reason) {
				t.Fatalf("GET %s: got %s reason %q, want 403 reason %q", tc.url, resp.Status, got, tc.reason)
			}
		})
	}
	if m, err := memOf(a.cmd.Process.Pid); err == nil {
		t.Logf("agent after proxying: RSS %.1f MiB = anon %.1f MiB + file %.1f MiB", mib(m.rss), mib(m.anon), mib(m.file))
	}
	if err := a.stop(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, a.Logs())
	}
	if !strings.Contains(a.Logs(), `"msg":"egress decision"`) {
		t.Errorf("agent logs lack the proxy's decisions:\n%s", a.Logs())
	}
}

// TestAgentNeedsOnePolicySource: no source, or both, is refused with
// what to do.
func TestAgentNeedsOnePolicySource(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"neither", nil, "pass --xds HOST:PORT"},
		{"both", []string{"--allowlists", "d", "--xds", "h:1"}, "mutually exclusive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, nil, append([]string{"agent", "--provider", "file", "--secrets-file", "x"}, tc.args...)...)
			if res.code != 2 || !strings.Contains(res.stderr, tc.want) {
				t.Fatalf("got exit %d stderr %q, want 2 and %q", res.code, res.stderr, tc.want)
			}
		})
	}
}
