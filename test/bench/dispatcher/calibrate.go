package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// calibration is what this benchmark's cost per item depends on most that
// the host, not the code, decides. On the 2-core VMs this project runs
// on, the same binary has cost 2-3x more per item from one session's host
// to the next, and 15% more from one minute to the next; these figures,
// printed with every run, say what kind of host a result came from.
type calibration struct {
	// rtt is a loopback TCP round trip of one byte between two
	// goroutines: a send, a receive and a wake-up on each side. Every
	// request makes one, and every transaction several to Postgres.
	rtt time.Duration
	// writeMBs is how fast 8 kB writes fill a new file in the page cache:
	// Postgres extends each table and index one zeroed 8 kB page at a
	// time and writes each dirty page back through the page cache.
	writeMBs float64
}

func (c calibration) String() string {
	return fmt.Sprintf("loopback round trip %.1f us, new 8 kB page-cache writes %.0f MB/s",
		float64(c.rtt.Nanoseconds())/1000, c.writeMBs)
}

// calibrate measures the host (about a second).
func calibrate() (calibration, error) {
	var c calibration
	var err error
	if c.rtt, err = loopbackRTT(2000); err != nil {
		return c, fmt.Errorf("calibrate: loopback: %w", err)
	}
	if c.writeMBs, err = pageCacheWrite(64 << 20); err != nil {
		return c, fmt.Errorf("calibrate: page cache: %w", err)
	}
	return c, nil
}

// loopbackRTT is the mean of n one-byte round trips over 127.0.0.1.
func loopbackRTT(n int) (time.Duration, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	go func() {
		s, err := l.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(s, s) // echo until the client closes
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	b := []byte{0}
	start := time.Now()
	for range n {
		if _, err := conn.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(conn, b); err != nil {
			return 0, err
		}
	}
	return time.Since(start) / time.Duration(n), nil
}

// pageCacheWrite writes size bytes in 8 kB writes to a new temporary file
// (not synced) and returns MB/s.
func pageCacheWrite(size int) (float64, error) {
	f, err := os.CreateTemp("", "cordon-calibrate-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	page := make([]byte, 8<<10)
	start := time.Now()
	for written := 0; written < size; written += len(page) {
		if _, err := f.Write(page); err != nil {
			return 0, err
		}
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}
