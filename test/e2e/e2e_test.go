// Package e2e runs Cordon end to end in containers: the compose stack of
// deploy/compose (the Fargate topology: job and sidecar sharing a network
// namespace on an internal network with no route out, the cordon-egress
// gateway the only service on both that network and the outside one,
// cordon-xds and cordon-dispatcher alongside, Postgres on the host),
// with cordon-probe as a hostile job and fake-internet as the internet.
//
// It checks what a job and an operator would see: allowed egress through
// sidecar and gateway, denials with their reason, no other way out, the
// secrets in the job's env and never in its logs, usage and audit rows in
// Postgres, allowlist edits live within seconds, no report lost while the
// dispatcher is down, and enforcement holding while the control plane is
// down. It needs a Docker Engine and skips only when the daemon is
// unreachable. It is not a test of any component's internals; each
// component's own package tests those.
package e2e

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// allowlist is the org's allowlist file: block_follower may reach the fake
// RPC node; grantExfil adds exfil.example, the edit the test makes live.
func allowlist(grantExfil bool) []byte {
	extra, allow := "", "[monad_rpc]"
	if grantExfil {
		extra = `
  exfil_grant:
    entries:
      - host: exfil.example
        ports: [443, 8545]
`
		allow = "[monad_rpc, exfil_grant]"
	}
	return fmt.Appendf(nil, `version: 1
org: acme

endpoint_sets:
  monad_rpc:
    platform_only: true
    entries:
      - host: rpc.monad.example
        ports: [443, 8545]
%s
jobs:
  block_follower:
    class: platform
    allow: %s
`, extra, allow)
}

// TestStack brings one stack up and walks through the scenarios in order
// (each leaves the stack as the next expects: the last one stops the
// control plane).
func TestStack(t *testing.T) {
	requireDocker(t)
	root := repoRoot(t)
	// A cold build (a clean clone: every binary linked, on a machine busy
	// with the rest of make test) gets its own budget; a warm one takes
	// seconds. The stack itself runs in about 80 s.
	buildCtx, cancelBuild := context.WithTimeout(context.Background(), 8*time.Minute)
	buildImages(t, buildCtx, root)
	cancelBuild()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	secrets := map[string]string{
		"monad_rpc_key": "rpc-key-" + randHex(8),
		"db_password":   "db-pass-" + randHex(8),
	}
	s := startStack(t, ctx, root, allowlist(false), secrets)
	s.waitHealthy(ctx)

	t.Run("topology", func(t *testing.T) { testTopology(t, ctx, s.with(t)) })
	t.Run("job", func(t *testing.T) { testJob(t, ctx, s.with(t)) })
	if t.Failed() {
		return
	}
	t.Run("https", func(t *testing.T) { testHTTPS(t, ctx, s.with(t)) })
	t.Run("allowlist edit", func(t *testing.T) { testAllowlistEdit(t, ctx, s.with(t)) })
	t.Run("dispatcher outage", func(t *testing.T) { testDispatcherOutage(t, ctx, s.with(t)) })
	t.Run("control plane down", func(t *testing.T) { testControlPlaneDown(t, ctx, s.with(t)) })
}

// testTopology checks the stack is the Fargate topology the other tests
// rely on: only the gateway on both networks, the internal one with no
// route out, and every container hardened.
func testTopology(t *testing.T, ctx context.Context, s *stack) {
	out, errOut, code := run(t, ctx, "", nil, "docker", "network", "inspect", "--format", "{{.Internal}}", s.project+"_internal")
	if code != 0 || strings.TrimSpace(out) != "true" {
		t.Errorf("network %s_internal: got Internal=%q (%s), want true (no route out)", s.project, strings.TrimSpace(out), errOut)
	}
	for _, tc := range []struct {
		service  string
		networks string
	}{
		{"sidecar", "internal"},
		{"xds", "internal"},
		{"dispatcher", "internal"},
		{"gateway", "internal outside"},
		{"fake-internet", "outside"},
		{"devspiffe", ""},
	} {
		id := s.containerID(ctx, tc.service)
		out, _, _ := run(t, ctx, "", nil, "docker", "inspect", "--format",
			`{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}|{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{.HostConfig.SecurityOpt}}`, id)
		nets, rest, _ := strings.Cut(strings.TrimSpace(out), "|")
		var got []string
		for _, n := range strings.Fields(nets) {
			if n == "none" {
				continue
			}
			got = append(got, strings.TrimPrefix(n, s.project+"_"))
		}
		if strings.Join(got, " ") != tc.networks {
			t.Errorf("%s: got networks %q, want %q", tc.service, strings.Join(got, " "), tc.networks)
		}
		if want := "65532:65532|true|[ALL]|[no-new-privileges:true]"; rest != want {
			t.Errorf("%s: got user|read-only|cap-drop|security-opt %q, want %q", tc.service, rest, want)
		}
	}
}

