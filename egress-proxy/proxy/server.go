package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/time/rate"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/egress-proxy/resolve"
	"github.com/cordon-dev/cordon/egress-proxy/sni"
	"github.com/cordon-dev/cordon/internal/audit"
)

// ErrServerClosed is returned by Serve and ServeTLS after Shutdown.
var ErrServerClosed = errors.New("egress proxy closed")

// Server is the egress proxy. It is safe for concurrent use; one Server
// may Serve and ServeTLS on several listeners at once.
type Server struct {
	cfg      Config
	lim      Limits
	log      *slog.Logger
	audit    audit.Emitter
	resolver Resolver
	m        *metrics
	bufSize  int
	readers  sync.Pool // *bufio.Reader of bufSize
	writers  sync.Pool // *bufio.Writer
	heads    sync.Pool // *[]byte: message heads being written

	jobs sync.Map // JobRef -> *jobState
	// jobsGen is the store generation jobs was last pruned against.
	jobsGen    atomic.Uint64
	clientConn atomic.Int64
	self       atomic.Pointer[[]netip.AddrPort]

	wg sync.WaitGroup // every connection goroutine

	// shutting mirrors closed for the per-request check in setIdle,
	// which must not take mu.
	shutting atomic.Bool

	mu        sync.Mutex // guards the following
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*atomic.Bool // value: idle (waiting for a request)
}

// jobState is one job's limiter, concurrency count and upstream pool.
type jobState struct {
	limiter *rate.Limiter // nil: unlimited
	active  atomic.Int64
	// pool keeps keep-alive connections to upstreams for this job only:
	// a connection dialled under one job's cidr rules must never serve
	// another job.
	pool *upstreamPool
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("new egress proxy: Config.Store is required")
	}
	for _, p := range cfg.UnsafeAllowCIDRs {
		if !p.IsValid() || p.Masked() != p {
			return nil, fmt.Errorf("new egress proxy: unsafe-allow cidr %s is not a masked prefix", p)
		}
	}
	if cfg.Gateway != nil {
		if err := cfg.Gateway.validate(); err != nil {
			return nil, fmt.Errorf("new egress proxy: %w", err)
		}
	}
	s := &Server{
		cfg:       cfg,
		lim:       cfg.Limits.withDefaults(),
		log:       cfg.Logger,
		audit:     cfg.Audit,
		resolver:  cfg.Resolver,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]*atomic.Bool{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.audit == nil {
		s.audit = audit.Discard
	}
	if s.resolver == nil {
		s.resolver = resolve.System{}
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("new egress proxy: %w", err)
	}
	s.m = m
	s.bufSize = max(s.lim.MaxHeaderBytes, sni.MaxHelloBytes+64)
	s.readers.New = func() any { return bufio.NewReaderSize(nil, s.bufSize) }
	s.writers.New = func() any { return bufio.NewWriterSize(nil, 16<<10) }
	s.heads.New = func() any { b := make([]byte, 0, 1024); return &b }
	empty := []netip.AddrPort{}
	s.self.Store(&empty)
	return s, nil
}

// pruneJobs drops the state (limiter, idle upstream connections) of jobs
// that left the policy set, once per store generation: in gateway mode
// jobs come and go, and the map must not grow with every job ever seen.
// A request still holding a dropped state finishes with it; the next one
// starts afresh.
func (s *Server) pruneJobs() {
	g := s.cfg.Store.Generation()
	old := s.jobsGen.Load()
	if g == old || !s.jobsGen.CompareAndSwap(old, g) {
		return
	}
	s.jobs.Range(func(k, v any) bool {
		j := k.(JobRef)
		if _, ok := s.cfg.Store.Lookup(j.Org, j.Job); !ok {
			s.jobs.Delete(k)
			v.(*jobState).pool.closeIdle(true)
		}
		return true
	})
}

func (s *Server) jobState(j JobRef) *jobState {
	if v, ok := s.jobs.Load(j); ok {
		return v.(*jobState)
	}
	js := &jobState{pool: newUpstreamPool()}
	if s.lim.RequestsPerSecond > 0 {
		js.limiter = rate.NewLimiter(rate.Limit(s.lim.RequestsPerSecond), s.lim.Burst)
	}
	v, _ := s.jobs.LoadOrStore(j, js)

	return v.(*jobState)
}

// Serve accepts plain proxy connections on ln for Config.Job until ctx is
// done or Shutdown is called. It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.cfg.Job == (JobRef{}) {
		ln.Close()
		return fmt.Errorf("serve %s: Config.Job is required for plain listeners", ln.Addr())
	}
	job, actor := s.cfg.Job, s.cfg.JobActor
	if actor == "" {
		actor = "job:" + job.String()
	}
	return s.serve(ctx, ln, func(ctx context.Context, c net.Conn) (net.Conn, JobRef, string, bool) {
		return c, job, actor, true
	})
}

