// Package serve runs cordon-egress: it loads the allowlist directory into a
// policy store, starts the proxy on a plain listener (static mode: one job,
// the sidecar's and the acceptance test's setup) and/or an mTLS listener
// (gateway mode: the job comes from each peer's SVID), serves metrics, and
// drains on cancellation. cmd/cordon-egress only parses flags into a Config.
//
// It is not the proxy itself (egress-proxy/proxy) and it does not receive
// policies over xDS (egress-proxy/xdsclient; the binary loads files).
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/egress-proxy/proxy"
	"github.com/cordon-dev/cordon/egress-proxy/resolve"
	"github.com/cordon-dev/cordon/internal/allowlist"
)

// Config is cordon-egress serve's configuration.
type Config struct {
	// Listen is the plain proxy address (static mode). Empty: none.
	Listen string
	// TLSListen is the mTLS gateway address. Empty: none.
	TLSListen string
	// Allowlists is the allowlist directory. Required.
	Allowlists string
	// Job is "ORG/JOB", the job whose policy Listen enforces. Required
	// with Listen.
	Job string
	// DNSServer is "HOST:PORT" to resolve through. Empty: the system
	// resolver.
	DNSServer string
	// DNSCacheMaxTTL keeps --dns-server answers for their TTL, at most
	// this long. If zero, nothing is cached.
	DNSCacheMaxTTL time.Duration
	// UnsafeAllowCIDRs are treated as public when a name resolves into
	// them (tests on loopback). Never metadata, never IP literals.
	UnsafeAllowCIDRs []netip.Prefix
	// Metrics is the Prometheus /metrics address. Empty: none.
	Metrics string
	// TrustDomain is the SPIFFE trust domain gateway peers must belong
	// to. Empty: the gateway's own SVID's trust domain.
	TrustDomain string
	// DrainTimeout bounds graceful shutdown. If zero, 10s.
	DrainTimeout time.Duration
	// Limits are the per-job limits (zero values documented there).
	Limits proxy.Limits
	// Logger receives the server's logs. If nil, discard.
	Logger *slog.Logger
	// Ready, if set, is called with the bound addresses once every
	// listener is up (tests use it with ":0" addresses).
	Ready func(listen, tlsListen, metrics net.Addr)
}

// Validate checks the configuration without touching the network.
func (c *Config) Validate() error {
	if c.Allowlists == "" {
		return errors.New("--allowlists DIR is required")
	}
	if c.Listen == "" && c.TLSListen == "" {
		return errors.New("need --listen ADDR (static mode) or --tls-listen ADDR (gateway mode)")
	}
	if c.Listen != "" {
		if _, _, err := parseJob(c.Job); err != nil {
			return err
		}
	}
	if c.DNSServer != "" {
		if _, _, err := net.SplitHostPort(c.DNSServer); err != nil {
			return fmt.Errorf("--dns-server %q: want HOST:PORT", c.DNSServer)
		}
	}
	return nil
}

func parseJob(s string) (string, string, error) {
	org, job, ok := strings.Cut(s, "/")
	if !ok || org == "" || job == "" || strings.Contains(job, "/") {
		return "", "", fmt.Errorf("--job %q: want ORG/JOB", s)
	}
	return org, job, nil
}

// ParseCIDR parses one --unsafe-allow-cidr value; host bits must be zero.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--unsafe-allow-cidr %q: %w", s, err)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("--unsafe-allow-cidr %q: host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// Check loads and validates the allowlist directory and compiles every
// job's policy, without serving.
func Check(dir string) (int, error) {
	set, err := allowlist.LoadDir(dir)
	if err != nil {
		return 0, err
	}
	ps := set.Policies()
	if err := policy.NewStore().Apply(ps); err != nil {
		return 0, err
	}
	return len(ps), nil
}

// Run serves until ctx is done, then drains within DrainTimeout.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	set, err := allowlist.LoadDir(cfg.Allowlists)
	if err != nil {
		return fmt.Errorf("load allowlists: %w", err)
	}
	store := policy.NewStore()
	if err := store.Apply(set.Policies()); err != nil {
		return fmt.Errorf("load allowlists: %w", err)
	}
	pcfg := proxy.Config{
		Store:            store,
		Logger:           log,
		UnsafeAllowCIDRs: cfg.UnsafeAllowCIDRs,
		Limits:           cfg.Limits,
	}
	if cfg.Listen != "" {
		org, job, _ := parseJob(cfg.Job)
		if _, err := set.Policy(org, job); err != nil {
			return fmt.Errorf("--job %s: %w", cfg.Job, err)
		}
		pcfg.Job = proxy.JobRef{Org: org, Job: job}
	}
	if cfg.DNSServer != "" {
		r, err := resolve.NewDNS(cfg.DNSServer, resolve.DNSOptions{CacheMaxTTL: cfg.DNSCacheMaxTTL})
		if err != nil {
			return err
		}
		pcfg.Resolver = r
	}
	reg := prometheus.NewRegistry()
	pcfg.Registerer = reg

	var tlsLn net.Listener
	var source *workloadapi.X509Source
	if cfg.TLSListen != "" {
		if os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
			return errors.New("--tls-listen needs an SVID: set SPIFFE_ENDPOINT_SOCKET to the Workload API socket")
		}
		source, err = workloadapi.NewX509Source(ctx)
		if err != nil {
			return fmt.Errorf("fetch gateway SVID from the Workload API: %w", err)
		}
		defer source.Close()
		svid, err := source.GetX509SVID()
		if err != nil {
			return fmt.Errorf("gateway SVID: %w", err)
		}
		td := svid.ID.TrustDomain()
		if cfg.TrustDomain != "" {
			if td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
				return fmt.Errorf("--trust-domain: %w", err)
			}
		}
		pcfg.TrustDomain = td
	}

	srv, err := proxy.New(pcfg)
	if err != nil {
		return err
	}
	var ln, metricsLn net.Listener
	if cfg.Listen != "" {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	if cfg.TLSListen != "" {
		if tlsLn, err = net.Listen("tcp", cfg.TLSListen); err != nil {
			return fmt.Errorf("--tls-listen: %w", err)
		}
	}
	if cfg.Metrics != "" {
		if metricsLn, err = net.Listen("tcp", cfg.Metrics); err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
	}
	addr := func(l net.Listener) net.Addr {
		if l == nil {
			return nil
		}
		return l.Addr()
	}
	log.Info("cordon-egress serving", "listen", cfg.Listen, "tls_listen", cfg.TLSListen, "metrics", cfg.Metrics, "jobs", store.Len())

	g, gctx := errgroup.WithContext(ctx)
	if ln != nil {
		g.Go(func() error { return ignoreClosed(srv.Serve(gctx, ln)) })
	}
	if tlsLn != nil {
		conf := proxy.GatewayTLSConfig(source, source, pcfg.TrustDomain)
		g.Go(func() error { return ignoreClosed(srv.ServeTLS(gctx, tlsLn, conf)) })
	}
	var msrv *http.Server
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := msrv.Serve(metricsLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		drain := cfg.DrainTimeout
		if drain == 0 {
			drain = 10 * time.Second
		}
		sctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		err := srv.Shutdown(sctx)
		if msrv != nil {
			msrv.Shutdown(sctx)
		}
		if err != nil {
			log.Warn("cordon-egress drain incomplete", "err", err)
		}
		return nil
	})
	if cfg.Ready != nil {
		cfg.Ready(addr(ln), addr(tlsLn), addr(metricsLn))
	}
	return g.Wait()
}

func ignoreClosed(err error) error {
	if errors.Is(err, proxy.ErrServerClosed) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
