package spool

import (
	"testing"
	"time"
)

// BenchmarkAppend measures one audit-sized record per Append under both
// fsync policies.
func BenchmarkAppend(b *testing.B) {
	for _, bc := range []struct {
		name string
		sync time.Duration
	}{{"fsync-each", 0}, {"group-commit-100ms", 100 * time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open[rec](Config{Dir: b.TempDir(), MaxBytes: 1 << 30, SyncEvery: bc.sync})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			r := rec{ID: "evt_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Body: "EGRESS_DENIED acme/block_follower CONNECT 169.254.169.254:80 metadata"}
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Append(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
