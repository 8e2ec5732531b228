// Package egress builds the egress proxy the agent embeds (DESIGN.md "How a
// task runs", step 3): egress-proxy/proxy serving the task's one job, with
// its policy from a static allowlist directory or from the xDS control
// plane, optionally forwarding allowed traffic through the cordon-egress
// gateway over mTLS, and a Counter that turns the proxy's observations into
// the usage report's per-destination egress and denials.
//
// It is not the proxy (egress-proxy/proxy) nor the policy engine; it only
// chooses and wires them for the sidecar.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/egress-proxy/proxy"
	"github.com/cordon-dev/cordon/egress-proxy/resolve"
	"github.com/cordon-dev/cordon/egress-proxy/xdsclient"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/agent"
)

// Config chooses where the proxy's policy comes from and where allowed
// traffic goes. Exactly one of Allowlists and XDS must be set.
type Config struct {
	// Allowlists is a directory of allowlist files (static policy; the
	// job is the one the SVID names). If empty, XDS must be set.
	Allowlists string
	// XDS is the control plane's host:port; the proxy subscribes to its
	// job's policy with the agent's SVID, denies everything until the
	// first policy arrives and keeps the last good one when the control
	// plane is gone. If empty, Allowlists must be set.
	XDS string
	// XDSServerID is the SPIFFE ID the control plane must present. If
	// zero, spiffe://TD/cordon/xds.
	XDSServerID spiffeid.ID
	// Gateway is the cordon-egress gateway's host:port: allowed traffic
	// goes on through it over mTLS so both hops check. If empty, the proxy
	// dials destinations itself.
	Gateway string
	// GatewayID is the SPIFFE ID the gateway must present. If zero,
	// spiffe://TD/cordon/egress-gateway.
	GatewayID spiffeid.ID
	// DNS is the resolver (host:port) the proxy asks. If empty, the
	// system resolver.
	DNS string
	// UnsafeAllowCIDRs are treated as public destinations (tests and local
	// runs against loopback upstreams only; never in production). If nil,
	// none.
	UnsafeAllowCIDRs []netip.Prefix
	// Audit receives the proxy's egress decisions. If nil, audit.Discard.
	Audit audit.Emitter
	// Counter receives the proxy's observations. If nil, none are kept.
	Counter *Counter
	// Logger receives the proxy's decision lines. If nil, discarded.
	Logger *slog.Logger
}

// Validate checks that exactly one policy source is set.
func (c *Config) Validate() error {
	switch {
	case c.Allowlists == "" && c.XDS == "":
		return errors.New("egress proxy: no policy source: pass --xds HOST:PORT (the control plane) or --allowlists DIR (static files, local runs)")
	case c.Allowlists != "" && c.XDS != "":
		return errors.New("egress proxy: --allowlists and --xds are mutually exclusive: pass one")
	}
	if c.Gateway != "" {
		if _, _, err := net.SplitHostPort(c.Gateway); err != nil {
			return fmt.Errorf("egress proxy: --gateway %q: want HOST:PORT", c.Gateway)
		}
	}
	return nil
}

// NewProxy returns agent.Config.NewProxy for c. The static policy is
// loaded, and the job checked to have one, when the identity is known.
func NewProxy(c Config) (func(ctx context.Context, id agent.Identity) (agent.EgressProxy, error), error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return func(ctx context.Context, id agent.Identity) (agent.EgressProxy, error) {
		return build(c, id)
	}, nil
}

