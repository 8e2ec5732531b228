package scrub

import (
	"io"
	"sync"
	"sync/atomic"
)

// chunkSize bounds how much of one Write is processed at once, so the
// window buffer stays small whatever the caller writes.
const chunkSize = 64 << 10

// maxPendingIntervals bounds the undecided redactions kept before output is
// decided in the middle of a chunk.
const maxPendingIntervals = 256

var (
	ruleMarker  = []byte(RuleMarker)
	emailMarker = []byte(EmailMarker + "@")
	// urlUserMarker replaces the password of a URL and the '@' after it.
	urlUserMarker = []byte(RuleMarker + "@")
)

// Interval priorities: when redactions merge, the marker of the highest
// priority wins (a secret's name says more than a rule's generic marker).
const (
	prioEmail uint8 = iota + 1
	prioRule
	prioSecret
)

// interval is a byte range [start, end) of the stream to be replaced by marker.
type interval struct {
	start, end int64
	marker     []byte
	prio       uint8
	marked     bool  // marker already written
	grow       int32 // scanners still extending this interval
}

// Writer scrubs one output stream. Write and Close may be called from
// different goroutines but are serialised; Redactions may be called
// concurrently with both.
type Writer struct {
	s   *Scrubber
	dst io.Writer

	redactions atomic.Int64

	mu sync.Mutex // guards the following
	// The stream is addressed by absolute byte positions. buf holds the
	// bytes [bufStart, bufStart+len(buf)): the ones not yet written or
	// swallowed, followed by the chunk being processed.
	buf       []byte
	bufStart  int64
	pos       int64  // position of the next byte the automaton reads
	state     uint32 // automaton state after the byte at pos-1
	emitted   int64  // output is decided for every byte before this
	runBefore int    // email local-part bytes ending at bufStart (capped)
	ivs       []interval
	vals      [maxValidators]validator
	nVals     int
	dropped   int64 // triggers ignored because all scanners were busy
	out       []byte
	closed    bool
	err       error
}

// Write scrubs p and writes every byte that can no longer be part of a
// redaction to the destination before returning. Bytes that may still be
// the start of a secret or a rule match are held until later writes decide
// them, or until Close.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		c := min(len(p), chunkSize)
		w.buf = append(w.buf, p[:c]...)
		w.process(len(w.buf) - c)
		w.emit(w.frontier())
		if err := w.flush(); err != nil {
			return n, err
		}
		w.compact()
		n += c
		p = p[c:]
	}
	return n, nil
}

// Close scrubs and writes the held-back bytes. It does not close the
// destination. Calling Close again returns nil, or the first write error.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	w.eof()
	for i := range w.ivs {
		w.ivs[i].grow = 0
	}
	w.emit(w.pos)
	err := w.flush()
	w.buf, w.ivs = nil, nil
	return err
}

// Redactions returns how many redaction markers this Writer has written.
func (w *Writer) Redactions() int64 { return w.redactions.Load() }

// process runs the automaton and scanners over buf[from:].
func (w *Writer) process(from int) {
	ac := w.s.ac
	buf := w.buf
	base := w.bufStart
	for i := from; i < len(buf); {
		if w.nVals == 0 {
			// No rule scanner running: only states with outputs matter.
			k, st := ac.scan(w.state, buf[i:])
			i += k
			w.state = st
			w.pos = base + int64(i)
			if ac.hasOut(st) {
				w.onState()
			}
			continue
		}
		// A rule scanner is running: every byte goes to it (with its
		// position; nothing it calls reads w.pos).
		pos := base + int64(i)
		w.feedAll(buf[i], pos)
		w.state = ac.step(w.state, buf[i])
		i++
		w.pos = pos + 1
		if w.state >= ac.plainLimit && ac.hasOut(w.state) {
			w.onState()
		}
	}
	w.pos = base + int64(len(buf))
}

// onState handles the outputs of the current state, which the automaton
// reached after reading the byte at w.pos-1.
func (w *Writer) onState() {
	defer func() {
		if len(w.ivs) > maxPendingIntervals {
			w.emit(w.frontier())
		}
	}()
	ac := w.s.ac
	end := w.pos
	for n := int32(ac.id(w.state)); n >= 0; n = ac.dictLink[n] {
		for _, o := range ac.outs[ac.outStart[n]:ac.outStart[n+1]] {
			if o.id >= 0 {
				w.addInterval(end-int64(o.length), end, w.s.markers[o.id], prioSecret)
			} else {
				w.activate(-o.id-1, end)
			}
		}
	}
}

