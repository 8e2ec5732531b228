// Package credserver serves a run's scoped AWS credentials to the job
// through an ECS-compatible container credentials endpoint on loopback, so
// every standard AWS SDK in the job finds them through its default chain
// (AWS_CONTAINER_CREDENTIALS_FULL_URI plus AWS_CONTAINER_AUTHORIZATION_TOKEN)
// and never sees the task role (DESIGN.md step 6, issue 9).
//
// The Server holds one run's credentials, obtained from a Source (the agent
// backs it with the dispatcher over mTLS), refreshes them in the background
// before they expire, and answers only requests carrying the run's random
// token. It never serves credentials that are expired or about to expire:
// if refreshing keeps failing, it answers 503 once the current ones run out.
//
// It is not the minting (dispatcher/credentials) and not the job wrapper
// that puts Env into the job's environment.
package credserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Credentials are one set of temporary AWS credentials. They are secret:
// String redacts them.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time // required: the server refuses credentials that never expire
	RoleARN         string    // optional, echoed as RoleArn like ECS does
}

// String never prints the secret parts.
func (c Credentials) String() string {
	return fmt.Sprintf("credentials{expires=%s secret=REDACTED}", c.Expiration.UTC().Format(time.RFC3339))
}

// Source obtains the run's current credentials.
type Source interface {
	Credentials(ctx context.Context) (Credentials, error)
}

// Environment variable names the AWS SDKs read.
const (
	EnvFullURI   = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
	EnvAuthToken = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
)

// Config configures a Server.
type Config struct {
	// Source is where credentials come from. Required.
	Source Source
	// Path is the endpoint's URL path. If empty, "/creds".
	Path string
	// ExpiryMargin is how long before the real expiry credentials stop being
	// served; the Expiration the job sees is the real one minus this
	// margin, so its SDK fetches new ones while the old still work. If
	// zero, one minute.
	ExpiryMargin time.Duration
	// RetryInterval is the first wait after a failed refresh; it doubles up
	// to 30s. If zero, one second.
	RetryInterval time.Duration
	// FetchTimeout bounds one Source call. If zero, 10s.
	FetchTimeout time.Duration
	// Logger receives operational logs, never credentials or the token.
	// If nil, logs are discarded.
	Logger *slog.Logger
	// Registerer receives the metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
}

// Server is the credentials endpoint for one run.
type Server struct {
	cfg       Config
	log       *slog.Logger
	tokenHash [sha256.Size]byte
	token     string
	http      *http.Server
	requests  *prometheus.CounterVec
	refreshes *prometheus.CounterVec
	now       func() time.Time
	// kick asks the refresh loop to retry now: a job that finds no valid
	// credentials should not wait out a long backoff once the source is
	// back. The loop honours a kick at most once per RetryInterval.
	kick chan struct{}

	mu      sync.Mutex // guards the following
	current *Credentials
	fetched time.Time // when current was obtained
	started bool
	served  chan struct{} // closed when Serve returns

	closeOnce sync.Once
	closing   chan struct{}
}

// New returns a Server with a fresh random token. It fetches nothing; call
// Prime to fail fast before the job starts.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("credserver: a Source is required")
	}
	if cfg.Path == "" {
		cfg.Path = "/creds"
	}
	if cfg.Path[0] != '/' {
		return nil, fmt.Errorf("credserver: path %q must start with /", cfg.Path)
	}
	if cfg.ExpiryMargin == 0 {
		cfg.ExpiryMargin = time.Minute
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = 10 * time.Second
	}
	if cfg.ExpiryMargin < 0 || cfg.RetryInterval < 0 || cfg.FetchTimeout < 0 {
		return nil, errors.New("credserver: durations must not be negative")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("credserver: generate token: %w", err)
	}
	s := &Server{
		cfg:   cfg,
		log:   log,
		token: base64.RawURLEncoding.EncodeToString(raw),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_sidecar_credentials_requests_total",
			Help: "Requests to the container credentials endpoint by result (ok, unauthorized, unavailable, not_found).",
		}, []string{"result"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_sidecar_credentials_refreshes_total",
			Help: "Credential fetches from the source by result (ok, error).",
		}, []string{"result"}),
		now:     time.Now,
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		served:  make(chan struct{}),
	}
	s.tokenHash = sha256.Sum256([]byte(s.token))
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.requests, s.refreshes} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("credserver: register metrics: %w", err)
			}
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc(cfg.Path, s.handle)
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      5 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Env returns the two environment variables that point a job's AWS SDKs at
// this server listening on addr ("NAME=value" form). addr must be a
// loopback TCP address.
func (s *Server) Env(addr net.Addr) ([]string, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	return []string{
		EnvFullURI + "=http://" + addr.String() + s.cfg.Path,
		EnvAuthToken + "=" + s.token,
	}, nil
}

func checkLoopback(addr net.Addr) error {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsLoopback() {
		return fmt.Errorf("credserver: %v is not a loopback TCP address; the SDKs accept plain http only on loopback, and the endpoint must not be reachable from elsewhere", addr)
	}
	return nil
}

// Prime fetches credentials now. The agent calls it before starting the
// job, so a refused run (e.g. a PII dataset without a grant) never starts.
func (s *Server) Prime(ctx context.Context) error { return s.fetch(ctx) }

