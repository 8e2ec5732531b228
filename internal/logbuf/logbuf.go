// Package logbuf is a buffered io.Writer for structured logs on hot paths.
//
// A proxy writes one log line per decision. Unbuffered, each line is its
// own write(2) to stderr, and whoever reads stderr (a pipe to a log
// collector, docker's log driver) wakes once per line: at tens of
// thousands of requests a second that is a tenth of the proxy's CPU and as
// much again in the reader. Writer gathers lines and writes them in one
// write(2) when the buffer fills or a short interval has passed, whichever
// comes first.
//
// The price is that a crash (SIGKILL, OOM) loses at most one interval's
// lines. The audit events, not these logs, are Cordon's durable record of
// decisions; Close, called on every orderly exit, writes everything.
package logbuf

import (
	"io"
	"sync"
	"time"
)

// Writer buffers writes to an underlying writer. It is safe for concurrent
// use; each Write is kept whole (a log line is never split between two
// underlying writes unless it is larger than the buffer itself).
type Writer struct {
	interval time.Duration
	size     int

	mu     sync.Mutex // guards the following and writes to w
	w      io.Writer
	buf    []byte
	closed bool

	stop chan struct{}
	done chan struct{}
}

// New returns a Writer that writes to w at least every interval while it
// holds data, and whenever size bytes are buffered. Zero or negative
// arguments take the defaults: 100ms and 64 KiB. Call Close when done: it
// stops the flushing goroutine and writes what is left.
func New(w io.Writer, interval time.Duration, size int) *Writer {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	if size <= 0 {
		size = 64 << 10
	}
	lw := &Writer{
		interval: interval,
		size:     size,
		w:        w,
		buf:      make([]byte, 0, size),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go lw.loop()
	return lw
}

// Write buffers p. When p does not fit, what is buffered is written first;
// a p larger than the whole buffer is written through. After Close, Write
// writes through, so late lines from goroutines still draining are kept.
func (lw *Writer) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if lw.closed {
		return lw.w.Write(p)
	}
	if len(lw.buf)+len(p) > lw.size {
		if err := lw.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > lw.size {
			return lw.w.Write(p)
		}
	}
	lw.buf = append(lw.buf, p...)
	return len(p), nil
}

// Flush writes what is buffered now.
func (lw *Writer) Flush() error {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.flushLocked()
}

func (lw *Writer) flushLocked() error {
	if len(lw.buf) == 0 {
		return nil
	}
	_, err := lw.w.Write(lw.buf)
	// The lines are dropped even when the write failed: keeping them would
	// grow the buffer without bound behind a broken stderr, and a retry
	// would duplicate what a short write already delivered.
	lw.buf = lw.buf[:0]
	return err
}

// Close flushes, stops the background goroutine and makes later writes
// unbuffered. It is idempotent.
func (lw *Writer) Close() error {
	lw.mu.Lock()
	if lw.closed {
		lw.mu.Unlock()
		return nil
	}
	lw.closed = true
	err := lw.flushLocked()
	lw.mu.Unlock()
	close(lw.stop)
	<-lw.done
	return err
}

func (lw *Writer) loop() {
	defer close(lw.done)
	t := time.NewTicker(lw.interval)
	defer t.Stop()
	for {
		select {
		case <-lw.stop:
			return
		case <-t.C:
			lw.Flush()
		}
	}
}
