package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"
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
	// proxyForm writes requests in absolute form: c is a connection to
	// the gateway, not to the destination.
	proxyForm bool
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	// rc is c's raw socket for alive's peek; nil when c is not TCP.
	rc syscall.RawConn
}

func newUpstreamPool() *upstreamPool {
	return &upstreamPool{maxIdlePerAddr: 64, idleTimeout: 90 * time.Second, idle: map[netip.AddrPort][]*upConn{}}
}

// get returns a live idle connection to one of addrs, or nil.
func (p *upstreamPool) get(addrs []netip.AddrPort) *upConn {
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
			if now.Sub(uc.idleSince) > p.idleTimeout || !uc.alive() {
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
// deadline and no allocation); other connections (TLS to a gateway) only
// show what they buffered, and a closed one is caught by send's retry.
func (uc *upConn) alive() bool {
	if uc.br.Buffered() > 0 {
		return false
	}
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
// of a response arrived: a bodiless request may be retried on a new one.
var errUpstreamStale = errors.New("reused upstream connection closed")

// roundTrip sends out on uc and reads the response head. The response
// body reads from uc.br.
func roundTrip(uc *upConn, out *http.Request, reused bool) (*http.Response, error) {
	write := out.Write
	if uc.proxyForm {
		write = out.WriteProxy
	}
	if err := write(uc.bw); err != nil {
		if reused {
			return nil, errors.Join(errUpstreamStale, err)
		}
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		if reused {
			return nil, errors.Join(errUpstreamStale, err)
		}
		return nil, err
	}
	for {
		if _, err := uc.br.Peek(1); err != nil {
			if reused && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)) {
				return nil, errors.Join(errUpstreamStale, err)
			}
			return nil, err
		}
		resp, err := http.ReadResponse(uc.br, out)
		if err != nil {
			return nil, err
		}
		// Interim responses are hop-by-hop here (Expect was stripped);
		// 101 is final but Upgrade was stripped too, so refuse it.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return nil, errors.New("upstream switched protocols without an upgrade request")
			}
			continue
		}
		return resp, nil
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// send delivers out to one of addrs over a pooled or new connection. The
// caller reads the response body and then calls release.
func (s *Server) send(ctx context.Context, pool *upstreamPool, addrs []netip.AddrPort, out *http.Request, deadline time.Time) (resp *http.Response, uc *upConn, err error) {
	replayable := out.Body == nil || out.Body == http.NoBody
	if uc = pool.get(addrs); uc != nil {
		uc.c.SetDeadline(deadline)
		resp, err = roundTrip(uc, out, true)
		if err == nil {
			return resp, uc, nil
		}
		uc.c.Close()
		if !replayable || !errors.Is(err, errUpstreamStale) {
			return nil, nil, err
		}
	}
	var c net.Conn
	var ap netip.AddrPort
	dctx, cancel := context.WithDeadline(ctx, deadline) // only a dial needs a context
	if s.cfg.Gateway != nil {
		c, err = s.dialGateway(dctx)
	} else {
		c, ap, err = s.dialChecked(dctx, addrs)
	}
	cancel()
	if err != nil {
		return nil, nil, err
	}
	uc = &upConn{c: c, ap: ap, proxyForm: s.cfg.Gateway != nil, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}
	if tc, ok := c.(*net.TCPConn); ok {
		uc.rc, _ = tc.SyscallConn()
	}
	c.SetDeadline(deadline)
	resp, err = roundTrip(uc, out, false)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return resp, uc, nil
}
