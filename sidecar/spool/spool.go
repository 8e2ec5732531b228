// Package spool is the sidecar's bounded on-disk queue for records that
// must reach the dispatcher (audit events, usage reports) even when it is
// down (DESIGN.md step 5).
//
// Records are appended as JSON lines to segment files in one directory;
// a delivery loop hands them in order, in batches, to a Deliverer and
// deletes a segment once all of it was delivered. Delivery is at least
// once: after a crash the undeleted segments are delivered again from the
// start, so the receiver must deduplicate by the record's ID (audit.Event's
// EventID, usage.Report's ReportID).
//
// Durability (the fsync policy): Append writes the line with write(2) before
// it returns, so a crash of the process loses nothing. Against power loss,
// the segment is fsynced before Append returns when Config.SyncEvery is
// zero (the default), otherwise at most SyncEvery after the append (group
// commit), and always on segment rotation and Close.
//
// Bounds: the directory never holds more than Config.MaxBytes of segments.
// An Append that would exceed it fails with ErrFull, counted in
// cordon_sidecar_spool_full_total and logged; nothing is dropped silently.
// A batch the receiver rejects as permanently invalid (an error that is not
// Retryable) is moved to rejected.jsonl in the same directory, logged and
// counted, so one bad record cannot block the queue forever.
//
// It is not a general message queue: one writer process, one delivery loop.
package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cordon-dev/cordon/internal/audit"
)

// A spool of audit events is an audit.Emitter.
var _ audit.Emitter = (*Spool[audit.Event])(nil)

// Deliverer sends a batch of records. An error that wraps a Retryable means
// "try again later"; any other error means the batch will never be
// accepted (it is set aside, see the package doc).
type Deliverer[T any] interface {
	Deliver(ctx context.Context, records []T) error
}

// Retryable is implemented by delivery errors after which the same batch
// should be sent again, RetryAfter from now (zero: the spool's backoff).
type Retryable interface {
	error
	RetryAfter() time.Duration
}

// RetryLater wraps err as Retryable with the given delay.
func RetryLater(err error, after time.Duration) error { return &retryLater{err: err, after: after} }

type retryLater struct {
	err   error
	after time.Duration
}

func (r *retryLater) Error() string             { return "retry later: " + r.err.Error() }
func (r *retryLater) Unwrap() error             { return r.err }
func (r *retryLater) RetryAfter() time.Duration { return r.after }

// ErrFull is returned by Append when the spool holds MaxBytes.
var ErrFull = errors.New("spool full")

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("spool closed")

