package alerts

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	raised     prometheus.Counter
	deliveries *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		raised: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_alerts_raised_total",
			Help: "Cost alerts raised (once per org, month and threshold across replicas).",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_alerts_webhook_deliveries_total",
			Help: "Webhook deliveries of alerts, by outcome (delivered, pending, failed, no_webhook, not_allowed).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.raised, m.deliveries)
	}
	return m
}
