package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/cordon-dev/cordon/dispatcher/admission"
	"github.com/cordon-dev/cordon/dispatcher/alerts"
	"github.com/cordon-dev/cordon/dispatcher/anomaly"
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/dispatcher/authn"
	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/dispatcher/credentials"
	"github.com/cordon-dev/cordon/dispatcher/ingest"
	"github.com/cordon-dev/cordon/dispatcher/oidc"
	"github.com/cordon-dev/cordon/dispatcher/userapi"
	"github.com/cordon-dev/cordon/dispatcher/webui"
	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"
)

// ServeConfig configures Serve. Each field names the serve flag that sets
// it; Validate's errors name the flag to fix.
type ServeConfig struct {
	// Database is the Postgres URL (--db). Required; its login role must
	// be able to SET ROLE cordon_service.
	Database string
	// Listen is the sidecar API's mTLS address (--listen): ingest,
	// admission and credentials. Required.
	Listen string
	// Metrics is the plain-HTTP /metrics address (--metrics). If empty,
	// not served.
	Metrics string
	// TrustDomain is the only trust domain whose jobs may call
	// (--trust-domain). Required.
	TrustDomain string
	// WorkloadAPI is the Workload API address, unix:///path
	// (--workload-api). If empty, $SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPI string
	// Writers is the number of ingest writer goroutines (--writers). If
	// zero, 4.
	Writers int

	// DataRoleARNTemplate is the per-org data role with "{org}"
	// (--data-role-arn-template). If empty, POST /v1/credentials is not
	// mounted and runs get no data credentials.
	DataRoleARNTemplate string
	// DatasetsRoots are where each org's datasets may live, with "{org}"
	// (--datasets-root, repeatable). Required with DataRoleARNTemplate.
	DatasetsRoots []string
	// CredentialsDuration is the minted credentials' lifetime
	// (--credentials-duration). If zero, credentials.DefaultDuration.
	CredentialsDuration time.Duration
	// STSEndpoint overrides the STS endpoint (--sts-endpoint). If empty,
	// the SDK's regional endpoint.
	STSEndpoint string
	// STSRegion is the STS region (--sts-region). If empty, the SDK's
	// default chain.
	STSRegion string
	// STSCredentials are the dispatcher's own AWS credentials. If nil, the
	// SDK's default chain (no flag: on ECS, the task role).
	STSCredentials aws.CredentialsProvider

	// UserListen is the user API and web UI address (--user-listen). If
	// empty, the user side is off.
	UserListen string
	// OIDCIssuer is the exact token issuer (--oidc-issuer). Required with
	// UserListen.
	OIDCIssuer string
	// OIDCAudiences are the accepted app client IDs (--oidc-audience,
	// repeatable). Required with UserListen.
	OIDCAudiences []string
	// OIDCJWKSURL is where the issuer's keys are (--oidc-jwks-url). If
	// empty, discovered from OIDCIssuer.
	OIDCJWKSURL string
	// UserTLSCert and UserTLSKey are the user listener's PEM certificate
	// chain and key (--user-tls-cert, --user-tls-key). Required with
	// UserListen unless UserInsecureHTTP.
	UserTLSCert, UserTLSKey string
	// UserInsecureHTTP serves the user side over plain HTTP
	// (--user-insecure-http), only for running behind a TLS-terminating
	// load balancer: the UI's cookie is Secure. If false, TLS is required.
	UserInsecureHTTP bool
	// CursorKeyFile holds the pagination cursor HMAC key, at least 32
	// bytes (--cursor-key-file). If empty, a random key per process.
	CursorKeyFile string
	// Replicas is how many dispatchers serve users behind one load
	// balancer (--replicas). More than one requires CursorKeyFile. If
	// zero, 1.
	Replicas int

	// Allowlists is the allowlist directory (--allowlists). If empty, no
	// allowlists: the user API shows none and no alert webhook passes.
	Allowlists string
	// AllowlistsReload is how often Allowlists is re-read
	// (--allowlists-reload); SIGHUP re-reads it at once. If zero, 1m.
	AllowlistsReload time.Duration
	// AnomalyEvery is the anomaly sweep interval (--anomaly-every). If
	// zero, 5s.
	AnomalyEvery time.Duration
	// AlertsEvery is the cost alert interval (--alerts-every). If zero, 1m.
	AlertsEvery time.Duration
	// ShutdownTimeout bounds the graceful shutdown (--shutdown-timeout).
	// If zero, 30s.
	ShutdownTimeout time.Duration

	// Log receives logs. If nil, discarded.
	Log *slog.Logger
	// Ready, if set, is called once every listener listens.
	Ready func(Addrs)
}

