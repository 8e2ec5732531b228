// Package server is cordon-xds's ADS endpoint: it serves each proxy the
// Envoy RouteConfigurations (xds/translate) its authenticated SPIFFE ID is
// entitled to, over gRPC with mTLS (TLS 1.3, SVIDs), from a go-control-plane
// snapshot cache.
//
// Who gets what is decided by the peer's certificate, never by what the
// proxy says about itself: the node ID in a DiscoveryRequest is
// self-asserted, so a stream whose node ID differs from its peer SPIFFE ID
// is refused, and the cache is keyed by that (verified) ID. A job identity
// spiffe://TD/org/ORG/job/JOB gets exactly egress/ORG/JOB; the gateway
// identity gets every job; anything else gets nothing and is logged.
//
// It does not read allowlist files: xds/reload loads, translates and calls
// Publish. Only State-of-the-World ADS is served; delta ADS is refused.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/xds/routeconfig"
)

// Config configures a Server.
type Config struct {
	// TrustDomain is the trust domain whose jobs and gateway are served.
	// Required.
	TrustDomain spiffeid.TrustDomain
	// SVID is the server's own X.509-SVID source. Required.
	SVID x509svid.Source
	// Bundles verifies peers' SVIDs. Required.
	Bundles x509bundle.Source
	// GatewayPath is the SPIFFE ID path of gateways. If empty,
	// DefaultGatewayPath.
	GatewayPath string
	// Logger receives one line per refused stream and per NACK. If nil,
	// nothing is logged.
	Logger *slog.Logger
	// Metrics are updated as streams come and go. If nil, metrics are kept
	// but registered nowhere.
	Metrics *Metrics
	// ShutdownGrace bounds the graceful stop of Serve. If zero, 5s.
	ShutdownGrace time.Duration
}

// Server is the ADS server. Create it with New, feed it with Publish, run
// it with Serve.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	cache   cachev3.SnapshotCache

	mu sync.Mutex // guards the following
	// version and routes are the latest published snapshot; routes by
	// "org/job".
	version   string
	published bool
	routes    map[string]*routev3.RouteConfiguration
	// digests are the routes' content digests by "org/job"; allDigest
	// covers every route (a gateway's snapshot).
	digests   map[string][sha256.Size]byte
	allDigest [sha256.Size]byte
	// streams are the open, authorized streams by stream ID.
	streams map[int64]*streamState
	// nodes counts the registered streams per cache key (peer SPIFFE ID).
	nodes map[string]*nodeState
}

type streamState struct {
	ident      Identity
	registered bool   // counted in nodes
	lastSent   string // version of the last response sent
}

type nodeState struct {
	ident   Identity
	streams int
	// digest identifies the resources of the node's snapshot; a Publish
	// that leaves them unchanged leaves the snapshot (and its version)
	// alone, so an edit pushes only to the proxies it concerns.
	digest [sha256.Size]byte
	set    bool // a snapshot was set
}

// New returns a Server serving nothing until the first Publish: a proxy
// that connects before then waits (and stays deny-all).
func New(cfg Config) (*Server, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("xds server: trust domain is required")
	}
	if cfg.SVID == nil || cfg.Bundles == nil {
		return nil, errors.New("xds server: SVID and trust bundle sources are required")
	}
	if cfg.GatewayPath == "" {
		cfg.GatewayPath = DefaultGatewayPath
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := cfg.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Server{
		cfg:     cfg,
		log:     log,
		metrics: m,
		cache:   cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log}),
		routes:  map[string]*routev3.RouteConfiguration{},
		streams: map[int64]*streamState{},
		nodes:   map[string]*nodeState{},
	}, nil
}

