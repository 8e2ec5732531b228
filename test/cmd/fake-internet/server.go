package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Config configures the fake internet. Every address is host:port; an
// empty address turns that server off.
type Config struct {
	// HTTPAddr is the plain HTTP listener. If empty, none.
	HTTPAddr string
	// HTTPSAddr is the HTTPS listener (self-signed certificate covering
	// Names and "localhost"). If empty, none.
	HTTPSAddr string
	// UDPEchoAddr echoes every datagram back to its sender. If empty, none.
	UDPEchoAddr string
	// DNSAddr serves A records for Names over UDP and TCP. If empty, none.
	DNSAddr string
	// Names maps lowercase names without a trailing dot to the IPv4 address
	// they resolve to. If nil, the DNS server answers NXDOMAIN to everything.
	Names map[string]netip.Addr
	// CAOut is where the HTTPS certificate is written as PEM. If empty,
	// nowhere.
	CAOut string
	// Out receives one JSON line per request received. If nil, io.Discard.
	Out io.Writer
	// Logger receives server errors. If nil, discarded.
	Logger *slog.Logger
}

// Record is the JSON line written for every HTTP(S) request received: what
// actually crossed the sandbox boundary, for a test to inspect.
type Record struct {
	Time    time.Time           `json:"time"`
	Scheme  string              `json:"scheme"`
	Method  string              `json:"method"`
	Host    string              `json:"host"`
	Path    string              `json:"path"`
	Query   string              `json:"query,omitempty"`
	SNI     string              `json:"sni,omitempty"`
	Remote  string              `json:"remote"`
	Headers map[string][]string `json:"headers,omitempty"`
	// Body is the first maxRecordedBody bytes of the request body.
	Body string `json:"body,omitempty"`
}

const maxRecordedBody = 4096

// Server is a running fake internet. Close stops every listener and waits
// for its goroutines.
type Server struct {
	cfg     Config
	wg      sync.WaitGroup
	closers []func() error
	addrs   map[string]net.Addr
	caPEM   []byte

	outMu sync.Mutex // guards writes to cfg.Out
	once  sync.Once
}

// Start binds every configured listener and serves in the background.
func Start(cfg Config) (_ *Server, err error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, addrs: map[string]net.Addr{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
		}
		s.serveHTTP("http", ln)
	}
	if cfg.HTTPSAddr != "" {
		cert, caPEM, err := selfSigned(cfg.Names)
		if err != nil {
			return nil, err
		}
		s.caPEM = caPEM
		if cfg.CAOut != "" {
			if err := os.WriteFile(cfg.CAOut, caPEM, 0o644); err != nil {
				return nil, fmt.Errorf("write certificate to --ca-out %s: %w", cfg.CAOut, err)
			}
		}
		ln, err := net.Listen("tcp", cfg.HTTPSAddr)
		if err != nil {
			return nil, fmt.Errorf("listen https %s: %w", cfg.HTTPSAddr, err)
		}
		s.serveHTTP("https", tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}))
	}
	if cfg.UDPEchoAddr != "" {
		pc, err := net.ListenPacket("udp", cfg.UDPEchoAddr)
		if err != nil {
			return nil, fmt.Errorf("listen udp echo %s: %w", cfg.UDPEchoAddr, err)
		}
		s.serveEcho(pc)
	}
	if cfg.DNSAddr != "" {
		if err := s.serveDNS(cfg.DNSAddr); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Run serves until ctx ends, then closes.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(cfg)
	if err != nil {
		return err
	}
	cfg.Logger.Info("fake internet serving", "addrs", fmt.Sprint(s.addrs))
	<-ctx.Done()
	return s.Close()
}

// Addr returns the bound address of "http", "https", "udp-echo" or "dns",
// or nil when that server is off.
func (s *Server) Addr(kind string) net.Addr { return s.addrs[kind] }

// CertPEM is the HTTPS certificate, or nil when HTTPS is off.
func (s *Server) CertPEM() []byte { return s.caPEM }

