package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/mtls"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/cordon-dev/cordon/xds/translate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t      *testing.T
	ca     *spiffedev.CA
	srv    *Server
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func routesFor(t *testing.T, ps ...*allowlist.JobPolicy) []*routev3.RouteConfiguration {
	t.Helper()
	var out []*routev3.RouteConfiguration
	for _, p := range ps {
		rc, err := translate.ToRouteConfiguration(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rc)
	}
	return out
}

func policy(org, job, host string) *allowlist.JobPolicy {
	return &allowlist.JobPolicy{Org: org, Job: job, Class: allowlist.ClassPlatform, Mode: allowlist.ModeEnforce,
		Rules: []allowlist.Rule{{Host: host, Ports: []uint16{443}, Source: "endpoint_set:s"}}}
}

func startServer(t *testing.T) *env {
	t.Helper()
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.MintX509SVID(spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds"), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{TrustDomain: ca.TrustDomain(), SVID: svid, Bundles: ca.Bundle()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, ca: ca, srv: srv, addr: lis.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-e.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// adsStream is an ADS client stream with one reader goroutine, so a test
// can wait for a response with a timeout without racing Recv calls.
type adsStream struct {
	discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	ch chan *result
}

// dial opens an ADS stream as the SVID of id, signed by ca.
func (e *env) dial(ca *spiffedev.CA, id string) *adsStream {
	e.t.Helper()
	svid, err := ca.MintX509SVID(spiffeid.RequireFromString(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	tc := mtls.ClientConfig(svid, e.ca.Bundle(), spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds"))
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &adsStream{ch: make(chan *result, 16)}
	done := make(chan struct{})
	e.t.Cleanup(func() { cancel(); conn.Close(); <-done })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		s.ch <- &result{err: err}
		close(done)
		return s
	}
	s.AggregatedDiscoveryService_StreamAggregatedResourcesClient = stream
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			s.ch <- &result{resp, err}
			if err != nil {
				return
			}
		}
	}()
	return s
}

func request(nodeID string, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: nodeID}, TypeUrl: resource.RouteType, ResourceNames: names}
}

type result struct {
	resp *discoveryv3.DiscoveryResponse
	err  error
}

// recv waits up to d for a response; a nil result means none came.
func recv(t *testing.T, s *adsStream, d time.Duration) *result {
	t.Helper()
	select {
	case r := <-s.ch:
		return r
	case <-time.After(d):
		return nil
	}
}

func (s *adsStream) Send(req *discoveryv3.DiscoveryRequest) error {
	if s.AggregatedDiscoveryService_StreamAggregatedResourcesClient == nil {
		return nil // the dial failed; recv reports why
	}
	return s.AggregatedDiscoveryService_StreamAggregatedResourcesClient.Send(req)
}

func names(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			t.Fatal(err)
		}
		out = append(out, rc.GetName())
	}
	sort.Strings(out)
	return out
}

const (
	jobA    = "spiffe://cordon.test/org/acme/job/a"
	gateway = "spiffe://cordon.test/cordon/egress-gateway"
)

func TestWhoGetsWhat(t *testing.T) {
	e := startServer(t)
	if err := e.srv.Publish(context.Background(), 7, routesFor(t,
		policy("acme", "a", "a.example.com"), policy("acme", "b", "b.example.com"), policy("globex", "c", "c.example.com"))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		id        string
		node      string
		resources []string
		want      []string // nil: no response at all
		wantCode  codes.Code
	}{
		{name: "job gets its own", id: jobA, node: jobA, resources: []string{"egress/acme/a"}, want: []string{"egress/acme/a"}},
		{name: "job wildcard gets only its own", id: jobA, node: jobA, want: []string{"egress/acme/a"}},
		{name: "job asking for another job gets nothing", id: jobA, node: jobA, resources: []string{"egress/acme/b"}},
		{name: "job asking for both gets only its own", id: jobA, node: jobA, resources: []string{"egress/acme/a", "egress/acme/b"},
			want: []string{"egress/acme/a"}},
		{name: "job lying about its node id is refused", id: jobA, node: "spiffe://cordon.test/org/acme/job/b",
			resources: []string{"egress/acme/b"}, wantCode: codes.PermissionDenied},
		{name: "job claiming to be the gateway is refused", id: jobA, node: gateway, wantCode: codes.PermissionDenied},
		{name: "job with no node is refused", id: jobA, node: "", wantCode: codes.PermissionDenied},
		{name: "gateway gets every job", id: gateway, node: gateway,
			want: []string{"egress/acme/a", "egress/acme/b", "egress/globex/c"}},
		{name: "unknown service identity is refused", id: "spiffe://cordon.test/cordon/dispatcher", node: "spiffe://cordon.test/cordon/dispatcher", wantCode: codes.PermissionDenied},
		{name: "job path with extra segments is refused", id: "spiffe://cordon.test/org/acme/job/a/x", node: "spiffe://cordon.test/org/acme/job/a/x", wantCode: codes.PermissionDenied},
		{name: "job without policy gets an empty response", id: "spiffe://cordon.test/org/acme/job/zz", node: "spiffe://cordon.test/org/acme/job/zz",
			resources: []string{"egress/acme/zz"}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := e.dial(e.ca, tt.id)
			// A refused stream may already be closed when we send: the
			// status comes with Recv.
			if err := s.Send(request(tt.node, tt.resources...)); err != nil && tt.wantCode == codes.OK {
				t.Fatal(err)
			}
			wait := 5 * time.Second // generous for a loaded CI machine
			if tt.want == nil && tt.wantCode == codes.OK {
				wait = 500 * time.Millisecond // proving a negative
			}
			r := recv(t, s, wait)
			switch {
			case tt.wantCode != codes.OK:
				if r == nil || status.Code(r.err) != tt.wantCode {
					t.Fatalf("got %+v, want error code %v", r, tt.wantCode)
				}
			case tt.want == nil:
				if r != nil {
					t.Fatalf("got response %+v (names %v), want none", r.err, names(t, r.resp))
				}
			default:
				if r == nil || r.err != nil {
					t.Fatalf("got %+v, want resources %v", r, tt.want)
				}
				if got := names(t, r.resp); !slices.Equal(got, tt.want) || (got == nil) != (len(tt.want) == 0) {
					t.Fatalf("got resources %v, want %v", got, tt.want)
				}
				if r.resp.GetVersionInfo() != "v7" {
					t.Errorf("got version %q, want v7", r.resp.GetVersionInfo())
				}
			}
		})
	}
}

