package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln := listenOn(t, "127.0.0.1")
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

// TestCopyTunnel checks that the burst-wise splice loses, reorders or
// duplicates nothing across quiet spells longer than spliceIdle, ends on
// the source's end of stream, and ends at the deadline.
func TestCopyTunnel(t *testing.T) {
	for _, tc := range []struct {
		name      string
		bursts    int
		gap       time.Duration
		closeSrc  bool
		deadline  time.Duration
		wantError bool
	}{
		{name: "one burst then end of stream", bursts: 1, closeSrc: true, deadline: 5 * time.Second},
		{name: "bursts across quiet spells", bursts: 5, gap: 4 * spliceIdle, closeSrc: true, deadline: 5 * time.Second},
		{name: "quiet source ends at the deadline", bursts: 1, deadline: 200 * time.Millisecond, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srcW, src := tcpPair(t) // writer -> src
			dst, dstR := tcpPair(t) // dst -> reader
			done := make(chan struct{})
			var n int64
			var err error
			go func() {
				defer close(done)
				n, err = copyTunnel(dst, src, time.Now().Add(tc.deadline))
				dst.CloseWrite()
			}()
			var want bytes.Buffer
			for i := range tc.bursts {
				chunk := bytes.Repeat([]byte{byte('a' + i)}, 300<<10)
				want.Write(chunk)
				if _, werr := srcW.Write(chunk); werr != nil {
					t.Fatal(werr)
				}
				time.Sleep(tc.gap)
			}
			if tc.closeSrc {
				srcW.CloseWrite()
			}
			got, rerr := io.ReadAll(dstR)
			if rerr != nil {
				t.Fatalf("read: %v", rerr)
			}
			<-done
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("got %d bytes (equal prefix: %v), want %d", len(got), bytes.HasPrefix(want.Bytes(), got), want.Len())
			}
			if n != int64(want.Len()) {
				t.Errorf("copied %d, want %d", n, want.Len())
			}
			if (err != nil) != tc.wantError {
				t.Errorf("error %v, want error: %v", err, tc.wantError)
			}
			if tc.wantError && !isTimeout(err) {
				t.Errorf("error %v, want a timeout", err)
			}
		})
	}
}
