package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ruleFixture is a set of loopback endpoints, a policy over them and a
// helper process in an enforced job cgroup.
type ruleFixture struct {
	proxy, other, cidr, v6 *tcpSink
	udpOther, udpCIDR      *udpSink
	res                    resolver
	policy                 Policy
	cg                     *JobCgroup
	h                      *helper
}

func newRuleFixture(t *testing.T) *ruleFixture {
	t.Helper()
	f := &ruleFixture{cg: newCgroup(t)}
	f.proxy = newTCPSink(t, "127.0.0.1:0")
	f.other = newTCPSink(t, "127.0.0.1:0")
	f.cidr = newTCPSink(t, "127.0.0.2:0")
	f.v6 = newTCPSink(t, "[::1]:0")
	f.udpOther = newUDPSink(t, "127.0.0.1:0")
	f.udpCIDR = newUDPSink(t, "127.0.0.2:0")
	f.res = newResolver(t)
	f.policy = Policy{
		Proxy:      f.proxy.addrPort(),
		DNS:        f.res.addrPort(),
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	}
	f.h = startHelper(t, f.cg)
	return f
}

type ruleCase struct {
	name string
	op   helperOp
	want string // "" (allowed) or the errno name
}

func (f *ruleFixture) cases() []ruleCase {
	tcp := func(addr string) helperOp { return helperOp{Op: "connect", Proto: "tcp", Addr: addr} }
	udp := func(addr string) helperOp { return helperOp{Op: "connect", Proto: "udp", Addr: addr} }
	sendto := func(addr string) helperOp { return helperOp{Op: "sendto", Addr: addr, N: 10} }
	proxy, other, res := f.proxy.addrPort(), f.other.addrPort(), f.res.addrPort()
	onAddr := func(a string, port uint16) string { return netip.AddrPortFrom(netip.MustParseAddr(a), port).String() }
	return []ruleCase{
		{"tcp4 to the proxy", tcp(proxy.String()), ""},
		{"tcp6 v4-mapped to the proxy", tcp(mapped(proxy)), ""},
		{"tcp4 to another port of the proxy address", tcp(other.String()), "EPERM"},
		{"tcp4 to the proxy port on another loopback address", tcp(onAddr("127.0.0.3", proxy.Port())), "EPERM"},
		{"tcp4 to 0.0.0.0, meaning this host", tcp(onAddr("0.0.0.0", other.Port())), "EPERM"},
		{"tcp6 to ::1", tcp(f.v6.addrPort().String()), "EPERM"},
		{"tcp6 to ::, meaning this host", tcp(onAddr("::", f.v6.addrPort().Port())), "EPERM"},
		{"tcp6 v4-mapped to a denied port", tcp(mapped(other)), "EPERM"},
		{"tcp6 v4-compatible form of an allowed CIDR", tcp(onAddr("::127.0.0.2", f.cidr.addrPort().Port())), "EPERM"},
		{"tcp6 to a global address", tcp("[2001:db8::1]:443"), "EPERM"},
		{"tcp4 to an allowed CIDR", tcp(f.cidr.addrPort().String()), ""},
		{"tcp6 v4-mapped to an allowed CIDR", tcp(mapped(f.cidr.addrPort())), ""},
		{"tcp4 to the resolver (DNS over TCP)", tcp(res.String()), ""},
		{"tcp4 to another port of the resolver", tcp(onAddr(res.Addr().String(), 54)), "EPERM"},
		{"tcp fast open to a denied port", helperOp{Op: "tfo", Addr: other.String(), N: 10}, "EPERM"},
		{"tcp fast open to the proxy", helperOp{Op: "tfo", Addr: proxy.String(), N: 10}, ""},
		{"udp connect to the resolver", udp(res.String()), ""},
		{"udp connect to another port", udp(f.udpOther.addrPort().String()), "EPERM"},
		{"udp connect to the proxy (TCP only)", udp(proxy.String()), "EPERM"},
		{"udp sendto the resolver", sendto(res.String()), ""},
		{"udp sendto the resolver v4-mapped", sendto(mapped(res)), ""},
		{"udp sendto the resolver, empty datagram", helperOp{Op: "sendto", Addr: res.String(), N: 0}, ""},
		{"udp sendto the resolver, 1 byte", helperOp{Op: "sendto", Addr: res.String(), N: 1}, ""},
		{"udp sendto another port", sendto(f.udpOther.addrPort().String()), "EPERM"},
		{"udp sendto an allowed CIDR (UDP only to the resolver)", sendto(f.udpCIDR.addrPort().String()), "EPERM"},
		{"udp sendto v4-mapped other port", sendto(mapped(f.udpOther.addrPort())), "EPERM"},
		{"udp sendto ::1 port 53", sendto("[::1]:53"), "EPERM"},
		{"udp sendto another resolver", sendto("127.0.0.1:53"), "EPERM"},
	}
}

