// Package resolve looks up every A and AAAA address of a name for the
// egress proxy, either through a configured DNS server (--dns-server, with
// github.com/miekg/dns) or through the system resolver.
//
// It returns all answers so the caller can classify each one: the proxy
// then dials only an address it checked, never resolving again. DNS keeps
// answers for their TTL when DNSOptions.CacheMaxTTL allows it (off by
// default): caching changes only how fresh an answer is, never which
// address is dialled, since the proxy checks whatever it gets. It does not decide
// whether an address is acceptable.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ErrNotFound means the name has no A or AAAA record.
var ErrNotFound = errors.New("no address for name")

// maxCacheEntries bounds the cache; when full it is emptied.
const maxCacheEntries = 10000

// DNS queries one DNS server directly: A and AAAA in parallel over UDP,
// retrying over TCP when an answer is truncated.
type DNS struct {
	server  string
	timeout time.Duration
	maxTTL  time.Duration

	mu    sync.Mutex // guards cache
	cache map[string]cached
}

type cached struct {
	addrs   []netip.Addr
	expires time.Time
}

// DNSOptions tune a DNS resolver.
type DNSOptions struct {
	// Timeout bounds one query. If zero, 5s.
	Timeout time.Duration
	// CacheMaxTTL caps how long an answer is kept for its TTL (answers with
	// TTL 0 are never kept; failures never). If zero, nothing is cached and
	// every request sees what the server says now.
	CacheMaxTTL time.Duration
}

// NewDNS returns a resolver that asks server ("host:port").
func NewDNS(server string, opts DNSOptions) (*DNS, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("dns server %q: want HOST:PORT: %w", server, err)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	return &DNS{server: server, timeout: opts.Timeout, maxTTL: opts.CacheMaxTTL, cache: map[string]cached{}}, nil
}

// LookupNetIP returns every A and AAAA address of host, unmapped. Records
// for any owner name in the answer section count (a CNAME chain's targets).
// The returned slice is shared with the cache: do not modify it.
func (d *DNS) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	now := time.Now()
	if addrs, ok := d.cachedAt(host, now); ok {
		return addrs, nil
	}
	type result struct {
		addrs []netip.Addr
		ttl   uint32
		err   error
	}
	ch := make(chan result, 2)
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		go func() {
			a, ttl, err := d.query(ctx, host, qtype)
			ch <- result{a, ttl, err}
		}()
	}
	var addrs []netip.Addr
	var firstErr error
	ttl := uint32(d.maxTTL / time.Second)
	for range 2 {
		r := <-ch
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
		addrs = append(addrs, r.addrs...)
		if len(r.addrs) > 0 {
			ttl = min(ttl, r.ttl)
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve %s via %s: %w", host, d.server, ErrNotFound)
	}
	if ttl > 0 {
		d.mu.Lock()
		if len(d.cache) >= maxCacheEntries {
			clear(d.cache)
		}
		d.cache[host] = cached{addrs: addrs, expires: now.Add(time.Duration(ttl) * time.Second)}
		d.mu.Unlock()
	}
	return addrs, nil
}

// LookupCached returns host's cached, unexpired answer, if there is one,
// without querying. The returned slice is shared with the cache: do not
// modify it.
func (d *DNS) LookupCached(host string) ([]netip.Addr, bool) {
	return d.cachedAt(host, time.Now())
}

func (d *DNS) cachedAt(host string, now time.Time) ([]netip.Addr, bool) {
	d.mu.Lock()
	c, ok := d.cache[host]
	d.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.addrs, true
	}
	return nil, false
}

// query returns the addresses of one type and the smallest TTL among them.
func (d *DNS) query(ctx context.Context, host string, qtype uint16) ([]netip.Addr, uint32, error) {
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
		return nil, 0, fmt.Errorf("resolve %s %s via %s: %w", host, dns.TypeToString[qtype], d.server, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, 0, fmt.Errorf("resolve %s via %s: %w (NXDOMAIN)", host, d.server, ErrNotFound)
	default:
		return nil, 0, fmt.Errorf("resolve %s %s via %s: rcode %s", host, dns.TypeToString[qtype], d.server, dns.RcodeToString[in.Rcode])
	}
	var out []netip.Addr
	ttl := ^uint32(0)
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
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	return out, ttl, nil
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
