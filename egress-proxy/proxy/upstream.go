package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/h1"
)

// upstreamPool keeps one job's idle keep-alive connections to upstreams,
// keyed by the address they were dialled at. A connection is only ever
// reused for a request whose policy check produced that same address, and
// never across jobs. Requests are written and responses read on the
// caller's goroutine (no per-connection reader and writer goroutines, as
// net/http.Transport has): one request in flight per connection, HTTP/1.1
// only.
type upstreamPool struct {
	maxIdlePerAddr int
	idleTimeout    time.Duration

	mu        sync.Mutex // guards the following
	idle      map[netip.AddrPort][]*upConn
	closed    bool
	lastSweep time.Time
}

type upConn struct {
	c  net.Conn
	ap netip.AddrPort
	// br reads responses while a request is in flight; an idle pooled
	// connection holds none (its buffer goes back to the server's pool).
	br        *bufio.Reader
	idleSince time.Time
	// rc is c's raw socket for alive's peek; nil when c is not TCP.
	rc syscall.RawConn
}

func newUpstreamPool() *upstreamPool {
	return &upstreamPool{maxIdlePerAddr: 64, idleTimeout: 90 * time.Second, idle: map[netip.AddrPort][]*upConn{}}
}

// get returns an idle connection to one of addrs, or nil. With check, it
// first makes sure the connection is still open and quiet (alive); a
// caller that can replay its request on a new connection skips the
// syscall and retries instead when the reused one turns out closed.
func (p *upstreamPool) get(addrs []netip.AddrPort, check bool) *upConn {
	now := time.Now()
	for _, ap := range addrs {
		for {
			p.mu.Lock()
			list := p.idle[ap]
			if len(list) == 0 {
				p.mu.Unlock()
				break
			}
			uc := list[len(list)-1]
			p.idle[ap] = list[:len(list)-1]
			p.mu.Unlock()
			if now.Sub(uc.idleSince) > p.idleTimeout || check && !uc.alive() {
				uc.c.Close()
				continue
			}
			return uc
		}
	}
	return nil
}

// alive reports whether an idle connection is still open and quiet: an
// upstream that closed it, or sent bytes nobody asked for, makes it
// unusable. On TCP it asks the kernel (one non-blocking MSG_PEEK, no
// deadline; the callback handed to RawConn.Control is allocated); on
// other connections (TLS to a gateway) a closed one is caught by send's
// retry. (Bytes already buffered when the
// connection was pooled made poolUpstream close it.)
func (uc *upConn) alive() bool {
	if uc.rc == nil {
		return true
	}
	quiet := false
	var b [1]byte
	uc.rc.Control(func(fd uintptr) {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			quiet = err == syscall.EAGAIN // anything else: data, end of stream, reset
			return
		}
	})
	return quiet
}

func (p *upstreamPool) put(uc *upConn) {
	uc.idleSince = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[uc.ap]) >= p.maxIdlePerAddr {
		uc.c.Close()
		return
	}
	p.idle[uc.ap] = append(p.idle[uc.ap], uc)
	if uc.idleSince.Sub(p.lastSweep) > p.idleTimeout/4 {
		p.sweepLocked(uc.idleSince)
	}
}

// sweepLocked closes connections idle longer than idleTimeout, so hosts
// that are never asked for again do not hold sockets forever.
func (p *upstreamPool) sweepLocked(now time.Time) {
	p.lastSweep = now
	for ap, list := range p.idle {
		kept := list[:0]
		for _, uc := range list {
			if now.Sub(uc.idleSince) > p.idleTimeout {
				uc.c.Close()
				continue
			}
			kept = append(kept, uc)
		}
		if len(kept) == 0 {
			delete(p.idle, ap)
		} else {
			p.idle[ap] = kept
		}
	}
}

// closeIdle closes every idle connection; with final, later puts close too.
func (p *upstreamPool) closeIdle(final bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ap, list := range p.idle {
		for _, uc := range list {
			uc.c.Close()
		}
		delete(p.idle, ap)
	}
	if final {
		p.closed = true
	}
}

// errUpstreamStale marks a reused connection that failed before any byte
// of a response arrived: a replayable request may be retried on a new one.
var errUpstreamStale = errors.New("reused upstream connection closed")

// maxResponseHead bounds an upstream response head (net/http's client
// allows more; answers with 32 KiB of fields are refused with 502).
const maxResponseHead = 32 << 10

// upstreamAnswer is one request's answer: the connection it came on, the
// response head (aliasing uc.br until headLen bytes are discarded), its
// framing, whether the upstream keeps the connection open, and the
// request body bytes sent. One lives in each clientConn and is reused.
type upstreamAnswer struct {
	uc       *upConn
	resp     h1.Head
	headLen  int
	framing  h1.Framing
	reusable bool
	sent     int64
}