func TestEnforceRules(t *testing.T) {
	f := newRuleFixture(t)
	if got := f.h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: f.other.addrPort().String()}); got != "" {
		t.Fatalf("before Enforce, connect to %s: got %s, want success", f.other.addrPort(), got)
	}
	e := enforce(t, f.cg, f.policy)

	var wantConnects, wantSendmsgs uint64
	for _, c := range f.cases() {
		t.Run(c.name, func(t *testing.T) {
			if got := f.h.errOf(c.op); got != c.want {
				t.Errorf("%s %s: got %q, want %q", c.op.Op, c.op.Addr, got, c.want)
			}
		})
		if c.want == "EPERM" {
			if c.op.Op == "sendto" {
				wantSendmsgs++
			} else {
				wantConnects++
			}
		}
	}
	got, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got.DeniedConnects != wantConnects || got.DeniedSendmsgs != wantSendmsgs {
		t.Errorf("denied connects, sendmsgs: got %d, %d, want %d, %d", got.DeniedConnects, got.DeniedSendmsgs, wantConnects, wantSendmsgs)
	}

	// Close restores normal behaviour: nothing is refused by policy any more.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if _, err := e.Counters(); !errors.Is(err, ErrClosed) {
		t.Errorf("Counters after Close: got %v, want ErrClosed", err)
	}
	for _, c := range f.cases() {
		got := f.h.errOf(c.op)
		if got == "EPERM" {
			// Attached programs refuse every time; a one-off EPERM has
			// been seen once on a loaded shared machine, from an unknown
			// source. Ask again before failing, and say so.
			time.Sleep(100 * time.Millisecond)
			t.Logf("after Close, %s: EPERM once, retrying", c.name)
			got = f.h.errOf(c.op)
		}
		if got == "EPERM" {
			t.Errorf("after Close, %s (%s %s): got EPERM, want the kernel's normal answer", c.name, c.op.Op, c.op.Addr)
		}
	}
	dir, err := os.Open(f.cg.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, a := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg, ebpf.AttachCGroupInetEgress} {
		q, err := link.QueryPrograms(link.QueryOptions{Target: int(dir.Fd()), Attach: a})
		if err != nil {
			t.Fatalf("query %s: %v", a, err)
		}
		if len(q.Programs) != 0 {
			t.Errorf("after Close, %s: got %d programs attached, want 0", a, len(q.Programs))
		}
	}
}

func TestMetadataNeverReachable(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	enforce(t, cg, Policy{
		Proxy:      proxy.addrPort(),
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fd00::/8")},
	})
	checkMetadataRefused(t, startHelper(t, cg))
}

// checkMetadataRefused: TCP connects from h to the metadata addresses, on
// any port and in any spelling, get the policy's EPERM, and those to their
// neighbours in an allowed 169.254.0.0/16 and fd00::/8 do not.
func checkMetadataRefused(t *testing.T, h *helper) {
	t.Helper()
	for _, c := range []struct {
		addr string
		perm bool // want EPERM
	}{
		{"169.254.169.254:80", true},
		{"169.254.170.2:80", true},
		{"169.254.170.2:8080", true},
		{"[::ffff:169.254.169.254]:80", true},
		{"[::ffff:169.254.170.2]:8080", true},
		{"[fd00:ec2::254]:80", true},
		// The rest of the CIDRs stays allowed: whatever the kernel
		// answers (timeout, unreachable), it is not the policy's EPERM.
		{"169.254.1.1:80", false},
		{"[fd00:ec2::253]:80", false},
	} {
		got := h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: c.addr})
		if (got == "EPERM") != c.perm {
			t.Errorf("connect %s: got %q, want EPERM: %v", c.addr, got, c.perm)
		}
	}
}

