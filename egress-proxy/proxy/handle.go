package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/authority"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// checked is the result of the policy decision for one destination: the
// exact addresses that were classified and may be dialled.
type checked struct {
	target authority.Target
	addrs  []netip.AddrPort
	rule   string
	// wouldDeny is the reason report mode overrode, if any.
	wouldDeny policy.Reason
}

// handle serves one request. It reports whether the connection may carry
// another request.
func (s *Server) handle(ctx context.Context, cc *clientConn, req *http.Request, info headInfo, start time.Time) bool {
	o := &outcome{job: cc.job, actor: cc.actor, remote: cc.raw.RemoteAddr(), method: req.Method, start: start}
	s.pruneJobs()
	pol, ok := s.cfg.Store.Lookup(cc.job.Org, cc.job.Job)
	if !ok {
		o.decision, o.reason = decisionDeny, policy.ReasonNoPolicy
		s.deny(ctx, cc, o)
		return false
	}
	js := s.jobState(cc.job)
	if js.limiter != nil && !js.limiter.Allow() {
		o.decision, o.reason = decisionDeny, policy.ReasonRateLimited
		s.deny(ctx, cc, o)
		return false
	}
	if js.active.Add(1) > int64(s.lim.MaxConcurrent) {
		js.active.Add(-1)
		o.decision, o.reason = decisionDeny, policy.ReasonTooManyConnections
		s.deny(ctx, cc, o)
		return false
	}
	defer js.active.Add(-1)

	target, reason := parseTarget(req, info)
	if reason != policy.ReasonNone {
		o.decision, o.reason = decisionDeny, reason
		s.deny(ctx, cc, o)
		return false
	}
	o.host, o.port = target.Host.String(), target.Port
	chk, reason := s.decide(ctx, pol, target)
	if reason != policy.ReasonNone {
		o.decision, o.reason = decisionFor(reason), reason
		s.deny(ctx, cc, o)
		return false
	}
	o.rule = chk.rule
	o.reason = chk.wouldDeny
	o.decision = decisionAllow
	if chk.wouldDeny != policy.ReasonNone {
		o.decision = decisionWouldDeny
	}
	if req.Method == http.MethodConnect {
		s.tunnel(ctx, cc, pol.Report(), chk, o)
		return false
	}
	return s.forward(ctx, cc, js, req, chk, o)
}

// parseTarget finds the destination of a request and checks that every
// way the request names it agrees.
func parseTarget(req *http.Request, info headInfo) (authority.Target, policy.Reason) {
	if info.obsFold || (info.hasCL && info.hasTE) || len(info.hosts) > 1 {
		return authority.Target{}, policy.ReasonBadRequest
	}
	var target authority.Target
	var err error
	if req.Method == http.MethodConnect {
		// Authority form only: "CONNECT host:port".
		target, err = authority.ParseHostPort(req.RequestURI, 0)
		if err != nil {
			return authority.Target{}, policy.ReasonBadRequest
		}
		if info.hasCL || info.hasTE {
			return authority.Target{}, policy.ReasonBadRequest
		}
	} else {
		if req.RequestURI == "" || req.RequestURI[0] == '/' || req.RequestURI == "*" || !req.URL.IsAbs() {
			return authority.Target{}, policy.ReasonOriginForm
		}
		if req.URL.Scheme != "http" {
			return authority.Target{}, policy.ReasonBadScheme
		}
		if req.URL.User != nil || req.URL.Opaque != "" {
			return authority.Target{}, policy.ReasonBadRequest
		}
		target, err = authority.ParseHostPort(req.URL.Host, 80)
		if err != nil {
			return authority.Target{}, policy.ReasonBadRequest
		}
	}
	named := req.RequestURI // the authority the target was parsed from
	if req.Method != http.MethodConnect {
		named = req.URL.Host
	}
	for _, h := range info.hosts {
		if string(h) == named {
			continue // the same bytes parse to the same target
		}
		ht, err := authority.ParseHostPort(string(h), target.Port)
		if err != nil {
			return authority.Target{}, policy.ReasonHostMismatch
		}
		if ht != target {
			return authority.Target{}, policy.ReasonHostMismatch
		}
	}
	return target, policy.ReasonNone
}

