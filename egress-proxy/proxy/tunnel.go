package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/authority"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/egress-proxy/sni"
)

// tunnel serves an allowed CONNECT: dial the checked address (or ask the
// gateway for a tunnel), answer 200, hold the client's first bytes until
// the SNI check passes, then splice.
func (s *Server) tunnel(ctx context.Context, cc *clientConn, report bool, chk checked, o *outcome) {
	dctx, cancel := context.WithTimeout(ctx, s.lim.DialTimeout)
	var up net.Conn
	var ap netip.AddrPort
	var err error
	if s.cfg.Gateway != nil {
		up, err = s.connectViaGateway(dctx, chk.target)
	} else {
		up, ap, err = s.dialChecked(dctx, chk.addrs)
	}
	cancel()
	if err != nil {
		var de *dialError
		o.reason = policy.ReasonDialFailed
		if errors.As(err, &de) {
			o.reason = de.reason
		}
		// A gateway's refusal is a denial; failures to reach are errors.
		o.decision = decisionFor(o.reason)
		s.deny(ctx, cc, o)
		return
	}
	defer up.Close()
	o.addr = ap
	if _, err := cc.conn.Write(connectEstablished); err != nil {
		o.decision, o.reason = decisionError, policy.ReasonUpstreamError
		s.record(ctx, o)
		return
	}
	s.m.openTunnels.Inc()
	defer s.m.openTunnels.Dec()
	deadline := o.start.Add(s.lim.TotalTimeout)
	up.SetDeadline(deadline)

	// Upstream to client starts now: server-speaks-first protocols (SMTP,
	// SSH banners) work, and nothing of the client's reaches upstream
	// before the check below.
	var wg sync.WaitGroup
	var down int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		down, _ = copyTunnel(cc.conn, up, deadline)
		closeWrite(cc.conn)
	}()

	reason := s.checkFirstBytes(cc, chk.target, deadline)
	if reason != policy.ReasonNone && !(report && reason.Overridable()) {
		up.Close()
		cc.conn.Close()
		wg.Wait()
		o.decision, o.reason, o.bytesIn = decisionDeny, reason, down
		s.record(ctx, o)
		return
	}
	if reason != policy.ReasonNone && o.reason == policy.ReasonNone {
		o.decision, o.reason = decisionWouldDeny, reason
	}
	cc.conn.SetReadDeadline(deadline)

	// Forward what the check peeked, give the buffer back, then copy
	// between the raw connections so the kernel can splice (copyTunnel).
	var upBytes int64
	if n := cc.br.Buffered(); n > 0 {
		b, _ := cc.br.Peek(n)
		w, err := up.Write(b)
		upBytes += int64(w)
		if err != nil {
			up.Close()
		}
	}
	s.releaseReader(cc)
	n, err := copyTunnel(up, cc.conn, deadline)
	upBytes += n
	if err != nil {
		up.Close() // a failed direction ends the tunnel
	} else {
		closeWrite(up)
	}
	wg.Wait()
	o.bytesOut, o.bytesIn = upBytes, down
	s.m.bytesUp.Add(float64(upBytes))
	s.m.bytesDown.Add(float64(down))
	s.m.tunnelSeconds.Observe(time.Since(o.start).Seconds())
	s.record(ctx, o)
}

// connectEstablished is the answer to an allowed CONNECT.
var connectEstablished = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// checkFirstBytes applies the SNI rule to the tunnel's first client bytes
// without consuming them: a ClientHello must name the CONNECT host, on any
// port; on port 443 the tunnel must start with one.
//
// On other ports the wait for the first bytes has no deadline of its own
// (server-speaks-first protocols send nothing first): it ends with the
// tunnel's deadline, so a ClientHello sent late is checked all the same.
func (s *Server) checkFirstBytes(cc *clientConn, target authority.Target, deadline time.Time) policy.Reason {
	tlsPort := target.Port == 443
	if tlsPort {
		cc.conn.SetReadDeadline(time.Now().Add(s.lim.ClientHelloTimeout))
	} else {
		cc.conn.SetReadDeadline(deadline)
	}
	hello, err := sni.Peek(cc.br)
	switch {
	case errors.Is(err, sni.ErrNotTLS):
		if tlsPort {
			return policy.ReasonNotTLS
		}
		return policy.ReasonNone
	case errors.Is(err, sni.ErrMalformed):
		return policy.ReasonBadClientHello
	case err != nil:
		if tlsPort || cc.br.Buffered() > 0 || isTimeout(err) {
			// No hello on 443, a partial hello, or the tunnel's time is up.
			return policy.ReasonClientHelloTimeout
		}
		return policy.ReasonNone // client closed having sent nothing
	}
	if hello.HasECH {
		return policy.ReasonECH
	}
	if hello.ServerName == "" {
		if target.IsLiteral() {
			return policy.ReasonNone
		}
		return policy.ReasonSNIMissing
	}
	h, err := authority.ParseHost(hello.ServerName)
	if err != nil || h != target.Host {
		return policy.ReasonSNIMismatch
	}
	return policy.ReasonNone
}