func TestCounters(t *testing.T) {
	for _, fam := range []struct {
		name     string
		loopback string
		ipHdr    uint64 // IP header of a UDP datagram
		tcpHdrs  [2]uint64
		resolver func(t *testing.T) netip.AddrPort
	}{
		{
			name: "ipv4", loopback: "127.0.0.1", ipHdr: 20,
			// 20 IPv4 + 20 TCP at least, 60 + 60 at most.
			tcpHdrs:  [2]uint64{40, 120},
			resolver: func(t *testing.T) netip.AddrPort { return newResolver(t).addrPort() },
		},
		{
			name: "ipv6", loopback: "::1", ipHdr: 40,
			// 40 IPv6 + 20 TCP at least, 40 + 60 at most (no extension headers).
			tcpHdrs: [2]uint64{60, 100},
			// Port 53 on ::1 may be taken by a real resolver; the policy
			// accepts any resolver port.
			resolver: func(t *testing.T) netip.AddrPort { return newUDPSink(t, "[::1]:0").addrPort() },
		},
	} {
		t.Run(fam.name, func(t *testing.T) {
			cg := newCgroup(t)
			proxy := newTCPSink(t, netip.AddrPortFrom(netip.MustParseAddr(fam.loopback), 0).String())
			res := fam.resolver(t)
			e := enforce(t, cg, Policy{Proxy: proxy.addrPort(), DNS: res})
			h := startHelper(t, cg)

			// UDP first: every datagram is one packet of exactly the IP
			// header + 8 (UDP) + payload bytes, so the counters are exact.
			const datagrams, size = 7, 100
			for range datagrams {
				if got := h.errOf(helperOp{Op: "sendto", Addr: res.String(), N: size}); got != "" {
					t.Fatalf("sendto resolver %s: %s", res, got)
				}
			}
			got, err := e.Counters()
			if err != nil {
				t.Fatal(err)
			}
			want := Counters{Packets: datagrams, Bytes: datagrams * (fam.ipHdr + 8 + size), PayloadBytes: datagrams * size}
			if got != want {
				t.Fatalf("after %d UDP datagrams of %d bytes: got %+v, want %+v", datagrams, size, got, want)
			}

			// TCP: the payload counted is exactly what the socket sent,
			// retransmissions included (a loaded machine can make even
			// loopback retransmit), as TCP_INFO reports it once nothing is
			// in flight; headers vary with options, so Bytes is bounded by
			// the per-packet minimum and maximum header sizes.
			const written = 300_000
			if got := h.errOf(helperOp{Op: "connect", ID: "c", Proto: "tcp", Addr: proxy.addrPort().String()}); got != "" {
				t.Fatalf("connect proxy %s: %s", proxy.addrPort(), got)
			}
			if r := h.do(helperOp{Op: "write", ID: "c", N: written}); r.Err != "" || r.N != written {
				t.Fatalf("write to proxy: got %d bytes, %q; want %d bytes", r.N, r.Err, written)
			}
			waitFor(t, "proxy to receive the stream", func() bool { return proxy.received.Load() == written })
			var sent, retrans uint64
			if r := h.do(helperOp{Op: "tcpinfo", ID: "c"}); r.Err != "" {
				t.Fatalf("tcpinfo: %s", r.Err)
			} else if _, err := fmt.Sscan(r.Text, &sent, &retrans); err != nil {
				t.Fatalf("tcpinfo %q: %v", r.Text, err)
			}
			if sent-retrans != written {
				t.Fatalf("TCP_INFO: %d bytes sent, %d retransmitted; want %d sent once", sent, retrans, written)
			}
			got, err = e.Counters()
			if err != nil {
				t.Fatal(err)
			}
			tcpPackets := got.Packets - want.Packets
			tcpBytes := got.Bytes - want.Bytes
			if gotPayload := got.PayloadBytes - want.PayloadBytes; gotPayload != sent {
				t.Errorf("TCP payload bytes: got %d, want %d (%d written, %d retransmitted)", gotPayload, sent, written, retrans)
			}
			if lo, hi := sent+fam.tcpHdrs[0]*tcpPackets, sent+fam.tcpHdrs[1]*tcpPackets; tcpBytes < lo || tcpBytes > hi {
				t.Errorf("TCP L3 bytes over %d packets: got %d, want %d..%d", tcpPackets, tcpBytes, lo, hi)
			}
			h.do(helperOp{Op: "close", ID: "c"})
			if got.DroppedPackets != 0 || got.DeniedConnects != 0 || got.DeniedSendmsgs != 0 {
				t.Errorf("denials with only allowed traffic: got %+v, want none", got)
			}
		})
	}
}