// Close stops every server and waits for them. It is idempotent.
func (s *Server) Close() error {
	var errs []error
	s.once.Do(func() {
		for _, c := range s.closers {
			if err := c(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
		s.wg.Wait()
	})
	return errors.Join(errs...)
}

func (s *Server) serveHTTP(scheme string, ln net.Listener) {
	s.addrs[scheme] = ln.Addr()
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handle(scheme, w, r) }),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			return srv.Close()
		}
		return nil
	})
	s.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Warn("http server stopped", "scheme", scheme, "err", err)
		}
	})
}

func (s *Server) handle(scheme string, w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxRecordedBody))
	rec := Record{
		Time:    time.Now().UTC(),
		Scheme:  scheme,
		Method:  r.Method,
		Host:    r.Host,
		Path:    r.URL.Path,
		Query:   r.URL.RawQuery,
		Remote:  r.RemoteAddr,
		Headers: r.Header,
		Body:    string(body),
	}
	if r.TLS != nil {
		rec.SNI = r.TLS.ServerName
	}
	line, err := json.Marshal(rec)
	if err == nil {
		s.outMu.Lock()
		_, err = s.cfg.Out.Write(append(line, '\n'))
		s.outMu.Unlock()
	}
	if err != nil {
		s.cfg.Logger.Warn("record request", "err", err)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"fake_internet\":true,\"host\":%q,\"path\":%q}\n", r.Host, r.URL.Path)
}

func (s *Server) serveEcho(pc net.PacketConn) {
	s.addrs["udp-echo"] = pc.LocalAddr()
	s.closers = append(s.closers, pc.Close)
	s.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				s.cfg.Logger.Warn("udp echo", "err", err)
			}
		}
	})
}

func (s *Server) serveDNS(addr string) error {
	pc, ln, err := listenUDPAndTCP(addr)
	if err != nil {
		return err
	}
	s.addrs["dns"] = pc.LocalAddr()
	h := dns.HandlerFunc(s.answer)
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
				s.cfg.Logger.Warn("dns server stopped", "err", err)
			}
		})
		select {
		case <-started:
			s.closers = append(s.closers, srv.Shutdown)
		case err := <-failed:
			return fmt.Errorf("serve dns on %s: %w", pc.LocalAddr(), err)
		}
	}
	return nil
}

// listenUDPAndTCP binds UDP and TCP on one port. When addr asks the
// kernel for a port (":0"), the TCP side of the port it picked for UDP may
// be taken: try a few picks.
func listenUDPAndTCP(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns address %q: %w", addr, err)
	}
	tries := 1
	if port == "0" {
		tries = 20
	}
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen dns udp %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if i+1 >= tries {
			return nil, nil, fmt.Errorf("listen dns tcp %s: %w", pc.LocalAddr(), err)
		}
	}
}

func (s *Server) answer(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	qq := q.Question[0]
	ip, ok := s.cfg.Names[canonicalName(qq.Name)]
	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
	case qq.Qtype == dns.TypeA && qq.Qclass == dns.ClassINET:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   ip.AsSlice(),
		})
	}
	// Other types of a known name: an empty NOERROR answer.
	if err := w.WriteMsg(m); err != nil {
		s.cfg.Logger.Warn("dns reply", "err", err)
	}
}

func canonicalName(n string) string { return strings.TrimSuffix(strings.ToLower(n), ".") }

// selfSigned makes an ECDSA certificate for names, "localhost" and
// 127.0.0.1 that is its own CA, so a client trusts it with one PEM file.
func selfSigned(names map[string]netip.Addr) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate certificate key: %w", err)
	}
	dnsNames := []string{"localhost"}
	for n := range names {
		dnsNames = append(dnsNames, n)
	}
	sort.Strings(dnsNames)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "fake-internet"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dnsNames,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("create certificate: %w", err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemBytes, nil
}
