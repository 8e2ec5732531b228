package anomaly

import (
	"math"
	"testing"
)

func TestScore(t *testing.T) {
	tests := []struct {
		name     string
		metric   string
		x        float64
		base     []float64
		wantZ    float64
		wantFlag bool
	}{
		{"at the median", MetricCPU, 10, []float64{8, 9, 10, 11, 12}, 0, false},
		{"mad scale", MetricCPU, 25, []float64{8, 9, 10, 11, 12}, 15 / 1.4826, true},
		{"below the median never flags", MetricCPU, 0, []float64{100, 100, 100}, -100 / (1.4826 * 5), false},
		{"constant baseline uses 5% of the median", MetricEgress, 300e6, []float64{100e6, 100e6, 100e6}, 200e6 / (1.4826 * 5e6), true},
		{"zero baseline uses the floor", MetricDenials, 5, []float64{0, 0, 0, 0}, 5 / 1.4826, false},
		{"zero baseline, many denials", MetricDenials, 20, []float64{0, 0, 0, 0}, 20 / 1.4826, true},
		{"even count median", MetricCPU, 3, []float64{1, 2, 4, 5}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := score(tc.metric, tc.x, tc.base, 6)
			if math.Abs(s.Z-tc.wantZ) > 1e-9 || s.Anomalous != tc.wantFlag {
				t.Fatalf("got z %g anomalous %v, want z %g anomalous %v", s.Z, s.Anomalous, tc.wantZ, tc.wantFlag)
			}
		})
	}
}
