package bpf

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests judge the programs by what a process inside the job cgroup
// experiences, so the workload runs in a helper: this test binary re-executed
// with helperEnv set, started inside the cgroup (JobCgroup.Apply), reading
// one JSON op per line on stdin and answering one JSON result per line. It
// uses raw syscalls so that the socket family, the address bytes and the
// errno are exactly what the test says (net.Dial would turn ::ffff:a.b.c.d
// into an AF_INET socket and hide errnos).

const helperEnv = "CORDON_BPF_TEST_HELPER"

type helperOp struct {
	Op    string `json:"op"`              // connect, write, tcpinfo, close, sendto, raw, srh, tfo, loop, cgroup, probe-nocaps
	ID    string `json:"id,omitempty"`    // names a socket kept open by connect
	Proto string `json:"proto,omitempty"` // tcp or udp
	Addr  string `json:"addr,omitempty"`  // netip.AddrPort; the family follows the address
	N     int    `json:"n,omitempty"`     // payload bytes, or iterations for loop
}

type helperResult struct {
	Err    string         `json:"err"` // "" on success, else the errno name (EPERM) or a message
	N      int            `json:"n,omitempty"`
	Text   string         `json:"text,omitempty"`
	Counts map[string]int `json:"counts,omitempty"` // loop: outcome -> count
}

// runHelper is the helper's main loop.
func runHelper() {
	socks := map[string]int{}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var op helperOp
		if err := json.Unmarshal(in.Bytes(), &op); err != nil {
			out.Encode(helperResult{Err: "bad op: " + err.Error()})
			continue
		}
		out.Encode(op.run(socks))
	}
}

func (op helperOp) run(socks map[string]int) helperResult {
	switch op.Op {
	case "connect":
		// Short: some cases dial unreachable addresses only to see that
		// the answer is not the policy's EPERM.
		fd, err := dialFD(op.Proto, op.Addr, 500)
		if err != nil {
			return helperResult{Err: errName(err)}
		}
		if op.ID != "" {
			socks[op.ID] = fd
		} else {
			unix.Close(fd)
		}
		return helperResult{}
	case "write":
		fd, ok := socks[op.ID]
		if !ok {
			return helperResult{Err: "no socket " + op.ID}
		}
		n, err := writeAll(fd, make([]byte, op.N))
		return helperResult{N: n, Err: errName(err)}
	case "tcpinfo":
		// What the kernel sent on a TCP socket, once nothing is in
		// flight: Text is "bytes_sent bytes_retrans".
		fd, ok := socks[op.ID]
		if !ok {
			return helperResult{Err: "no socket " + op.ID}
		}
		for deadline := time.Now().Add(5 * time.Second); ; {
			ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				return helperResult{Err: errName(err)}
			}
			if (ti.Unacked == 0 && ti.Notsent_bytes == 0) || time.Now().After(deadline) {
				return helperResult{Text: fmt.Sprintf("%d %d", ti.Bytes_sent, ti.Bytes_retrans)}
			}
			time.Sleep(2 * time.Millisecond)
		}
	case "close":
		if fd, ok := socks[op.ID]; ok {
			unix.Close(fd)
			delete(socks, op.ID)
		}
		return helperResult{}
	case "sendto":
		return helperResult{Err: errName(sendTo(op.Addr, make([]byte, op.N), 0, unix.SOCK_DGRAM))}
	case "tfo":
		return helperResult{Err: errName(sendTo(op.Addr, make([]byte, op.N), unix.MSG_FASTOPEN, unix.SOCK_STREAM))}
	case "raw":
		return helperResult{Err: errName(sendICMPEcho(op.Addr, op.N))}
	case "srh":
		return helperResult{Err: errName(sendWithSegmentRouting(op.Addr, op.N))}
	case "loop":
		counts := map[string]int{}
		for range op.N {
			// Long: a busy machine may drop a SYN (retransmitted after 1s).
			fd, err := dialFD(op.Proto, op.Addr, 5000)
			if err == nil {
				unix.Close(fd)
			}
			counts[errName(err)]++
		}
		return helperResult{Counts: counts}
	case "cgroup":
		b, err := os.ReadFile("/proc/self/cgroup")
		return helperResult{Text: string(b), Err: errName(err)}
	case "probe-nocaps":
		// Capabilities are per thread: drop them on this locked thread,
		// which the probe's bpf() calls then run on, and never unlock it,
		// so the runtime retires the thread instead of reusing it.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return helperResult{Err: "capset: " + err.Error()}
		}
		err := Probe()
		return helperResult{Err: errName(err), Text: fmt.Sprint(errors.Is(err, ErrNotSupported))}
	}
	return helperResult{Err: "unknown op " + op.Op}
}