// testJob runs a hostile job through the shim and checks its egress, its
// env, its logs and the rows the dispatcher stored.
func testJob(t *testing.T, ctx context.Context, s *stack) {
	nonce := randHex(4)
	allowedPath, deniedPath, directPath := "/allowed-"+nonce, "/denied-"+nonce, "/direct-"+nonce
	name := s.startJob(ctx,
		"secret=MONAD_RPC_KEY", "secret=DB_PASSWORD", "aws-env", "parent-env",
		"http=http://rpc.monad.example:8545"+allowedPath,
		"http=http://exfil.example:8545"+deniedPath,
		// Ignoring HTTP_PROXY: by name (no DNS for the outside), by the
		// fake internet's address (no route), UDP, IPv6, metadata.
		"direct=http://rpc.monad.example:8545"+directPath,
		"tcp="+s.fakeIPv4+":8545",
		"udp="+s.fakeIPv4+":9999",
		"tcp=[2001:db8::1]:8545",
		"metadata",
	)
	// The job container: the sidecar's network namespace, hardened.
	out, _, _ := run(t, ctx, "", nil, "docker", "inspect", "--format",
		"{{.HostConfig.NetworkMode}}|{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{.HostConfig.SecurityOpt}}", name)
	sidecar := s.containerID(ctx, "sidecar")
	if want := "container:" + sidecar + "|65532:65532|true|[ALL]|[no-new-privileges:true]"; strings.TrimSpace(out) != want {
		t.Errorf("job container: got network|user|read-only|cap-drop|security-opt %q, want %q", strings.TrimSpace(out), want)
	}
	code, logs := s.waitJob(ctx, name)
	if code != 0 {
		t.Fatalf("job: got exit %d, want 0\n%s", code, logs)
	}

	// Scrubbed: no secret in the container logs in any encoding the probe
	// prints, nor the task credentials the shim must strip.
	for name, v := range s.secrets {
		for form, enc := range map[string]string{
			"raw": v, "base64": base64.StdEncoding.EncodeToString([]byte(v)),
			"base64url": base64.URLEncoding.EncodeToString([]byte(v)), "hex": hex.EncodeToString([]byte(v)),
			"url": url.QueryEscape(v),
		} {
			if strings.Contains(logs, enc) {
				t.Errorf("docker logs of the job hold secret %s (%s form %q): want it scrubbed", name, form, enc)
			}
		}
	}
	for _, v := range []string{"task-role-token", "task-guid"} {
		if strings.Contains(logs, v) {
			t.Errorf("docker logs of the job hold the task credential %q: want it never given to the job", v)
		}
	}

	results := parseProbe(t, logs)
	secretSeen := map[string]int{}
	for _, r := range results {
		switch {
		case r.Probe == "secret":
			if r.OK {
				secretSeen[r.Target]++
			}
		case r.Probe == "aws-env" || r.Probe == "parent-env":
			if r.OK {
				t.Errorf("%s: the job sees task credential variables %q", r.Probe, r.Value)
			}
		case r.Probe == "http" && strings.HasSuffix(r.Target, allowedPath):
			if !r.OK || r.Status != 200 {
				t.Errorf("allowed %s: got ok=%v status=%d reason=%q error=%q, want ok status 200", r.Target, r.OK, r.Status, r.Reason, r.Error)
			}
		case r.Probe == "http" && strings.HasSuffix(r.Target, deniedPath):
			if r.OK || r.Status != 403 || r.Reason != "not_allowed" {
				t.Errorf("denied %s: got ok=%v status=%d reason=%q, want status 403 reason not_allowed", r.Target, r.OK, r.Status, r.Reason)
			}
		default: // direct, tcp, udp, metadata: every other way out
			if r.OK {
				t.Errorf("%s %s: the job got through (status %d), want no way out but the proxy", r.Probe, r.Target, r.Status)
			}
		}
	}
	if len(results) != 23 {
		t.Errorf("probe results: got %d lines, want 23 (one per attempt; 6 per secret, 3 for metadata)\n%s", len(results), logs)
	}
	for _, env := range []string{"MONAD_RPC_KEY", "DB_PASSWORD"} {
		if secretSeen[env] != 6 {
			t.Errorf("secret %s: visible in %d of 6 forms, want 6 (the job gets its secrets as env vars)", env, secretSeen[env])
		}
	}
	if !s.fakeInternetSaw(ctx, allowedPath) {
		t.Errorf("fake internet: no request for %s, want the allowed request to arrive through the gateway", allowedPath)
	}
	for _, p := range []string{deniedPath, directPath} {
		if s.fakeInternetSaw(ctx, p) {
			t.Errorf("fake internet: got a request for %s, want none", p)
		}
	}

	// The dispatcher's rows: the final usage report and the audit events,
	// under the org and job of the sidecar's SVID.
	db := s.db(ctx)
	waitRows(t, ctx, 20*time.Second, func() string {
		var n, denials int
		db.QueryRow(ctx, `SELECT count(*), coalesce(max(denials), 0) FROM usage_reports
			WHERE org_id = 'acme' AND job_id = 'block_follower' AND run_id = $1 AND final`, s.runID).Scan(&n, &denials)
		if n != 1 || denials != 1 {
			return fmt.Sprintf("final usage reports of run %s: got %d with %d denials, want 1 with 1 denial", s.runID, n, denials)
		}
		var started, finished, denied, secretsRead int
		db.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE event_type = 'JOB_STARTED' AND metadata->>'run_id' = $1),
				count(*) FILTER (WHERE event_type = 'JOB_FINISHED' AND metadata->>'run_id' = $1),
				count(*) FILTER (WHERE event_type = 'EGRESS_DENIED' AND resource_id = 'exfil.example:8545'),
				count(*) FILTER (WHERE event_type = 'SECRETS_ACCESSED')
			FROM audit_events WHERE org_id = 'acme' AND actor_id = 'spiffe://cordon.test/org/acme/job/block_follower'`,
			s.runID).Scan(&started, &finished, &denied, &secretsRead)
		if started != 1 || finished != 1 || denied != 1 || secretsRead != 1 {
			return fmt.Sprintf("audit rows of org acme: got JOB_STARTED %d, JOB_FINISHED %d, EGRESS_DENIED exfil.example:8545 %d, SECRETS_ACCESSED %d; want 1 each",
				started, finished, denied, secretsRead)
		}
		return ""
	})
}

// testHTTPS sends HTTPS through both hops: a CONNECT tunnel the sidecar
// checks and chains through the gateway, which checks the SNI against
// the CONNECT host; the job verifies the fake internet's certificate end
// to end (neither hop terminates TLS).
func testHTTPS(t *testing.T, ctx context.Context, s *stack) {
	path := "/tls-" + randHex(4)
	r := s.probeVia(ctx, s.containerID(ctx, "sidecar"), "--ca", "/ca/fake-internet.pem",
		"http=https://rpc.monad.example"+path, "http=https://exfil.example"+path)
	if len(r) != 2 {
		t.Fatalf("got %d probe results, want 2", len(r))
	}
	if !r[0].OK || r[0].Status != 200 {
		t.Errorf("allowed https://rpc.monad.example: got ok=%v status=%d reason=%q error=%q, want 200", r[0].OK, r[0].Status, r[0].Reason, r[0].Error)
	}
	if r[1].OK || r[1].Status != 403 || r[1].Reason != "not_allowed" {
		t.Errorf("denied CONNECT exfil.example:443: got ok=%v status=%d reason=%q, want 403 not_allowed", r[1].OK, r[1].Status, r[1].Reason)
	}
	out, _, _ := s.compose(ctx, "logs", "--no-color", "fake-internet")
	if !strings.Contains(out, `"scheme":"https"`) || !s.fakeInternetSaw(ctx, path) {
		t.Errorf("fake internet: no https request for %s, want the tunnelled request to arrive", path)
	}
}

// testAllowlistEdit edits the allowlist on the control plane's side and
// watches the next request's decision change, both ways (a grant, then
// its revocation), at the running sidecar and, on its own, at the
// gateway: a rogue sidecar whose static allowlist always grants the host
// gets through only while the control plane's policy allows it.
func testAllowlistEdit(t *testing.T, ctx context.Context, s *stack) {
	rogue := s.startRogueSidecar(ctx, allowlist(true))
	target := "http=http://exfil.example:8545/edit-" + randHex(4)
	for _, via := range []struct{ name, container string }{{"sidecar", s.containerID(ctx, "sidecar")}, {"rogue sidecar", rogue}} {
		if r := s.probeVia(ctx, via.container, target); len(r) != 1 || r[0].OK || r[0].Status != 403 {
			t.Fatalf("before the edit, via the %s: got %+v, want 403 (the gateway checks on its own)", via.name, r)
		}
	}
	for _, step := range []struct {
		name  string
		grant bool
	}{{"grant", true}, {"revoke", false}} {
		s.writeAllowlist(allowlist(step.grant))
		start := time.Now()
		for _, via := range []struct{ name, container string }{{"sidecar", s.containerID(ctx, "sidecar")}, {"gateway (rogue sidecar)", rogue}} {
			for {
				r := s.probeVia(ctx, via.container, target)
				if len(r) != 1 {
					t.Fatalf("%s via the %s: got %d probe results, want 1", step.name, via.name, len(r))
				}
				if r[0].OK == step.grant {
					t.Logf("%s: the %s's decision changed %s after the edit", step.name, via.name, time.Since(start).Round(10*time.Millisecond))
					if !step.grant && r[0].Status != 403 {
						t.Errorf("%s via the %s: got status %d reason %q, want 403", step.name, via.name, r[0].Status, r[0].Reason)
					}
					break
				}
				if time.Since(start) > 15*time.Second {
					t.Fatalf("%s via the %s: still ok=%v (status %d, reason %q) 15s after the edit, want the decision changed within seconds",
						step.name, via.name, r[0].OK, r[0].Status, r[0].Reason)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
}

// testDispatcherOutage kills the dispatcher (SIGKILL: whatever it was
// receiving is cut off) while a job runs and starts it again after the
// job ended: the sidecar's reports wait in its spool, arrive exactly once
// each (event IDs make delivery idempotent), and the audit chains verify.
func testDispatcherOutage(t *testing.T, ctx context.Context, s *stack) {
	s.newTask(ctx)
	db := s.db(ctx)
	deniedBefore := countDenied(ctx, db)
	// Denied before and after the kill; the metadata attempts (three
	// timeouts) keep the job running while the dispatcher goes away.
	name := s.startJob(ctx, "http=http://exfil.example:8545/outage-1", "metadata", "http=http://exfil.example:8545/outage-2", "http=http://rpc.monad.example:8545/outage-"+randHex(4))
	time.Sleep(time.Second)
	s.mustCompose(ctx, "kill", "-s", "SIGKILL", "dispatcher")
	code, logs := s.waitJob(ctx, name)
	if code != 0 {
		t.Fatalf("job during the outage: got exit %d, want 0\n%s", code, logs)
	}
	// The job is over and its final report was taken: nothing of its end
	// can have been stored while the dispatcher is down.
	s.waitLog(ctx, "sidecar", "usage report taken", 10*time.Second)
	var stored int
	db.QueryRow(ctx, `SELECT count(*) FROM usage_reports WHERE run_id = $1`, s.runID).Scan(&stored)
	if stored != 0 {
		t.Fatalf("usage reports of run %s while the dispatcher is down: got %d, want 0 (is it really down?)", s.runID, stored)
	}

	s.mustCompose(ctx, "start", "dispatcher")
	waitRows(t, ctx, 30*time.Second, func() string {
		var n int
		db.QueryRow(ctx, `SELECT count(*) FROM usage_reports WHERE org_id = 'acme' AND job_id = 'block_follower' AND run_id = $1 AND final`, s.runID).Scan(&n)
		var started, finished int
		db.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE event_type = 'JOB_STARTED'),
				count(*) FILTER (WHERE event_type = 'JOB_FINISHED')
			FROM audit_events WHERE org_id = 'acme' AND metadata->>'run_id' = $1`, s.runID).Scan(&started, &finished)
		denied := countDenied(ctx, db) - deniedBefore
		if n != 1 || started != 1 || finished != 1 || denied != 2 {
			return fmt.Sprintf("rows of run %s after the outage: got final usage %d, JOB_STARTED %d, JOB_FINISHED %d, new EGRESS_DENIED %d; want 1, 1, 1, 2", s.runID, n, started, finished, denied)
		}
		return ""
	})
	// Let the spool drain fully, then look for duplicates once more.
	time.Sleep(3 * time.Second)
	if denied := countDenied(ctx, db) - deniedBefore; denied != 2 {
		t.Errorf("EGRESS_DENIED rows of run %s after the spool drained: got %d, want 2 (each event stored once)", s.runID, denied)
	}

	out, errOut, code := s.compose(ctx, "run", "-T", "--rm", "--no-deps", "migrate", "verify", "--db", "postgres://postgres@/cordon?host=/run/postgresql")
	if code != 0 {
		t.Errorf("cordon-dispatcher verify: got exit %d, want 0 (every audit chain intact)\n%s%s", code, out, errOut)
	}
}