// Publish makes routes (every job's translated RouteConfiguration) the
// served snapshot at version, for every connected proxy at once. Each proxy
// sees either its previous snapshot or this one, never a mix. A proxy whose
// resources did not change keeps its snapshot and version: it gets no push.
func (s *Server) Publish(ctx context.Context, version uint64, routes []*routev3.RouteConfiguration) error {
	byJob := make(map[string]*routev3.RouteConfiguration, len(routes))
	digests := make(map[string][sha256.Size]byte, len(routes))
	all := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, rc := range routes {
		org, job, err := routeconfig.ParseResourceName(rc.GetName())
		if err != nil {
			return fmt.Errorf("publish version %d: %w", version, err)
		}
		id := org + "/" + job
		if _, dup := byJob[id]; dup {
			return fmt.Errorf("publish version %d: route %s appears twice", version, rc.GetName())
		}
		b, err := opts.Marshal(rc)
		if err != nil {
			return fmt.Errorf("publish version %d: %w", version, err)
		}
		byJob[id], digests[id] = rc, sha256.Sum256(b)
	}
	for _, id := range slices.Sorted(maps.Keys(digests)) {
		d := digests[id]
		all.Write([]byte(id))
		all.Write(d[:])
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = "v" + strconv.FormatUint(version, 10)
	s.routes, s.digests = byJob, digests
	copy(s.allDigest[:], all.Sum(nil))
	s.published = true
	var errs []error
	for key, n := range s.nodes {
		if err := s.setSnapshotLocked(ctx, key, n); err != nil {
			errs = append(errs, err)
		}
	}
	s.metrics.ConfigVersion.Set(float64(version))
	return errors.Join(errs...)
}

// Version is the version string of the served snapshot ("v<N>"), or "" before
// the first Publish.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// setSnapshotLocked gives node key the resources its identity may see, at
// the current version, unless they are what it already has.
func (s *Server) setSnapshotLocked(ctx context.Context, key string, n *nodeState) error {
	if !s.published {
		return nil
	}
	var res []types.Resource
	var digest [sha256.Size]byte // zero: no resource
	switch n.ident.Kind {
	case KindJob:
		id := n.ident.Org + "/" + n.ident.Job
		if rc, ok := s.routes[id]; ok {
			res = append(res, rc)
			digest = s.digests[id]
		}
	case KindGateway:
		for _, rc := range s.routes {
			res = append(res, rc)
		}
		digest = s.allDigest
	}
	if n.set && n.digest == digest {
		return nil
	}
	snap, err := cachev3.NewSnapshot(s.version, map[resource.Type][]types.Resource{resource.RouteType: res})
	if err != nil {
		return fmt.Errorf("snapshot for %s: %w", key, err)
	}
	if err := s.cache.SetSnapshot(ctx, key, snap); err != nil {
		return fmt.Errorf("snapshot for %s: %w", key, err)
	}
	n.digest, n.set = digest, true
	return nil
}

// TLSConfig is the server's mTLS configuration: TLS 1.3 only, the server's
// SVID, and clients verified against the trust bundle and required to be in
// the trust domain (what they may fetch is decided per stream).
func (s *Server) TLSConfig() *tls.Config {
	return mtls.ServerConfig(s.cfg.SVID, s.cfg.Bundles, s.cfg.TrustDomain)
}

// Serve serves ADS on lis until ctx is done, then stops gracefully within
// ShutdownGrace. It closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	xds := serverv3.NewServer(ctx, s.cache, serverv3.CallbackFuncs{
		StreamOpenFunc:     s.onStreamOpen,
		StreamClosedFunc:   s.onStreamClosed,
		StreamRequestFunc:  s.onStreamRequest,
		StreamResponseFunc: s.onStreamResponse,
	})
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(s.TLSConfig())),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1<<20),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, sotwOnly{xds, s})

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve xds: %w", err)
	case <-ctx.Done():
	}
	cancel() // ends the ADS streams so GracefulStop can finish
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownGrace):
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// sotwOnly serves State-of-the-World ADS and refuses delta ADS, whose
// requests would bypass the node ID check of onStreamRequest.
type sotwOnly struct {
	serverv3.Server
	s *Server
}

func (o sotwOnly) DeltaAggregatedResources(discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	o.s.metrics.Rejected.WithLabelValues(reasonDelta).Inc()
	return status.Error(codes.Unimplemented, "cordon-xds serves State-of-the-World ADS only")
}

