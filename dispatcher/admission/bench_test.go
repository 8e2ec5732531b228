package admission_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/cordon-dev/cordon/dispatcher/admission"
)

// BenchmarkAdmitFinish measures one admission and its finish (two
// transactions, plus the audit append of RUN_ADMITTED and RUN_FINISHED),
// with runs of one org (all serialised on its quota row) or spread over 16
// orgs.
func BenchmarkAdmitFinish(b *testing.B) {
	for _, orgs := range []int{1, 16} {
		b.Run(fmt.Sprintf("orgs=%d", orgs), func(b *testing.B) {
			e := newEnv(b)
			svc := e.replica(0)
			for i := range orgs {
				if err := svc.SetQuota(ctxT(b), fmt.Sprintf("bench-%d", i), 100000, 1000000); err != nil {
					b.Fatal(err)
				}
			}
			var seq atomic.Int64
			b.SetParallelism(8) // 16 sidecars at once on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := seq.Add(1)
					org := fmt.Sprintf("bench-%d", int(n)%orgs)
					run := fmt.Sprintf("run-%d", n)
					d, err := svc.Admit(ctxT(b), org, "etl", run)
					if err != nil || !d.Admitted {
						b.Errorf("admit: %+v, %v", d, err)
						return
					}
					if err := svc.Finish(ctxT(b), org, run, admission.FinishReport{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