// decide applies the job's policy to a destination: name or literal
// match, then every resolved address classified. Report mode turns the
// overridable denials into would_deny, but still refuses metadata, loops
// and failures.
func (s *Server) decide(ctx context.Context, pol *policy.Compiled, t authority.Target) (checked, policy.Reason) {
	chk := checked{target: t}
	override := func(r policy.Reason) bool {
		if pol.Report() && r.Overridable() {
			if chk.wouldDeny == policy.ReasonNone {
				chk.wouldDeny = r
			}
			return true
		}
		return false
	}
	if t.IsLiteral() {
		rule, r := pol.CheckLiteral(t.Addr, t.Port)
		if r != policy.ReasonNone && !override(r) {
			return chk, r
		}
		ap := netip.AddrPortFrom(t.Addr, t.Port)
		if s.isSelf(ap) || t.Addr.IsUnspecified() {
			return chk, policy.ReasonProxyLoop
		}
		chk.rule, chk.addrs = rule, []netip.AddrPort{ap}
		return chk, policy.ReasonNone
	}
	rule, ok := pol.MatchName(t.Name, t.Port)
	if !ok && !override(policy.ReasonNotAllowed) {
		return chk, policy.ReasonNotAllowed
	}
	chk.rule = rule
	if s.cfg.Gateway != nil {
		// Two hops: the gateway resolves, classifies and dials (and checks
		// the policy again); this proxy never touches the destination.
		return chk, policy.ReasonNone
	}
	addrs, err := s.lookup(ctx, t.Name)
	if err != nil || len(addrs) == 0 {
		return chk, policy.ReasonDNSFailure
	}
	for _, a := range addrs {
		a = a.Unmap()
		cidrRule, r := pol.CheckAddr(a, t.Port, s.cfg.UnsafeAllowCIDRs)
		if r != policy.ReasonNone && !override(r) {
			return chk, r
		}
		ap := netip.AddrPortFrom(a, t.Port)
		if s.isSelf(ap) || a.IsUnspecified() {
			return chk, policy.ReasonProxyLoop
		}
		if cidrRule != "" && chk.rule == "" {
			chk.rule = cidrRule
		}
		chk.addrs = append(chk.addrs, ap)
	}
	return chk, policy.ReasonNone
}

// cacheLookuper is a Resolver that can answer from its cache without a
// context (resolve.DNS): a cache hit then costs no timer.
type cacheLookuper interface {
	LookupCached(host string) ([]netip.Addr, bool)
}

// lookup resolves name, bounded by the dial timeout.
func (s *Server) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	if c, ok := s.resolver.(cacheLookuper); ok {
		if addrs, ok := c.LookupCached(name); ok {
			return addrs, nil
		}
	}
	rctx, cancel := context.WithTimeout(ctx, s.lim.DialTimeout)
	defer cancel()
	return s.resolver.LookupNetIP(rctx, name)
}

// dialError carries the reason a dial to checked addresses failed.
type dialError struct {
	reason policy.Reason
	err    error
}

func (e *dialError) Error() string { return "dial " + string(e.reason) + ": " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialChecked connects to the first reachable address of addrs, which
// must all have been checked. It never resolves a name.
func (s *Server) dialChecked(ctx context.Context, addrs []netip.AddrPort) (net.Conn, netip.AddrPort, error) {
	d := net.Dialer{Timeout: s.lim.DialTimeout}
	var last error
	timedOut := false
	for _, ap := range addrs {
		c, err := d.DialContext(ctx, "tcp", ap.String())
		if err == nil {
			return c, ap, nil
		}
		last = err
		if isTimeout(err) || errors.Is(err, context.DeadlineExceeded) {
			timedOut = true
		}
	}
	if last == nil {
		last = errors.New("no checked address to dial")
	}
	reason := policy.ReasonDialFailed
	if timedOut {
		reason = policy.ReasonDialTimeout
	}
	return nil, netip.AddrPort{}, &dialError{reason: reason, err: last}
}
