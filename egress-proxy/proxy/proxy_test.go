package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
)

func get(target string, extra ...string) string {
	host := strings.TrimPrefix(target, "http://")
	host = host[:strings.IndexAny(host+"/", "/")]
	return "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n" + strings.Join(extra, "") + "\r\n"
}

func TestAttacksDenied(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		name   string
		raw    string
		reason policy.Reason
		status int
	}{
		{"proxy itself literal", get("http://127.0.0.1:$PP/attack"), policy.ReasonIPLiteral, 403},
		{"loopback decimal", get("http://2130706433:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"loopback hex", get("http://0x7f.1:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"loopback octal", get("http://0177.0.0.1:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"loopback short", get("http://127.1:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"unspecified", get("http://0.0.0.0:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"unspecified short", get("http://0:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"v6 loopback", get("http://[::1]:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"mapped loopback", get("http://[::ffff:127.0.0.1]:$HP/attack"), policy.ReasonIPLiteral, 403},
		{"metadata", get("http://169.254.169.254/attack"), policy.ReasonMetadata, 403},
		{"metadata decimal", get("http://2852039166/attack"), policy.ReasonMetadata, 403},
		{"metadata hex", get("http://0xa9fea9fe/attack"), policy.ReasonMetadata, 403},
		{"metadata octal", get("http://0251.0376.0251.0376/attack"), policy.ReasonMetadata, 403},
		{"metadata mixed", get("http://169.254.0xa9fe/attack"), policy.ReasonMetadata, 403},
		{"metadata mapped", get("http://[::ffff:169.254.169.254]/attack"), policy.ReasonMetadata, 403},
		{"metadata nat64", get("http://[64:ff9b::a9fe:a9fe]/attack"), policy.ReasonMetadata, 403},
		{"metadata v6", get("http://[fd00:ec2::254]/attack"), policy.ReasonMetadata, 403},
		{"ecs credentials", get("http://169.254.170.2/attack"), policy.ReasonMetadata, 403},
		{"metadata by allowed name", get("http://metadata.test/attack"), policy.ReasonMetadata, 403},
		{"metadata v6 by allowed name", get("http://metadata6.test/attack"), policy.ReasonMetadata, 403},
		{"userinfo trick", get("http://allowed.test@127.0.0.2:$HP/attack"), policy.ReasonBadRequest, 403},
		{"userinfo trick name", "GET http://allowed.test:$HP@other.test:$HP/attack HTTP/1.1\r\nHost: other.test:$HP\r\n\r\n", policy.ReasonBadRequest, 403},
		{"host header disagrees", "GET http://allowed.test:$HP/attack HTTP/1.1\r\nHost: other.test:$HP\r\n\r\n", policy.ReasonHostMismatch, 403},
		{"host header allowed uri not", "GET http://other.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n", policy.ReasonHostMismatch, 403},
		{"host header port disagrees", "GET http://allowed.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$TP\r\n\r\n", policy.ReasonHostMismatch, 403},
		{"host header folded", "GET http://allowed.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$HP\r\nX-A: b\r\n other.test\r\n\r\n", policy.ReasonBadRequest, 403},
		{"not allowed host", get("http://other.test:$HP/attack"), policy.ReasonNotAllowed, 403},
		{"connect absolute uri", "CONNECT http://other.test:$HP/ HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n", policy.ReasonBadRequest, 403},
		{"connect host disagrees", "CONNECT allowed.test:$HP HTTP/1.1\r\nHost: other.test:$HP\r\n\r\n", policy.ReasonHostMismatch, 403},
		{"connect other host", "CONNECT other.test:$HP HTTP/1.1\r\nHost: other.test:$HP\r\n\r\n", policy.ReasonNotAllowed, 403},
		{"connect no port", "CONNECT allowed.test HTTP/1.1\r\n\r\n", policy.ReasonBadRequest, 403},
		{"crlf in host", "GET http://allowed.test%0d%0aX:$HP/attack HTTP/1.1\r\n\r\n", policy.ReasonBadRequest, 403},
		{"nul in host", "GET http://allowed.test%00.other.test:$HP/attack HTTP/1.1\r\n\r\n", policy.ReasonBadRequest, 403},
		{"zone id", get("http://[fe80::1%25lo]:$HP/attack"), policy.ReasonBadRequest, 403},
		{"double trailing dot", get("http://allowed.test..:$HP/attack"), policy.ReasonBadRequest, 403},
		{"idn homograph", get("http://аllowed.test:$HP/attack"), policy.ReasonNotAllowed, 403},
		{"wildcard apex", get("http://wild.test:$HP/attack"), policy.ReasonNotAllowed, 403},
		{"wildcard suffix lookalike", get("http://evilwild.test:$HP/attack"), policy.ReasonNotAllowed, 403},
		{"other port", get("http://allowed.test:1/attack"), policy.ReasonNotAllowed, 403},
		{"port leading zero", get("http://allowed.test:0$HP/attack"), policy.ReasonBadRequest, 403},
		{"default port not allowed", get("http://allowed.test/attack"), policy.ReasonNotAllowed, 403},
		{"internal address", get("http://internal.test:$HP/attack"), policy.ReasonNonPublicAddress, 403},
		{"one internal answer", get("http://mixed.test:$HP/attack"), policy.ReasonNonPublicAddress, 403},
		{"name resolving to proxy", "CONNECT self.test:$PP HTTP/1.1\r\nHost: self.test:$PP\r\n\r\n", policy.ReasonProxyLoop, 403},
		{"connect proxy literal", "CONNECT 127.0.0.1:$PP HTTP/1.1\r\n\r\n", policy.ReasonIPLiteral, 403},
		{"connect mapped proxy", "CONNECT [::ffff:127.0.0.1]:$PP HTTP/1.1\r\n\r\n", policy.ReasonIPLiteral, 403},
		{"smuggling cl te", "POST http://allowed.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$HP\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", policy.ReasonBadRequest, 403},
		{"two host headers", "GET http://allowed.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$HP\r\nHost: other.test\r\n\r\n", policy.ReasonBadRequest, 403},
		{"origin form", "GET /attack HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n", policy.ReasonOriginForm, 403},
		{"https absolute uri", get("https://allowed.test:$TP/attack"), policy.ReasonBadScheme, 403},
		{"unknown dns name", get("http://nxdomain.test:$HP/attack"), policy.ReasonNotAllowed, 403},
		{"header too large", "GET http://allowed.test:$HP/attack HTTP/1.1\r\nHost: allowed.test:$HP\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n", policy.ReasonHeaderTooLarge, 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.logs.decisions())
			resp, _ := e.roundTrip(tt.raw)
			if resp.StatusCode != tt.status || resp.Header.Get(DenyReasonHeader) != string(tt.reason) {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get(DenyReasonHeader), tt.status, tt.reason)
			}
			d := e.logs.waitDecisions(t, before+1)
			last := d[len(d)-1]
			if last["decision"] != "deny" || last["reason"] != string(tt.reason) {
				t.Errorf("log line: got decision %v reason %v, want deny %s", last["decision"], last["reason"], tt.reason)
			}
		})
	}
	if n := e.attackHit.Load(); n != 0 {
		t.Errorf("upstream saw %d attack requests, want 0", n)
	}
}

