package proxy

import (
	"io"
	"net"
	"syscall"
	"time"
)

// spliceIdle is how long a tunnel direction keeps the kernel pipe that Go
// lends every splicing copy after its source went quiet. Go's splice holds
// that pipe (two descriptors) for as long as the copy runs, idle or not:
// an idle tunnel would cost six descriptors instead of two, and 10,000
// idle tunnels would need 60,000. Releasing it after a short quiet spell
// costs one syscall per burst.
const spliceIdle = 5 * time.Millisecond

// copyTunnel copies src to dst until src ends (nil error, like io.Copy) or
// fails, or deadline passes. Between two TCP connections it is io.Copy's
// splice path, cut into slices: it waits for src to be readable without a
// pipe, then splices with a read deadline spliceIdle ahead, and waits
// again. The deadline is absolute, not reset by traffic, so a busy tunnel
// leaves splice every spliceIdle and re-enters after one peek (a slice
// carries megabytes at loopback rates, so this costs well under 1% of a
// transfer); an idle one holds no pipe. Other connections (TLS in gateway
// mode) use io.Copy as is.
func copyTunnel(dst, src net.Conn, deadline time.Time) (int64, error) {
	d, ok := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if !ok || !ok2 {
		return io.Copy(dst, src)
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	readable := readableFunc()
	var total int64
	for {
		s.SetReadDeadline(deadline)
		if err := rc.Read(readable); err != nil {
			return total, err
		}
		quiet := time.Now().Add(spliceIdle)
		if quiet.After(deadline) {
			quiet = deadline
		}
		s.SetReadDeadline(quiet)
		n, err := d.ReadFrom(s) // splice(2); the pipe is empty when a read times out
		total += n
		if err == nil {
			return total, nil
		}
		if !isTimeout(err) || !time.Now().Before(deadline) {
			return total, err
		}
	}
}

// readableFunc returns a RawConn.Read callback under which Read blocks
// until the connection has a byte, an end of stream or an error to read
// (peeking, so nothing is consumed), or until its read deadline. A
// callback handed to RawConn.Read escapes to the heap, so copyTunnel
// makes one per copy rather than one per wait.
func readableFunc() func(fd uintptr) bool {
	var b [1]byte
	return func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			return err != syscall.EAGAIN
		}
	}
}
