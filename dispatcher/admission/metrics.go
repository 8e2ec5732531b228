package admission

import "github.com/prometheus/client_golang/prometheus"

// Decisions counted by cordon_dispatcher_admission_decisions_total.
const (
	decisionAdmitted    = "admitted"
	decisionConcurrency = "refused_concurrency"
	decisionHourly      = "refused_hourly"
	decisionEnded       = "refused_ended"
)

type metrics struct {
	decisions *prometheus.CounterVec
	orders    prometheus.Counter
	expired   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_admission_decisions_total",
			Help: "Admission decisions, by decision (admitted, refused_concurrency, refused_hourly, refused_ended).",
		}, []string{"decision"}),
		orders: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_admission_termination_orders_total",
			Help: "Termination orders recorded (anomaly policy, or a late heartbeat finding the org full).",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_admission_leases_expired_total",
			Help: "Runs ended because their sidecar stopped heartbeating.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.decisions, m.orders, m.expired)
	}
	return m
}