// Addrs are the addresses Serve listens on; empty when off.
type Addrs struct {
	Sidecar, User, Metrics string
}

// stringList is a repeatable string flag.
type stringList struct{ p *[]string }

func (s stringList) String() string {
	if s.p == nil {
		return ""
	}
	return strings.Join(*s.p, ",")
}
func (s stringList) Set(v string) error { *s.p = append(*s.p, v); return nil }

// flags registers the serve flags on fs.
func (c *ServeConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", ":8443", "sidecar API address, mTLS with SPIFFE SVIDs: /v1/ingest/, /v1/runs/, /v1/credentials")
	fs.StringVar(&c.Metrics, "metrics", "", "plain-HTTP /metrics address (off if empty)")
	fs.StringVar(&c.TrustDomain, "trust-domain", "cordon.internal", "trust domain whose jobs may call (spiffe://TD/org/ORG/job/JOB)")
	fs.StringVar(&c.WorkloadAPI, "workload-api", "", "SPIFFE Workload API address for the dispatcher's SVID (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.IntVar(&c.Writers, "writers", 0, "ingest writer goroutines (default 4)")

	fs.StringVar(&c.DataRoleARNTemplate, "data-role-arn-template", "", "per-org data role, e.g. arn:aws:iam::123456789012:role/cordon-data-{org}; mounts POST /v1/credentials (off if empty)")
	fs.Var(stringList{&c.DatasetsRoots}, "datasets-root", "where an org's datasets may live, e.g. s3://trace-data/{org}/ (repeatable; required with --data-role-arn-template)")
	fs.DurationVar(&c.CredentialsDuration, "credentials-duration", 0, "lifetime of minted data credentials, 15m to 1h (default "+credentials.DefaultDuration.String()+")")
	fs.StringVar(&c.STSEndpoint, "sts-endpoint", "", "STS endpoint override, https (or http on loopback) (default the SDK's regional endpoint)")
	fs.StringVar(&c.STSRegion, "sts-region", "", "STS region (default the SDK's chain: $AWS_REGION, shared config)")

	fs.StringVar(&c.UserListen, "user-listen", "", "user API (/api/v1/) and web UI (/ui/) address (off if empty)")
	fs.StringVar(&c.OIDCIssuer, "oidc-issuer", "", "OIDC issuer of user tokens, e.g. https://cognito-idp.REGION.amazonaws.com/POOL_ID (required with --user-listen)")
	fs.Var(stringList{&c.OIDCAudiences}, "oidc-audience", "accepted app client ID (repeatable; required with --user-listen)")
	fs.StringVar(&c.OIDCJWKSURL, "oidc-jwks-url", "", "issuer's JWKS URL (default from OpenID discovery)")
	fs.StringVar(&c.UserTLSCert, "user-tls-cert", "", "PEM certificate chain of the user listener")
	fs.StringVar(&c.UserTLSKey, "user-tls-key", "", "PEM private key of the user listener")
	fs.BoolVar(&c.UserInsecureHTTP, "user-insecure-http", false, "serve the user side over plain HTTP, only behind a TLS-terminating load balancer (the UI cookie is Secure)")
	fs.StringVar(&c.CursorKeyFile, "cursor-key-file", "", "file with the pagination cursor key, >= 32 bytes (default a random key per process; required with --replicas > 1)")
	fs.IntVar(&c.Replicas, "replicas", 1, "dispatchers serving users behind one load balancer")

	fs.StringVar(&c.Allowlists, "allowlists", "", "allowlist directory, for the user API's allowlist view and alert webhook checks (re-read periodically and on SIGHUP)")
	fs.DurationVar(&c.AllowlistsReload, "allowlists-reload", time.Minute, "how often --allowlists is re-read")
	fs.DurationVar(&c.AnomalyEvery, "anomaly-every", 5*time.Second, "anomaly detection sweep interval")
	fs.DurationVar(&c.AlertsEvery, "alerts-every", time.Minute, "cost alert evaluation and delivery interval")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "bound on the graceful shutdown")
}