func TestOtherTrustDomainFailsHandshake(t *testing.T) {
	e := startServer(t)
	if err := e.srv.Publish(context.Background(), 1, routesFor(t, policy("acme", "a", "a.example.com"))); err != nil {
		t.Fatal(err)
	}
	evil, err := spiffedev.NewCA("cordon.test") // same name, different key
	if err != nil {
		t.Fatal(err)
	}
	s := e.dial(evil, jobA)
	if err := s.Send(request(jobA, "egress/acme/a")); err != nil && status.Code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	r := recv(t, s, 5*time.Second)
	if r == nil || r.err == nil || status.Code(r.err) != codes.Unavailable {
		t.Fatalf("got %+v, want a failed handshake (Unavailable)", r)
	}
}

func TestPublishPushesAndCountsACKs(t *testing.T) {
	e := startServer(t)
	s := e.dial(e.ca, jobA)
	if err := s.Send(request(jobA, "egress/acme/a")); err != nil {
		t.Fatal(err)
	}
	// Nothing is served before the first Publish.
	if r := recv(t, s, 300*time.Millisecond); r != nil {
		t.Fatalf("got %+v before any Publish, want nothing", r)
	}
	for v := uint64(1); v <= 3; v++ {
		host := fmt.Sprintf("a%d.example.com", v)
		if err := e.srv.Publish(context.Background(), v, routesFor(t, policy("acme", "a", host))); err != nil {
			t.Fatal(err)
		}
		r := recv(t, s, 5*time.Second)
		if r == nil || r.err != nil {
			t.Fatalf("version %d: got %+v, want a push", v, r)
		}
		if want := "v" + string(rune('0'+v)); r.resp.GetVersionInfo() != want {
			t.Fatalf("got version %q, want %q", r.resp.GetVersionInfo(), want)
		}
		ack := request(jobA, "egress/acme/a")
		ack.VersionInfo, ack.ResponseNonce = r.resp.GetVersionInfo(), r.resp.GetNonce()
		if v == 3 {
			ack.ErrorDetail = status.New(codes.InvalidArgument, "cannot use it").Proto()
		}
		if err := s.Send(ack); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return counter(e.srv.metrics.ACKs) == 2 && counter(e.srv.metrics.NACKs) == 1 },
		"2 ACKs and 1 NACK")
	// The NACKed version is not resent in a loop: the next push is the next
	// snapshot.
	if r := recv(t, s, 300*time.Millisecond); r != nil {
		t.Fatalf("got %+v after a NACK, want nothing until the next Publish", r.resp.GetVersionInfo())
	}
	if err := e.srv.Publish(context.Background(), 4, routesFor(t, policy("acme", "a", "a4.example.com"))); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, s, 5*time.Second); r == nil || r.resp.GetVersionInfo() != "v4" {
		t.Fatalf("got %+v, want v4 after the NACK", r)
	}
}

func TestDeltaRefused(t *testing.T) {
	e := startServer(t)
	svid, _ := e.ca.MintX509SVID(spiffeid.RequireFromString(jobA), 0)
	tc := mtls.ClientConfig(svid, e.ca.Bundle(), spiffeid.RequireFromString("spiffe://cordon.test/cordon/xds"))
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: jobA}, TypeUrl: resource.RouteType})
	if _, err := ds.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("got %v, want Unimplemented", err)
	}
}