// ServeTLS accepts mTLS connections from sidecars on ln (gateway mode).
// conf must require and verify client certificates (GatewayTLSConfig
// builds one); each peer's SVID must be spiffe://TD/org/ORG/job/JOB in
// Config.TrustDomain, and its job's policy applies to the connection.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener, conf *tls.Config) error {
	if s.cfg.TrustDomain.IsZero() {
		ln.Close()
		return fmt.Errorf("serve tls %s: Config.TrustDomain is required", ln.Addr())
	}
	if conf == nil || !verifiesClients(conf) || conf.MinVersion < tls.VersionTLS13 {
		ln.Close()
		return fmt.Errorf("serve tls %s: tls config must require verified client certificates and TLS 1.3", ln.Addr())
	}
	return s.serve(ctx, ln, func(ctx context.Context, c net.Conn) (net.Conn, JobRef, string, bool) {
		tc := tls.Server(c, conf)
		hctx, cancel := context.WithTimeout(ctx, s.lim.HeaderReadTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			s.log.Debug("egress tls handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			return nil, JobRef{}, "", false
		}
		job, id, err := JobFromPeer(tc.ConnectionState(), s.cfg.TrustDomain)
		if err != nil {
			s.record(ctx, &outcome{job: job, actor: id, remote: c.RemoteAddr(), method: "TLS",
				decision: decisionDeny, reason: policy.ReasonBadIdentity, start: time.Now()})
			return nil, JobRef{}, "", false
		}
		return tc, job, id, true
	})
}

// verifiesClients reports whether conf refuses clients without a verified
// certificate: go-spiffe's tlsconfig requires any certificate and verifies
// it against the SPIFFE bundle in VerifyPeerCertificate.
func verifiesClients(conf *tls.Config) bool {
	switch conf.ClientAuth {
	case tls.RequireAndVerifyClientCert:
		return true
	case tls.RequireAnyClientCert:
		return conf.VerifyPeerCertificate != nil
	}
	return false
}

// JobFromPeer maps a verified peer's SPIFFE ID spiffe://TD/org/ORG/job/JOB
// to its job. Other trust domains and other path shapes are errors.
func JobFromPeer(cs tls.ConnectionState, td spiffeid.TrustDomain) (JobRef, string, error) {
	if len(cs.PeerCertificates) == 0 {
		return JobRef{}, "", fmt.Errorf("peer identity: no client certificate")
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return JobRef{}, "", fmt.Errorf("peer identity: %w", err)
	}
	if !id.MemberOf(td) {
		return JobRef{}, id.String(), fmt.Errorf("peer identity %s: not in trust domain %s", id, td)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "org" || seg[2] != "job" || seg[1] == "" || seg[3] == "" {
		return JobRef{}, id.String(), fmt.Errorf("peer identity %s: want spiffe://%s/org/ORG/job/JOB", id, td)
	}
	return JobRef{Org: seg[1], Job: seg[3]}, id.String(), nil
}

type acceptFunc func(ctx context.Context, c net.Conn) (conn net.Conn, job JobRef, actor string, ok bool)

func (s *Server) serve(ctx context.Context, ln net.Listener, accept acceptFunc) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.addSelf(ln.Addr())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("egress accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		if s.clientConn.Add(1) > int64(s.lim.MaxClientConns) {
			s.clientConn.Add(-1)
			c.Close()
			continue
		}
		idle, ok := s.track(c)
		if !ok {
			s.clientConn.Add(-1)
			c.Close()
			continue
		}
		s.m.openConns.Inc()
		go func() {
			defer s.wg.Done()
			defer s.m.openConns.Dec()
			defer s.clientConn.Add(-1)
			defer s.untrack(c)
			defer c.Close()
			conn, job, actor, ok := accept(ctx, c)
			if !ok {
				return
			}
			if conn != c {
				defer conn.Close()
			}
			s.serveConn(ctx, c, conn, idle, job, actor)
		}()
	}
}

// track registers c and adds it to the WaitGroup; false after Shutdown.
// It returns c's idle flag for setIdle.
func (s *Server) track(c net.Conn) (*atomic.Bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	idle := new(atomic.Bool)
	s.conns[c] = idle
	s.wg.Add(1)
	return idle, true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// setIdle marks a connection idle (between requests) or busy through its
// flag from track. It returns false when the server is shutting down and
// the connection should close. No lock: Shutdown sets shutting before it
// reads the flags, so either it sees a connection busy (and leaves it to
// finish its request) or the connection sees shutting (and closes).
func (s *Server) setIdle(flag *atomic.Bool, idle bool) bool {
	flag.Store(idle)
	return !s.shutting.Load()
}

// Shutdown stops accepting, closes idle connections, waits for requests
// and tunnels in progress until ctx is done, then closes the rest. It is
// idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.shutting.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	for c, idle := range s.conns {
		if idle.Load() {
			c.Close()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-t.C:
			s.mu.Lock()
			for c, idle := range s.conns {
				if idle.Load() {
					c.Close()
				}
			}
			s.mu.Unlock()
		case <-ctx.Done():
			err = fmt.Errorf("shutdown: %w; closing %d open connections", ctx.Err(), s.openConnCount())
			s.mu.Lock()
			for c := range s.conns {
				c.Close()
			}
			s.mu.Unlock()
			<-done
			break wait
		}
	}
	s.jobs.Range(func(_, v any) bool {
		v.(*jobState).pool.closeIdle(true)
		return true
	})
	return err
}

func (s *Server) openConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// addSelf records a listener's addresses so the proxy never dials itself.
// An unspecified listen address stands for every local address.
func (s *Server) addSelf(a net.Addr) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return
	}
	add := []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	if ap.Addr().IsUnspecified() {
		if ifaddrs, err := net.InterfaceAddrs(); err == nil {
			for _, ia := range ifaddrs {
				if p, err := netip.ParsePrefix(ia.String()); err == nil {
					add = append(add, netip.AddrPortFrom(p.Addr().Unmap(), ap.Port()))
				}
			}
		}
		add = append(add, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()),
			netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := append(append([]netip.AddrPort(nil), *s.self.Load()...), add...)
	s.self.Store(&next)
}

func (s *Server) isSelf(ap netip.AddrPort) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	for _, x := range *s.self.Load() {
		if x == ap {
			return true
		}
	}
	return false
}
