package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/xds/reload"
	"github.com/cordon-dev/cordon/xds/server"
)

// ServeConfig is the configuration of `cordon-xds serve`.
type ServeConfig struct {
	// Allowlists is the allowlist directory. Required.
	Allowlists string
	// Listen is the ADS address (host:port). Required.
	Listen string
	// StateDir persists the snapshot version. If empty, versions follow the
	// wall clock (see reload.Config).
	StateDir string
	// MetricsAddr serves /metrics over plain HTTP. If empty, no metrics
	// endpoint.
	MetricsAddr string
	// TrustDomain is served. If empty, the trust domain of our own SVID.
	TrustDomain string
	// WorkloadAPI is the Workload API address (unix:///path). If empty,
	// SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPI string
	// Logger, if nil, writes text to stderr.
	Logger *slog.Logger
	// OnListening, if set, is called with the ADS address once it listens.
	OnListening func(addr net.Addr)
}

func serve(ctx context.Context, args []string, stderr io.Writer) (int, error) {
	fs := newFlags("serve")
	cfg := ServeConfig{}
	fs.StringVar(&cfg.Allowlists, "allowlists", "", "allowlist directory")
	fs.StringVar(&cfg.Listen, "listen", "", "ADS listen address")
	fs.StringVar(&cfg.StateDir, "state-dir", "", "directory persisting the snapshot version")
	fs.StringVar(&cfg.MetricsAddr, "metrics", "", "Prometheus /metrics listen address")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "", "trust domain served (default: our SVID's)")
	fs.StringVar(&cfg.WorkloadAPI, "workload-api", "", "SPIFFE Workload API address (default: $SPIFFE_ENDPOINT_SOCKET)")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return ExitUsage, err
	}
	if len(rest) > 0 || cfg.Allowlists == "" || cfg.Listen == "" {
		return ExitUsage, usagef("serve takes --allowlists DIR and --listen ADDR")
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	if err := Serve(ctx, cfg); err != nil {
		return ExitFail, err
	}
	return ExitOK, nil
}

// Serve runs the control plane until ctx is done: it gets its SVID from the
// Workload API, loads the allowlists (refusing to start on errors: there is
// no last good snapshot to keep), serves ADS, watches the directory, and
// serves metrics.
func Serve(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	addr := cfg.WorkloadAPI
	if addr == "" {
		addr = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	if addr == "" {
		return errors.New("no Workload API: set --workload-api or SPIFFE_ENDPOINT_SOCKET")
	}
	fetchCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	source, err := workloadapi.NewX509Source(fetchCtx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return fmt.Errorf("get SVID from the Workload API at %s: %w", addr, err)
	}
	defer source.Close()
	own, err := source.GetX509SVID()
	if err != nil {
		return fmt.Errorf("get SVID: %w", err)
	}
	td := own.ID.TrustDomain()
	if cfg.TrustDomain != "" {
		if td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
			return fmt.Errorf("--trust-domain: %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := server.NewMetrics(reg)
	srv, err := server.New(server.Config{TrustDomain: td, SVID: source, Bundles: source, Logger: log, Metrics: metrics})
	if err != nil {
		return err
	}
	rl, err := reload.New(reload.Config{
		Dir: cfg.Allowlists, StateDir: cfg.StateDir, Logger: log, Metrics: metrics, Audit: logEmitter{log},
	}, srv)
	if err != nil {
		return err
	}
	if err := rl.Reload(ctx); err != nil {
		return fmt.Errorf("initial load of %s (run cordon-xds lint): %w", cfg.Allowlists, err)
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	log.Info("cordon-xds serving", "addr", lis.Addr().String(), "id", own.ID.String(),
		"trust_domain", td.String(), "version", rl.Version())
	if cfg.OnListening != nil {
		cfg.OnListening(lis.Addr())
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(ctx, lis) })
	g.Go(func() error { return rl.Watch(ctx) })
	if cfg.MetricsAddr != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve metrics: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
	}
	return g.Wait()
}

// logEmitter writes audit events as log lines until the dispatcher client
// is wired in (sidecar/ owns spooled delivery).
type logEmitter struct{ log *slog.Logger }

func (e logEmitter) Emit(ev audit.Event) {
	e.log.Info("audit", "event_type", ev.EventType, "event_id", ev.EventID, "result", ev.Result,
		"resource", ev.Resource.ID, "metadata", ev.Metadata)
}

var _ audit.Emitter = logEmitter{}
