package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// RelayConfig configures Relay.
type RelayConfig struct {
	// Listen is the relay's address (loopback).
	Listen string
	// To is where every accepted connection is relayed.
	To netip.AddrPort
	// EnvFile, if set, receives RELAY_ADDR=ip:port once listening.
	EnvFile string
	Logger  *slog.Logger
}

// Relay is the least any proxy does: for each accepted connection it dials
// To and copies bytes both ways (relayCopy) until either side closes. It
// reads no HTTP, checks nothing and logs nothing per request. Measured as
// a target of its own, it shows how much of a proxy's cost on this machine
// is only the second TCP hop every proxy adds: the kernel work of a second
// pair of sockets, on the same CPUs as the load and the upstream. It runs
// until ctx ends.
func Relay(ctx context.Context, cfg RelayConfig) error {
	if ap, err := netip.ParseAddrPort(cfg.Listen); err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("relay: listen address %q is not a loopback IP:port", cfg.Listen)
	}
	if !cfg.To.Addr().IsLoopback() {
		return fmt.Errorf("relay: --to %s is not loopback", cfg.To)
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if cfg.EnvFile != "" {
		if err := writeEnvFile(cfg.EnvFile, "RELAY_ADDR="+l.Addr().String()+"\n"); err != nil {
			l.Close()
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		wg.Go(func() {
			defer c.Close()
			u, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(cfg.To))
			if err != nil {
				if cfg.Logger != nil {
					cfg.Logger.Warn("relay: dial", "err", err)
				}
				return
			}
			defer u.Close()
			// When ctx ends, both connections close and both copies end.
			stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
			defer stop()
			var half sync.WaitGroup
			half.Go(func() {
				relayCopy(u, c.(*net.TCPConn))
				u.CloseWrite()
			})
			relayCopy(c.(*net.TCPConn), u)
			c.(*net.TCPConn).CloseWrite()
			half.Wait()
		})
	}
}

// relayCopy copies src to dst the cheapest way for the traffic it sees:
// read and write through a buffer while reads are small (one request or
// response at a time: splice would cost two syscalls and a pipe per
// message), then, from the first read that fills the buffer (bulk data),
// io.Copy, which splices between TCP connections. cordon-egress does the
// same: buffered HTTP, spliced tunnels.
func relayCopy(dst, src *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
		if n == len(buf) {
			io.Copy(dst, src)
			return
		}
	}
}
