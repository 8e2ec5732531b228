package spiffedev

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// WorkloadConfig configures a WorkloadServer.
type WorkloadConfig struct {
	// CA issues the SVIDs. Required.
	CA *CA
	// ID is the SPIFFE ID served to every caller of this socket (the dev
	// server does no workload attestation: whoever can open the socket is
	// that workload). Required, and in the CA's trust domain.
	ID spiffeid.ID
	// TTL is each SVID's lifetime. If zero, 2 minutes. A new SVID is pushed
	// to every open stream when half of it has passed, as SPIRE does.
	TTL time.Duration
	// Logger receives rotation and stream events. If nil, discarded.
	Logger *slog.Logger
}

// WorkloadServer serves the SPIFFE Workload API (FetchX509SVID and
// FetchX509Bundles, streaming; the JWT methods are unimplemented) for one
// identity, rotating its X.509-SVID before it expires.
type WorkloadServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	ca  *CA
	id  spiffeid.ID
	ttl time.Duration
	log *slog.Logger

	mu        sync.Mutex // guards the following
	current   *x509svid.SVID
	changed   chan struct{} // closed and replaced on every rotation
	rotations int
	serving   bool
}

var _ workload.SpiffeWorkloadAPIServer = (*WorkloadServer)(nil)

// NewWorkloadServer mints the first SVID and returns the server.
func NewWorkloadServer(cfg WorkloadConfig) (*WorkloadServer, error) {
	if cfg.CA == nil {
		return nil, errors.New("workload server: no CA")
	}
	if cfg.ID.IsZero() || !cfg.ID.MemberOf(cfg.CA.TrustDomain()) {
		return nil, fmt.Errorf("workload server: ID %q is not in trust domain %s", cfg.ID, cfg.CA.TrustDomain())
	}
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Minute
	}
	if cfg.TTL < 0 {
		return nil, errors.New("workload server: negative TTL")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &WorkloadServer{ca: cfg.CA, id: cfg.ID, ttl: cfg.TTL, log: log, changed: make(chan struct{})}
	svid, err := cfg.CA.MintX509SVID(cfg.ID, cfg.TTL)
	if err != nil {
		return nil, err
	}
	s.current = svid
	return s, nil
}

// Rotations is how many times the SVID was replaced.
func (s *WorkloadServer) Rotations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rotations
}

// Rotate mints a new SVID now and pushes it to every open stream.
func (s *WorkloadServer) Rotate() error {
	svid, err := s.ca.MintX509SVID(s.id, s.ttl)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.current = svid
	s.rotations++
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("svid rotated", "spiffe_id", s.id.String(), "not_after", svid.Certificates[0].NotAfter)
	return nil
}

func (s *WorkloadServer) snapshot() (*x509svid.SVID, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.changed
}

// ListenUnix removes a stale socket at path, listens there and makes the
// socket readable and writable by its owner only.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listen %s: remove stale socket: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// Serve serves the Workload API on ln until ctx is done, rotating the SVID
// every TTL/2, then stops within a few seconds and returns nil. A server
// serves once.
func (s *WorkloadServer) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("workload server: already served")
	}
	s.serving = true
	s.mu.Unlock()

	gs := grpc.NewServer()
	stopping := make(chan struct{})
	workload.RegisterSpiffeWorkloadAPIServer(gs, &streamGate{WorkloadServer: s, stopping: stopping})

	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Add(2)
	go func() {
		defer wg.Done()
		serveErr <- gs.Serve(ln)
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.ttl / 2)
		defer t.Stop()
		for {
			select {
			case <-stopping:
				return
			case <-t.C:
				if err := s.Rotate(); err != nil {
					s.log.Error("svid rotation failed", "err", err)
				}
			}
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		serveErr <- err // for the drain below
	}
	close(stopping) // streams return, so GracefulStop can finish
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		gs.Stop()
		<-done
	}
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("workload server: %w", err)
	}
	return nil
}

// streamGate adds the server's shutdown signal to the handlers.
type streamGate struct {
	*WorkloadServer
	stopping <-chan struct{}
}

// checkHeader enforces the Workload API's security header, as SPIRE does:
// it keeps browsers and SSRF-style proxies from reaching the API.
func checkHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get("workload.spiffe.io")) != 1 || md.Get("workload.spiffe.io")[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (g *streamGate) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	bundle := concatDER(g.ca.Certificate())
	for {
		svid, changed := g.snapshot()
		key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
		if err != nil {
			return status.Errorf(codes.Internal, "marshal key: %v", err)
		}
		resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    concatDER(svid.Certificates...),
			X509SvidKey: key,
			Bundle:      bundle,
		}}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-g.stopping:
			return status.Error(codes.Unavailable, "server stopping")
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (g *streamGate) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	resp := &workload.X509BundlesResponse{Bundles: map[string][]byte{
		g.ca.TrustDomain().IDString(): concatDER(g.ca.Certificate()),
	}}
	if err := stream.Send(resp); err != nil {
		return err
	}
	// The CA never changes; keep the stream open as SPIRE does.
	select {
	case <-g.stopping:
		return status.Error(codes.Unavailable, "server stopping")
	case <-stream.Context().Done():
		return nil
	}
}

func concatDER(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