func (s *Server) onStreamOpen(ctx context.Context, id int64, typeURL string) error {
	pid, err := peerID(ctx)
	if err != nil {
		s.metrics.Rejected.WithLabelValues(reasonUnauthorized).Inc()
		s.log.Warn("xds stream refused", "stream", id, "reason", reasonUnauthorized, "error", err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	ident := Classify(pid, s.cfg.TrustDomain, s.cfg.GatewayPath)
	if ident.Kind == KindNone {
		s.metrics.Rejected.WithLabelValues(reasonUnauthorized).Inc()
		s.log.Warn("xds stream refused", "stream", id, "reason", reasonUnauthorized, "peer", pid.String())
		return status.Errorf(codes.PermissionDenied, "%s is neither a job (/org/ORG/job/JOB) nor a gateway (%s) identity", pid, s.cfg.GatewayPath)
	}
	s.mu.Lock()
	s.streams[id] = &streamState{ident: ident}
	s.mu.Unlock()
	s.metrics.Streams.Inc()
	s.log.Debug("xds stream open", "stream", id, "peer", pid.String(), "kind", ident.Kind.String())
	return nil
}

func (s *Server) onStreamClosed(id int64, _ *corev3.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return
	}
	delete(s.streams, id)
	s.metrics.Streams.Dec()
	if !st.registered {
		return
	}
	key := st.ident.ID.String()
	if n := s.nodes[key]; n != nil {
		n.streams--
		if n.streams == 0 {
			delete(s.nodes, key)
			s.cache.ClearSnapshot(key)
		}
	}
}

// onStreamRequest enforces node.id == peer SPIFFE ID (the cache is keyed by
// node ID, so this is what binds a stream to its own snapshot) and counts
// ACKs and NACKs.
func (s *Server) onStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	s.mu.Lock()
	st, ok := s.streams[id]
	if !ok {
		s.mu.Unlock()
		return status.Error(codes.PermissionDenied, "stream not authorized")
	}
	key := st.ident.ID.String()
	if req.GetNode().GetId() != key {
		s.mu.Unlock()
		s.metrics.Rejected.WithLabelValues(reasonNodeMismatch).Inc()
		s.log.Warn("xds stream refused", "stream", id, "reason", reasonNodeMismatch,
			"peer", key, "node_id", truncate(req.GetNode().GetId(), 200))
		return status.Errorf(codes.PermissionDenied, "node id must be the peer's SPIFFE ID %s", key)
	}
	if req.GetTypeUrl() != resource.RouteType {
		s.mu.Unlock()
		return status.Errorf(codes.InvalidArgument, "cordon-xds serves only %s", resource.RouteType)
	}
	var err error
	if !st.registered {
		st.registered = true
		n := s.nodes[key]
		if n == nil {
			n = &nodeState{ident: st.ident}
			s.nodes[key] = n
			err = s.setSnapshotLocked(context.Background(), key, n)
		}
		n.streams++
	}
	s.mu.Unlock()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}

	if req.GetResponseNonce() != "" {
		if d := req.GetErrorDetail(); d != nil {
			// A NACK carries the last version the proxy accepted; the cache
			// would answer it with the rejected snapshot at once, forever.
			// Treat the rejected version as known: the next push is the
			// next snapshot.
			s.mu.Lock()
			if st.lastSent != "" {
				req.VersionInfo = st.lastSent
			}
			s.mu.Unlock()
			s.metrics.NACKs.Inc()
			s.log.Warn("xds nack", "stream", id, "peer", key, "version", req.GetVersionInfo(),
				"reason", truncate(d.GetMessage(), 1000))
		} else {
			s.metrics.ACKs.Inc()
		}
	}
	return nil
}

func (s *Server) onStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	s.metrics.Pushes.Inc()
	s.mu.Lock()
	if st, ok := s.streams[id]; ok {
		st.lastSent = resp.GetVersionInfo()
	}
	s.mu.Unlock()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// cacheLogger sends go-control-plane's logs to slog at debug level (its
// info lines are per-request chatter).
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
