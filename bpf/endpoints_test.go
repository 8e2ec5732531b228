package bpf

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestEnforceEndpoints: an allowed endpoint opens exactly one TCP port of
// its address, as the sidecar's credentials server needs, and nothing else
// on that address (the agent's other loopback listeners).
func TestEnforceEndpoints(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	cred := newTCPSink(t, "127.0.0.1:0")
	other := newTCPSink(t, "127.0.0.1:0")
	cred6 := newTCPSink(t, "[::1]:0")
	other6 := newTCPSink(t, "[::1]:0")
	res := newResolver(t)
	e := enforce(t, cg, Policy{
		Proxy: proxy.addrPort(),
		DNS:   res.addrPort(),
		// The resolver is an endpoint too: its endpoint entry, not its
		// host entry, answers for its port, and must still allow DNS.
		AllowEndpoints: []netip.AddrPort{cred.addrPort(), cred6.addrPort(), res.addrPort()},
	})
	h := startHelper(t, cg)

	tcp := func(addr string) helperOp { return helperOp{Op: "connect", Proto: "tcp", Addr: addr} }
	onAddr := func(a string, port uint16) string { return netip.AddrPortFrom(netip.MustParseAddr(a), port).String() }
	for _, c := range []ruleCase{
		{"tcp4 to the endpoint", tcp(cred.addrPort().String()), ""},
		{"tcp6 v4-mapped to the endpoint", tcp(mapped(cred.addrPort())), ""},
		{"tcp fast open to the endpoint", helperOp{Op: "tfo", Addr: cred.addrPort().String(), N: 10}, ""},
		{"tcp6 to the IPv6 endpoint", tcp(cred6.addrPort().String()), ""},
		{"tcp4 to the proxy on the endpoint's address", tcp(proxy.addrPort().String()), ""},
		{"tcp4 to the resolver, also an endpoint", tcp(res.addrPort().String()), ""},
		{"tcp4 to another port of the endpoint's address", tcp(other.addrPort().String()), "EPERM"},
		{"tcp6 v4-mapped to another port of the endpoint's address", tcp(mapped(other.addrPort())), "EPERM"},
		{"tcp fast open to another port", helperOp{Op: "tfo", Addr: other.addrPort().String(), N: 10}, "EPERM"},
		{"tcp6 to another port of the IPv6 endpoint's address", tcp(other6.addrPort().String()), "EPERM"},
		{"tcp4 to the endpoint's port on another address", tcp(onAddr("127.0.0.3", cred.addrPort().Port())), "EPERM"},
		{"tcp6 to the IPv4 endpoint's port on ::1", tcp(onAddr("::1", cred.addrPort().Port())), "EPERM"},
		{"tcp6 v4-compatible form of the endpoint", tcp(onAddr("::127.0.0.1", cred.addrPort().Port())), "EPERM"},
		{"udp connect to the endpoint (TCP only)", helperOp{Op: "connect", Proto: "udp", Addr: cred.addrPort().String()}, "EPERM"},
		{"udp sendto the endpoint (TCP only)", helperOp{Op: "sendto", Addr: cred.addrPort().String(), N: 10}, "EPERM"},
		{"udp sendto the resolver, also an endpoint", helperOp{Op: "sendto", Addr: res.addrPort().String(), N: 10}, ""},
		{"udp connect to the resolver, also an endpoint", helperOp{Op: "connect", Proto: "udp", Addr: res.addrPort().String()}, ""},
		{"tcp4 to another port of the resolver's address", tcp(onAddr(res.addrPort().Addr().String(), 54)), "EPERM"},
	} {
		if got := h.errOf(c.op); got != c.want {
			t.Errorf("%s (%s %s): got %q, want %q", c.name, c.op.Op, c.op.Addr, got, c.want)
		}
	}

	// The egress program judges each packet by its destination port too:
	// a stream to the endpoint flows, and stops once an Update removes the
	// endpoint, although the proxy on the same address stays allowed.
	before, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := h.errOf(helperOp{Op: "connect", ID: "c", Proto: "tcp", Addr: cred.addrPort().String()}); got != "" {
		t.Fatalf("connect to the endpoint: got %q, want success", got)
	}
	start := cred.received.Load()
	h.do(helperOp{Op: "write", ID: "c", N: 100_000})
	waitFor(t, "the stream to the endpoint to arrive", func() bool { return cred.received.Load()-start == 100_000 })
	if c, err := e.Counters(); err != nil || c.DroppedPackets != before.DroppedPackets {
		t.Fatalf("egress drops on a stream to the endpoint: got %+v, %v; want %d", c, err, before.DroppedPackets)
	}
	if err := e.Update(Policy{Proxy: proxy.addrPort(), DNS: res.addrPort()}); err != nil {
		t.Fatal(err)
	}
	h.do(helperOp{Op: "write", ID: "c", N: 1000})
	waitFor(t, "egress drop to be counted", func() bool {
		c, _ := e.Counters()
		return c.DroppedPackets > before.DroppedPackets
	})
	time.Sleep(100 * time.Millisecond)
	if got := cred.received.Load() - start; got != 100_000 {
		t.Errorf("bytes received after the endpoint was removed: got %d, want 100000", got)
	}
	h.do(helperOp{Op: "close", ID: "c"})
	if got := h.errOf(tcp(cred.addrPort().String())); got != "EPERM" {
		t.Errorf("connect to the removed endpoint: got %q, want EPERM", got)
	}
	if got := h.errOf(tcp(proxy.addrPort().String())); got != "" {
		t.Errorf("connect to the proxy after the endpoint was removed: got %q, want success", got)
	}
}

// TestEndpointsNeverMetadata: listing a metadata address as an endpoint is
// refused, and even a policy that skips Validate (the trie built from it
// directly) opens no metadata port, also inside an allowed CIDR.
func TestEndpointsNeverMetadata(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	listed := []netip.AddrPort{
		netip.MustParseAddrPort("169.254.170.2:80"), // ECS credentials
		netip.MustParseAddrPort("169.254.169.254:80"),
		netip.MustParseAddrPort("[::ffff:169.254.170.2]:8080"),
		netip.MustParseAddrPort("[fd00:ec2::254]:80"),
		netip.MustParseAddrPort("169.254.1.1:80"), // not metadata
	}
	p := Policy{Proxy: proxy.addrPort(), AllowEndpoints: listed}
	if _, err := Enforce(cg.Path(), p); err == nil || !strings.Contains(err.Error(), "cloud metadata address") {
		t.Fatalf("Enforce with a metadata endpoint: got %v, want an error naming the metadata address", err)
	}

	e := enforce(t, cg, Policy{Proxy: proxy.addrPort()})
	p.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fd00::/8")}
	e.mu.Lock()
	err := e.installLocked(p) // no Validate
	e.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	checkMetadataRefused(t, startHelper(t, cg))
}
