package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/authority"
	"github.com/cordon-dev/cordon/egress-proxy/h1"
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

// request is one client request: its parsed head, which aliases the
// connection's read buffer until the head is discarded, and the head's
// length there.
type request struct {
	h1.Head
	headLen int
}

// handle serves one request. It reports whether the connection may carry
// another request.
func (s *Server) handle(ctx context.Context, cc *clientConn, req *request, start time.Time) bool {
	o := &outcome{job: cc.job, actor: cc.actor, remote: cc.raw.RemoteAddr(), method: methodString(req.Method), start: start}
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

	target, path, framing, reason := parseTarget(req)
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
	if o.method == http.MethodConnect {
		cc.br.Discard(req.headLen)
		s.tunnel(ctx, cc, pol.Report(), chk, o)
		return false
	}
	return s.forward(ctx, cc, js, req, path, framing, chk, o)
}

// methodString returns the method as a string, without allocating for
// the registered methods.
func methodString(m []byte) string {
	for _, known := range [...]string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace} {
		if string(m) == known {
			return known
		}
	}
	return string(m)
}

// parseTarget finds the destination of a request and checks that every
// way the request names it agrees. For a plain request it also returns
// the path and query to send upstream (empty, or starting with '?', when
// the target had no path: appendPath writes the "/") and the body's
// framing.
func parseTarget(req *request) (authority.Target, []byte, h1.Framing, policy.Reason) {
	framing, err := h1.RequestFraming(&req.Head)
	if err != nil {
		return authority.Target{}, nil, framing, policy.ReasonBadRequest
	}
	var target authority.Target
	var named, path []byte // the authority the target was parsed from
	if string(req.Method) == http.MethodConnect {
		// Authority form only: "CONNECT host:port", and no body.
		named = req.Target
		if target, err = authority.ParseHostPort(string(named), 0); err != nil {
			return authority.Target{}, nil, framing, policy.ReasonBadRequest
		}
		if framing.Declared || framing.Chunked {
			return authority.Target{}, nil, framing, policy.ReasonBadRequest
		}
	} else {
		var reason policy.Reason
		if named, path, reason = splitAbsolute(req.Target); reason != policy.ReasonNone {
			return authority.Target{}, nil, framing, reason
		}
		if target, err = authority.ParseHostPort(string(named), 80); err != nil {
			return authority.Target{}, nil, framing, policy.ReasonBadRequest
		}
	}
	if h, n := req.Get("Host"); n == 1 && string(h) != string(named) {
		ht, err := authority.ParseHostPort(string(h), target.Port)
		if err != nil || ht != target {
			return authority.Target{}, nil, framing, policy.ReasonHostMismatch
		}
	}
	return target, path, framing, policy.ReasonNone
}

// splitAbsolute splits an absolute-form request target
// ("http://host:port/path?query") into its authority and its path and
// query. t is a target h1.ParseRequest accepted, so anything but origin
// form ("/path") and asterisk form ("*") starts with a scheme and a
// colon. Origin and asterisk form are origin_form; another scheme than
// http is bad_scheme; userinfo, a fragment or an empty authority is
// bad_request.
func splitAbsolute(t []byte) (authorityPart, path []byte, reason policy.Reason) {
	colon := bytes.IndexByte(t, ':')
	if colon <= 0 || t[0] == '/' { // "*" has no colon
		return nil, nil, policy.ReasonOriginForm
	}
	if !h1.EqualFold(t[:colon], "http") {
		return nil, nil, policy.ReasonBadScheme
	}
	rest := t[colon+1:]
	if !bytes.HasPrefix(rest, []byte("//")) || bytes.IndexByte(rest, '#') >= 0 {
		return nil, nil, policy.ReasonBadRequest
	}
	rest = rest[2:]
	end := bytes.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authorityPart, path = rest[:end], rest[end:]
	if len(authorityPart) == 0 || bytes.IndexByte(authorityPart, '@') >= 0 {
		return nil, nil, policy.ReasonBadRequest
	}
	return authorityPart, path, policy.ReasonNone
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