// roundTrip writes the request head and body on uc and reads the final
// response head into ex. A failure before any response byte on a reused
// connection is errUpstreamStale.
func (s *Server) roundTrip(uc *upConn, head []byte, body func(io.Writer) (int64, error), reused, isHead bool, ex *upstreamAnswer) error {
	stale := func(err error) error {
		if reused {
			return errors.Join(errUpstreamStale, err)
		}
		return err
	}
	bw := s.writers.Get().(*bufio.Writer)
	bw.Reset(uc.c)
	_, err := bw.Write(head)
	if err == nil {
		ex.sent, err = body(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	s.writers.Put(bw)
	if err != nil {
		return stale(err)
	}
	for {
		if _, err := uc.br.Peek(1); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return stale(err)
			}
			return err
		}
		n, err := readHead(uc.br, min(maxResponseHead, uc.br.Size()))
		if err != nil {
			return fmt.Errorf("upstream response head: %w", err)
		}
		b, _ := uc.br.Peek(n)
		if err := h1.ParseResponse(b, &ex.resp); err != nil {
			return fmt.Errorf("upstream response head: %w", err)
		}
		// Interim responses are hop-by-hop here (Expect was stripped);
		// 101 is final but Upgrade was stripped too, so refuse it.
		if ex.resp.Status < 200 {
			if ex.resp.Status == http.StatusSwitchingProtocols {
				return errors.New("upstream switched protocols without an upgrade request")
			}
			uc.br.Discard(n)
			continue
		}
		if ex.framing, err = h1.ResponseFraming(&ex.resp, isHead); err != nil {
			return fmt.Errorf("upstream response head: %w", err)
		}
		ex.headLen = n
		if ex.resp.Minor == 1 {
			ex.reusable = !ex.resp.HasToken("Connection", "close")
		} else {
			ex.reusable = ex.resp.HasToken("Connection", "keep-alive")
		}
		return nil
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// send delivers a request (its head, and body writing the body) to one
// of addrs over a pooled or new connection and reads the response head
// into ex. The caller reads the response body from ex.uc.br and then
// gives the connection to poolUpstream or closeUpstream.
func (s *Server) send(ctx context.Context, pool *upstreamPool, addrs []netip.AddrPort, head []byte, body func(io.Writer) (int64, error), replayable, isHead bool, deadline time.Time, ex *upstreamAnswer) error {
	if uc := pool.get(addrs, !replayable); uc != nil {
		uc.br = s.readers.Get().(*bufio.Reader)
		uc.br.Reset(uc.c)
		uc.c.SetDeadline(deadline)
		err := s.roundTrip(uc, head, body, true, isHead, ex)
		if err == nil {
			ex.uc = uc
			return nil
		}
		s.closeUpstream(uc)
		if !replayable || !errors.Is(err, errUpstreamStale) {
			return err
		}
	}
	var c net.Conn
	var ap netip.AddrPort
	var err error
	dctx, cancel := context.WithDeadline(ctx, deadline) // only a dial needs a context
	if s.cfg.Gateway != nil {
		c, err = s.dialGateway(dctx)
	} else {
		c, ap, err = s.dialChecked(dctx, addrs)
	}
	cancel()
	if err != nil {
		return err
	}
	uc := &upConn{c: c, ap: ap}
	if tc, ok := c.(*net.TCPConn); ok {
		uc.rc, _ = tc.SyscallConn()
	}
	uc.br = s.readers.Get().(*bufio.Reader)
	uc.br.Reset(c)
	c.SetDeadline(deadline)
	if err := s.roundTrip(uc, head, body, false, isHead, ex); err != nil {
		s.closeUpstream(uc)
		return err
	}
	ex.uc = uc
	return nil
}

// poolUpstream keeps a connection whose response was read to its end for
// the next request, or closes it if the upstream sent more than it was
// asked for.
func (s *Server) poolUpstream(pool *upstreamPool, uc *upConn) {
	if uc.br.Buffered() > 0 {
		s.closeUpstream(uc)
		return
	}
	s.releaseUpstreamReader(uc)
	pool.put(uc)
}

// closeUpstream closes a connection that is not pooled.
func (s *Server) closeUpstream(uc *upConn) {
	s.releaseUpstreamReader(uc)
	uc.c.Close()
}

func (s *Server) releaseUpstreamReader(uc *upConn) {
	if uc.br != nil {
		uc.br.Reset(nil)
		s.readers.Put(uc.br)
		uc.br = nil
	}
}
