// Package serve runs cordon-egress: it fills a policy store either from an
// allowlist directory (--allowlists) or from the control plane over xDS
// (--xds, with the SVID from the Workload API), starts the proxy on a plain
// listener (static mode: one job, the sidecar's and the acceptance test's
// setup) and/or an mTLS listener (gateway mode: the job comes from each
// peer's SVID), optionally sends allowed traffic on through the
// cordon-egress gateway (--gateway), serves metrics, and drains on
// cancellation. cmd/cordon-egress only parses flags into a Config.
//
// It is not the proxy itself (egress-proxy/proxy) nor the xDS protocol
// (egress-proxy/xdsclient).
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
	"strconv"
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
	"github.com/cordon-dev/cordon/egress-proxy/xdsclient"
	"github.com/cordon-dev/cordon/internal/allowlist"
)

// Config is cordon-egress serve's configuration.
type Config struct {
	// Listen is the plain proxy address (static mode). Empty: none.
	Listen string
	// TLSListen is the mTLS gateway address. Empty: none.
	TLSListen string
	// Allowlists is the allowlist directory. Exactly one of Allowlists
	// and XDS is required.
	Allowlists string
	// XDS is the control plane's HOST:PORT: policies arrive over ADS,
	// every request is denied (no_policy) until the first one, and the
	// last applied policy stays in force while the control plane is
	// unreachable. Needs an SVID from the Workload API. Empty: none.
	XDS string
	// XDSServerID is the SPIFFE ID the control plane must present. Empty:
	// spiffe://<our trust domain>/cordon/xds.
	XDSServerID string
	// XDSMaxBackoff bounds the reconnect delay to the control plane. If
	// zero, 15s.
	XDSMaxBackoff time.Duration
	// WorkloadAPIAddr is the SPIFFE Workload API address
	// ("unix:///path"). Empty: the SPIFFE_ENDPOINT_SOCKET environment
	// variable.
	WorkloadAPIAddr string
	// Gateway is the cordon-egress gateway's HOST:PORT: traffic Listen
	// allows is sent on through it over mTLS with our SVID (two hops, both
	// check; proxy.GatewayUpstream), and this proxy never resolves or
	// dials a destination. Only with Listen, not with TLSListen. Empty:
	// dial destinations directly.
	Gateway string
	// GatewayID is the SPIFFE ID the gateway must present. Empty:
	// spiffe://<our trust domain>/cordon/egress-gateway.
	GatewayID string
	// Job is "ORG/JOB", the job whose policy Listen enforces. Required
	// with Listen and Allowlists; with XDS it defaults to the job of our
	// SVID (spiffe://TD/org/ORG/job/JOB), and must agree with it.
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
	switch {
	case c.Allowlists == "" && c.XDS == "":
		return errors.New("need --allowlists DIR (policies from files) or --xds HOST:PORT (policies from the control plane)")
	case c.Allowlists != "" && c.XDS != "":
		return errors.New("--allowlists and --xds are mutually exclusive: pick one source of policy")
	}
	if c.Listen == "" && c.TLSListen == "" {
		return errors.New("need --listen ADDR (static mode) or --tls-listen ADDR (gateway mode)")
	}
	// With --xds a sidecar learns its job from its SVID; a process that
	// also runs a gateway listener has the gateway's SVID and needs --job.
	if c.Listen != "" && (c.Job != "" || c.XDS == "" || c.TLSListen != "") {
		if _, _, err := parseJob(c.Job); err != nil {
			return err
		}
	}
	if c.XDS != "" {
		if _, _, err := net.SplitHostPort(c.XDS); err != nil {
			return fmt.Errorf("--xds %q: want HOST:PORT", c.XDS)
		}
	}
	if c.Gateway != "" {
		if c.Listen == "" || c.TLSListen != "" {
			return errors.New("--gateway is for sidecars: use it with --listen and without --tls-listen")
		}
		if _, _, err := net.SplitHostPort(c.Gateway); err != nil {
			return fmt.Errorf("--gateway %q: want HOST:PORT", c.Gateway)
		}
	}
	if c.GatewayID != "" {
		if _, err := spiffeid.FromString(c.GatewayID); err != nil {
			return fmt.Errorf("--gateway-id %q: %w", c.GatewayID, err)
		}
	}
	if c.XDSServerID != "" {
		if _, err := spiffeid.FromString(c.XDSServerID); err != nil {
			return fmt.Errorf("--xds-server-id %q: %w", c.XDSServerID, err)
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
	// The store denies every job (no_policy) until the first Apply.
	store := policy.NewStore()
	var set *allowlist.Set
	if cfg.Allowlists != "" {
		var err error
		if set, err = allowlist.LoadDir(cfg.Allowlists); err != nil {
			return fmt.Errorf("load allowlists: %w", err)
		}
		if err := store.Apply(set.Policies()); err != nil {
			return fmt.Errorf("load allowlists: %w", err)
		}
	}
	pcfg := proxy.Config{
		Store:            store,
		Logger:           log,
		UnsafeAllowCIDRs: cfg.UnsafeAllowCIDRs,
		Limits:           cfg.Limits,
	}
	reg := prometheus.NewRegistry()
	pcfg.Registerer = reg

	// The SVID: the gateway listener presents it, the xDS client and the
	// gateway upstream authenticate with it.
	var source *workloadapi.X509Source
	var self spiffeid.ID
	if cfg.XDS != "" || cfg.TLSListen != "" || cfg.Gateway != "" {
		var err error
		if source, err = openSource(ctx, cfg.WorkloadAPIAddr); err != nil {
			return err
		}
		defer source.Close()
		svid, err := source.GetX509SVID()
		if err != nil {
			return fmt.Errorf("read our SVID from the Workload API: %w", err)
		}
		self = svid.ID
	}

	if cfg.Listen != "" {
		job, err := listenJob(cfg, self)
		if err != nil {
			return err
		}
		if set != nil {
			if _, err := set.Policy(job.Org, job.Job); err != nil {
				return fmt.Errorf("--job %s: %w", job, err)
			}
		}
		pcfg.Job = job
	}
	if cfg.DNSServer != "" {
		r, err := resolve.NewDNS(cfg.DNSServer, resolve.DNSOptions{CacheMaxTTL: cfg.DNSCacheMaxTTL})
		if err != nil {
			return err
		}
		pcfg.Resolver = r
	}

	if cfg.Gateway != "" {
		gwID, err := spiffeid.FromPath(self.TrustDomain(), "/cordon/egress-gateway")
		if err != nil {
			return fmt.Errorf("--gateway: %w", err)
		}
		if cfg.GatewayID != "" {
			gwID = spiffeid.RequireFromString(cfg.GatewayID) // Validate parsed it
		}
		pcfg.Gateway = &proxy.GatewayUpstream{Addr: cfg.Gateway, TLS: proxy.GatewayClientTLSConfig(source, source, gwID)}
	}

	var tlsLn net.Listener
	if cfg.TLSListen != "" {
		td := self.TrustDomain()
		if cfg.TrustDomain != "" {
			var err error
			if td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
				return fmt.Errorf("--trust-domain: %w", err)
			}
		}
		pcfg.TrustDomain = td
	}

	var xc *xdsclient.Client
	if cfg.XDS != "" {
		xcfg := xdsclient.Config{
			Addr: cfg.XDS, SVID: source, Bundles: source,
			// A gateway enforces every job; a sidecar subscribes to its own.
			Gateway:    cfg.TLSListen != "",
			Logger:     log,
			MaxBackoff: cfg.XDSMaxBackoff,
		}
		if cfg.XDSMaxBackoff > 0 {
			xcfg.MinBackoff = min(200*time.Millisecond, cfg.XDSMaxBackoff)
		}
		if cfg.XDSServerID != "" {
			xcfg.ServerID = spiffeid.RequireFromString(cfg.XDSServerID) // Validate parsed it
		}
		var err error
		if xc, err = xdsclient.New(xcfg, store); err != nil {
			return fmt.Errorf("--xds: %w", err)
		}
		if err := registerPolicyMetrics(reg, xc, store); err != nil {
			return err
		}
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
	log.Info("cordon-egress serving", "listen", cfg.Listen, "tls_listen", cfg.TLSListen, "metrics", cfg.Metrics,
		"xds", cfg.XDS, "gateway", cfg.Gateway, "job", pcfg.Job.String(), "jobs", store.Len())

	g, gctx := errgroup.WithContext(ctx)
	if xc != nil {
		g.Go(func() error { return xc.Run(gctx) })
	}
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

// openSource connects to the Workload API at addr (empty: the
// SPIFFE_ENDPOINT_SOCKET variable) and waits for the first SVID.
func openSource(ctx context.Context, addr string) (*workloadapi.X509Source, error) {
	var opts []workloadapi.X509SourceOption
	if addr != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	} else if os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
		return nil, errors.New("--xds, --tls-listen and --gateway need an SVID: set SPIFFE_ENDPOINT_SOCKET to the Workload API socket")
	}
	// NewX509Source waits for the first SVID; do not wait forever for an
	// agent that is not there.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(sctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("fetch our SVID from the Workload API: %w", err)
	}
	return src, nil
}