func countDenied(ctx context.Context, db *pgx.Conn) int {
	var n int
	db.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE org_id = 'acme' AND event_type = 'EGRESS_DENIED' AND resource_id = 'exfil.example:8545'`).Scan(&n)
	return n
}

// testControlPlaneDown stops cordon-xds: the sidecar and the gateway keep
// enforcing the last policy they received, allowing and denying as before
// (neither fails open nor starts denying everything). The gateway is also
// checked on its own, through a rogue sidecar that would allow both.
func testControlPlaneDown(t *testing.T, ctx context.Context, s *stack) {
	rogue := s.startRogueSidecar(ctx, allowlist(true))
	s.mustCompose(ctx, "stop", "-t", "5", "xds")
	time.Sleep(time.Second) // let the clients notice the stream is gone
	for _, via := range []struct{ name, container string }{{"sidecar", s.containerID(ctx, "sidecar")}, {"gateway (rogue sidecar)", rogue}} {
		path := "/no-xds-" + randHex(4)
		r := s.probeVia(ctx, via.container, "http=http://rpc.monad.example:8545"+path, "http=http://exfil.example:8545"+path)
		if len(r) != 2 {
			t.Fatalf("via the %s: got %d probe results, want 2", via.name, len(r))
		}
		if !r[0].OK || r[0].Status != 200 {
			t.Errorf("allowed host via the %s with the control plane down: got ok=%v status=%d reason=%q, want 200 (last policy still enforced, not deny-all)",
				via.name, r[0].OK, r[0].Status, r[0].Reason)
		}
		if r[1].OK || r[1].Status != 403 {
			t.Errorf("denied host via the %s with the control plane down: got ok=%v status=%d reason=%q, want 403", via.name, r[1].OK, r[1].Status, r[1].Reason)
		}
		if !s.fakeInternetSaw(ctx, path) {
			t.Errorf("fake internet: no request for %s via the %s, want the allowed request through the gateway", path, via.name)
		}
	}
}

// waitRows polls check until it returns "" or limit passes; the last
// message is the failure.
func waitRows(t *testing.T, ctx context.Context, limit time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatal(msg)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