func TestPipelinedSecondRequestDenied(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	io.WriteString(c, e.sub(get("http://allowed.test:$HP/first")+get("http://other.test:$HP/attack")))
	br := bufio.NewReader(c)
	r1, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, r1.Body)
	r2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r1.StatusCode != 200 || r2.StatusCode != 403 || r2.Header.Get(DenyReasonHeader) != "not_allowed" {
		t.Errorf("got %d then %d %q, want 200 then 403 not_allowed", r1.StatusCode, r2.StatusCode, r2.Header.Get(DenyReasonHeader))
	}
	if e.attackHit.Load() != 0 {
		t.Error("pipelined request to another host reached the upstream")
	}
}

func TestAllowed(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		name     string
		raw      string
		wantBody string
		wantHost string // Host the upstream saw
	}{
		{"name", get("http://allowed.test:$HP/a"), "ok GET /a 0", "allowed.test:$HP"},
		{"uppercase", get("http://ALLOWED.Test:$HP/b"), "ok GET /b 0", "allowed.test:$HP"},
		{"trailing dot", get("http://allowed.test.:$HP/c"), "ok GET /c 0", "allowed.test:$HP"},
		{"wildcard subdomain", get("http://sub.wild.test:$HP/d"), "ok GET /d 0", "sub.wild.test:$HP"},
		{"literal under cidr rule", get("http://127.0.0.2:$HP/e"), "ok GET /e 0", "127.0.0.2:$HP"},
		{"literal spelling under cidr rule", get("http://2130706434:$HP/f"), "ok GET /f 0", "127.0.0.2:$HP"},
		{"post body", "POST http://allowed.test:$HP/g HTTP/1.1\r\nHost: allowed.test:$HP\r\nContent-Length: 5\r\n\r\nhello", "ok POST /g 5", "allowed.test:$HP"},
		{"chunked body", "POST http://allowed.test:$HP/h HTTP/1.1\r\nHost: allowed.test:$HP\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "ok POST /h 3", "allowed.test:$HP"},
		{"no host header", "GET http://allowed.test:$HP/i HTTP/1.1\r\n\r\n", "ok GET /i 0", "allowed.test:$HP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.roundTrip(tt.raw)
			if resp.StatusCode != 200 || body != tt.wantBody {
				t.Fatalf("got %d %q (reason %q), want 200 %q", resp.StatusCode, body, resp.Header.Get(DenyReasonHeader), tt.wantBody)
			}
			if got := e.lastHost.Load().(string); got != e.sub(tt.wantHost) {
				t.Errorf("upstream Host: got %q, want %q", got, e.sub(tt.wantHost))
			}
		})
	}
}