// listenJob is the job the plain listener enforces: --job, or with --xds
// the job our SVID names; both given must agree (a sidecar must never
// enforce another job's policy than the one its identity gets).
func listenJob(cfg Config, self spiffeid.ID) (proxy.JobRef, error) {
	var flagJob proxy.JobRef
	if cfg.Job != "" {
		org, job, err := parseJob(cfg.Job)
		if err != nil {
			return proxy.JobRef{}, err
		}
		flagJob = proxy.JobRef{Org: org, Job: job}
	}
	if cfg.XDS == "" || cfg.TLSListen != "" {
		return flagJob, nil
	}
	svidJob, ok := jobOf(self)
	if !ok {
		return proxy.JobRef{}, fmt.Errorf("--xds with --listen: our SVID %s is not a job identity (spiffe://TD/org/ORG/job/JOB)", self)
	}
	if cfg.Job != "" && flagJob != svidJob {
		return proxy.JobRef{}, fmt.Errorf("--job %s disagrees with our SVID %s (job %s): drop --job or fix the identity", cfg.Job, self, svidJob)
	}
	return svidJob, nil
}

// jobOf maps spiffe://TD/org/ORG/job/JOB to its job.
func jobOf(id spiffeid.ID) (proxy.JobRef, bool) {
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "org" || seg[2] != "job" || seg[1] == "" || seg[3] == "" {
		return proxy.JobRef{}, false
	}
	return proxy.JobRef{Org: seg[1], Job: seg[3]}, true
}

// registerPolicyMetrics exports what the xDS client applied.
func registerPolicyMetrics(reg prometheus.Registerer, xc *xdsclient.Client, store *policy.Store) error {
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cordon_egress_policy_version",
			Help: "Version of the policy applied from the control plane (cordon-xds's \"v<N>\" as N; 0 before the first).",
		}, func() float64 {
			v, err := strconv.ParseUint(strings.TrimPrefix(xc.Version(), "v"), 10, 64)
			if err != nil {
				return 0
			}
			return float64(v)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cordon_egress_policy_rejected",
			Help: "1 when the latest policy from the control plane was rejected (NACKed) and the previous one is still in force.",
		}, func() float64 {
			if xc.LastNACK() != "" {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "cordon_egress_policy_nacks_total",
			Help: "Policies from the control plane this proxy rejected (NACKed); the previous policy stayed in force each time.",
		}, func() float64 { return float64(xc.NACKs()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cordon_egress_policy_jobs",
			Help: "Jobs with a policy in force.",
		}, func() float64 { return float64(store.Len()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register policy metrics: %w", err)
		}
	}
	return nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, proxy.ErrServerClosed) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
