package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"
)

// UpstreamConfig configures the loopback HTTP upstream.
type UpstreamConfig struct {
	// Listen is the TCP address to listen on. If empty, "127.0.0.1:0".
	// It must be a loopback address.
	Listen string
	// SmallSize is the body size of GET /small. If zero, 100 bytes.
	SmallSize int
	// BigSize is the body size of GET /big. If zero, 1 GiB.
	BigSize int64
	// Logger receives connection errors. If nil, logs are discarded.
	Logger *slog.Logger
}

// bigChunk is the size of the temp file /big is served from: the body is the
// file sent BigSize/bigChunk times with sendfile, so 1 GiB costs 64 MiB of
// page cache and no user-space copy.
var bigChunk int64 = 64 << 20 // a variable so tests can exercise the repeat loop cheaply

// Upstream is a minimal HTTP/1.1 origin server for load tests: GET /small
// answers a fixed small body, GET /big streams BigSize bytes with sendfile,
// anything else is 404. It keeps connections alive unless asked not to, and
// holds any number of idle connections.
type Upstream struct {
	ln       net.Listener
	log      *slog.Logger
	small    []byte // the complete /small response, keep-alive
	smallEnd []byte // the same with Connection: close
	bigHead  []byte
	bigSize  int64
	bigPath  string
	wg       sync.WaitGroup

	mu     sync.Mutex // guards the following
	conns  map[net.Conn]struct{}
	closed bool
}

// StartUpstream listens and serves until Close.
func StartUpstream(cfg UpstreamConfig) (*Upstream, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.SmallSize == 0 {
		cfg.SmallSize = 100
	}
	if cfg.BigSize == 0 {
		cfg.BigSize = 1 << 30
	}
	if cfg.SmallSize < 0 || cfg.BigSize < 0 {
		return nil, fmt.Errorf("start upstream: negative body size (small %d, big %d)", cfg.SmallSize, cfg.BigSize)
	}
	if err := requireLoopback(cfg.Listen); err != nil {
		return nil, fmt.Errorf("start upstream: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	bigPath, err := writeBigChunk(min(cfg.BigSize, bigChunk))
	if err != nil {
		return nil, fmt.Errorf("start upstream: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		os.Remove(bigPath)
		return nil, fmt.Errorf("start upstream: listen on %s: %w", cfg.Listen, err)
	}
	body := bytes.Repeat([]byte{'x'}, cfg.SmallSize)
	head := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(cfg.SmallSize) + "\r\n"
	u := &Upstream{
		ln:       ln,
		log:      cfg.Logger,
		small:    append([]byte(head+"\r\n"), body...),
		smallEnd: append([]byte(head+"Connection: close\r\n\r\n"), body...),
		bigHead:  []byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " + strconv.FormatInt(cfg.BigSize, 10) + "\r\n\r\n"),
		bigSize:  cfg.BigSize,
		bigPath:  bigPath,
		conns:    make(map[net.Conn]struct{}),
	}
	u.wg.Add(1)
	go u.acceptLoop()
	return u, nil
}

// requireLoopback refuses to serve or send anywhere but loopback.
func requireLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("address %q: %w", hostport, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback IP literal: load traffic stays on loopback", hostport)
	}
	return nil
}

func writeBigChunk(size int64) (string, error) {
	f, err := os.CreateTemp("", "cordon-loadgen-big-*")
	if err != nil {
		return "", fmt.Errorf("create body file: %w", err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", fmt.Errorf("write body file %s: %w", f.Name(), err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write body file %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

// Addr is the address the upstream listens on.
func (u *Upstream) Addr() netip.AddrPort {
	return u.ln.Addr().(*net.TCPAddr).AddrPort()
}

// OpenConns is the number of connections currently held.
func (u *Upstream) OpenConns() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// Close stops listening, closes every connection, waits for their
// goroutines and removes the body file. It is safe to call more than once.
func (u *Upstream) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	err := u.ln.Close()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
	if rerr := os.Remove(u.bigPath); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func (u *Upstream) acceptLoop() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			u.log.Warn("upstream accept", "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			c.Close()
			return
		}
		u.conns[c] = struct{}{}
		u.wg.Add(1)
		u.mu.Unlock()
		go u.serve(c)
	}
}

func (u *Upstream) serve(c net.Conn) {
	defer u.wg.Done()
	defer func() {
		c.Close()
		u.mu.Lock()
		delete(u.conns, c)
		u.mu.Unlock()
	}()
	br := bufio.NewReaderSize(c, 4096)
	for {
		h, err := readRequestHead(br)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				u.log.Debug("upstream read request", "error", err)
			}
			return
		}
		if h.bodyLength < 0 {
			c.Write([]byte("HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			return
		}
		if h.bodyLength > 0 {
			if _, err := br.Discard(int(h.bodyLength)); err != nil {
				return
			}
		}
		switch {
		case !h.get:
			c.Write([]byte("HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			return
		case h.path == pathSmall && h.close:
			c.Write(u.smallEnd)
			return
		case h.path == pathSmall:
			if _, err := c.Write(u.small); err != nil {
				return
			}
		case h.path == pathBig:
			if err := u.writeBig(c); err != nil {
				u.log.Debug("upstream write big body", "error", err)
				return
			}
			if h.close {
				return
			}
		default:
			c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			return
		}
	}
}

// writeBig sends the /big response: the head, then the body file over and
// over. io.Copy from an *os.File to a *net.TCPConn is sendfile(2).
func (u *Upstream) writeBig(c net.Conn) error {
	if _, err := c.Write(u.bigHead); err != nil {
		return err
	}
	f, err := os.Open(u.bigPath)
	if err != nil {
		return fmt.Errorf("open body file: %w", err)
	}
	defer f.Close()
	for left := u.bigSize; left > 0; {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("rewind body file: %w", err)
		}
		n, err := io.Copy(c, &io.LimitedReader{R: f, N: min(left, bigChunk)})
		left -= n
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("body file %s shrank", u.bigPath)
		}
	}
	return nil
}
