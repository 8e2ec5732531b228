package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// Run delivers the spooled records, oldest first, until ctx is done, then
// returns nil. Only one Run may be active per Spool.
func (s *Spool[T]) Run(ctx context.Context, d Deliverer[T]) error {
	var sync <-chan time.Time
	if s.cfg.SyncEvery > 0 {
		t := time.NewTicker(s.cfg.SyncEvery)
		defer t.Stop()
		sync = t.C
	}
	var seq uint64 // segment being delivered
	var off int64  // bytes of it delivered
	backoff := s.cfg.MinBackoff
	for {
		if ctx.Err() != nil {
			return nil
		}
		next, size, isActive, ok := s.head(seq)
		if !ok {
			return nil // closed
		}
		if next != seq {
			seq, off = next, 0
		}
		if off >= size {
			if isActive {
				if size > 0 {
					if err := s.sealActive(); err != nil {
						return err
					}
					continue
				}
				select {
				case <-ctx.Done():
					return nil
				case <-s.wake:
				case <-sync:
					s.syncNow()
				}
				continue
			}
			if err := s.dropSegment(seq, size); err != nil {
				return err
			}
			continue
		}
		recs, raw, consumed, err := s.readBatch(seq, off, size)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			off += consumed
			continue
		}
		err = d.Deliver(ctx, recs)
		switch {
		case err == nil:
			s.m.delivered.Add(float64(len(recs)))
			off += consumed
			backoff = s.cfg.MinBackoff
		case ctx.Err() != nil:
			return nil
		case isRetryable(err):
			s.m.failures.Inc()
			wait := retryAfter(err)
			if wait <= 0 {
				wait = jitter(backoff)
				backoff = min(backoff*2, s.cfg.MaxBackoff)
			}
			s.log.Warn("spool: delivery failed, will retry", "spool", s.cfg.Name, "records", len(recs), "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		default:
			s.m.rejected.Add(float64(len(recs)))
			s.log.Error("spool: receiver rejected records permanently; kept in "+rejectedFile, "spool", s.cfg.Name, "records", len(recs), "err", err)
			if werr := s.reject(raw); werr != nil {
				return werr
			}
			off += consumed
		}
	}
}

func isRetryable(err error) bool {
	var r Retryable
	return errors.As(err, &r)
}

func retryAfter(err error) time.Duration {
	var r Retryable
	if errors.As(err, &r) {
		return r.RetryAfter()
	}
	return 0
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// head returns the oldest segment (the one after seq if seq was dropped),
// its size, and whether it is the active one.
func (s *Spool[T]) head(seq uint64) (uint64, int64, bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, false, false
	}
	for i, sg := range s.segs {
		if sg.seq >= seq {
			return sg.seq, sg.size, i == len(s.segs)-1, true
		}
	}
	last := s.segs[len(s.segs)-1]
	return last.seq, last.size, true, true
}

func (s *Spool[T]) sealActive() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	return s.rotateLocked()
}

func (s *Spool[T]) syncNow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if err := s.syncLocked(); err != nil {
		s.log.Error("spool: fsync", "err", err)
	}
}

func (s *Spool[T]) dropSegment(seq uint64, size int64) error {
	if err := os.Remove(filepath.Join(s.cfg.Dir, segName(seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: remove delivered segment: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, sg := range s.segs {
		if sg.seq == seq {
			s.segs = append(s.segs[:i], s.segs[i+1:]...)
			s.total -= size
			s.m.bytes.Set(float64(s.total))
			break
		}
	}
	return nil
}

// readBatch decodes up to BatchSize records from [off, size) of segment
// seq. Undecodable lines are set aside in rejected.jsonl and skipped.
func (s *Spool[T]) readBatch(seq uint64, off, size int64) ([]T, [][]byte, int64, error) {
	f, err := os.Open(filepath.Join(s.cfg.Dir, segName(seq)))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("spool: open segment: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(io.NewSectionReader(f, off, size-off))
	var recs []T
	var raw [][]byte
	var consumed int64
	for len(recs) < s.cfg.BatchSize {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			consumed += int64(len(line))
			var rec T
			if jerr := json.Unmarshal(line, &rec); jerr != nil {
				if len(recs) > 0 {
					// Deliver what precedes it first; the bad line starts
					// the next batch, so it is set aside exactly once.
					consumed -= int64(len(line))
					break
				}
				s.m.corrupt.Inc()
				s.log.Error("spool: undecodable record set aside", "spool", s.cfg.Name, "segment", segName(seq), "offset", off)
				if werr := s.reject([][]byte{line}); werr != nil {
					return nil, nil, 0, werr
				}
				return nil, nil, consumed, nil
			}
			recs = append(recs, rec)
			raw = append(raw, line)
		}
		if err != nil {
			break // EOF of the section: the rest is not written yet
		}
	}
	return recs, raw, consumed, nil
}

// reject appends lines to rejected.jsonl (counted in the spool's bytes).
func (s *Spool[T]) reject(lines [][]byte) error {
	f, err := os.OpenFile(filepath.Join(s.cfg.Dir, rejectedFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: open %s: %w", rejectedFile, err)
	}
	var n int64
	for _, l := range lines {
		m, err := f.Write(l)
		n += int64(m)
		if err != nil {
			f.Close()
			return fmt.Errorf("spool: write %s: %w", rejectedFile, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("spool: fsync %s: %w", rejectedFile, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	s.mu.Lock()
	s.total += n
	s.m.bytes.Set(float64(s.total))
	s.mu.Unlock()
	return nil
}