func TestHopByHopStrippedAndRedirectNotFollowed(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, _ := e.roundTrip(get("http://allowed.test:$HP/hdr",
		"Proxy-Authorization: Basic c2VjcmV0\r\n", "Proxy-Connection: keep-alive\r\n",
		"Connection: X-Secret-Hop\r\n", "X-Secret-Hop: 1\r\n", "Keep-Alive: timeout=5\r\n", "X-End-To-End: yes\r\n"))
	if resp.StatusCode != 200 {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	h := e.lastHdr.Load().(http.Header)
	for _, name := range []string{"Proxy-Authorization", "Proxy-Connection", "X-Secret-Hop", "Keep-Alive"} {
		if h.Get(name) != "" {
			t.Errorf("upstream saw %s: %q, want it stripped", name, h.Get(name))
		}
	}
	if h.Get("X-End-To-End") != "yes" {
		t.Errorf("upstream X-End-To-End: got %q, want yes", h.Get("X-End-To-End"))
	}
	resp, _ = e.roundTrip(get("http://allowed.test:$HP/redirect"))
	if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), "169.254.169.254") {
		t.Errorf("redirect: got %d %q, want 302 passed back", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestKeepAlive(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	br := bufio.NewReader(c)
	for i := range 3 {
		io.WriteString(c, e.sub(get(fmt.Sprintf("http://allowed.test:$HP/k%d", i))))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("ok GET /k%d 0", i); string(b) != want {
			t.Fatalf("request %d: got %q, want %q", i, b, want)
		}
	}
}

func TestSNI(t *testing.T) {
	e := newEnv(t, envOpts{})
	tests := []struct {
		name       string
		target     string
		serverName string
		wantReason string // "" means the tunnel works
	}{
		{"match", "allowed.test:$TP", "allowed.test", ""},
		{"match case and dot", "allowed.test:$TP", "ALLOWED.test.", ""},
		{"literal without sni", "127.0.0.2:$TP", "", ""},
		{"domain fronting", "allowed.test:$TP", "other.test", "sni_mismatch"},
		{"literal with sni", "127.0.0.2:$TP", "allowed.test", "sni_mismatch"},
		{"no sni on name", "allowed.test:$TP", "", "sni_missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.logs.decisions())
			hits := e.tlsHits.Load()
			err := e.connectTLS(tt.target, tt.serverName)
			d := e.logs.waitDecisions(t, before+1)
			last := d[len(d)-1]
			if tt.wantReason == "" {
				if err != nil || last["decision"] != "allow" {
					t.Fatalf("got %v, decision %v %v, want a working tunnel", err, last["decision"], last["reason"])
				}
				if last["bytes"].(float64) <= 0 {
					t.Errorf("log bytes: got %v, want > 0", last["bytes"])
				}
				return
			}
			if err == nil {
				t.Fatal("tunnel worked, want it closed")
			}
			if last["decision"] != "deny" || last["reason"] != tt.wantReason {
				t.Errorf("log: got %v %v, want deny %s", last["decision"], last["reason"], tt.wantReason)
			}
			if e.tlsHits.Load() != hits {
				t.Error("the upstream received the denied ClientHello")
			}
		})
	}
}

func TestNotTLSOn443(t *testing.T) {
	e := newEnv(t, envOpts{})
	ln, err := net.Listen("tcp", "127.0.0.7:443")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.7:443 (needs root and a free port): %v", err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	for _, tt := range []struct {
		name, payload, reason string
	}{
		{"plain http on 443", "GET / HTTP/1.1\r\nHost: tls443.test\r\n\r\n", "not_tls"},
		{"silence on 443", "", "client_hello_timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.logs.decisions())
			c := e.dial()
			fmt.Fprintf(c, "CONNECT tls443.test:443 HTTP/1.1\r\nHost: tls443.test:443\r\n\r\n%s", tt.payload)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			if _, err := br.ReadByte(); err == nil {
				t.Error("tunnel carried data, want it closed")
			}
			d := e.logs.waitDecisions(t, before+1)
			if r := d[len(d)-1]["reason"]; r != tt.reason {
				t.Errorf("reason: got %v, want %s", r, tt.reason)
			}
		})
	}
	ln.Close()
	if b := <-got; len(b) != 0 {
		t.Errorf("upstream on 443 received %q, want nothing", b)
	}
}