// frontier returns the earliest position at which a redaction may still
// start: the start of the longest pattern prefix the automaton is in, of a
// running scanner's candidate, or of a possible email local part.
func (w *Writer) frontier() int64 {
	ac := w.s.ac
	f := w.pos - int64(ac.live[ac.id(w.state)])
	for i := 0; i < w.nVals; i++ {
		if h := w.vals[i].hold; h < f {
			f = h
		}
	}
	if w.s.emails {
		if run := w.localRun(int(w.pos - w.bufStart)); run > 4 && run <= maxEmailLocal {
			if h := w.pos - int64(run-4); h < f {
				f = h
			}
		}
	}
	return f
}

// localRun returns how many email local-part bytes end at buf[idx]
// (exclusive), counting bytes before the buffer; it returns at most
// maxEmailLocal+1.
func (w *Writer) localRun(idx int) int {
	n := 0
	for j := idx - 1; j >= 0; j-- {
		if !setEmailLocal.has(w.buf[j]) || n > maxEmailLocal {
			return min(n, maxEmailLocal+1)
		}
		n++
	}
	return min(n+w.runBefore, maxEmailLocal+1)
}

// find returns the index of the interval containing position x, or -1.
func (w *Writer) find(x int64) int {
	for i := len(w.ivs) - 1; i >= 0; i-- {
		if w.ivs[i].start <= x {
			if x < w.ivs[i].end {
				return i
			}
			return -1
		}
	}
	return -1
}

// addInterval records that [a, b) is redacted, merging it with every
// interval it overlaps. Bytes already written or swallowed are skipped.
func (w *Writer) addInterval(a, b int64, marker []byte, prio uint8) {
	if a < w.emitted {
		// Bytes before emitted were swallowed by an earlier interval (the
		// hold-back guarantees none of a match was written in clear).
		a = w.emitted
		if i := w.find(a - 1); i >= 0 {
			a = w.ivs[i].start
		}
	}
	if a >= b {
		return
	}
	ivs := w.ivs
	hi := len(ivs)
	for hi > 0 && ivs[hi-1].start >= b {
		hi--
	}
	lo := hi
	for lo > 0 && ivs[lo-1].end > a {
		lo--
	}
	nw := interval{start: a, end: b, marker: marker, prio: prio}
	if lo == hi {
		w.ivs = append(w.ivs, interval{})
		copy(w.ivs[hi+1:], w.ivs[hi:])
		w.ivs[hi] = nw
		return
	}
	m := ivs[lo]
	for _, iv := range ivs[lo+1 : hi] {
		m.end = max(m.end, iv.end)
		m.grow += iv.grow
		if !m.marked && (iv.marked || iv.prio > m.prio) {
			m.marker, m.prio, m.marked = iv.marker, iv.prio, iv.marked
		}
	}
	if !m.marked && nw.prio > m.prio {
		m.marker, m.prio = nw.marker, nw.prio
	}
	m.start = min(m.start, a)
	m.end = max(m.end, b)
	ivs[lo] = m
	w.ivs = append(ivs[:lo+1], ivs[hi:]...)
}

// emit decides the output for every byte before f (no redaction can start
// before f any more): bytes outside intervals are copied, each interval is
// replaced by its marker once.
func (w *Writer) emit(f int64) {
	for {
		limit := f
		if len(w.ivs) > 0 && w.ivs[0].start < limit {
			limit = w.ivs[0].start
		}
		if w.emitted < limit {
			w.out = append(w.out, w.buf[w.emitted-w.bufStart:limit-w.bufStart]...)
			w.emitted = limit
		}
		if len(w.ivs) == 0 || w.ivs[0].start > f {
			return
		}
		iv := &w.ivs[0]
		if !iv.marked {
			w.out = append(w.out, iv.marker...)
			iv.marked = true
			w.redactions.Add(1)
		}
		if iv.end > w.emitted {
			w.emitted = iv.end
		}
		if iv.end > f || iv.grow > 0 {
			return
		}
		w.ivs = w.ivs[:copy(w.ivs, w.ivs[1:])]
	}
}

// flush writes the decided output to the destination.
func (w *Writer) flush() error {
	if len(w.out) == 0 {
		return nil
	}
	_, err := w.dst.Write(w.out)
	w.out = w.out[:0]
	if err != nil {
		w.err = err
	}
	return err
}

// compact drops the bytes before emitted from the window.
func (w *Writer) compact() {
	k := int(w.emitted - w.bufStart)
	if k <= 0 {
		return
	}
	if w.s.emails {
		w.runBefore = w.localRun(k)
	}
	w.buf = w.buf[:copy(w.buf, w.buf[k:])]
	w.bufStart += int64(k)
}
