package spiffedev

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
)

// Endpoint is one Workload API socket and the identity it serves.
type Endpoint struct {
	Socket string      // filesystem path of the unix socket
	ID     spiffeid.ID // served to whoever connects
}

// ParseEndpoint parses "SOCKET=SPIFFE_ID", the form of cordon-devspiffe's
// --serve flag.
func ParseEndpoint(s string) (Endpoint, error) {
	sock, id, ok := strings.Cut(s, "=")
	if !ok || sock == "" {
		return Endpoint{}, fmt.Errorf("endpoint %q: want SOCKET=spiffe://TD/path", s)
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	return Endpoint{Socket: sock, ID: sid}, nil
}

// DevConfig configures RunDev.
type DevConfig struct {
	// TrustDomain of the in-memory CA, e.g. "cordon.test". Required.
	TrustDomain string
	// Endpoints to serve; each ID must be in TrustDomain. At least one.
	Endpoints []Endpoint
	// TTL of each SVID. If zero, 2 minutes.
	TTL time.Duration
	// BundleOut, if set, receives the CA certificate as PEM (mode 0644) so
	// that processes without a Workload API socket can trust the SVIDs.
	BundleOut string
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// RunDev creates a CA and serves every endpoint until ctx is done.
func RunDev(ctx context.Context, cfg DevConfig) error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("devspiffe: no endpoints: pass --serve SOCKET=spiffe://TD/path at least once")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := NewCA(cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("devspiffe: %w", err)
	}
	if cfg.BundleOut != "" {
		b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw})
		if err := os.WriteFile(cfg.BundleOut, b, 0o644); err != nil {
			return fmt.Errorf("devspiffe: write bundle: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, ep := range cfg.Endpoints {
		srv, err := NewWorkloadServer(WorkloadConfig{CA: ca, ID: ep.ID, TTL: cfg.TTL, Logger: log.With("socket", ep.Socket)})
		if err != nil {
			return fmt.Errorf("devspiffe: %w", err)
		}
		ln, err := ListenUnix(ep.Socket)
		if err != nil {
			return fmt.Errorf("devspiffe: %w", err)
		}
		log.Info("serving workload API", "socket", ep.Socket, "spiffe_id", ep.ID.String())
		g.Go(func() error { return srv.Serve(gctx, ln) })
	}
	return g.Wait()
}
