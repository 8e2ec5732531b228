// Package dnstest runs a real DNS server (github.com/miekg/dns) on a
// loopback UDP port with answers a test can change between queries, for
// rebinding and flip-flop tests of the egress proxy. It is for tests only.
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server is an authoritative-for-everything DNS server on 127.0.0.1.
type Server struct {
	Addr string // "127.0.0.1:PORT"

	mu      sync.Mutex // guards the following
	ttl     map[string]uint32
	answers map[string][][]netip.Addr
	queries map[string]map[uint16]int // by name and query type
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dnstest: listen: %v", err)
	}
	s := &Server{Addr: pc.LocalAddr().String(), answers: map[string][][]netip.Addr{}, ttl: map[string]uint32{}, queries: map[string]map[uint16]int{}}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return s
}

// Set makes name answer with addrs on every query.
func (s *Server) Set(name string, addrs ...string) { s.Sequence(name, addrs) }

// Sequence makes the n-th A query for name answer with the IPv4 addresses
// of seq[n], and the n-th AAAA query with its IPv6 ones; the last entry
// repeats.
func (s *Server) Sequence(name string, seq ...[]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rounds [][]netip.Addr
	for _, addrs := range seq {
		var r []netip.Addr
		for _, a := range addrs {
			r = append(r, netip.MustParseAddr(a))
		}
		rounds = append(rounds, r)
	}
	key := dns.Fqdn(strings.ToLower(name))
	s.answers[key] = rounds
	s.queries[key] = map[uint16]int{}
}

// SetTTL makes name's answers carry ttl seconds (the default is 0: never
// cached).
func (s *Server) SetTTL(name string, ttl uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl[dns.Fqdn(strings.ToLower(name))] = ttl
}

// Queries is how many A queries name received.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.Fqdn(strings.ToLower(name))][dns.TypeA]
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	key := strings.ToLower(q.Name)
	s.mu.Lock()
	rounds, ok := s.answers[key]
	ttl := s.ttl[key]
	var n int
	if ok {
		n = s.queries[key][q.Qtype]
		s.queries[key][q.Qtype]++
	}
	s.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	round := rounds[min(n, len(rounds)-1)]
	for _, a := range round {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
		switch {
		case a.Is4() && q.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && q.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	w.WriteMsg(m)
}