// errName returns "" for nil, the errno name for a syscall error, else the
// message.
func errName(err error) string {
	if err == nil {
		return ""
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func sockaddr(addr string) (int, unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0, nil, err
	}
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
}

// dialFD connects a new socket; a connect that has not finished after
// timeoutMS (an unreachable address) reports ETIMEDOUT.
func dialFD(proto, addr string, timeoutMS int) (int, error) {
	family, sa, err := sockaddr(addr)
	if err != nil {
		return -1, err
	}
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	err = unix.Connect(fd, sa)
	if errors.Is(err, unix.EINPROGRESS) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, perr := unix.Poll(pfd, timeoutMS)
		for errors.Is(perr, unix.EINTR) { // the Go runtime's preemption signals
			n, perr = unix.Poll(pfd, timeoutMS)
		}
		switch {
		case perr != nil:
			err = perr
		case n == 0:
			err = unix.ETIMEDOUT
		default:
			soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			err = gerr
			if soerr != 0 {
				err = unix.Errno(soerr)
			}
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func writeAll(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(fd, b[n:])
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func sendTo(addr string, b []byte, flags, typ int) error {
	family, sa, err := sockaddr(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, b, flags, sa)
}

// sendICMPEcho sends an ICMP echo request with n payload bytes from a raw
// socket, which no socket hook sees.
func sendICMPEcho(addr string, n int) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := make([]byte, 8+n)
	msg[0] = 8 // echo request
	binary.BigEndian.PutUint16(msg[4:], 0xc0de)
	var sum uint32
	for i := 0; i+1 < len(msg); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(msg[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(msg[2:], ^uint16(sum))
	return unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: ap.Addr().As4()})
}

// sendWithSegmentRouting sends a UDP datagram over IPv6 with a segment
// routing header (type 4) listing addr's address as its one segment. Linux
// lets an unprivileged socket set this (IPV6_RTHDR needs no CAP_NET_RAW).
func sendWithSegmentRouting(addr string, n int) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	srh := make([]byte, 8+16)
	srh[1] = 2 // header length in 8-octet units after the first 8
	srh[2] = 4 // routing type 4: segment routing
	seg := ap.Addr().As16()
	copy(srh[8:], seg[:])
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh)); err != nil {
		return fmt.Errorf("set routing header: %w", err)
	}
	return unix.Sendto(fd, make([]byte, n), 0, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: seg})
}

// helper is the parent's handle on a helper process.
type helper struct {
	t    *testing.T
	cmd  *exec.Cmd
	in   *os.File
	out  *os.File
	dec  *json.Decoder
	mu   sync.Mutex
	done chan struct{}
}

// startHelper starts a helper process inside cg and stops it at cleanup.
func startHelper(t *testing.T, cg *JobCgroup) *helper {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	cg.Apply(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper in %s: %v", cg.Path(), err)
	}
	inR.Close()
	outW.Close()
	h := &helper{t: t, cmd: cmd, in: inW, out: outR, dec: json.NewDecoder(outR), done: make(chan struct{})}
	go func() { cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		inW.Close()
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-h.done
		}
		outR.Close()
	})
	return h
}

// do runs one op in the helper and returns its result.
func (h *helper) do(op helperOp) helperResult {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	b, _ := json.Marshal(op)
	if _, err := h.in.Write(append(b, '\n')); err != nil {
		h.t.Fatalf("send %s to helper: %v", b, err)
	}
	h.out.SetReadDeadline(time.Now().Add(20 * time.Second))
	var r helperResult
	if err := h.dec.Decode(&r); err != nil {
		h.t.Fatalf("read helper result of %s: %v", b, err)
	}
	return r
}

// errOf runs op and returns its error name ("" for success).
func (h *helper) errOf(op helperOp) string {
	h.t.Helper()
	r := h.do(op)
	if r.Err != "" && !strings.HasPrefix(r.Err, "E") {
		h.t.Fatalf("helper op %+v: %s", op, r.Err)
	}
	return r.Err
}
