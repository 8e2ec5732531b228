// Package xdsclient is the egress proxy's side of xDS: it subscribes to
// cordon-xds over ADS (gRPC, mTLS with the proxy's SVID), turns the Envoy
// RouteConfigurations it receives back into allowlist policies
// (xds/routeconfig), hands them to an Applier (the proxy's policy store),
// and ACKs what it applied or NACKs, with the reason, what it could not use.
//
// It speaks the standard Envoy v3 ADS protocol but does not import
// go-control-plane: the two stream messages are written and read with
// protowire (ads.go) and the resources with xds/routeconfig's strict
// decoder, which keeps the sidecar agent that embeds this client small.
//
// Failure behaviour is the point of this package (DESIGN.md, "xDS"):
//   - it starts deny-all: it never calls Apply until a good policy arrives;
//   - a response it cannot fully decode or apply changes nothing (NACK);
//   - when the control plane is gone it keeps the last applied policy and
//     reconnects with exponential backoff;
//   - it never applies an empty set or anything that allows more than the
//     control plane sent. A sidecar whose job has no policy (the control
//     plane sends no resource for it) applies an explicit deny-all policy.
//
// It does not enforce anything (egress-proxy/policy) or decide who gets
// which policy (xds/server).
package xdsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/xds/routeconfig"
)

// Applier swaps in a complete set of job policies atomically; on error
// nothing changed. *policy.Store (egress-proxy/policy) is one.
type Applier interface {
	Apply([]*allowlist.JobPolicy) error
}

// DefaultServerPath is the SPIFFE ID path cordon-xds is expected to present.
const DefaultServerPath = "/cordon/xds"

// Config configures a Client.
type Config struct {
	// Addr is the control plane's host:port. Required.
	Addr string
	// SVID is the proxy's own identity; its SPIFFE ID is the node ID, and
	// for a sidecar it names the job (spiffe://TD/org/ORG/job/JOB).
	// Required.
	SVID x509svid.Source
	// Bundles verifies the control plane. Required.
	Bundles x509bundle.Source
	// ServerID is the SPIFFE ID the control plane must present. If zero,
	// spiffe://<our trust domain>/cordon/xds.
	ServerID spiffeid.ID
	// Gateway subscribes to every job's policy (wildcard) instead of the
	// one job named by SVID.
	Gateway bool
	// Logger, if nil, discards.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect delay. If zero, 200ms
	// and 15s.
	MinBackoff, MaxBackoff time.Duration
}

// Client is an ADS subscription. Create it with New and run it with Run.
type Client struct {
	cfg    Config
	log    *slog.Logger
	apply  Applier
	nodeID string
	// names is what the client subscribes to: its job's resource, or nil
	// (wildcard) for a gateway.
	names []string
	// org and job are the sidecar's job.
	org, job string

	mu sync.Mutex // guards the following
	// version is the last version applied ("" before the first).
	version string
	// lastNACK is the reason of the latest NACK, "" when the latest
	// response was applied.
	lastNACK string
	nacks    uint64        // rejected responses since start
	applied  chan struct{} // closed and replaced on every apply
	ready    chan struct{} // closed at the first apply
}

// New checks cfg and returns a Client. It reads the SVID once to learn the
// node ID (and the job, for a sidecar).
func New(cfg Config, a Applier) (*Client, error) {
	if cfg.Addr == "" || cfg.SVID == nil || cfg.Bundles == nil || a == nil {
		return nil, errors.New("xds client: address, SVID source, bundle source and applier are required")
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	svid, err := cfg.SVID.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("xds client: read own SVID: %w", err)
	}
	if cfg.ServerID.IsZero() {
		cfg.ServerID, err = spiffeid.FromPath(svid.ID.TrustDomain(), DefaultServerPath)
		if err != nil {
			return nil, fmt.Errorf("xds client: %w", err)
		}
	}
	c := &Client{cfg: cfg, log: cfg.Logger, apply: a, nodeID: svid.ID.String(),
		applied: make(chan struct{}), ready: make(chan struct{})}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if !cfg.Gateway {
		j, err := jobid.FromID(svid.ID, svid.ID.TrustDomain())
		if err != nil {
			return nil, fmt.Errorf("xds client: own SVID: %w (set Gateway for a gateway)", err)
		}
		c.org, c.job = j.Org, j.Job
		c.names = []string{routeconfig.ResourceName(c.org, c.job)}
	}
	return c, nil
}

// Version is the version of the last applied policy, "" before the first.
func (c *Client) Version() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Applied returns a channel closed at the next successful Apply.
func (c *Client) Applied() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied
}

// Ready returns a channel that is closed once the first policy has been
// applied, and stays closed: until then the proxy denies everything (a
// sidecar reports itself unhealthy until it is closed).
func (c *Client) Ready() <-chan struct{} { return c.ready }

// NACKs is how many responses the client has rejected since it started.
func (c *Client) NACKs() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nacks
}

// LastNACK is the reason of the latest rejected response, or "" when the
// latest response was applied.
func (c *Client) LastNACK() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastNACK
}

// tlsConfig is mTLS with our SVID, TLS 1.3 only, the server authorized by
// its exact SPIFFE ID.
func (c *Client) tlsConfig() *tls.Config {
	return mtls.ClientConfig(c.cfg.SVID, c.cfg.Bundles, c.cfg.ServerID)
}