func (c *ServeConfig) defaults() {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.AllowlistsReload == 0 {
		c.AllowlistsReload = time.Minute
	}
	if c.AnomalyEvery == 0 {
		c.AnomalyEvery = 5 * time.Second
	}
	if c.AlertsEvery == 0 {
		c.AlertsEvery = time.Minute
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
}

// Validate checks the configuration after defaults; each error names the
// flag to fix.
func (c *ServeConfig) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Database == "" {
		bad("--db: no database; pass --db URL or set $%s", DatabaseEnv)
	}
	if c.Listen == "" {
		bad("--listen: the sidecar API needs an address, e.g. :8443")
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		bad("--trust-domain %q: %v", c.TrustDomain, err)
	}
	if c.Writers < 0 {
		bad("--writers %d: must not be negative", c.Writers)
	}
	if c.DataRoleARNTemplate != "" {
		if len(c.DatasetsRoots) == 0 {
			bad("--datasets-root: required with --data-role-arn-template, e.g. --datasets-root s3://trace-data/{org}/")
		}
		if err := c.minterConfig().Validate(); err != nil {
			bad("--data-role-arn-template, --datasets-root or --credentials-duration: %v", err)
		}
	} else if len(c.DatasetsRoots) > 0 || c.STSEndpoint != "" || c.STSRegion != "" || c.CredentialsDuration != 0 {
		bad("--data-role-arn-template: required by --datasets-root, --sts-endpoint, --sts-region and --credentials-duration")
	}
	if c.UserListen != "" {
		if c.OIDCIssuer == "" {
			bad("--oidc-issuer: required with --user-listen")
		}
		if len(c.OIDCAudiences) == 0 {
			bad("--oidc-audience: required with --user-listen (the app client ID)")
		}
		switch {
		case c.UserInsecureHTTP && (c.UserTLSCert != "" || c.UserTLSKey != ""):
			bad("--user-insecure-http: conflicts with --user-tls-cert/--user-tls-key; choose one")
		case !c.UserInsecureHTTP && (c.UserTLSCert == "" || c.UserTLSKey == ""):
			bad("--user-tls-cert and --user-tls-key: required with --user-listen (or --user-insecure-http behind a TLS-terminating load balancer)")
		}
	} else if c.OIDCIssuer != "" || len(c.OIDCAudiences) > 0 || c.OIDCJWKSURL != "" || c.UserTLSCert != "" || c.UserTLSKey != "" || c.UserInsecureHTTP || c.CursorKeyFile != "" {
		bad("--user-listen: required by the --oidc-*, --user-tls-*, --user-insecure-http and --cursor-key-file flags")
	}
	if c.Replicas < 1 {
		bad("--replicas %d: must be at least 1", c.Replicas)
	} else if c.Replicas > 1 && c.UserListen != "" && c.CursorKeyFile == "" {
		bad("--cursor-key-file: required with --replicas %d, so that every replica accepts the others' cursors", c.Replicas)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--allowlists-reload", c.AllowlistsReload}, {"--anomaly-every", c.AnomalyEvery}, {"--alerts-every", c.AlertsEvery}, {"--shutdown-timeout", c.ShutdownTimeout}} {
		if d.v <= 0 {
			bad("%s %s: must be positive", d.name, d.v)
		}
	}
	return errors.Join(errs...)
}

