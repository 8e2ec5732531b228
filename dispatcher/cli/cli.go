// Package cli is the cordon-dispatcher command line: migrate, serve, verify
// and retention. main only hands it the arguments; everything here is
// importable and tested.
//
// It is not where the logic lives: the store is dispatcher/auditstore and
// the API dispatcher/ingest.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/ingest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitProblems = 1 // verify found a broken chain
	ExitError    = 2 // bad usage or an operational error
)

// DatabaseEnv is read when --db is not given, so the URL (and its password)
// need not appear in the process list.
const DatabaseEnv = "CORDON_DATABASE_URL"

const usage = `usage: cordon-dispatcher COMMAND [flags]

commands:
  migrate    --db URL                          apply schema migrations (as a superuser)
  serve      --db URL --listen ADDR [--metrics ADDR] [--trust-domain TD] [--workload-api ADDR]
                                               serve the ingest API over mTLS
  verify     --db URL [--org ORG]              check the audit hash chains (exit 1 if broken)
  retention  --db URL [--now RFC3339] [--dry-run]
                                               drop audit partitions past retention

--db defaults to $` + DatabaseEnv + `.
`

// Run runs the command in args (without the program name) and returns the
// exit code. Logs go to stderr as JSON; results to stdout.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitError
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("cordon-dispatcher "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", os.Getenv(DatabaseEnv), "Postgres URL (default $"+DatabaseEnv+")")
	var err error
	code := ExitOK
	switch cmd {
	case "migrate":
		if err = parse(fs, args, db); err == nil {
			var applied []string
			applied, err = auditstore.Migrate(ctx, *db, log)
			if err == nil {
				fmt.Fprintf(stdout, "migrations applied: %d\n", len(applied))
			}
		}
	case "verify":
		org := fs.String("org", "", "verify only this org's chains")
		if err = parse(fs, args, db); err == nil {
			code, err = runVerify(ctx, *db, *org, stdout)
		}
	case "retention":
		nowFlag := fs.String("now", "", "compute retention as of this time (RFC 3339; default now)")
		dry := fs.Bool("dry-run", false, "list what would be dropped, drop nothing")
		if err = parse(fs, args, db); err == nil {
			code, err = runRetention(ctx, *db, *nowFlag, *dry, stdout)
		}
	case "serve":
		var cfg ServeConfig
		fs.StringVar(&cfg.Listen, "listen", ":8443", "address of the mTLS ingest API")
		fs.StringVar(&cfg.Metrics, "metrics", "", "address of the plain-HTTP /metrics endpoint (off if empty)")
		fs.StringVar(&cfg.TrustDomain, "trust-domain", "cordon.internal", "trust domain whose jobs may write")
		fs.StringVar(&cfg.WorkloadAPI, "workload-api", "", "SPIFFE Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
		fs.IntVar(&cfg.Writers, "writers", 0, "writer goroutines (default 4)")
		if err = parse(fs, args, db); err == nil {
			cfg.Database = *db
			cfg.Log = log
			err = Serve(ctx, cfg)
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	default:
		fmt.Fprintf(stderr, "cordon-dispatcher: unknown command %q\n\n%s", cmd, usage)
		return ExitError
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "cordon-dispatcher %s: %v\n", cmd, err)
		return ExitError
	}
	return code
}

func parse(fs *flag.FlagSet, args []string, db *string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *db == "" {
		return fmt.Errorf("no database: pass --db URL or set $%s", DatabaseEnv)
	}
	return nil
}

func runVerify(ctx context.Context, db, org string, out io.Writer) (int, error) {
	rep, err := auditstore.Verify(ctx, db, org)
	if err != nil {
		return ExitError, err
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(out, "BROKEN %s\n", p)
	}
	fmt.Fprintf(out, "verified %d rows in %d chains (%d expired by retention): %d broken\n", rep.Rows, rep.Chains, rep.Expired, len(rep.Problems))
	if len(rep.Problems) > 0 {
		return ExitProblems, nil
	}
	return ExitOK, nil
}

func runRetention(ctx context.Context, db, nowFlag string, dry bool, out io.Writer) (int, error) {
	opts := auditstore.RetentionOptions{DryRun: dry}
	if nowFlag != "" {
		t, err := time.Parse(time.RFC3339, nowFlag)
		if err != nil {
			return ExitError, fmt.Errorf("--now %q: want RFC 3339 like 2026-11-23T00:00:00Z", nowFlag)
		}
		opts.Now = t
	}
	dropped, err := auditstore.Retention(ctx, db, opts)
	verb := "dropped"
	if dry {
		verb = "would drop"
	}
	for _, p := range dropped {
		fmt.Fprintf(out, "%s %s (%s, %s)\n", verb, p.Name, p.Class, p.Month.Format("2006-01"))
	}
	if err != nil {
		return ExitError, err
	}
	fmt.Fprintf(out, "%s %d partitions\n", verb, len(dropped))
	return ExitOK, nil
}

// ServeConfig configures Serve.
type ServeConfig struct {
	// Database is the Postgres URL. Required; its login role must be able
	// to SET ROLE cordon_service.
	Database string
	// Listen is the ingest API's address. Required.
	Listen string
	// Metrics is the plain-HTTP /metrics address. If empty, not served.
	Metrics string
	// TrustDomain is the only trust domain whose jobs may write. Required.
	TrustDomain string
	// WorkloadAPI is the Workload API address (unix:///path). If empty,
	// $SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPI string
	// Writers is the number of writer goroutines. If zero, 4.
	Writers int
	// Log receives logs. If nil, discarded.
	Log *slog.Logger
	// Ready, if set, receives the ingest API's address once it listens.
	Ready func(addr string)
}

// Serve runs the ingest API until ctx is done, then drains in-flight
// requests (bounded to 30s) and returns.
func Serve(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", cfg.TrustDomain, err)
	}
	var srcOpts []workloadapi.X509SourceOption
	if cfg.WorkloadAPI != "" {
		srcOpts = append(srcOpts, workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.WorkloadAPI)))
	}
	srcCtx, cancelSrc := context.WithTimeout(ctx, 30*time.Second)
	source, err := workloadapi.NewX509Source(srcCtx, srcOpts...)
	cancelSrc()
	if err != nil {
		return fmt.Errorf("fetch the dispatcher's SVID from the Workload API: %w", err)
	}
	defer source.Close()

	store, err := auditstore.Open(ctx, cfg.Database, auditstore.Options{Log: log})
	if err != nil {
		return err
	}
	defer store.Close()
	if n, err := store.EnsurePartitions(ctx, time.Now()); err != nil {
		log.Warn("audit partitions not ensured", "error", err.Error())
	} else if n > 0 {
		log.Info("audit partitions created", "count", n)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := ingest.New(ingest.Config{Store: store, TrustDomain: td, Writers: cfg.Writers, Registry: reg, Log: log})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	var metricsSrv *http.Server
	if cfg.Metrics != "" {
		ml, err := net.Listen("tcp", cfg.Metrics)
		if err != nil {
			l.Close()
			srv.Close()
			return fmt.Errorf("listen %s: %w", cfg.Metrics, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := metricsSrv.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("metrics server: %w", err)
			}
		})
	}
	wg.Go(func() {
		if err := srv.Serve(l, ingest.ServerTLSConfig(source, source, td)); !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("ingest server: %w", err)
		}
	})
	// Keep partitions ahead for as long as we run.
	maintCtx, stopMaint := context.WithCancel(ctx)
	wg.Go(func() {
		t := time.NewTicker(12 * time.Hour)
		defer t.Stop()
		for {
			select {
			case <-maintCtx.Done():
				return
			case <-t.C:
				if _, err := store.EnsurePartitions(maintCtx, time.Now()); err != nil {
					log.Warn("audit partitions not ensured", "error", err.Error())
				}
			}
		}
	})
	log.Info("dispatcher serving", "listen", l.Addr().String(), "trust_domain", td.String())
	if cfg.Ready != nil {
		cfg.Ready(l.Addr().String())
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	log.Info("dispatcher shutting down")
	stopMaint()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Warn("ingest shutdown", "error", err.Error())
	}
	if metricsSrv != nil {
		metricsSrv.Shutdown(shutCtx)
	}
	wg.Wait()
	return runErr
}