// TestNestedCgroupConfined: the programs also hold in a cgroup the job
// makes below its own, so nesting is no way out.
func TestNestedCgroupConfined(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	other := newTCPSink(t, "127.0.0.1:0")
	enforce(t, cg, Policy{Proxy: proxy.addrPort()})
	child, err := NewJobCgroup(cg.Path(), "nested")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Remove() })
	h := startHelper(t, child)
	if got := h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: other.addrPort().String()}); got != "EPERM" {
		t.Errorf("connect to a denied port from a nested cgroup: got %q, want EPERM", got)
	}
	if got := h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: proxy.addrPort().String()}); got != "" {
		t.Errorf("connect to the proxy from a nested cgroup: got %q, want success", got)
	}
}

func TestRawSocketDropped(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	e := enforce(t, cg, Policy{Proxy: proxy.addrPort(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	h := startHelper(t, cg)
	// The test runs as root, so the helper has CAP_NET_RAW: a raw socket
	// has no connect/sendmsg hook, and only the egress program stops it.
	if got := h.errOf(helperOp{Op: "raw", Addr: "127.0.0.1:0", N: 32}); got != "EPERM" {
		t.Errorf("raw ICMP to the proxy address: got %q, want EPERM", got)
	}
	if got := h.errOf(helperOp{Op: "raw", Addr: "127.0.0.2:0", N: 32}); got != "" {
		t.Errorf("raw ICMP to an allowed CIDR: got %q, want success", got)
	}
	c, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Counters{DroppedPackets: 1, DroppedBytes: 20 + 8 + 32}); c.DroppedPackets != want.DroppedPackets || c.DroppedBytes != want.DroppedBytes {
		t.Errorf("drops: got %d packets, %d bytes, want %d, %d", c.DroppedPackets, c.DroppedBytes, want.DroppedPackets, want.DroppedBytes)
	}
}

// TestRoutingHeaderDropped: an IPv6 routing header sends a packet through
// addresses the socket hooks never saw, so the egress program drops every
// packet carrying one, even to the resolver inside an allowed CIDR.
func TestRoutingHeaderDropped(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	res := newUDPSink(t, "[::1]:0")
	e := enforce(t, cg, Policy{Proxy: proxy.addrPort(), DNS: res.addrPort(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("::1/128")}})
	h := startHelper(t, cg)
	if got := h.errOf(helperOp{Op: "sendto", Addr: res.addrPort().String(), N: 10}); got != "" {
		t.Fatalf("plain sendto resolver: got %q, want success", got)
	}
	if got := h.do(helperOp{Op: "srh", Addr: res.addrPort().String(), N: 10}).Err; got != "EPERM" {
		t.Errorf("sendto resolver with a segment routing header: got %q, want EPERM", got)
	}
	c, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.DroppedPackets != 1 {
		t.Errorf("dropped packets: got %d, want 1", c.DroppedPackets)
	}
}

func TestUpdateTakesEffectForNextConnect(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	target := newTCPSink(t, "127.0.0.2:0")
	base := Policy{Proxy: proxy.addrPort()}
	e := enforce(t, cg, base)
	h := startHelper(t, cg)
	connect := func() string {
		return h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: target.addrPort().String()})
	}
	steps := []struct {
		name  string
		cidrs []string
		want  string
	}{
		{"initial policy without the CIDR", nil, "EPERM"},
		{"CIDR added", []string{"127.0.0.2/32"}, ""},
		{"covering CIDR instead", []string{"127.0.0.0/8"}, ""},
		{"CIDR removed", nil, "EPERM"},
		{"unrelated CIDR", []string{"10.0.0.0/8"}, "EPERM"},
	}
	for i, s := range steps {
		p := base
		for _, c := range s.cidrs {
			p.AllowCIDRs = append(p.AllowCIDRs, netip.MustParsePrefix(c))
		}
		if i > 0 {
			if err := e.Update(p); err != nil {
				t.Fatalf("%s: Update: %v", s.name, err)
			}
		}
		if got := connect(); got != s.want {
			t.Errorf("%s: connect %s: got %q, want %q", s.name, target.addrPort(), got, s.want)
		}
	}
	if err := e.Update(Policy{}); err == nil {
		t.Error("Update with an invalid policy: got nil error")
	}
	if got := connect(); got != "EPERM" {
		t.Errorf("after a rejected Update the old policy must hold: got %q, want EPERM", got)
	}
}

