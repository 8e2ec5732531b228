package jobrun

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Stream is one redacting output stream: bytes written are passed on with
// every secret replaced; Close emits what was held back (a possible start of
// a secret) so nothing is lost at exit. *scrub.Writer satisfies it.
type Stream interface {
	io.Writer
	Close() error
	Redactions() int64
}

// Scrubber makes one Stream per output stream of the job.
type Scrubber interface {
	NewStream(dst io.Writer) Stream
}

// lockedWriter serialises writes from the job's stderr pump and the shim's
// own messages, which share one file.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// capWriter passes at most limit bytes to dst, then writes marker once and
// swallows the rest. It sits after the scrubber, so the bytes it cuts are
// already redacted: cutting a secret in half can never let its first half
// out. A failed write to dst (the reader went away) also turns it into a
// sink, so the job is never blocked or killed by its own output.
type capWriter struct {
	dst     io.Writer
	limit   int64 // < 0: no limit
	written int64
	marker  string
	cut     bool
	failed  error
}

func (c *capWriter) Write(p []byte) (int, error) {
	n := len(p)
	if c.cut || c.failed != nil {
		return n, nil
	}
	if c.limit >= 0 && c.written+int64(len(p)) > c.limit {
		p = p[:c.limit-c.written]
		c.cut = true
	}
	if len(p) > 0 {
		m, err := c.dst.Write(p)
		c.written += int64(m)
		if err != nil {
			c.failed = err
			return n, nil
		}
	}
	if c.cut {
		if _, err := io.WriteString(c.dst, c.marker); err != nil {
			c.failed = err
		}
	}
	return n, nil
}

// full reports whether nothing more will reach dst.
func (c *capWriter) full() bool { return c.cut || c.failed != nil }

// pump copies the job's pipe r into w (the scrubber) until EOF, counting
// bytes. Once cap is full it keeps reading and discards, so the job never
// blocks on a full pipe. It returns the number of bytes the job wrote.
func pump(r *os.File, w io.Writer, cw *capWriter) (int64, error) {
	buf := make([]byte, 64<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if !cw.full() {
				// capWriter never fails a write, and the scrubber only
				// fails when its destination does.
				if _, werr := w.Write(buf[:n]); werr != nil {
					cw.failed = werr
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return total, nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return total, errDrainTimeout
			}
			return total, fmt.Errorf("read job output: %w", err)
		}
	}
}

var errDrainTimeout = errors.New("output still open after the job exited")

// drainDeadline stops pumps that outlive the job: a process that left the
// job's process group (setsid) may hold the pipe open forever.
func drainDeadline(files []*os.File, after time.Duration) {
	dl := time.Now().Add(after)
	for _, f := range files {
		_ = f.SetReadDeadline(dl)
	}
}
