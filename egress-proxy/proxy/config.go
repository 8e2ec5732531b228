package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/audit"
)

// JobRef names the job whose policy a connection is checked against.
type JobRef struct {
	Org string
	Job string
}

// String is "org/job".
func (j JobRef) String() string { return j.Org + "/" + j.Job }

// Resolver returns every address of a name. resolve.DNS and resolve.System
// implement it.
type Resolver interface {
	LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// Observation is one finished request or tunnel, for usage accounting.
type Observation struct {
	Job JobRef
	// Key is the allowlist rule that allowed the traffic ("host:port" as
	// written in the allowlist, or "cidr:port"), or "denied". It is bounded
	// by the allowlist, never a hostname from the request. In report mode
	// traffic no rule allowed is keyed "unmatched".
	Key string
	// BytesOut is the payload sent to the upstream (request bodies, or
	// what the client wrote into a tunnel); BytesIn what came back.
	BytesOut, BytesIn int64
}

// Observer receives an Observation for every decision. The sidecar counts
// egress bytes per destination and denials for its usage report. Observe
// is called on the request's goroutine and must not block.
type Observer interface {
	Observe(o Observation)
}

// Limits bound what one job may use. Each zero value is documented.
type Limits struct {
	// MaxConcurrent is the most requests and tunnels one job may have in
	// progress. Connections still sending their request head do not count
	// (HeaderReadTimeout bounds those). If zero, 1024.
	MaxConcurrent int
	// RequestsPerSecond is the sustained request rate of one job
	// (requests and CONNECTs). If zero, unlimited.
	RequestsPerSecond float64
	// Burst is the rate limiter's burst. If zero, max(1, RequestsPerSecond).
	Burst int
	// MaxHeaderBytes bounds a request head. If zero, 32 KiB.
	MaxHeaderBytes int
	// HeaderReadTimeout bounds reading one request head from its first
	// byte (slowloris), and the mTLS handshake. If zero, 10s.
	HeaderReadTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection. If zero, 90s.
	IdleTimeout time.Duration
	// ClientHelloTimeout bounds the wait for the ClientHello of a tunnel
	// to port 443. If zero, 10s.
	ClientHelloTimeout time.Duration
	// TotalTimeout bounds one plain HTTP request and one tunnel, start to
	// end. If zero, 1h.
	TotalTimeout time.Duration
	// DialTimeout bounds connecting to one destination address. If zero, 10s.
	DialTimeout time.Duration
	// MaxClientConns bounds open client connections of the whole server.
	// If zero, 20000.
	MaxClientConns int
}

func (l Limits) withDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if l.MaxConcurrent == 0 {
		l.MaxConcurrent = 1024
	}
	if l.Burst == 0 {
		l.Burst = max(1, int(l.RequestsPerSecond))
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = 32 << 10
	}
	def(&l.HeaderReadTimeout, 10*time.Second)
	def(&l.IdleTimeout, 90*time.Second)
	def(&l.ClientHelloTimeout, 10*time.Second)
	def(&l.TotalTimeout, time.Hour)
	def(&l.DialTimeout, 10*time.Second)
	if l.MaxClientConns == 0 {
		l.MaxClientConns = 20000
	}
	return l
}

// Config configures a Server.
type Config struct {
	// Store holds every job's policy. Required.
	Store *policy.Store
	// Job is the job whose policy Serve applies to every connection (the
	// sidecar, static mode). If zero, Serve refuses to start; ServeTLS
	// takes the job from each peer's SVID instead.
	Job JobRef
	// JobActor is the actor ID Serve's audit events give the job: the
	// sidecar sets its SVID (spiffe://TD/org/ORG/job/JOB), which is what
	// the dispatcher accepts from it. If empty, "job:ORG/JOB". ServeTLS
	// uses each peer's SPIFFE ID.
	JobActor string
	// TrustDomain is the SPIFFE trust domain ServeTLS accepts peers from.
	// If zero, ServeTLS refuses to start.
	TrustDomain spiffeid.TrustDomain
	// Logger receives one "egress decision" line per request or tunnel.
	// If nil, logs are discarded.
	Logger *slog.Logger
	// Audit receives one event per decision. If nil, audit.Discard.
	Audit audit.Emitter
	// Registerer receives the server's metrics. If nil, they are kept in a
	// private registry (still counted, never exported).
	Registerer prometheus.Registerer
	// Resolver resolves destination names. If nil, resolve.System{}.
	Resolver Resolver
	// UnsafeAllowCIDRs are treated as public when a resolved name lands in
	// them (--unsafe-allow-cidr, for tests on loopback). They never allow
	// an IP literal, and never a metadata address.
	UnsafeAllowCIDRs []netip.Prefix
	// Observer receives usage observations. If nil, none.
	Observer Observer
	// Limits are per-job limits; see each field for its zero value.
	Limits Limits
	// Gateway, if set, sends allowed traffic on through the cordon-egress
	// gateway over mTLS instead of resolving and dialling destinations
	// (see GatewayUpstream). If nil, this proxy dials destinations itself.
	Gateway *GatewayUpstream
}

// ParseUnsafeCIDR parses one --unsafe-allow-cidr value (for
// UnsafeAllowCIDRs): a prefix whose host bits are zero.
func ParseUnsafeCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--unsafe-allow-cidr %q: %w", s, err)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("--unsafe-allow-cidr %q: host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}
