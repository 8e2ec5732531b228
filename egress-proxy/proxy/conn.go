package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

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

// headInfo is what the raw request head says that net/http hides: the
// Host header (net/http deletes it) and framing ambiguities.
type headInfo struct {
	hosts   [][]byte
	hasCL   bool
	hasTE   bool
	obsFold bool
}

var errHeadTooLarge = errors.New("request head too large")

// serveConn reads requests from one client connection until it closes,
// fails, or a tunnel takes it over.
func (s *Server) serveConn(ctx context.Context, raw, conn net.Conn, idle *atomic.Bool, job JobRef, actor string) {
	cc := &clientConn{raw: raw, conn: conn, job: job, actor: actor}
	cc.br = s.readers.Get().(*bufio.Reader)
	cc.br.Reset(conn)
	defer s.releaseReader(cc)
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
		conn.SetReadDeadline(start.Add(s.lim.HeaderReadTimeout))
		info, err := s.readHead(cc.br)
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
		req, err := http.ReadRequest(cc.br)
		if err != nil {
			s.deny(ctx, cc, &outcome{job: job, actor: actor, remote: raw.RemoteAddr(), start: start, decision: decisionDeny, reason: policy.ReasonBadRequest})
			return
		}
		conn.SetReadDeadline(start.Add(s.lim.TotalTimeout))
		conn.SetWriteDeadline(start.Add(s.lim.TotalTimeout))
		// The write deadline outlives the request: nothing is written to
		// an idle connection, and the next request sets its own.
		if !s.handle(ctx, cc, req, info, start) {
			return
		}
	}
}

var errEOF = errors.New("connection closed before the request head ended")

// readHead waits until the buffer holds a whole request head (ending in an
// empty line) without consuming it, and scans it.
func (s *Server) readHead(br *bufio.Reader) (headInfo, error) {
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if end := headEnd(buf, max(0, searched-2)); end > 0 {
			return scanHead(buf[:end]), nil
		}
		searched = len(buf)
		if len(buf) >= s.lim.MaxHeaderBytes {
			return headInfo{}, errHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if isTimeout(err) {
				return headInfo{}, err
			}
			return headInfo{}, errEOF
		}
	}
}

// headEnd returns the length of the head in buf (through its empty line),
// or 0 when buf does not hold a whole head yet.
func headEnd(buf []byte, from int) int {
	for i := from; i < len(buf); i++ {
		if buf[i] != '\n' {
			continue
		}
		if i+1 < len(buf) && buf[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n' {
			return i + 3
		}
	}
	return 0
}

// scanHead finds the header fields the proxy must see raw. net/http
// parses the same bytes afterwards and rejects what is malformed.
func scanHead(head []byte) headInfo {
	var info headInfo
	rest := head
	for i := 0; len(rest) > 0; i++ {
		line := rest
		if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
			line, rest = rest[:nl], rest[nl+1:]
		} else {
			rest = nil
		}
		if i == 0 {
			continue // request line
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			info.obsFold = true
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name := line[:colon]
		value := bytes.Trim(line[colon+1:], " \t")
		switch {
		case bytes.EqualFold(name, []byte("host")):
			info.hosts = append(info.hosts, value)
		case bytes.EqualFold(name, []byte("content-length")):
			info.hasCL = true
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			info.hasTE = true
		}
	}
	return info
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