func TestPlainTunnelOnOtherPort(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	io.WriteString(c, e.sub("CONNECT allowed.test:$HP HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	io.WriteString(c, "GET /plain HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
	r2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	if string(b) != "ok GET /plain 0" {
		t.Errorf("through tunnel: got %q, want ok GET /plain 0", b)
	}
}

func TestRebindingAndFlipFlop(t *testing.T) {
	e := newEnv(t, envOpts{})
	// First answer passes (127.0.0.2 is unsafe-allowed), every later one
	// is internal: the proxy must deny those and never dial 10.0.0.1.
	e.dns.Sequence("flip.test", []string{"127.0.0.2"}, []string{"10.0.0.1"}, []string{"127.0.0.2", "10.0.0.1"})
	want := []struct {
		status int
		reason string
	}{{200, ""}, {403, "non_public_address"}, {403, "non_public_address"}}
	for i, w := range want {
		c := e.dial()
		io.WriteString(c, e.sub(get("http://flip.test:$HP/flip")))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != w.status || resp.Header.Get(DenyReasonHeader) != w.reason {
			t.Errorf("query %d: got %d %q, want %d %q", i, resp.StatusCode, resp.Header.Get(DenyReasonHeader), w.status, w.reason)
		}
	}
	if n := e.dns.Queries("flip.test"); n != 3 {
		t.Errorf("A queries: got %d, want exactly one per request (3)", n)
	}
	for _, d := range e.logs.decisions() {
		if strings.HasPrefix(fmt.Sprint(d["addr"]), "10.") {
			t.Errorf("a decision dialled %v", d["addr"])
		}
	}
}

func TestReportMode(t *testing.T) {
	e := newEnv(t, envOpts{mode: allowlist.ModeReport})
	resp, body := e.roundTrip(get("http://other.test:$HP/report"))
	if resp.StatusCode != 200 || body != "ok GET /report 0" {
		t.Errorf("not allowed in report mode: got %d %q, want 200", resp.StatusCode, body)
	}
	resp, _ = e.roundTrip(get("http://metadata.test/attack"))
	if resp.StatusCode != 403 || resp.Header.Get(DenyReasonHeader) != "metadata_address" {
		t.Errorf("metadata in report mode: got %d %q, want 403 metadata_address", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
	resp, _ = e.roundTrip(get("http://169.254.169.254/attack"))
	if resp.StatusCode != 403 {
		t.Errorf("metadata literal in report mode: got %d, want 403", resp.StatusCode)
	}
	// A forwarded request is recorded after its response is written, so
	// lines may land in any order: find them by host.
	d := e.logs.waitDecisions(t, 3)
	byHost := map[string]map[string]any{}
	for _, l := range d {
		byHost[l["host"].(string)] = l
	}
	if l := byHost["other.test"]; l["decision"] != "would_deny" || l["reason"] != "not_allowed" {
		t.Errorf("log: got %v %v, want would_deny not_allowed", l["decision"], l["reason"])
	}
	results := map[string]string{}
	for _, ev := range e.audit.wait(t, 3) {
		results[ev.Resource.ID] = ev.Result
	}
	want := map[string]string{
		e.sub("other.test:$HP"): audit.ResultWouldDeny,
		"metadata.test:80":      audit.ResultDenied,
		"169.254.169.254:80":    audit.ResultDenied,
	}
	if fmt.Sprint(results) != fmt.Sprint(want) {
		t.Errorf("audit results: got %v, want %v", results, want)
	}
}

func TestDecisionLogAndAudit(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.roundTrip(get("http://allowed.test:$HP/log", "Authorization: Bearer s3cr3t-token\r\n"))
	e.logs.waitDecisions(t, 1) // recorded after the response: keep the order
	e.audit.wait(t, 1)
	e.roundTrip(get("http://other.test:$HP/attack?token=s3cr3t-token"))
	d := e.logs.waitDecisions(t, 2)
	keys := []string{"job", "decision", "reason", "host", "port", "addr", "method", "bytes", "duration"}
	for _, line := range d {
		for _, k := range keys {
			if _, ok := line[k]; !ok {
				t.Errorf("log line %v: missing key %q", line, k)
			}
		}
	}
	if d[0]["decision"] != "allow" || d[0]["host"] != "allowed.test" || d[0]["job"] != "acme/block_follower" || d[0]["method"] != "GET" || !strings.HasPrefix(d[0]["addr"].(string), "127.0.0.2:") {
		t.Errorf("allow line: got %v", d[0])
	}
	if d[1]["decision"] != "deny" || d[1]["reason"] != "not_allowed" {
		t.Errorf("deny line: got %v", d[1])
	}
	e.logs.mu.Lock()
	for _, l := range e.logs.lines {
		if strings.Contains(fmt.Sprint(l), "s3cr3t") {
			t.Errorf("log line leaks a secret: %v", l)
		}
	}
	e.logs.mu.Unlock()
	evs := e.audit.wait(t, 2)
	if evs[0].EventType != "EGRESS_ALLOWED" || evs[0].Result != audit.ResultSuccess || evs[0].Resource.Type != "EGRESS" || evs[0].Resource.TenantID != "acme" {
		t.Errorf("allow event: got %+v", evs[0])
	}
	if evs[1].EventType != "EGRESS_DENIED" || evs[1].Result != audit.ResultDenied {
		t.Errorf("deny event: got %+v", evs[1])
	}
	for _, ev := range evs {
		if ev.Actor.Type != audit.ActorJob || ev.Actor.ID != "job:acme/block_follower" {
			t.Errorf("actor: got %+v, want JOB job:acme/block_follower (Config.JobActor unset)", ev.Actor)
		}
	}
	if strings.Contains(fmt.Sprint(evs), "s3cr3t") {
		t.Error("audit event leaks a secret")
	}
}

// TestJobActor: the sidecar names its job by its SVID in audit events,
// the only actor the dispatcher accepts from it.
func TestJobActor(t *testing.T) {
	const svid = "spiffe://cordon.test/org/acme/job/block_follower"
	e := newEnv(t, envOpts{jobActor: svid})
	e.roundTrip(get("http://other.test:$HP/"))
	e.logs.waitDecisions(t, 1)
	evs := e.audit.wait(t, 1)
	if got := evs[0].Actor; got.Type != audit.ActorJob || got.ID != svid {
		t.Errorf("actor: got %+v, want JOB %s", got, svid)
	}
}

func TestHotSwap(t *testing.T) {
	e := newEnv(t, envOpts{})
	// A tunnel opened under the old policy keeps running.
	c := e.dial()
	io.WriteString(c, e.sub("CONNECT allowed.test:$HP HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n"))
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if err := e.store.Apply([]*allowlist.JobPolicy{{Org: "acme", Job: "block_follower",
		Rules: []allowlist.Rule{{Host: "other.test", Ports: []uint16{e.httpPort}}}}}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /swap HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
	r2, err := http.ReadResponse(br, nil)
	if err != nil || r2.StatusCode != 200 {
		t.Fatalf("in-flight tunnel after swap: %v %v, want 200", r2, err)
	}
	if resp, _ := e.roundTrip(get("http://allowed.test:$HP/attack")); resp.StatusCode != 403 {
		t.Errorf("after swap old host: got %d, want 403", resp.StatusCode)
	}
	if resp, _ := e.roundTrip(get("http://other.test:$HP/new")); resp.StatusCode != 200 {
		t.Errorf("after swap new host: got %d, want 200", resp.StatusCode)
	}
	if err := e.store.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if resp, _ := e.roundTrip(get("http://other.test:$HP/attack")); resp.Header.Get(DenyReasonHeader) != "no_policy" {
		t.Errorf("without policy: got %q, want no_policy", resp.Header.Get(DenyReasonHeader))
	}
}

func TestSlowClientsDoNotStarveOthers(t *testing.T) {
	e := newEnv(t, envOpts{limits: Limits{HeaderReadTimeout: 2 * time.Second, MaxConcurrent: 50}})
	var slow []net.Conn
	for range 300 {
		c, err := net.Dial("tcp", e.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, e.sub("GET http://allowed.test:$HP/slow HTTP/1.1\r\nHost: allowed"))
		slow = append(slow, c)
	}
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	start := time.Now()
	resp, _ := e.roundTrip(get("http://allowed.test:$HP/good"))
	if resp.StatusCode != 200 {
		t.Fatalf("good request: got %d %q, want 200", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("good request took %v behind 300 slow clients, want < 500ms", d)
	}
	// The slow ones are cut off by the header deadline.
	slow[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := slow[0].Read(make([]byte, 1)); err == nil {
		t.Error("slow client still connected after the header deadline")
	}
}

func TestLimits(t *testing.T) {
	e := newEnv(t, envOpts{limits: Limits{RequestsPerSecond: 1, Burst: 2}})
	codes := []int{}
	for range 3 {
		resp, _ := e.roundTrip(get("http://allowed.test:$HP/rate"))
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Errorf("rate limit: got %v, want [200 200 429]", codes)
	}

	e2 := newEnv(t, envOpts{limits: Limits{MaxConcurrent: 1}})
	c := e2.dial()
	io.WriteString(c, e2.sub("CONNECT allowed.test:$HP HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n"))
	if resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	resp, _ := e2.roundTrip(get("http://allowed.test:$HP/second"))
	if resp.StatusCode != 429 || resp.Header.Get(DenyReasonHeader) != "too_many_connections" {
		t.Errorf("second while one tunnel open: got %d %q, want 429 too_many_connections", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
}

func TestUpstreamFailures(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.dns.Set("dead.test", "127.0.0.2")
	e.store.Apply([]*allowlist.JobPolicy{{Org: "acme", Job: "block_follower", Rules: []allowlist.Rule{
		{Host: "dead.test", Ports: []uint16{1}},
		{Host: "gone.test", Ports: []uint16{80}},
	}}})
	resp, _ := e.roundTrip(get("http://dead.test:1/x"))
	if resp.StatusCode != 502 || resp.Header.Get(DenyReasonHeader) != "dial_failed" {
		t.Errorf("refused: got %d %q, want 502 dial_failed", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
	resp, _ = e.roundTrip(get("http://gone.test/x"))
	if resp.StatusCode != 502 || resp.Header.Get(DenyReasonHeader) != "dns_failure" {
		t.Errorf("nxdomain: got %d %q, want 502 dns_failure", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
}

type obsSink struct {
	mu  sync.Mutex
	obs []Observation
}

func (o *obsSink) Observe(ob Observation) {
	o.mu.Lock()
	o.obs = append(o.obs, ob)
	o.mu.Unlock()
}

func (o *obsSink) snapshot() []Observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]Observation(nil), o.obs...)
}

func TestObserver(t *testing.T) {
	sink := &obsSink{}
	e := newEnv(t, envOpts{observer: sink})
	// The decision line is written before the observer is called, so the
	// test waits for the observations themselves, not the log.
	e.roundTrip(get("http://allowed.test:$HP/o"))
	waitFor(t, "observations", 1, sink.snapshot)
	e.roundTrip(get("http://evil.example:$HP/attack"))
	obs := waitFor(t, "observations", 2, sink.snapshot)
	want := []Observation{
		{Job: JobRef{"acme", "block_follower"}, Key: e.sub("allowed.test:$HP")},
		{Job: JobRef{"acme", "block_follower"}, Key: "denied"},
	}
	if obs[0].Key != want[0].Key || obs[1].Key != want[1].Key || obs[0].Job != want[0].Job {
		t.Fatalf("observations: got %+v, want keys %q and %q", obs, want[0].Key, want[1].Key)
	}
	// A GET sends no body and gets one back: each direction is counted
	// on its own (the usage report's bytes_out and bytes_in).
	if obs[0].BytesOut != 0 || obs[0].BytesIn <= 0 {
		t.Errorf("allowed GET: got bytes out %d, in %d; want 0 out, > 0 in", obs[0].BytesOut, obs[0].BytesIn)
	}
	if obs[1].BytesOut != 0 || obs[1].BytesIn != 0 {
		t.Errorf("denied: got bytes out %d, in %d; want none", obs[1].BytesOut, obs[1].BytesIn)
	}
	e.roundTrip(e.sub("POST http://allowed.test:$HP/o HTTP/1.1\r\nHost: allowed.test:$HP\r\nContent-Length: 11\r\n\r\nhello world"))
	obs = waitFor(t, "observations", 3, sink.snapshot)
	if obs[2].BytesOut != 11 || obs[2].BytesIn <= 0 {
		t.Errorf("allowed POST of 11 bytes: got %+v, want 11 bytes out and > 0 in", obs[2])
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, envOpts{})
	idle := e.dial()
	io.WriteString(idle, e.sub(get("http://allowed.test:$HP/idle")))
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("keep-alive request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	tun := e.dial()
	io.WriteString(tun, e.sub("CONNECT allowed.test:$HP HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n"))
	if resp, err := http.ReadResponse(bufio.NewReader(tun), &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = e.srv.Shutdown(ctx)
	if err == nil {
		t.Error("Shutdown with an open tunnel past its deadline: got nil, want the drain error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v, want about the 300ms bound", d)
	}
	for name, c := range map[string]net.Conn{"idle keep-alive": idle, "tunnel": tun} {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("%s connection after Shutdown: read got %v, want closed", name, err)
		}
	}
	if err := e.srv.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: got %v, want nil (idempotent)", err)
	}
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, envOpts{limits: Limits{IdleTimeout: 100 * time.Millisecond}})
	c := e.dial()
	io.WriteString(c, e.sub(get("http://allowed.test:$HP/idle")))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("idle connection: got %v, want closed by the proxy", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("idle connection closed after %v, want about 100ms", d)
	}
}
