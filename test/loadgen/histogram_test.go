package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramBucketsCoverEveryValue(t *testing.T) {
	for _, v := range []uint64{0, 1, 255, 256, 257, 511, 512, 1000, 123456, 1 << 30, 1<<40 - 1} {
		i := histIndex(v)
		lo, hi := histBounds(i)
		if v < lo || v > hi {
			t.Errorf("value %d: got bucket %d = [%d, %d], want it to contain the value", v, i, lo, hi)
		}
		if v >= 2*histSub && float64(hi-lo)/float64(lo) > 1.0/histSub {
			t.Errorf("value %d: bucket [%d, %d] is wider than 1/%d of its start", v, lo, hi, histSub)
		}
	}
	if got := histIndex(1 << 50); got != histBuckets-1 {
		t.Errorf("value 2^50: got bucket %d, want the last one %d", got, histBuckets-1)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name    string
		samples []time.Duration
	}{
		{"one value", []time.Duration{150 * time.Microsecond}},
		{"two values", []time.Duration{time.Microsecond, time.Millisecond}},
		{"exact small values", []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"uniform", func() []time.Duration {
			s := make([]time.Duration, 10000)
			for i := range s {
				s[i] = time.Duration(rng.Int64N(int64(10 * time.Millisecond)))
			}
			return s
		}()},
		{"long tail", func() []time.Duration {
			s := make([]time.Duration, 10000)
			for i := range s {
				s[i] = time.Duration(100e3 * math.Exp(rng.NormFloat64()))
			}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, d := range tt.samples {
				h.Record(d)
			}
			sorted := slices.Clone(tt.samples)
			slices.Sort(sorted)
			for _, q := range []float64{0.5, 0.9, 0.99, 1} {
				rank := int(math.Ceil(q*float64(len(sorted)))) - 1
				want := sorted[max(rank, 0)]
				got := h.Quantile(q)
				if diff := math.Abs(float64(got - want)); diff > float64(want)/histSub+1 {
					t.Errorf("q%.2f: got %v, want %v (within 1/%d)", q, got, want, histSub)
				}
			}
			if got, want := h.Count(), uint64(len(tt.samples)); got != want {
				t.Errorf("count: got %d, want %d", got, want)
			}
			if got, want := h.Max(), sorted[len(sorted)-1]; got != want {
				t.Errorf("max: got %v, want %v", got, want)
			}
		})
	}
}

func TestHistogramMergeEqualsRecordingTogether(t *testing.T) {
	var a, b, all Histogram
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var merged Histogram
	merged.Merge(&a)
	merged.Merge(&b)
	merged.Merge(&Histogram{})
	if merged != all {
		t.Errorf("got merged %v/%v/%d, want %v/%v/%d", merged.Quantile(.5), merged.Max(), merged.Count(), all.Quantile(.5), all.Max(), all.Count())
	}
}

func TestHistogramEmptyAndNegative(t *testing.T) {
	var h Histogram
	if got := h.Quantile(0.99); got != 0 {
		t.Errorf("empty: got %v, want 0", got)
	}
	h.Record(-time.Second)
	if got := h.Quantile(0.5); got != 0 {
		t.Errorf("negative recorded: got %v, want 0", got)
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	d := time.Duration(0)
	if allocs := testing.AllocsPerRun(1000, func() { d += 977; h.Record(d) }); allocs != 0 {
		t.Errorf("got %v allocations per Record, want 0", allocs)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(i))
	}
}