// Run subscribes until ctx is done, reconnecting with backoff whenever the
// stream fails. The last applied policy stays in force throughout. It
// returns nil when ctx is done.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.cfg.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig())),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		// No service config from DNS: grpc-go's resolver otherwise also
		// asks for a TXT record (_grpc_config.NAME), which a resolver on a
		// network with no route out (the task's, compose's internal one)
		// cannot answer, and the first policy waited ~10 s for it to time
		// out twice. Cordon's control plane never publishes one.
		grpc.WithDisableServiceConfig(),
	)
	if err != nil {
		return fmt.Errorf("xds client: dial %s: %w", c.cfg.Addr, err)
	}
	defer conn.Close()

	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = c.cfg.MinBackoff, c.cfg.MaxBackoff
	for {
		got, err := c.stream(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			b.Reset()
		}
		wait := b.NextBackOff()
		c.log.Warn("xds stream ended, keeping the last applied policy", "addr", c.cfg.Addr,
			"version", c.Version(), "retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// stream runs one ADS stream until it fails. got reports whether any
// response arrived (the connection worked, so the backoff resets).
func (c *Client) stream(ctx context.Context, conn *grpc.ClientConn) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := conn.NewStream(ctx, adsStream, adsMethod,
		grpc.StaticMethod(), grpc.WaitForReady(false), grpc.ForceCodecV2(adsCodec{}))
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	req := &discoveryRequest{
		NodeID:        c.nodeID,
		TypeURL:       routeconfig.TypeURL,
		ResourceNames: c.names,
		// Resuming at our version: an unchanged control plane sends
		// nothing new, a changed one sends its current snapshot.
		VersionInfo: c.Version(),
	}
	if err := s.SendMsg(req); err != nil {
		return false, fmt.Errorf("send subscription: %w", err)
	}
	for {
		resp := &discoveryResponse{}
		if err := s.RecvMsg(resp); err != nil {
			return got, fmt.Errorf("receive: %w", err)
		}
		got = true
		next := &discoveryRequest{
			TypeURL:       routeconfig.TypeURL,
			ResourceNames: c.names,
			ResponseNonce: resp.Nonce,
		}
		if err := c.handle(resp); err != nil {
			c.log.Error("xds response rejected, keeping the last applied policy",
				"version", resp.VersionInfo, "serving_version", c.Version(), "error", err)
			next.VersionInfo = c.Version()
			next.ErrorDetail = &rpcStatus{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			next.VersionInfo = resp.VersionInfo
		}
		if err := s.SendMsg(next); err != nil {
			return got, fmt.Errorf("send ack: %w", err)
		}
	}
}

// handle decodes and applies one response; any error means nothing was
// applied.
func (c *Client) handle(resp *discoveryResponse) error {
	policies, err := c.decode(resp)
	if err == nil {
		err = c.apply.Apply(policies)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.lastNACK = err.Error()
		c.nacks++
		return err
	}
	c.version, c.lastNACK = resp.VersionInfo, ""
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	close(c.applied)
	c.applied = make(chan struct{})
	c.log.Info("xds policy applied", "version", resp.VersionInfo, "jobs", len(policies))
	return nil
}

func (c *Client) decode(resp *discoveryResponse) ([]*allowlist.JobPolicy, error) {
	if resp.TypeURL != routeconfig.TypeURL {
		return nil, fmt.Errorf("response type %q: want %s", resp.TypeURL, routeconfig.TypeURL)
	}
	seen := map[string]bool{}
	var out []*allowlist.JobPolicy
	for i, a := range resp.Resources {
		if a.TypeURL != routeconfig.TypeURL {
			return nil, fmt.Errorf("resource %d: type %q: want %s", i, a.TypeURL, routeconfig.TypeURL)
		}
		rc, err := routeconfig.Unmarshal(a.Value)
		if err != nil {
			return nil, fmt.Errorf("resource %d: decode route configuration: %w", i, err)
		}
		if seen[rc.Name] {
			return nil, fmt.Errorf("resource %q sent twice", rc.Name)
		}
		seen[rc.Name] = true
		if !c.cfg.Gateway && rc.Name != c.names[0] {
			return nil, fmt.Errorf("resource %q: this proxy serves only %s", rc.Name, c.names[0])
		}
		p, err := rc.Policy()
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		if c.cfg.Gateway {
			return nil, errors.New("empty policy set: a gateway keeps its last policy rather than drop every job")
		}
		// The control plane has no policy for our job: it was removed from
		// the allowlists. Deny everything rather than keep what it had.
		out = []*allowlist.JobPolicy{{Org: c.org, Job: c.job, Class: allowlist.ClassUser, Mode: allowlist.ModeEnforce}}
	}
	return out, nil
}

// ResourceNames is what the client subscribes to (nil: wildcard).
func (c *Client) ResourceNames() []string { return append([]string(nil), c.names...) }

// NodeID is the node ID the client presents: its SPIFFE ID.
func (c *Client) NodeID() string { return c.nodeID }

// String describes the subscription for logs.
func (c *Client) String() string {
	if c.cfg.Gateway {
		return "gateway " + c.nodeID + " (all jobs)"
	}
	return c.nodeID + " (" + strings.Join(c.names, ",") + ")"
}
