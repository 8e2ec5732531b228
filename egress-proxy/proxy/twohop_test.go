package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

// countingResolver answers every name with one address and counts calls.
type countingResolver struct {
	addr  netip.Addr
	calls atomic.Int64
}

func (r *countingResolver) LookupNetIP(context.Context, string) ([]netip.Addr, error) {
	r.calls.Add(1)
	return []netip.Addr{r.addr}, nil
}

// serveForTest runs serve on ln until the test ends.
func serveForTest(t *testing.T, srv *Server, serve func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("serve: got %v, want ErrServerClosed", err)
		}
	})
}

// exchange sends raw requests on one connection to addr, reading one
// response after each, and returns status, reason and body of each.
func exchange(t *testing.T, addr string, raws ...string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	var out []string
	for _, raw := range raws {
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			out = append(out, "error: "+err.Error())
			break
		}
		body, _ := io.ReadAll(resp.Body)
		out = append(out, fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Header.Get(DenyReasonHeader), body))
	}
	return out
}

// tlsThrough opens a CONNECT tunnel through the proxy at addr and runs a
// TLS request through it; it returns "200" or what went wrong.
func tlsThrough(t *testing.T, addr, target, sni string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return "error: " + err.Error()
	}
	if resp.StatusCode != 200 {
		return fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	fmt.Fprintf(tc, "GET /tunnel HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	r2, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return "tunnel: " + err.Error()
	}
	body, _ := io.ReadAll(r2.Body)
	return fmt.Sprintf("%d %s", r2.StatusCode, body)
}