func build(c Config, id agent.Identity) (*Proxy, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The store denies every job (no_policy) until the first Apply.
	store := policy.NewStore()
	p := &Proxy{log: log}
	td := id.ID.TrustDomain()
	if c.Allowlists != "" {
		set, err := allowlist.LoadDir(c.Allowlists)
		if err != nil {
			return nil, fmt.Errorf("load allowlists: %w", err)
		}
		if _, err := set.Policy(id.Org, id.Job); err != nil {
			return nil, fmt.Errorf("allowlists %s: job %s/%s: %w", c.Allowlists, id.Org, id.Job, err)
		}
		if err := store.Apply(set.Policies()); err != nil {
			return nil, fmt.Errorf("load allowlists: %w", err)
		}
	} else {
		xc, err := xdsclient.New(xdsclient.Config{
			Addr: c.XDS, SVID: id.Source, Bundles: id.Source, ServerID: c.XDSServerID, Logger: log,
		}, store)
		if err != nil {
			return nil, fmt.Errorf("--xds: %w", err)
		}
		p.xds = xc
	}
	pc := proxy.Config{
		Store: store,
		Job:   proxy.JobRef{Org: id.Org, Job: id.Job},
		// The dispatcher accepts from this sidecar only events whose actor
		// is its own SVID.
		JobActor:         id.ID.String(),
		Logger:           log,
		Audit:            c.Audit,
		UnsafeAllowCIDRs: c.UnsafeAllowCIDRs,
	}
	if c.Counter != nil {
		pc.Observer = c.Counter
	}
	if c.DNS != "" {
		r, err := resolve.NewDNS(c.DNS, resolve.DNSOptions{})
		if err != nil {
			return nil, fmt.Errorf("--dns: %w", err)
		}
		pc.Resolver = r
	}
	if c.Gateway != "" {
		gw := c.GatewayID
		if gw.IsZero() {
			var err error
			if gw, err = spiffeid.FromPath(td, "/cordon/egress-gateway"); err != nil {
				return nil, fmt.Errorf("--gateway: %w", err)
			}
		}
		pc.Gateway = &proxy.GatewayUpstream{Addr: c.Gateway, TLS: proxy.GatewayClientTLSConfig(id.Source, id.Source, gw)}
	}
	srv, err := proxy.New(pc)
	if err != nil {
		return nil, err
	}
	p.srv = srv
	return p, nil
}

// Proxy is the embedded proxy with its xDS subscription, if any.
type Proxy struct {
	srv *proxy.Server
	xds *xdsclient.Client // nil: static policy
	log *slog.Logger
}

var _ agent.EgressProxy = (*Proxy)(nil)

// Serve serves ln (and runs the xDS subscription) until Shutdown or ctx
// ends.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	if p.xds != nil {
		g.Go(func() error {
			if err := p.xds.Run(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("xds subscription: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		// The subscription ends with the listener.
		defer cancel()
		err := p.srv.Serve(gctx, ln)
		if errors.Is(err, proxy.ErrServerClosed) || gctx.Err() != nil {
			return nil
		}
		return err
	})
	return g.Wait()
}

// Shutdown stops accepting and waits for requests in progress, up to ctx.
func (p *Proxy) Shutdown(ctx context.Context) error { return p.srv.Shutdown(ctx) }

// PolicyReady is closed once the proxy enforces its job's policy: a static
// one is loaded before the proxy is built; an xDS one when the first
// policy from the control plane is applied.
func (p *Proxy) PolicyReady() <-chan struct{} {
	if p.xds != nil {
		return p.xds.Ready()
	}
	return loaded
}

// loaded is PolicyReady of a static policy: always closed.
var loaded = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// MaxKeys bounds a Counter's destinations. The proxy's keys are already
// bounded by the job's allowlist; this is the backstop should a policy be
// huge: further destinations are summed under OverflowKey.
const MaxKeys = 512

// Keys the Counter uses besides allowlist rules.
const (
	DeniedKey   = "denied"
	OverflowKey = "other"
)

// Counter counts egress per destination (the allowlist rule that allowed
// it) and denials, for the usage report. It implements proxy.Observer.
// The zero value is ready to use.
type Counter struct {
	mu      sync.Mutex // guards the following
	byKey   map[string]*usage.Egress
	denials int64
}

var _ proxy.Observer = (*Counter)(nil)

// Observe implements proxy.Observer: bytes the job sent through its
// egress count as BytesOut, bytes it received as BytesIn.
func (c *Counter) Observe(o proxy.Observation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[string]*usage.Egress{}
	}
	key := o.Key
	e, ok := c.byKey[key]
	if !ok {
		if len(c.byKey) >= MaxKeys {
			key = OverflowKey
			e = c.byKey[key]
		}
		if e == nil {
			e = &usage.Egress{}
			c.byKey[key] = e
		}
	}
	e.Requests++
	e.BytesOut += o.BytesOut
	e.BytesIn += o.BytesIn
	if o.Key == DeniedKey {
		e.Denials++
		c.denials++
	}
}

// Snapshot returns the cumulative counters.
func (c *Counter) Snapshot() (map[string]usage.Egress, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]usage.Egress, len(c.byKey))
	for k, e := range c.byKey {
		out[k] = *e
	}
	return out, c.denials
}
