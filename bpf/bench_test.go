package bpf

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkConnect measures a loopback TCP connect()+close() from inside a
// job cgroup, with and without the programs attached: the cost of the hooks
// on the path every job connection takes. The benchmark process itself moves
// into the cgroup for the measurement and back afterwards. close() uses
// SO_LINGER 0 so that no TIME_WAIT sockets pile up across iterations.
//
//	go test -run '^$' -bench Connect ./bpf/
func BenchmarkConnect(b *testing.B) {
	many := make([]netip.Prefix, MaxCIDRs)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	for _, c := range []struct {
		name  string
		hooks bool
		cidrs []netip.Prefix
	}{
		{"no-hooks", false, nil},
		{"cgroup-ebpf", true, nil},
		{"cgroup-ebpf-1000-cidrs", true, many},
	} {
		b.Run(c.name, func(b *testing.B) {
			cg := newCgroup(b)
			ln := newAcceptCloser(b)
			var e *Enforcement
			if c.hooks {
				e = enforce(b, cg, Policy{Proxy: ln, AllowCIDRs: c.cidrs})
			}
			joinCgroup(b, cg)
			sa := &unix.SockaddrInet4{Port: int(ln.Port()), Addr: ln.Addr().As4()}
			for b.Loop() {
				connectClose(b, sa)
			}
			if e != nil {
				// Kernel run-time accounting (off during the timed loop: it
				// slows every BPF program on the host) gives the programs'
				// own cost, which a busy machine's noise cannot hide.
				stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
				if err != nil {
					b.Fatalf("enable BPF run-time stats: %v", err)
				}
				defer stats.Close()
				c4, eg := progStats(b, e.objs.Connect4), progStats(b, e.objs.Egress)
				for range 5000 {
					connectClose(b, sa)
				}
				c4after, egAfter := progStats(b, e.objs.Connect4), progStats(b, e.objs.Egress)
				b.ReportMetric(perRun(c4, c4after), "connect4-ns/call")
				b.ReportMetric(perRun(eg, egAfter), "egress-ns/pkt")
			}
		})
	}
}

func connectClose(b *testing.B, sa *unix.SockaddrInet4) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		b.Fatalf("connect %d: %v", sa.Port, err)
	}
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}

func progStats(b *testing.B, p *ebpf.Program) *ebpf.ProgramStats {
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// perRun is the mean run time per invocation between two samples.
func perRun(before, after *ebpf.ProgramStats) float64 {
	n := after.RunCount - before.RunCount
	if n == 0 {
		return 0
	}
	return float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(n)
}

// newAcceptCloser listens on loopback and closes every connection it
// accepts.
func newAcceptCloser(b *testing.B) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// joinCgroup moves this whole process into cg until cleanup, then back to
// the cgroup v2 it was in.
func joinCgroup(b *testing.B, cg *JobCgroup) {
	root := cgroupRoot(b)
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	var orig string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			orig = filepath.Join(root, rest)
		}
	}
	f.Close()
	if orig == "" {
		b.Fatal("no cgroup v2 line in /proc/self/cgroup")
	}
	// Registered before the cgroup's own Remove cleanup runs (cleanups run
	// last-in first-out), so the process is out before the cgroup goes.
	b.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), []byte("0"), 0); err != nil {
			b.Errorf("move back to %s: %v", orig, err)
		}
	})
	if err := cg.AddProc(os.Getpid()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkUpdate measures one policy swap (build a trie, fill it, swap it
// in) by the number of allowed CIDRs.
func BenchmarkUpdate(b *testing.B) {
	for _, n := range []int{0, 100, MaxCIDRs} {
		b.Run(fmt.Sprintf("cidrs=%d", n), func(b *testing.B) {
			cg := newCgroup(b)
			p := Policy{Proxy: netip.MustParseAddrPort("127.0.0.1:3128")}
			for i := range n {
				p.AllowCIDRs = append(p.AllowCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
			}
			e := enforce(b, cg, p)
			for b.Loop() {
				if err := e.Update(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