// Serve serves on ln (which must be loopback TCP) and refreshes credentials
// in the background until ctx ends or Shutdown is called; it then drains
// for at most 5s. It returns nil after a clean shutdown. Serve may be
// called once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := checkLoopback(ln.Addr()); err != nil {
		return err
	}
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("credserver: Serve called twice")
	}
	s.started = true
	s.mu.Unlock()
	defer close(s.served)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.refreshLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = s.http.Shutdown(sctx)
	}()
	err := s.http.Serve(ln)
	cancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("credserver: serve: %w", err)
}

// Shutdown stops Serve and waits for it to return, or for ctx. It is
// idempotent and safe to call without Serve.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-s.served:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("credserver: shutdown: %w", ctx.Err())
	}
}

// fetch obtains credentials from the Source and installs them.
func (s *Server) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.FetchTimeout)
	defer cancel()
	c, err := s.cfg.Source.Credentials(ctx)
	now := s.now()
	if err == nil {
		switch {
		case c.AccessKeyID == "" || c.SecretAccessKey == "" || c.SessionToken == "":
			err = errors.New("source returned incomplete credentials")
		case c.Expiration.IsZero():
			err = errors.New("source returned credentials without an expiration")
		case !now.Before(c.Expiration.Add(-s.cfg.ExpiryMargin)):
			err = fmt.Errorf("source returned credentials expiring at %s, within the %s margin", c.Expiration.UTC().Format(time.RFC3339), s.cfg.ExpiryMargin)
		}
	}
	if err != nil {
		s.refreshes.WithLabelValues("error").Inc()
		s.log.LogAttrs(ctx, slog.LevelWarn, "credentials refresh failed", slog.String("error", err.Error()))
		return fmt.Errorf("credserver: fetch credentials: %w", err)
	}
	s.refreshes.WithLabelValues("ok").Inc()
	s.mu.Lock()
	s.current = &c
	s.fetched = now
	s.mu.Unlock()
	s.log.LogAttrs(ctx, slog.LevelInfo, "credentials refreshed", slog.Time("expiry", c.Expiration))
	return nil
}

// refreshAt is when credentials obtained at fetched and expiring at exp are
// refreshed: at 80% of their lifetime or 5 minutes before expiry, whichever
// is first, but never before half their lifetime (so short-lived
// credentials do not cause a refresh storm).
func refreshAt(fetched, exp time.Time) time.Time {
	life := exp.Sub(fetched)
	at := min(life*8/10, max(life-5*time.Minute, life/2))
	return fetched.Add(at)
}

func (s *Server) refreshLoop(ctx context.Context) {
	retry := s.cfg.RetryInterval
	failed := false
	for {
		var wait time.Duration
		s.mu.Lock()
		switch {
		case failed:
			wait = retry
		case s.current == nil:
			wait = 0
		default:
			wait = refreshAt(s.fetched, s.current.Expiration).Sub(s.now())
		}
		s.mu.Unlock()
		t := time.NewTimer(max(wait, 0))
		kicked := s.kick
		if !failed {
			kicked = nil // only a failing loop has a backoff to cut short
		}
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-kicked:
			t.Stop()
			// Cut the backoff short, but no more often than the first
			// retry interval, so a job polling in a loop cannot turn
			// into a storm against the source.
			select {
			case <-ctx.Done():
				return
			case <-time.After(s.cfg.RetryInterval):
			}
		}
		if err := s.fetch(ctx); err != nil {
			if failed {
				retry = min(retry*2, 30*time.Second)
			}
			failed = true
			continue
		}
		failed, retry = false, s.cfg.RetryInterval
	}
}

// response is the container credentials JSON the SDKs parse.
type response struct {
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
	RoleArn         string `json:"RoleArn,omitempty"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Path != s.cfg.Path {
		s.requests.WithLabelValues("not_found").Inc()
		writeJSON(w, http.StatusNotFound, errorBody{"NotFound", "no such path"})
		return
	}
	if r.Method != http.MethodGet {
		s.requests.WithLabelValues("not_found").Inc()
		w.Header().Set("Allow", http.MethodGet)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{"MethodNotAllowed", "use GET"})
		return
	}
	got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
	if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
		s.requests.WithLabelValues("unauthorized").Inc()
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "credentials request without the run's token",
			slog.String("remote", r.RemoteAddr), slog.Bool("header_present", r.Header.Get("Authorization") != ""))
		writeJSON(w, http.StatusUnauthorized, errorBody{"Unauthorized", "missing or wrong authorization token"})
		return
	}
	now := s.now()
	s.mu.Lock()
	c := s.current
	s.mu.Unlock()
	// What the job sees: the margin earlier, in whole seconds (RFC 3339 as
	// ECS sends it), and never a time already past.
	var served time.Time
	if c != nil {
		served = c.Expiration.Add(-s.cfg.ExpiryMargin).Truncate(time.Second)
	}
	if c == nil || !now.Before(served) {
		s.requests.WithLabelValues("unavailable").Inc()
		select {
		case s.kick <- struct{}{}:
		default:
		}
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{"CredentialsUnavailable", "no unexpired credentials for this run; the sidecar is retrying"})
		return
	}
	s.requests.WithLabelValues("ok").Inc()
	writeJSON(w, http.StatusOK, response{
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		Token:           c.SessionToken,
		Expiration:      served.UTC().Format(time.RFC3339),
		RoleArn:         c.RoleARN,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