// Config configures a Spool.
type Config struct {
	// Dir holds the segments. Required; created 0700 if missing.
	Dir string
	// MaxBytes bounds the segments on disk. If zero, 64 MiB.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is closed and a new one
	// started. If zero, 1 MiB.
	SegmentBytes int64
	// MaxRecordBytes bounds one encoded record. If zero, 256 KiB.
	MaxRecordBytes int
	// SyncEvery is the group-commit interval. If zero, every Append is
	// fsynced before it returns.
	SyncEvery time.Duration
	// BatchSize is the most records per Deliver call. If zero, 500.
	BatchSize int
	// MinBackoff and MaxBackoff bound the jittered exponential backoff
	// after a failed delivery. If zero, 500ms and 1 minute.
	MinBackoff, MaxBackoff time.Duration
	// Registerer, if set, receives the spool's metrics.
	Registerer prometheus.Registerer
	// Name labels the metrics (e.g. "audit", "usage"). If empty, "default".
	Name string
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// Spool is a bounded on-disk queue of T, encoded as JSON.
type Spool[T any] struct {
	cfg Config
	log *slog.Logger
	m   metrics

	wake chan struct{} // a record was appended

	mu       sync.Mutex // guards the following
	segs     []segment  // oldest first; the last is the one appended to
	active   *os.File
	total    int64 // bytes of all segments plus rejected.jsonl
	dirty    bool  // written since the last fsync
	lastSync time.Time
	closed   bool
}

type segment struct {
	seq  uint64
	size int64
}

type metrics struct {
	bytes     prometheus.Gauge
	full      prometheus.Counter
	appended  prometheus.Counter
	delivered prometheus.Counter
	rejected  prometheus.Counter
	failures  prometheus.Counter
	corrupt   prometheus.Counter
}

func newMetrics(name string, reg prometheus.Registerer) metrics {
	l := prometheus.Labels{"spool": name}
	m := metrics{
		bytes:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cordon_sidecar_spool_bytes", Help: "Bytes held in the spool on disk.", ConstLabels: l}),
		full:      prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_full_total", Help: "Appends refused because the spool was full.", ConstLabels: l}),
		appended:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_appended_records_total", Help: "Records appended.", ConstLabels: l}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_delivered_records_total", Help: "Records delivered.", ConstLabels: l}),
		rejected:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_rejected_records_total", Help: "Records the receiver rejected permanently (kept in rejected.jsonl).", ConstLabels: l}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_delivery_failures_total", Help: "Delivery attempts that failed and will be retried.", ConstLabels: l}),
		corrupt:   prometheus.NewCounter(prometheus.CounterOpts{Name: "cordon_sidecar_spool_corrupt_records_total", Help: "Undecodable lines found in segments (kept in rejected.jsonl).", ConstLabels: l}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.bytes, m.full, m.appended, m.delivered, m.rejected, m.failures, m.corrupt} {
			_ = reg.Register(c)
		}
	}
	return m
}

const (
	segPrefix    = "seg-"
	segSuffix    = ".jsonl"
	rejectedFile = "rejected.jsonl"
)

func segName(seq uint64) string { return fmt.Sprintf("%s%020d%s", segPrefix, seq, segSuffix) }

// Open opens (or creates) the spool in cfg.Dir, recovering the segments a
// previous process left: a torn last line (a crash mid-append) is cut off.
func Open[T any](cfg Config) (*Spool[T], error) {
	if cfg.Dir == "" {
		return nil, errors.New("spool: no directory")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.SegmentBytes == 0 {
		cfg.SegmentBytes = 1 << 20
	}
	if cfg.MaxRecordBytes == 0 {
		cfg.MaxRecordBytes = 256 << 10
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 500
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.MaxBytes < 0 || cfg.SegmentBytes < 0 || cfg.MaxRecordBytes < 0 || cfg.BatchSize < 0 || cfg.SyncEvery < 0 {
		return nil, errors.New("spool: negative limit")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", cfg.Dir, err)
	}
	s := &Spool[T]{cfg: cfg, log: log, m: newMetrics(cfg.Name, cfg.Registerer), wake: make(chan struct{}, 1)}
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool[T]) recover() error {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", s.cfg.Dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if name == rejectedFile {
			if fi, err := e.Info(); err == nil {
				s.total += fi.Size()
			}
			continue
		}
		num, ok := strings.CutPrefix(name, segPrefix)
		num, ok2 := strings.CutSuffix(num, segSuffix)
		if !ok || !ok2 {
			continue
		}
		seq, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return fmt.Errorf("spool: stat %s: %w", name, err)
		}
		s.segs = append(s.segs, segment{seq: seq, size: fi.Size()})
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i].seq < s.segs[j].seq })
	// A crash mid-append leaves a last line without its newline: cut it.
	if n := len(s.segs); n > 0 {
		last := &s.segs[n-1]
		path := filepath.Join(s.cfg.Dir, segName(last.seq))
		good, err := lastNewline(path, last.size)
		if err != nil {
			return err
		}
		if good != last.size {
			s.log.Warn("spool: cut a torn record", "segment", segName(last.seq), "bytes", last.size-good)
			if err := os.Truncate(path, good); err != nil {
				return fmt.Errorf("spool: truncate %s: %w", path, err)
			}
			last.size = good
		}
	}
	for _, sg := range s.segs {
		s.total += sg.size
	}
	var next uint64 = 1
	if n := len(s.segs); n > 0 {
		next = s.segs[n-1].seq + 1
	}
	if err := s.openSegmentLocked(next); err != nil {
		return err
	}
	s.m.bytes.Set(float64(s.total))
	return nil
}

