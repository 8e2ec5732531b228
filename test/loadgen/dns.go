package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// DNSConfig configures the in-process DNS server that gives the upstream a
// name, so a proxy under test goes through its normal resolve path.
type DNSConfig struct {
	// Listen is the UDP and TCP address. If empty, "127.0.0.1:0". It must be
	// loopback.
	Listen string
	// Name is the one name answered (case-insensitive, trailing dot
	// optional). Required.
	Name string
	// Addr is the IPv4 address Name resolves to. Required.
	Addr netip.Addr
	// Logger receives server errors. If nil, logs are discarded.
	Logger *slog.Logger
}

// DNSServer answers A queries for one name with one address, AAAA (and other
// types) for that name with an empty answer, and NXDOMAIN for every other
// name, over UDP and TCP.
type DNSServer struct {
	udp, tcp *dns.Server
	addr     netip.AddrPort
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error
}

// StartDNS binds UDP and TCP on the same port and serves until Close.
func StartDNS(cfg DNSConfig) (*DNSServer, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if err := requireLoopback(cfg.Listen); err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	if cfg.Name == "" || !cfg.Addr.Is4() {
		return nil, fmt.Errorf("start dns: need a name and an IPv4 address, got %q and %v", cfg.Name, cfg.Addr)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pc, ln, err := listenUDPAndTCP(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	fqdn := dns.Fqdn(strings.ToLower(cfg.Name))
	a := cfg.Addr.As4()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) != 1 || !strings.EqualFold(req.Question[0].Name, fqdn) {
			m.Rcode = dns.RcodeNameError
		} else if q := req.Question[0]; q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IP(a[:]),
			})
		}
		if err := w.WriteMsg(m); err != nil {
			cfg.Logger.Debug("dns write answer", "error", err)
		}
	})
	s := &DNSServer{
		udp:  &dns.Server{PacketConn: pc, Handler: handler},
		tcp:  &dns.Server{Listener: ln, Handler: handler},
		addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(),
	}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				cfg.Logger.Warn("dns serve", "error", err)
			}
		}()
		<-started
	}
	return s, nil
}

// listenUDPAndTCP binds TCP first (a random TCP port is the scarce one on a
// machine busy with load tests), then UDP on the same port, retrying with a
// fresh port when that UDP port is taken.
func listenUDPAndTCP(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 50 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return pc, ln, nil
		}
		ln.Close()
		lastErr = err
		if !strings.HasSuffix(addr, ":0") {
			break
		}
	}
	return nil, nil, fmt.Errorf("listen udp next to tcp on %s: %w", addr, lastErr)
}

// Addr is the server's address (the same port for UDP and TCP).
func (s *DNSServer) Addr() netip.AddrPort { return s.addr }

// Close shuts both servers down and waits for them. It is safe to call more
// than once.
func (s *DNSServer) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.closeErr = errors.Join(s.udp.ShutdownContext(ctx), s.tcp.ShutdownContext(ctx))
		s.wg.Wait()
	})
	return s.closeErr
}
