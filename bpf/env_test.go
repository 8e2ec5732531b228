package bpf

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		runHelper()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// cgroupRoot returns a cgroup v2 directory the test may create cgroups in,
// or skips the test, saying why, where the host cannot run the programs.
func cgroupRoot(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_BPF, CAP_SYS_ADMIN and cgroup writes); CI runs as root")
	}
	if err := Probe(); err != nil {
		t.Skipf("this kernel cannot run the cgroup programs: %v", err)
	}
	root, err := FindCgroup2()
	if errors.Is(err, ErrNoCgroup2) {
		dir := t.TempDir()
		if err := MountCgroup2(dir); err != nil {
			t.Skipf("no cgroup2 hierarchy and cannot mount one: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		return dir
	}
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var cgroupSeq atomic.Int64

// newCgroup creates a fresh job cgroup removed at cleanup.
func newCgroup(t testing.TB) *JobCgroup {
	t.Helper()
	root := cgroupRoot(t)
	name := fmt.Sprintf("cordon-bpf-test-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	cg, err := NewJobCgroup(root, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cg.Remove(); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return cg
}

// enforce attaches p to cg and closes it at cleanup.
func enforce(t testing.TB, cg *JobCgroup, p Policy) *Enforcement {
	t.Helper()
	e, err := Enforce(cg.Path(), p)
	if err != nil {
		t.Fatalf("Enforce: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// tcpSink is a loopback TCP listener (in the test process, outside the job
// cgroup) that reads and counts everything sent to it.
type tcpSink struct {
	ln       net.Listener
	received atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex // guards conns
	conns    []net.Conn
}

func newTCPSink(t testing.TB, addr string) *tcpSink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &tcpSink{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					s.received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *tcpSink) addrPort() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// udpSink is a loopback UDP socket that counts datagrams and bytes.
type udpSink struct {
	pc        net.PacketConn
	datagrams atomic.Int64
	bytes     atomic.Int64
	wg        sync.WaitGroup
}

func newUDPSink(t testing.TB, addr string) *udpSink {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	s := &udpSink{pc: pc}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.datagrams.Add(1)
			s.bytes.Add(int64(n))
		}
	}()
	t.Cleanup(func() { pc.Close(); s.wg.Wait() })
	return s
}

func (s *udpSink) addrPort() netip.AddrPort {
	return s.pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// resolver is a stand-in DNS resolver on the real DNS port: UDP and TCP on
// port 53 of a random 127/8 address (so parallel test runs on one machine
// do not collide on 127.0.0.1:53).
type resolver struct {
	udp *udpSink
	tcp *tcpSink
}

func newResolver(t testing.TB) resolver {
	t.Helper()
	for range 20 {
		a := netip.AddrFrom4([4]byte{127, byte(10 + rand.IntN(200)), byte(rand.IntN(256)), byte(1 + rand.IntN(250))})
		addr := netip.AddrPortFrom(a, 53).String()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		pc.Close()
		return resolver{udp: newUDPSink(t, addr), tcp: newTCPSink(t, addr)}
	}
	t.Fatal("no free 127.x.y.z:53 after 20 tries")
	return resolver{}
}

func (r resolver) addrPort() netip.AddrPort { return r.udp.addrPort() }

// mapped spells an IPv4 address:port as IPv4-mapped IPv6.
func mapped(ap netip.AddrPort) string {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()).String()
}
