package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear (the HdrHistogram layout): values below
// 2*histSub are counted exactly, above that every power of two is split into
// histSub equal buckets, so a recorded value is off by less than 1/histSub
// (0.8%) of itself. Values are nanoseconds; anything at or above
// 2^histMaxBits ns (about 18 minutes) lands in the last bucket.
const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histMaxBits = 40
	histBuckets = 2*histSub + (histMaxBits-histSubBits-1)*histSub
)

// Histogram records durations without allocating. It is not safe for
// concurrent use: give each worker its own and Merge them at the end.
// The zero value is an empty histogram ready to use.
type Histogram struct {
	counts [histBuckets]uint64
	total  uint64
	min    time.Duration
	max    time.Duration
}

// histIndex maps a value to its bucket.
func histIndex(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1 // v>>shift is in [histSub, 2*histSub)
	if shift > histMaxBits-histSubBits-1 {
		return histBuckets - 1
	}
	return 2*histSub + (shift-1)*histSub + int(v>>shift) - histSub
}

// histBounds returns the smallest and largest value counted in bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < 2*histSub {
		return uint64(i), uint64(i)
	}
	j := i - 2*histSub
	shift := j/histSub + 1
	sub := uint64(j%histSub + histSub)
	lo = sub << shift
	return lo, lo + (1 << shift) - 1
}

// Record adds one observation. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d))]++
	if h.total == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.total++
}

// Merge adds every observation of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.total == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.total += o.total
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.total }

// Max is the largest observation, or 0 when there is none.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the value at quantile q (0 < q <= 1): the smallest
// recorded value v such that at least q of all observations are <= v, to
// within the bucket resolution (the bucket's midpoint, clamped to the
// observed min and max). It returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.total {
		rank = h.total
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := histBounds(i)
			v := time.Duration(lo + (hi-lo)/2)
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}
