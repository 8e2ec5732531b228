package server

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the control plane's Prometheus metrics. Labels are bounded:
// reasons come from a fixed set, never from peers.
type Metrics struct {
	Streams        prometheus.Gauge
	Pushes         prometheus.Counter
	ACKs           prometheus.Counter
	NACKs          prometheus.Counter
	Rejected       *prometheus.CounterVec
	ConfigVersion  prometheus.Gauge
	ConfigErrors   prometheus.Counter
	ReloadDuration prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg. A nil reg
// registers nothing (tests, lint).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_xds_streams", Help: "ADS streams currently open and authorized.",
		}),
		Pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_xds_pushes_total", Help: "Discovery responses sent to proxies.",
		}),
		ACKs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_xds_acks_total", Help: "Discovery responses proxies acknowledged.",
		}),
		NACKs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_xds_nacks_total", Help: "Discovery responses proxies rejected (see the log for their reason).",
		}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_xds_rejected_streams_total", Help: "Streams refused, by reason.",
		}, []string{"reason"}),
		ConfigVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_xds_config_version", Help: "Version of the snapshot being served.",
		}),
		ConfigErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_xds_config_errors_total", Help: "Errors found in allowlist edits that were rejected (the last good snapshot kept serving).",
		}),
		ReloadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cordon_xds_reload_seconds", Help: "Time to load, translate and publish the allowlists.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	for _, r := range []string{reasonUnauthorized, reasonNodeMismatch, reasonDelta} {
		m.Rejected.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.Streams, m.Pushes, m.ACKs, m.NACKs, m.Rejected,
			m.ConfigVersion, m.ConfigErrors, m.ReloadDuration)
	}
	return m
}

const (
	reasonUnauthorized = "unauthorized_identity"
	reasonNodeMismatch = "node_id_mismatch"
	reasonDelta        = "delta_unsupported"
)
