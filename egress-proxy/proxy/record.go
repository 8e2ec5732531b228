package proxy

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/audit"
)

// Decisions, the "decision" log key and metrics label.
const (
	decisionAllow     = "allow"
	decisionDeny      = "deny"
	decisionWouldDeny = "would_deny" // report mode: allowed, policy would deny
	decisionError     = "error"      // allowed, but DNS or the upstream failed
)

// DenyReasonHeader carries the reason code of every response the proxy
// itself generates.
const DenyReasonHeader = "X-Cordon-Deny-Reason"

// outcome is everything recorded about one request or tunnel.
type outcome struct {
	job      JobRef
	actor    string
	remote   net.Addr // formatted only for an audit event
	method   string
	host     string
	port     uint16
	addr     netip.AddrPort
	decision string
	reason   policy.Reason
	rule     string
	status   int
	bytesOut int64 // payload sent to the upstream
	bytesIn  int64 // payload received from the upstream
	start    time.Time
}

func decisionFor(r policy.Reason) string {
	switch r {
	case policy.ReasonDNSFailure, policy.ReasonDialFailed, policy.ReasonDialTimeout, policy.ReasonUpstreamError,
		policy.ReasonGatewayUnreachable, policy.ReasonGatewayError:
		return decisionError
	}
	return decisionDeny
}

// statusFor is the HTTP status of a response the proxy generates.
func statusFor(r policy.Reason) int {
	switch r {
	case policy.ReasonRateLimited, policy.ReasonTooManyConnections, policy.ReasonHeaderTooLarge:
		return http.StatusTooManyRequests
	case policy.ReasonDNSFailure, policy.ReasonDialFailed, policy.ReasonUpstreamError,
		policy.ReasonGatewayUnreachable, policy.ReasonGatewayError:
		return http.StatusBadGateway
	case policy.ReasonDialTimeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusForbidden
}

// deny answers the client with the outcome's status and reason header,
// records the outcome, and leaves the connection to be closed.
func (s *Server) deny(ctx context.Context, cc *clientConn, o *outcome) {
	o.status = statusFor(o.reason)
	body := "cordon egress: " + string(o.reason) + "\n"
	resp := &http.Response{
		StatusCode:    o.status,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{DenyReasonHeader: {string(o.reason)}, "Content-Type": {"text/plain; charset=utf-8"}},
		ContentLength: int64(len(body)),
		Close:         true,
		Body:          http.NoBody,
	}
	cc.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	bw := bufio.NewWriterSize(cc.conn, 512)
	resp.Body = nopCloser{stringsReader(body)}
	resp.Write(bw)
	bw.Flush()
	s.record(ctx, o)
}

// record writes the one log line, audit event, metric and observation of
// a decision. Request headers, paths and bodies are never recorded: they
// carry secrets.
func (s *Server) record(ctx context.Context, o *outcome) {
	now := time.Now()
	dur := now.Sub(o.start)
	addr := ""
	if o.addr.IsValid() {
		addr = o.addr.String()
	}
	level := slog.LevelInfo
	if o.decision == decisionDeny {
		level = slog.LevelWarn
	}
	// Build the attributes only for a handler that keeps the line, and
	// hand the record to the handler directly: Logger.LogAttrs would also
	// walk the stack for a source position nobody logs.
	if h := s.log.Handler(); h.Enabled(ctx, level) {
		r := slog.NewRecord(now, level, "egress decision", 0)
		r.AddAttrs(
			slog.String("job", o.job.String()),
			slog.String("decision", o.decision),
			slog.String("reason", string(o.reason)),
			slog.String("host", o.host),
			slog.Int("port", int(o.port)),
			slog.String("addr", addr),
			slog.String("method", o.method),
			slog.Int64("bytes", o.bytesOut+o.bytesIn),
			slog.Duration("duration", dur),
		)
		h.Handle(ctx, r)
	}
	s.m.countDecision(o.decision, o.reason)
	if s.audit != audit.Discard {
		s.emitAudit(o, addr, dur)
	}

	if s.cfg.Observer != nil {
		key := o.rule
		switch {
		case o.decision == decisionDeny:
			key = "denied"
		case key == "":
			key = "unmatched"
		}
		s.cfg.Observer.Observe(Observation{Job: o.job, Key: key, BytesOut: o.bytesOut, BytesIn: o.bytesIn})
	}
}

// emitAudit sends the decision's audit event (skipped, with its ID and
// metadata map, when nobody listens).
func (s *Server) emitAudit(o *outcome, addr string, dur time.Duration) {
	ev := audit.Event{
		Timestamp: o.start.UTC(),
		EventType: "EGRESS_ALLOWED",
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: o.actor, IPAddress: hostOf(o.remote)},
		Resource:  audit.Resource{Type: "EGRESS", ID: o.host + ":" + strconv.Itoa(int(o.port)), TenantID: o.job.Org},
		Action:    o.method,
		Result:    audit.ResultSuccess,
		Metadata: map[string]any{
			"job":         o.job.Job,
			"decision":    o.decision,
			"reason":      string(o.reason),
			"addr":        addr,
			"rule":        o.rule,
			"status":      o.status,
			"bytes":       o.bytesOut + o.bytesIn,
			"bytes_out":   o.bytesOut,
			"bytes_in":    o.bytesIn,
			"duration_ms": dur.Milliseconds(),
		},
	}
	switch o.decision {
	case decisionDeny:
		ev.EventType, ev.Result = "EGRESS_DENIED", audit.ResultDenied
	case decisionWouldDeny:
		ev.Result = audit.ResultWouldDeny
	case decisionError:
		ev.Result = audit.ResultFailure
	}
	s.audit.Emit(ev)
}

func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap().String()
	}
	remote := a.String()
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().String()
	}
	return remote
}