func TestUpdateRevokesEstablished(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	target := newTCPSink(t, "127.0.0.2:0")
	allowed := Policy{Proxy: proxy.addrPort(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	e := enforce(t, cg, allowed)
	h := startHelper(t, cg)

	if got := h.errOf(helperOp{Op: "connect", ID: "c", Proto: "tcp", Addr: target.addrPort().String()}); got != "" {
		t.Fatalf("connect under the allowing policy: got %q", got)
	}
	h.do(helperOp{Op: "write", ID: "c", N: 1000})
	waitFor(t, "first write to arrive", func() bool { return target.received.Load() == 1000 })

	if err := e.Update(Policy{Proxy: proxy.addrPort()}); err != nil {
		t.Fatal(err)
	}
	// The write succeeds into the socket buffer; its packets must not leave.
	h.do(helperOp{Op: "write", ID: "c", N: 1000})
	waitFor(t, "egress drop to be counted", func() bool {
		c, _ := e.Counters()
		return c.DroppedPackets > 0
	})
	time.Sleep(100 * time.Millisecond)
	if got := target.received.Load(); got != 1000 {
		t.Errorf("bytes received after the CIDR was revoked: got %d, want 1000", got)
	}
	h.do(helperOp{Op: "close", ID: "c"})
}

// TestUpdateAtomic flips between two policies while the helper connects in
// a loop: a destination both allow must never be refused (an update that
// empties and refills a table would refuse it in between) and one neither
// allows must never get through.
func TestUpdateAtomic(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	both := newTCPSink(t, "127.0.0.2:0")
	neither := newTCPSink(t, "127.0.0.5:0")
	a := Policy{Proxy: proxy.addrPort(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	b := Policy{Proxy: proxy.addrPort(), AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/31"), netip.MustParsePrefix("127.0.0.4/32")}}
	for i := range 100 {
		b.AllowCIDRs = append(b.AllowCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	e := enforce(t, cg, a)
	h := startHelper(t, cg)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var updates atomic.Int64
	var updateErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for p := b; ; {
			select {
			case <-stop:
				return
			default:
			}
			if err := e.Update(p); err != nil {
				updateErr = err
				return
			}
			updates.Add(1)
			if len(p.AllowCIDRs) == len(a.AllowCIDRs) {
				p = b
			} else {
				p = a
			}
		}
	}()
	const minUpdates = 200
	okBoth, permNeither, rounds := map[string]int{}, map[string]int{}, 0
	for deadline := time.Now().Add(10 * time.Second); updates.Load() < minUpdates && time.Now().Before(deadline); rounds++ {
		for k, v := range h.do(helperOp{Op: "loop", Proto: "tcp", Addr: both.addrPort().String(), N: 100}).Counts {
			okBoth[k] += v
		}
		for k, v := range h.do(helperOp{Op: "loop", Proto: "tcp", Addr: neither.addrPort().String(), N: 100}).Counts {
			permNeither[k] += v
		}
	}
	close(stop)
	wg.Wait()
	if updateErr != nil {
		t.Fatal(updateErr)
	}
	// A loaded CI machine may not reach minUpdates in 10s; a few dozen
	// swaps under a connect loop still prove the point.
	if n := updates.Load(); n < 20 {
		t.Fatalf("only %d updates in 10s; the test proves nothing", n)
	}
	// The invariant is about the policy's answer (EPERM). A connect the
	// loaded machine did not finish in time is no policy decision, but
	// nearly all must succeed.
	if okBoth["EPERM"] != 0 || okBoth[""] < rounds*100*99/100 {
		t.Errorf("connects to an address both policies allow, %d updates: got %v, want no EPERM and %d successes", updates.Load(), okBoth, rounds*100)
	}
	if permNeither["EPERM"] != rounds*100 {
		t.Errorf("connects to an address neither policy allows, %d updates: got %v, want %d EPERM", updates.Load(), permNeither, rounds*100)
	}
	if c, err := e.Counters(); err != nil || c.DroppedPackets != 0 {
		t.Errorf("egress drops while both policies allow the traffic: got %+v, %v; want none", c, err)
	}
	t.Logf("%d updates during %d connects", updates.Load(), rounds*200)
}

// TestNoLeaks checks that Close (and every Update) releases every program,
// link and map: the process's file descriptors return to their count and
// the kernel forgets the objects' IDs.
func TestNoLeaks(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	p := Policy{Proxy: proxy.addrPort()}
	// Warm up once so lazily opened, cached descriptors (feature probes)
	// are not counted as leaks.
	e, err := Enforce(cg.Path(), p)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()

	before := countFDs(t)
	e, err = Enforce(cg.Path(), p)
	if err != nil {
		t.Fatal(err)
	}
	var progIDs []ebpf.ProgramID
	for _, a := range e.objs.attachments() {
		info, err := a.prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progIDs = append(progIDs, id)
	}
	var mapIDs []ebpf.MapID
	for _, m := range []*ebpf.Map{e.objs.Policy, e.objs.Stats} {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		mapIDs = append(mapIDs, id)
	}
	var linkIDs []link.ID
	for _, l := range e.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		linkIDs = append(linkIDs, info.ID)
	}
	for i := range 3 {
		var innerID ebpf.MapID
		if err := e.objs.Policy.Lookup(uint32(0), &innerID); err != nil {
			t.Fatalf("look up inner map: %v", err)
		}
		mapIDs = append(mapIDs, innerID)
		p.AllowCIDRs = append(p.AllowCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
		if err := e.Update(p); err != nil {
			t.Fatal(err)
		}
	}
	var innerID ebpf.MapID
	if err := e.objs.Policy.Lookup(uint32(0), &innerID); err != nil {
		t.Fatal(err)
	}
	mapIDs = append(mapIDs, innerID)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if after := countFDs(t); after != before {
		t.Errorf("open file descriptors: got %d after Enforce+Update+Close, want %d as before", after, before)
	}
	// The kernel frees objects after an RCU grace period; poll.
	waitFor(t, "programs, maps and links to be freed", func() bool {
		for _, id := range progIDs {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				p.Close()
				return false
			}
		}
		for _, id := range mapIDs {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				m.Close()
				return false
			}
		}
		for _, id := range linkIDs {
			if l, err := link.NewFromID(id); err == nil {
				l.Close()
				return false
			}
		}
		return true
	})
	if len(progIDs) != 5 || len(mapIDs) != 6 || len(linkIDs) != 5 {
		t.Errorf("tracked %d programs, %d maps, %d links; want 5, 6, 5", len(progIDs), len(mapIDs), len(linkIDs))
	}
}

func TestEnforceNotSupported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to reach the checks after the cgroup check")
	}
	proxy := netip.MustParseAddrPort("127.0.0.1:3128")
	_, err := Enforce(t.TempDir(), Policy{Proxy: proxy})
	if !errors.Is(err, ErrNotSupported) {
		t.Errorf("Enforce on a directory that is not cgroup v2: got %v, want ErrNotSupported", err)
	}
	_, err = Enforce(filepath.Join(t.TempDir(), "missing"), Policy{Proxy: proxy})
	if err == nil || errors.Is(err, ErrNotSupported) {
		t.Errorf("Enforce on a missing directory: got %v, want a plain error", err)
	}
	_, err = Enforce(t.TempDir(), Policy{})
	if err == nil || errors.Is(err, ErrNotSupported) {
		t.Errorf("Enforce with an invalid policy: got %v, want a plain error", err)
	}

	// Without capabilities (Fargate's position) the probe must say
	// "not supported" rather than fail in some other way.
	cg := newCgroup(t)
	h := startHelper(t, cg)
	r := h.do(helperOp{Op: "probe-nocaps"})
	if r.Text != "true" {
		t.Errorf("Probe without capabilities: got %q (errors.Is ErrNotSupported: %s), want an ErrNotSupported error", r.Err, r.Text)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 5s waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEnforceRefusesOwnCgroup: attaching to a cgroup that holds the caller
// would confine the sidecar (or, at the root, the whole host).
func TestEnforceRefusesOwnCgroup(t *testing.T) {
	root := cgroupRoot(t)
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var own string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = filepath.Join(root, rest)
		}
	}
	p := Policy{Proxy: netip.MustParseAddrPort("127.0.0.1:3128")}
	for _, dir := range []string{own, root} {
		e, err := Enforce(dir, p)
		if err == nil {
			e.Close()
			t.Errorf("Enforce on %s, which holds this process: got success, want an error", dir)
			continue
		}
		if errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "contains this process") {
			t.Errorf("Enforce on %s: got %v, want a plain error saying it contains this process", dir, err)
		}
	}
}

// TestJobsIsolated: two jobs on one host, each with its own cgroup and
// policy, see only their own policy and count only their own traffic.
func TestJobsIsolated(t *testing.T) {
	sinkA := newTCPSink(t, "127.0.0.1:0")
	sinkB := newTCPSink(t, "127.0.0.1:0")
	cgA, cgB := newCgroup(t), newCgroup(t)
	eA := enforce(t, cgA, Policy{Proxy: sinkA.addrPort()})
	eB := enforce(t, cgB, Policy{Proxy: sinkB.addrPort()})
	hA, hB := startHelper(t, cgA), startHelper(t, cgB)
	for _, c := range []struct {
		name string
		h    *helper
		to   *tcpSink
		want string
	}{
		{"job A to its proxy", hA, sinkA, ""},
		{"job A to job B's proxy", hA, sinkB, "EPERM"},
		{"job B to its proxy", hB, sinkB, ""},
		{"job B to job A's proxy", hB, sinkA, "EPERM"},
	} {
		if got := c.h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: c.to.addrPort().String()}); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
	hA.do(helperOp{Op: "connect", ID: "c", Proto: "tcp", Addr: sinkA.addrPort().String()})
	hA.do(helperOp{Op: "write", ID: "c", N: 5000})
	waitFor(t, "job A's bytes to arrive", func() bool { return sinkA.received.Load() == 5000 })
	a, err := eA.Counters()
	if err != nil {
		t.Fatal(err)
	}
	b, err := eB.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if a.PayloadBytes < 5000 || b.PayloadBytes != 0 {
		t.Errorf("payload bytes after job A wrote 5000: got A=%d, B=%d; want A>=5000, B=0", a.PayloadBytes, b.PayloadBytes)
	}
	if a.DeniedConnects != 1 || b.DeniedConnects != 1 {
		t.Errorf("denied connects: got A=%d, B=%d; want 1 each", a.DeniedConnects, b.DeniedConnects)
	}
}