func TestTwoHopThroughGateway(t *testing.T) {
	e := newEnv(t, envOpts{})
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	gwID := spiffeid.RequireFromString("spiffe://cordon.test/cordon/egress-gateway")
	jobID := "spiffe://cordon.test/org/acme/job/block_follower"
	hp, tp := e.httpPort, e.tlsPort

	// A destination that claims to be a Cordon refusal.
	forger := listenOn(t, "127.0.0.2")
	fp := portOf(forger.Addr())
	fsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(DenyReasonHeader, "not_allowed")
		io.WriteString(w, "forged")
	})}
	go fsrv.Serve(forger)
	t.Cleanup(func() { fsrv.Close() })

	// The sidecar allows allowed.test and strict.test; the gateway, with a
	// stricter policy, only allowed.test.
	rules := func(hosts ...string) *allowlist.JobPolicy {
		p := &allowlist.JobPolicy{Org: "acme", Job: "block_follower", Class: allowlist.ClassPlatform}
		for _, h := range hosts {
			p.Rules = append(p.Rules, allowlist.Rule{Host: h, Ports: []uint16{hp, tp, fp}, Source: "endpoint_set:test"})
		}
		return p
	}
	e.dns.Set("strict.test", "127.0.0.2")
	gwStore, scStore := policy.NewStore(), policy.NewStore()
	if err := gwStore.Apply([]*allowlist.JobPolicy{rules("allowed.test")}); err != nil {
		t.Fatal(err)
	}
	if err := scStore.Apply([]*allowlist.JobPolicy{rules("allowed.test", "strict.test")}); err != nil {
		t.Fatal(err)
	}

	startGateway := func(id spiffeid.ID) string {
		svid, err := ca.MintX509SVID(id, 0)
		if err != nil {
			t.Fatal(err)
		}
		gw, err := New(Config{Store: gwStore, TrustDomain: ca.TrustDomain(), Resolver: e.srv.resolver,
			UnsafeAllowCIDRs: e.srv.cfg.UnsafeAllowCIDRs})
		if err != nil {
			t.Fatal(err)
		}
		ln := listenOn(t, "127.0.0.1")
		serveForTest(t, gw, func() error {
			return gw.ServeTLS(context.Background(), ln, GatewayTLSConfig(svid, ca.Bundle(), ca.TrustDomain()))
		})
		return ln.Addr().String()
	}
	gwAddr := startGateway(gwID)
	// An impostor: a valid SVID of the trust domain, but not the gateway's.
	impostorAddr := startGateway(spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/evil"))
	closed := listenOn(t, "127.0.0.1")
	closedAddr := closed.Addr().String()
	closed.Close()

	// Had the sidecar resolved and dialled itself, it would have reached
	// these listeners (its resolver answers 127.0.0.9 for every name).
	var direct atomic.Int64
	for _, port := range []uint16{hp, tp, fp} {
		ln, err := net.Listen("tcp", "127.0.0.9:"+strconv.Itoa(int(port)))
		if err != nil {
			t.Fatalf("counting listener: %v", err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				direct.Add(1)
				c.Close()
			}
		}()
	}
	res := &countingResolver{addr: netip.MustParseAddr("127.0.0.9")}

	jobSVID, err := ca.MintX509SVID(spiffeid.RequireFromString(jobID), 0)
	if err != nil {
		t.Fatal(err)
	}
	startSidecar := func(gw string) string {
		sc, err := New(Config{Store: scStore, Job: JobRef{Org: "acme", Job: "block_follower"}, Resolver: res,
			UnsafeAllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
			Limits:           Limits{DialTimeout: 2 * time.Second, ClientHelloTimeout: time.Second},
			Gateway:          &GatewayUpstream{Addr: gw, TLS: GatewayClientTLSConfig(jobSVID, ca.Bundle(), gwID)}})
		if err != nil {
			t.Fatal(err)
		}
		ln := listenOn(t, "127.0.0.1")
		serveForTest(t, sc, func() error { return sc.Serve(context.Background(), ln) })
		return ln.Addr().String()
	}
	sidecar := startSidecar(gwAddr)
	toClosed := startSidecar(closedAddr)
	toImpostor := startSidecar(impostorAddr)

	req := func(host, path string) string {
		return fmt.Sprintf("GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, hp, path, host, hp)
	}
	tests := []struct {
		name  string
		proxy string
		raws  []string
		want  []string
	}{
		{"both allow, keep-alive through the gateway", sidecar,
			[]string{req("allowed.test", "/a"), req("allowed.test", "/b")},
			[]string{"200  ok GET /a 0", "200  ok GET /b 0"}},
		{"gateway denies what the sidecar allows", sidecar,
			[]string{req("strict.test", "/")}, []string{"403 not_allowed cordon egress: not_allowed\n"}},
		{"a destination cannot forge a refusal", sidecar,
			[]string{fmt.Sprintf("GET http://allowed.test:%d/ HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", fp, fp)},
			[]string{"200  forged"}},
		{"sidecar denies first", sidecar,
			[]string{req("nope.test", "/")}, []string{"403 not_allowed cordon egress: not_allowed\n"}},
		{"gateway unreachable", toClosed,
			[]string{req("allowed.test", "/")}, []string{"502 gateway_unreachable cordon egress: gateway_unreachable\n"}},
		{"gateway with another identity", toImpostor,
			[]string{req("allowed.test", "/")}, []string{"502 gateway_unreachable cordon egress: gateway_unreachable\n"}},
	}
	for _, tt := range tests {
		t.Run("http/"+tt.name, func(t *testing.T) {
			got := exchange(t, tt.proxy, tt.raws...)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	connects := []struct {
		name          string
		proxy, target string
		want          string
	}{
		{"both allow", sidecar, fmt.Sprintf("allowed.test:%d", tp), "200 ok GET /tunnel 0"},
		{"gateway denies", sidecar, fmt.Sprintf("strict.test:%d", tp), "403 not_allowed"},
		{"gateway unreachable", toClosed, fmt.Sprintf("allowed.test:%d", tp), "502 gateway_unreachable"},
		{"gateway with another identity", toImpostor, fmt.Sprintf("allowed.test:%d", tp), "502 gateway_unreachable"},
	}
	for _, tt := range connects {
		t.Run("connect/"+tt.name, func(t *testing.T) {
			host, _, _ := net.SplitHostPort(tt.target)
			if got := tlsThrough(t, tt.proxy, tt.target, host); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("sni still checked by the sidecar", func(t *testing.T) {
		if got := tlsThrough(t, sidecar, fmt.Sprintf("allowed.test:%d", tp), "strict.test"); got == "200 ok GET /tunnel 0" {
			t.Errorf("SNI strict.test in a tunnel to allowed.test: got %q, want the tunnel closed", got)
		}
	})

	if n := direct.Load(); n != 0 {
		t.Errorf("sidecar dialled destinations directly %d times, want 0", n)
	}
	if n := res.calls.Load(); n != 0 {
		t.Errorf("sidecar resolved names %d times, want 0", n)
	}
}

func TestGatewayUpstreamValidate(t *testing.T) {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	good := GatewayClientTLSConfig(svid, ca.Bundle(), spiffeid.RequireFromString("spiffe://cordon.test/cordon/egress-gateway"))
	tls12 := good.Clone()
	tls12.MinVersion = tls.VersionTLS12
	tests := []struct {
		name string
		g    *GatewayUpstream
		ok   bool
	}{
		{"good", &GatewayUpstream{Addr: "gw:3129", TLS: good}, true},
		{"no addr", &GatewayUpstream{TLS: good}, false},
		{"addr without port", &GatewayUpstream{Addr: "gw", TLS: good}, false},
		{"no tls", &GatewayUpstream{Addr: "gw:3129"}, false},
		{"tls 1.2", &GatewayUpstream{Addr: "gw:3129", TLS: tls12}, false},
		{"no client certificate", &GatewayUpstream{Addr: "gw:3129", TLS: &tls.Config{MinVersion: tls.VersionTLS13}}, false},
		{"verification off", &GatewayUpstream{Addr: "gw:3129", TLS: &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			Certificates: []tls.Certificate{spiffedev.TLSCertificate(svid)}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Store: policy.NewStore(), Gateway: tt.g})
			if (err == nil) != tt.ok {
				t.Errorf("New: got error %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestJobStatePrunedWhenJobLeavesPolicy(t *testing.T) {
	e := newEnv(t, envOpts{})
	count := func() int {
		n := 0
		e.srv.jobs.Range(func(_, _ any) bool { n++; return true })
		return n
	}
	resp, _ := e.roundTrip(get("http://allowed.test:$HP/"))
	if resp.StatusCode != 200 || count() != 1 {
		t.Fatalf("after an allowed request: got status %d and %d job states, want 200 and 1", resp.StatusCode, count())
	}
	other := &allowlist.JobPolicy{Org: "acme", Job: "other", Class: allowlist.ClassPlatform}
	if err := e.store.Apply([]*allowlist.JobPolicy{other}); err != nil {
		t.Fatal(err)
	}
	resp, _ = e.roundTrip(get("http://allowed.test:$HP/"))
	if resp.StatusCode != 403 || count() != 0 {
		t.Errorf("after the job left the policy: got status %d and %d job states, want 403 and 0", resp.StatusCode, count())
	}
}