func TestClassify(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cordon.test")
	tests := []struct {
		id       string
		kind     Kind
		org, job string
	}{
		{"spiffe://cordon.test/org/acme/job/block_follower", KindJob, "acme", "block_follower"},
		{"spiffe://cordon.test/cordon/egress-gateway", KindGateway, "", ""},
		{"spiffe://other.test/cordon/egress-gateway", KindNone, "", ""},
		{"spiffe://other.test/org/acme/job/a", KindNone, "", ""},
		{"spiffe://cordon.test/org/acme/job/a/b", KindNone, "", ""},
		{"spiffe://cordon.test/org/acme", KindNone, "", ""},
		{"spiffe://cordon.test/org/ACME/job/a", KindNone, "", ""},
		{"spiffe://cordon.test/org/acme/job/a-", KindNone, "", ""}, // no allowlist can name it
		{"spiffe://cordon.test/cordon/egress-gateway/x", KindNone, "", ""},
	}
	for _, tt := range tests {
		got := Classify(spiffeid.RequireFromString(tt.id), td, DefaultGatewayPath)
		if got.Kind != tt.kind || got.Org != tt.org || got.Job != tt.job {
			t.Errorf("Classify(%s) = %v %q %q, want %v %q %q", tt.id, got.Kind, got.Org, got.Job, tt.kind, tt.org, tt.job)
		}
	}
}

func TestNewRequiresSources(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New(Config{}): got nil error")
	}
}

// TestUnchangedJobsGetNoPush: an edit pushes only to the proxies whose
// resources it changes; the others keep their snapshot and version.
func TestUnchangedJobsGetNoPush(t *testing.T) {
	e := startServer(t)
	const jobB = "spiffe://cordon.test/org/acme/job/b"
	pub := func(v uint64, bHost string) {
		t.Helper()
		if err := e.srv.Publish(context.Background(), v, routesFor(t,
			policy("acme", "a", "a.example.com"), policy("acme", "b", bHost))); err != nil {
			t.Fatal(err)
		}
	}
	pub(1, "b.example.com")
	streams := map[string]*adsStream{}
	for _, id := range []string{jobA, jobB, gateway} {
		s := e.dial(e.ca, id)
		if err := s.Send(request(id)); err != nil {
			t.Fatal(err)
		}
		r := recv(t, s, 5*time.Second)
		if r == nil || r.err != nil || r.resp.GetVersionInfo() != "v1" {
			t.Fatalf("%s: got %+v, want v1", id, r)
		}
		ack := request(id)
		ack.VersionInfo, ack.ResponseNonce = "v1", r.resp.GetNonce()
		if err := s.Send(ack); err != nil {
			t.Fatal(err)
		}
		streams[id] = s
	}
	pub(2, "b2.example.com")
	tests := []struct {
		id   string
		want string // "" for no push
	}{
		{jobA, ""},
		{jobB, "v2"},
		{gateway, "v2"},
	}
	for _, tt := range tests {
		wait := 5 * time.Second
		if tt.want == "" {
			wait = 500 * time.Millisecond
		}
		r := recv(t, streams[tt.id], wait)
		switch {
		case tt.want == "" && r != nil:
			t.Errorf("%s: got a push of %s, want none (its policy did not change)", tt.id, r.resp.GetVersionInfo())
		case tt.want != "" && (r == nil || r.resp.GetVersionInfo() != tt.want):
			t.Errorf("%s: got %+v, want a push of %s", tt.id, r, tt.want)
		}
	}
}

// TestNodeSwitchMidStreamRefused: the node may be re-sent on any request; a
// stream that starts honest and then claims another node is closed before
// the cache sees the claim.
func TestNodeSwitchMidStreamRefused(t *testing.T) {
	e := startServer(t)
	if err := e.srv.Publish(context.Background(), 1, routesFor(t,
		policy("acme", "a", "a.example.com"), policy("acme", "b", "b.example.com"))); err != nil {
		t.Fatal(err)
	}
	s := e.dial(e.ca, jobA)
	if err := s.Send(request(jobA, "egress/acme/a")); err != nil {
		t.Fatal(err)
	}
	r := recv(t, s, 5*time.Second)
	if r == nil || r.err != nil {
		t.Fatalf("got %+v, want v1", r)
	}
	lie := request("spiffe://cordon.test/org/acme/job/b", "egress/acme/b")
	lie.VersionInfo, lie.ResponseNonce = "v1", r.resp.GetNonce()
	if err := s.Send(lie); err != nil {
		t.Fatal(err)
	}
	r = recv(t, s, 5*time.Second)
	if r == nil || status.Code(r.err) != codes.PermissionDenied {
		t.Fatalf("got %+v, want PermissionDenied", r)
	}
}
