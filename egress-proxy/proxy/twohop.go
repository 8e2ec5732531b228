package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/cordon-dev/cordon/egress-proxy/authority"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/mtls"
)

// GatewayUpstream sends the traffic a sidecar allowed on through the
// cordon-egress gateway instead of to the destination (DESIGN.md, "How a
// task runs", step 3: both hops check). The sidecar then never resolves or
// dials a destination: the gateway checks the job's policy again (from the
// sidecar's SVID), resolves, classifies and dials.
//
//   - A CONNECT is sent on as "CONNECT host:port" over a new mTLS
//     connection to the gateway; once the gateway answers 200 the sidecar
//     still applies its SNI check to the client's first bytes, then copies
//     between the client and the gateway connection.
//   - A plain HTTP request is sent on in absolute form ("GET http://h/p")
//     over a pooled keep-alive mTLS connection to the gateway, which
//     serves it as any proxy client's request.
//   - A refusal of the gateway (any answer carrying X-Cordon-Deny-Reason)
//     reaches the job as the sidecar's own refusal with the gateway's
//     reason code as is: the job sees one table of codes whether one or
//     two proxies checked. A code the sidecar does not know becomes
//     gateway_error (502), so the sidecar's metric labels stay bounded.
//   - The gateway unreachable, or its handshake failing, is
//     gateway_unreachable (502).
//
// The gateway strips X-Cordon-Deny-Reason from destination responses, so
// a destination cannot forge a gateway refusal.
type GatewayUpstream struct {
	// Addr is the gateway's host:port (its mTLS listener). Required.
	Addr string
	// TLS is the client side of the mTLS connection: the sidecar's SVID,
	// TLS 1.3, and only the gateway's SPIFFE ID authorised.
	// GatewayClientTLSConfig builds one. Required.
	TLS *tls.Config
}

// GatewayClientTLSConfig is the mTLS client config for GatewayUpstream:
// the sidecar presents its SVID and accepts only a server presenting
// exactly gateway (spiffe://TD/cordon/egress-gateway), TLS 1.3 only.
func GatewayClientTLSConfig(svid x509svid.Source, bundle x509bundle.Source, gateway spiffeid.ID) *tls.Config {
	return mtls.ClientConfig(svid, bundle, gateway)
}

func (g *GatewayUpstream) validate() error {
	if g.Addr == "" {
		return errors.New("gateway upstream: Addr is required")
	}
	if _, _, err := net.SplitHostPort(g.Addr); err != nil {
		return fmt.Errorf("gateway upstream %q: want HOST:PORT", g.Addr)
	}
	if g.TLS == nil || g.TLS.MinVersion < tls.VersionTLS13 ||
		(len(g.TLS.Certificates) == 0 && g.TLS.GetClientCertificate == nil) ||
		(g.TLS.InsecureSkipVerify && g.TLS.VerifyPeerCertificate == nil) {
		return errors.New("gateway upstream: TLS must present a client certificate, verify the gateway and require TLS 1.3 (use GatewayClientTLSConfig)")
	}
	return nil
}

// gatewayKey is the pool key of keep-alive connections to the gateway
// (a sidecar's pool holds nothing else in two-hop mode).
var gatewayKey = []netip.AddrPort{{}}

// dialGateway opens an mTLS connection to the gateway.
func (s *Server) dialGateway(ctx context.Context) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.lim.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	c, err := d.DialContext(ctx, "tcp", s.cfg.Gateway.Addr)
	if err != nil {
		return nil, &dialError{reason: policy.ReasonGatewayUnreachable, err: err}
	}
	tc := tls.Client(c, s.cfg.Gateway.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, &dialError{reason: policy.ReasonGatewayUnreachable, err: fmt.Errorf("mtls handshake with gateway %s: %w", s.cfg.Gateway.Addr, err)}
	}
	return tc, nil
}

// gatewayRefusal is the reason of a gateway answer that refused the
// request (v is its X-Cordon-Deny-Reason), or ReasonNone when it is not
// a refusal.
func gatewayRefusal(v string) policy.Reason {
	if v == "" {
		return policy.ReasonNone
	}
	if r := policy.Reason(v); r.Known() {
		return r
	}
	return policy.ReasonGatewayError
}

// bufConn reads through a bufio.Reader that may hold bytes already read
// from the connection.
type bufConn struct {
	net.Conn
	br *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.br.Read(p) }

// CloseWrite half-closes a TLS connection (close_notify), so the far side
// sees the end of the client's stream.
func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// connectViaGateway asks the gateway for a tunnel to target. On success
// the returned connection carries the tunnel; otherwise the error is a
// *dialError with the reason to answer the client.
func (s *Server) connectViaGateway(ctx context.Context, target authority.Target) (net.Conn, error) {
	tc, err := s.dialGateway(ctx)
	if err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Now().Add(s.lim.DialTimeout))
	hp := target.String()
	if _, err := fmt.Fprintf(tc, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hp, hp); err != nil {
		tc.Close()
		return nil, &dialError{reason: policy.ReasonGatewayUnreachable, err: err}
	}
	br := bufio.NewReaderSize(tc, 4096)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		tc.Close()
		return nil, &dialError{reason: policy.ReasonGatewayError, err: fmt.Errorf("read gateway answer: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		tc.Close()
		r := gatewayRefusal(resp.Header.Get(DenyReasonHeader))
		if r == policy.ReasonNone {
			r = policy.ReasonGatewayError
		}
		return nil, &dialError{reason: r, err: fmt.Errorf("gateway answered %s", resp.Status)}
	}
	tc.SetDeadline(time.Time{})
	return &bufConn{Conn: tc, br: br}, nil
}
