// Package resolve looks up every A and AAAA address of a name for the
// egress proxy, either through a configured DNS server (--dns-server, with
// github.com/miekg/dns) or through the system resolver.
//
// It returns all answers so the caller can classify each one: the proxy
// then dials only an address it checked, never resolving again. It does not
// cache (the proxy's decisions must see what the resolver says now) and it
// does not decide whether an address is acceptable.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// ErrNotFound means the name has no A or AAAA record.
var ErrNotFound = errors.New("no address for name")

// DNS queries one DNS server directly: A and AAAA in parallel over UDP,
// retrying over TCP when an answer is truncated.
type DNS struct {
	server  string
	timeout time.Duration
}

// NewDNS returns a resolver that asks server ("host:port"). If timeout is
// zero, 5s per query.
func NewDNS(server string, timeout time.Duration) (*DNS, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("dns server %q: want HOST:PORT: %w", server, err)
	}
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	return &DNS{server: server, timeout: timeout}, nil
}

// LookupNetIP returns every A and AAAA address of host, unmapped. Records
// for any owner name in the answer section count (a CNAME chain's targets).
func (d *DNS) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	type result struct {
		addrs []netip.Addr
		err   error
	}
	ch := make(chan result, 2)
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		go func() {
			a, err := d.query(ctx, host, qtype)
			ch <- result{a, err}
		}()
	}
	var addrs []netip.Addr
	var firstErr error
	for range 2 {
		r := <-ch
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
		addrs = append(addrs, r.addrs...)
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve %s via %s: %w", host, d.server, ErrNotFound)
	}
	return addrs, nil
}

func (d *DNS) query(ctx context.Context, host string, qtype uint16) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(host), qtype)
	m.RecursionDesired = true
	c := &dns.Client{Net: "udp", Timeout: d.timeout}
	in, _, err := c.ExchangeContext(ctx, m, d.server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, d.server)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s %s via %s: %w", host, dns.TypeToString[qtype], d.server, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, fmt.Errorf("resolve %s via %s: %w (NXDOMAIN)", host, d.server, ErrNotFound)
	default:
		return nil, fmt.Errorf("resolve %s %s via %s: rcode %s", host, dns.TypeToString[qtype], d.server, dns.RcodeToString[in.Rcode])
	}
	var out []netip.Addr
	for _, rr := range in.Answer {
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			ip = v.A
		case *dns.AAAA:
			ip = v.AAAA
		default:
			continue
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

// System resolves through the operating system's resolver.
type System struct {
	// Resolver is used for lookups. If nil, net.DefaultResolver.
	Resolver *net.Resolver
}

// LookupNetIP returns every address of host, unmapped.
func (s System) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	r := s.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, fmt.Errorf("resolve %s: %w", host, ErrNotFound)
		}
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", host, ErrNotFound)
	}
	return addrs, nil
}