// lastNewline returns the length of the file up to and including its last
// '\n'.
func lastNewline(path string, size int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	end := size
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, fmt.Errorf("spool: read %s: %w", path, err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return end - n + int64(i) + 1, nil
		}
		end -= n
	}
	return 0, nil
}

func (s *Spool[T]) openSegmentLocked(seq uint64) error {
	path := filepath.Join(s.cfg.Dir, segName(seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: open segment: %w", err)
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		f.Close()
		return err
	}
	s.active = f
	s.segs = append(s.segs, segment{seq: seq})
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: sync dir: %w", err)
	}
	return nil
}

// Append adds one record. It returns ErrFull (and counts and logs it) when
// the record does not fit under MaxBytes; the caller must report it.
func (s *Spool[T]) Append(rec T) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("spool: encode record: %w", err)
	}
	line = append(line, '\n')
	if len(line) > s.cfg.MaxRecordBytes {
		return fmt.Errorf("spool: record of %d bytes exceeds the %d-byte limit", len(line), s.cfg.MaxRecordBytes)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.total+int64(len(line)) > s.cfg.MaxBytes {
		s.m.full.Inc()
		s.log.Error("spool full: record not queued", "spool", s.cfg.Name, "bytes", s.total, "max_bytes", s.cfg.MaxBytes)
		return fmt.Errorf("spool %s: %w (%d of %d bytes): the dispatcher has been unreachable too long", s.cfg.Name, ErrFull, s.total, s.cfg.MaxBytes)
	}
	cur := &s.segs[len(s.segs)-1]
	if cur.size > 0 && cur.size+int64(len(line)) > s.cfg.SegmentBytes {
		if err := s.rotateLocked(); err != nil {
			return err
		}
		cur = &s.segs[len(s.segs)-1]
	}
	n, err := s.active.Write(line)
	cur.size += int64(n)
	s.total += int64(n)
	s.m.bytes.Set(float64(s.total))
	if err != nil {
		return fmt.Errorf("spool: append: %w", err)
	}
	s.dirty = true
	if s.cfg.SyncEvery == 0 || time.Since(s.lastSync) >= s.cfg.SyncEvery {
		if err := s.syncLocked(); err != nil {
			return err
		}
	}
	s.m.appended.Inc()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Emit appends rec, logging (and counting) a failure: it makes a Spool of
// audit.Event an audit.Emitter.
func (s *Spool[T]) Emit(rec T) {
	if err := s.Append(rec); err != nil {
		s.log.Error("spool: record not queued", "spool", s.cfg.Name, "err", err)
	}
}

func (s *Spool[T]) syncLocked() error {
	if !s.dirty {
		return nil
	}
	if err := s.active.Sync(); err != nil {
		return fmt.Errorf("spool: fsync: %w", err)
	}
	s.dirty = false
	s.lastSync = time.Now()
	return nil
}

func (s *Spool[T]) rotateLocked() error {
	if err := s.syncLocked(); err != nil {
		return err
	}
	if err := s.active.Close(); err != nil {
		return fmt.Errorf("spool: close segment: %w", err)
	}
	return s.openSegmentLocked(s.segs[len(s.segs)-1].seq + 1)
}

// Bytes is how much the spool holds on disk.
func (s *Spool[T]) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Close syncs and closes the active segment. It is idempotent. Undelivered
// records stay on disk for the next Open.
func (s *Spool[T]) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.syncLocked()
	if cerr := s.active.Close(); err == nil {
		err = cerr
	}
	return err
}
