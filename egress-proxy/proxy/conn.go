package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/h1"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// clientConn is one accepted client connection. raw is the accepted
// socket (a *net.TCPConn for plain listeners, used for splice); conn is
// what the client speaks HTTP on (raw, or a *tls.Conn over it).
type clientConn struct {
	raw   net.Conn
	conn  net.Conn
	br    *bufio.Reader
	job   JobRef
	actor string
	ex    upstreamAnswer // the current request's upstream answer
}

// releaseReader returns the read buffer to the pool once nothing is left
// in it (a tunnel forwarded the buffered bytes). Idempotent.
func (s *Server) releaseReader(cc *clientConn) {
	if cc.br != nil {
		cc.br.Reset(nil)
		s.readers.Put(cc.br)
		cc.br = nil
	}
}

var errHeadTooLarge = errors.New("request head too large")

// serveConn reads requests from one client connection until it closes,
// fails, or a tunnel takes it over.
func (s *Server) serveConn(ctx context.Context, raw, conn net.Conn, idle *atomic.Bool, job JobRef, actor string) {
	cc := &clientConn{raw: raw, conn: conn, job: job, actor: actor}
	cc.br = s.readers.Get().(*bufio.Reader)
	cc.br.Reset(conn)
	defer s.releaseReader(cc)
	var req request // its Fields are reused from one request to the next
	for {
		if !s.setIdle(idle, true) {
			return
		}
		conn.SetReadDeadline(time.Now().Add(s.lim.IdleTimeout))
		if _, err := cc.br.Peek(1); err != nil {
			return
		}
		if !s.setIdle(idle, false) {
			return
		}
		start := time.Now()
		// The usual request arrives whole in its first segment; only a head
		// still arriving (or too long) goes through readHead, under its
		// own deadline.
		var err error
		buf, _ := cc.br.Peek(cc.br.Buffered())
		n := h1.HeadEnd(buf, 0)
		if n == 0 || n > s.lim.MaxHeaderBytes {
			conn.SetReadDeadline(start.Add(s.lim.HeaderReadTimeout))
			n, err = readHead(cc.br, s.lim.MaxHeaderBytes)
		}
		if err != nil {
			o := &outcome{job: job, actor: actor, remote: raw.RemoteAddr(), start: start, decision: decisionDeny, reason: policy.ReasonBadRequest}
			if errors.Is(err, errHeadTooLarge) {
				o.reason = policy.ReasonHeaderTooLarge
			} else if isTimeout(err) || errors.Is(err, errEOF) {
				return // slow or vanished client: nothing was asked
			}
			s.deny(ctx, cc, o)
			return
		}
		head, _ := cc.br.Peek(n)
		if err := h1.ParseRequest(head, &req.Head); err != nil {
			s.deny(ctx, cc, &outcome{job: job, actor: actor, remote: raw.RemoteAddr(), start: start, decision: decisionDeny, reason: policy.ReasonBadRequest})
			return
		}
		req.headLen = n
		conn.SetDeadline(start.Add(s.lim.TotalTimeout))
		// The write deadline outlives the request: nothing is written to
		// an idle connection, and the next request sets its own.
		if !s.handle(ctx, cc, &req, start) {
			return
		}
	}
}

var errEOF = errors.New("connection closed before the request head ended")

// readHead waits until br holds a whole message head (ending in an empty
// line) of at most limit bytes, without consuming it, and returns its
// length.
func readHead(br *bufio.Reader, limit int) (int, error) {
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if end := h1.HeadEnd(buf, searched); end > 0 {
			if end > limit {
				return 0, errHeadTooLarge
			}
			return end, nil
		}
		searched = len(buf)
		if len(buf) >= limit {
			return 0, errHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if isTimeout(err) {
				return 0, err
			}
			return 0, errEOF
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