func (c *ServeConfig) minterConfig() credentials.Config {
	return credentials.Config{
		RoleARNTemplate: c.DataRoleARNTemplate,
		Duration:        c.CredentialsDuration,
		Confinement:     datasets.Confinement{RootTemplates: c.DatasetsRoots},
	}
}

// readCursorKey reads --cursor-key-file; the key itself is never logged.
func readCursorKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--cursor-key-file: %w", err)
	}
	if len(key) < 32 {
		return nil, fmt.Errorf("--cursor-key-file %s: has %d bytes, want at least 32 (e.g. head -c 32 /dev/urandom > FILE)", path, len(key))
	}
	return key, nil
}

// servicePool is the pool admission, anomaly, alerts, grants and the user
// side share: every connection acts as cordon_service.
func servicePool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("--db: parse database URL: %w", err)
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE cordon_service")
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open service pool: %w", err)
	}
	return pool, nil
}

// Serve runs the dispatcher until ctx is done: the sidecar API, the user
// side when configured, /metrics, and the background loops (anomaly
// sweeps, cost alerts, partition upkeep, allowlist reloads). Then it
// shuts everything down within ShutdownTimeout, flushing acknowledged
// ingest batches, and returns. It returns the first error that stopped it.
func Serve(ctx context.Context, cfg ServeConfig) (err error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)

	// Everything opened is closed in reverse order on the way out.
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	loc, err := loadLocal(&cfg, log)
	if err != nil {
		return err
	}
	lists, cursorKey := loc.lists, loc.cursorKey
	if cfg.UserListen != "" && cursorKey == nil {
		log.Warn("no --cursor-key-file: pagination cursors use a random key of this process; they do not survive a restart or work across replicas")
	}

	var srcOpts []workloadapi.X509SourceOption
	if cfg.WorkloadAPI != "" {
		srcOpts = append(srcOpts, workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.WorkloadAPI)))
	}
	srcCtx, cancelSrc := context.WithTimeout(ctx, 30*time.Second)
	source, err := workloadapi.NewX509Source(srcCtx, srcOpts...)
	cancelSrc()
	if err != nil {
		return fmt.Errorf("fetch the dispatcher's SVID from the Workload API (--workload-api): %w", err)
	}
	closers = append(closers, func() { source.Close() })

	store, err := auditstore.Open(ctx, cfg.Database, auditstore.Options{Log: log})
	if err != nil {
		return err
	}
	closers = append(closers, store.Close)
	if n, err := store.EnsurePartitions(ctx, time.Now()); err != nil {
		log.Warn("audit partitions not ensured", "error", err.Error())
	} else if n > 0 {
		log.Info("audit partitions created", "count", n)
	}
	pool, err := servicePool(ctx, cfg.Database)
	if err != nil {
		return err
	}
	closers = append(closers, pool.Close)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The sidecar side.
	ing, err := ingest.New(ingest.Config{Store: store, TrustDomain: td, Writers: cfg.Writers, Registry: reg, Log: log})
	if err != nil {
		return err
	}
	ingestShut := false
	closers = append(closers, func() {
		if !ingestShut {
			ing.Close()
		}
	})
	adm, err := admission.New(admission.Config{DB: pool, Audit: store, TrustDomain: td.Name(), Registry: reg, Log: log})
	if err != nil {
		return err
	}
	det, err := anomaly.New(anomaly.Config{DB: pool, Audit: store, Terminator: adm, TrustDomain: td.Name(), Registry: reg, Log: log})
	if err != nil {
		return err
	}
	alr, err := alerts.New(alerts.Config{DB: pool, Audit: store, Allowlist: lists.File, TrustDomain: td.Name(), Registry: reg, Log: log})
	if err != nil {
		return err
	}
	sidecarMux := http.NewServeMux()
	sidecarMux.Handle("/v1/ingest/", ing.Handler())
	sidecarMux.Handle("/v1/runs/", admission.NewHandler(adm, td, log))
	if cfg.DataRoleARNTemplate != "" {
		stsClient, err := credapi.NewSTSClient(ctx, credapi.STSConfig{Endpoint: cfg.STSEndpoint, Region: cfg.STSRegion, Credentials: cfg.STSCredentials})
		if err != nil {
			return fmt.Errorf("--sts-endpoint/--sts-region: %w", err)
		}
		cred, err := credapi.New(credapi.Config{Minter: cfg.minterConfig(), STS: stsClient, Grants: credapi.NewPGGrants(pool),
			Audit: store, TrustDomain: td, Registry: reg, Log: log})
		if err != nil {
			return err
		}
		sidecarMux.Handle("POST "+credapi.Path, cred)
	} else {
		log.Info("no --data-role-arn-template: POST /v1/credentials is off; runs get no data credentials")
	}
	sidecarSrv := &http.Server{
		Handler:           sidecarMux,
		TLSConfig:         mtls.ServerConfig(source, source, td),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	// The user side.
	var userSrv *http.Server
	if cfg.UserListen != "" {
		v, err := oidc.New(ctx, oidc.Config{Issuer: cfg.OIDCIssuer, Audiences: cfg.OIDCAudiences, JWKSURL: cfg.OIDCJWKSURL, Log: log, Registerer: reg})
		if err != nil {
			return fmt.Errorf("--oidc-issuer %s: %w", cfg.OIDCIssuer, err)
		}
		closers = append(closers, v.Close)
		em := newStoreEmitter(store, reg, log)
		closers = append(closers, em.Close)
		auth, err := authn.New(authn.Options{Validator: v, Users: authn.NewPGUsers(pool), Audit: em, Log: log, Registerer: reg})
		if err != nil {
			return err
		}
		api, err := userapi.New(userapi.Config{Pool: pool, Auth: auth, Allowlists: lists.Set, Logger: log, Registerer: reg, CursorKey: cursorKey,
			Audit: em, Settings: userapi.Settings{Quotas: adm, Budgets: alr, Webhooks: alr, AnomalyPolicy: det,
				MaxConcurrentRuns: admission.DefaultMaxConcurrentRuns, MaxRunsPerHour: admission.DefaultMaxRunsPerHour}})
		if err != nil {
			return err
		}
		ui, err := webui.New(webui.Config{API: api, Auth: auth, Logger: log})
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/api/v1/", api.Handler())
		mux.Handle("/ui/", ui.Handler())
		mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusSeeOther))
		userSrv = &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      2 * time.Minute, // CSV exports
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    32 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		if loc.userCert != nil {
			userSrv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*loc.userCert}, MinVersion: tls.VersionTLS12}
		} else {
			log.Warn("--user-insecure-http: the user side speaks plain HTTP; it must sit behind a TLS-terminating load balancer")
		}
	}

	var metricsSrv *http.Server
	if cfg.Metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}

	// Listen on everything before anything serves, so a taken port fails
	// the start rather than half of it.
	var addrs Addrs
	listen := func(flagName, addr string, dst *string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flagName, addr, err)
		}
		closers = append(closers, func() { l.Close() })
		*dst = l.Addr().String()
		return l, nil
	}
	sidecarL, err := listen("--listen", cfg.Listen, &addrs.Sidecar)
	if err != nil {
		return err
	}
	var userL, metricsL net.Listener
	if userSrv != nil {
		if userL, err = listen("--user-listen", cfg.UserListen, &addrs.User); err != nil {
			return err
		}
	}
	if metricsSrv != nil {
		if metricsL, err = listen("--metrics", cfg.Metrics, &addrs.Metrics); err != nil {
			return err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	serve := func(name string, srv *http.Server, l net.Listener, useTLS bool) {
		g.Go(func() error {
			var err error
			if useTLS {
				err = srv.ServeTLS(l, "", "")
			} else {
				err = srv.Serve(l)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", name, err)
			}
			return nil
		})
	}
	serve("sidecar", sidecarSrv, sidecarL, true)
	if userSrv != nil {
		serve("user", userSrv, userL, userSrv.TLSConfig != nil)
	}
	if metricsSrv != nil {
		serve("metrics", metricsSrv, metricsL, false)
	}
	g.Go(func() error { return det.Run(gctx, cfg.AnomalyEvery) })
	g.Go(func() error { return alr.Run(gctx, cfg.AlertsEvery) })
	g.Go(func() error { return lists.run(gctx, cfg.AllowlistsReload) })
	g.Go(func() error { return keepPartitions(gctx, store, log) })
	g.Go(func() error {
		<-gctx.Done()
		log.Info("dispatcher shutting down")
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		var wg sync.WaitGroup
		shut := func(name string, f func(context.Context) error) {
			if err := f(shutCtx); err != nil {
				log.Warn("shutdown not graceful", "server", name, "error", err.Error())
			}
		}
		wg.Go(func() {
			shut("sidecar", sidecarSrv.Shutdown)
			// Only now no request can reach ingest: flush its batches.
			shut("ingest", ing.Shutdown)
			ingestShut = true
		})
		if userSrv != nil {
			wg.Go(func() { shut("user", userSrv.Shutdown) })
		}
		if metricsSrv != nil {
			wg.Go(func() { shut("metrics", metricsSrv.Shutdown) })
		}
		wg.Wait()
		return nil
	})

	log.Info("dispatcher serving", "listen", addrs.Sidecar, "user_listen", addrs.User, "metrics", addrs.Metrics,
		"trust_domain", td.String(), "credentials", cfg.DataRoleARNTemplate != "", "allowlists", cfg.Allowlists)
	if cfg.Ready != nil {
		cfg.Ready(addrs)
	}
	return g.Wait()
}

// local is what serve reads from local files before it connects
// anywhere; serve --check stops after it.
type local struct {
	lists     *allowlists
	cursorKey []byte           // nil: a random key per process
	userCert  *tls.Certificate // nil: no user side, or plain HTTP
}

func loadLocal(cfg *ServeConfig, log *slog.Logger) (*local, error) {
	lists, err := loadAllowlists(cfg.Allowlists, log)
	if err != nil {
		return nil, fmt.Errorf("--allowlists %s: %w", cfg.Allowlists, err)
	}
	key, err := readCursorKey(cfg.CursorKeyFile)
	if err != nil {
		return nil, err
	}
	loc := &local{lists: lists, cursorKey: key}
	if cfg.UserListen != "" && !cfg.UserInsecureHTTP {
		cert, err := tls.LoadX509KeyPair(cfg.UserTLSCert, cfg.UserTLSKey)
		if err != nil {
			return nil, fmt.Errorf("--user-tls-cert/--user-tls-key: %w", err)
		}
		loc.userCert = &cert
	}
	return loc, nil
}

// Check validates cfg and loads its local files (allowlists, cursor key,
// user TLS certificate) without connecting to anything or serving: what
// serve --check runs before a deploy.
func Check(cfg ServeConfig) error {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	_, err := loadLocal(&cfg, log)
	return err
}

// keepPartitions keeps the audit partitions ahead for as long as we run.
func keepPartitions(ctx context.Context, store *auditstore.Store, log *slog.Logger) error {
	t := time.NewTicker(12 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := store.EnsurePartitions(ctx, time.Now()); err != nil {
				log.Warn("audit partitions not ensured", "error", err.Error())
			}
		}
	}
}
