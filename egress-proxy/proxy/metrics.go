package proxy

import (
	"fmt"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// metrics are the server's Prometheus collectors. Every label is bounded:
// decision and reason are fixed sets, direction is upstream|downstream.
type metrics struct {
	requests      *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	tunnelSeconds prometheus.Histogram
	openConns     prometheus.Gauge
	openTunnels   prometheus.Gauge

	// Resolved children, so a request does not hash its label values:
	// bytesUp/bytesDown are the two directions, decisions caches the
	// requests counter per (decision, reason) as they occur.
	bytesUp, bytesDown prometheus.Counter
	decisions          sync.Map // decisionKey -> prometheus.Counter
}

type decisionKey struct {
	decision string
	reason   policy.Reason
}

// countDecision increments cordon_egress_requests_total.
func (m *metrics) countDecision(decision string, reason policy.Reason) {
	k := decisionKey{decision, reason}
	if c, ok := m.decisions.Load(k); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c := m.requests.WithLabelValues(decision, string(reason))
	m.decisions.Store(k, c)
	c.Inc()
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_egress_requests_total",
			Help: "Egress decisions (plain HTTP requests and CONNECT tunnels) by decision and reason code.",
		}, []string{"decision", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_egress_bytes_total",
			Help: "Payload bytes carried, by direction (upstream: job to destination).",
		}, []string{"direction"}),
		tunnelSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cordon_egress_tunnel_duration_seconds",
			Help:    "Lifetime of allowed CONNECT tunnels.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_egress_open_connections",
			Help: "Open client connections.",
		}),
		openTunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_egress_open_tunnels",
			Help: "Open CONNECT tunnels.",
		}),
	}
	m.bytesUp = m.bytes.WithLabelValues("upstream")
	m.bytesDown = m.bytes.WithLabelValues("downstream")
	for _, c := range []prometheus.Collector{m.requests, m.bytes, m.tunnelSeconds, m.openConns, m.openTunnels} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
