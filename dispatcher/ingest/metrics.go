package ingest

import (
	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	events       *prometheus.CounterVec
	reports      *prometheus.CounterVec
	requests     *prometheus.CounterVec
	redactions   prometheus.Counter
	batchItems   prometheus.Histogram
	batchSeconds prometheus.Histogram
	ackSeconds   *prometheus.HistogramVec
	queueItems   prometheus.Gauge
}

// Results for cordon_dispatcher_ingest_events_total and _usage_reports_total.
const (
	resultStored      = "stored"
	resultDuplicate   = "duplicate"
	resultInvalid     = "invalid"
	resultDenied      = "denied"
	resultUnavailable = "unavailable"
	resultThrottled   = "throttled"
)

// registerStoreStats exports the audit store's append counts, when the
// store keeps them (*auditstore.Store does).
func registerStoreStats(reg prometheus.Registerer, store Appender) {
	st, ok := store.(interface{ Stats() auditstore.AppendStats })
	if !ok || reg == nil {
		return
	}
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "cordon_dispatcher_audit_appends_remembered_total",
			Help: "Append transactions sent in one round trip, from the chain heads this replica remembered.",
		}, func() float64 { return float64(st.Stats().Remembered) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "cordon_dispatcher_audit_appends_stale_total",
			Help: "Of those, the ones that found a chain head moved on by another replica, and were redone reading the heads.",
		}, func() float64 { return float64(st.Stats().Stale) }),
	)
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_ingest_events_total",
			Help: "Audit events received, by result (stored, duplicate, invalid, denied, unavailable, throttled).",
		}, []string{"result"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_ingest_usage_reports_total",
			Help: "Usage reports received, by result.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cordon_dispatcher_ingest_requests_total",
			Help: "Ingest requests, by endpoint and HTTP status code.",
		}, []string{"endpoint", "code"}),
		redactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cordon_dispatcher_ingest_redactions_total",
			Help: "Secret-looking metadata values replaced before storage.",
		}),
		batchItems: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cordon_dispatcher_ingest_batch_items",
			Help:    "Events and reports committed per transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cordon_dispatcher_ingest_batch_seconds",
			Help:    "Time to commit one batch transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		ackSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cordon_dispatcher_ingest_ack_seconds",
			Help:    "Time from a request's arrival to its answer, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"endpoint"}),
		queueItems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cordon_dispatcher_ingest_queue_items",
			Help: "Events and reports accepted and waiting for a writer.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.reports, m.requests, m.redactions, m.batchItems, m.batchSeconds, m.ackSeconds, m.queueItems)
	}
	return m
}
