package tftpd

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the server's Prometheus metrics. A nil *Metrics is valid and
// records nothing, so Config.Metrics is optional.
type Metrics struct {
	transfers *prometheus.CounterVec
	bytes     prometheus.Counter
	malformed prometheus.Counter
	active    prometheus.Gauge
	resent    prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (skipped if reg
// is nil). Like prometheus.MustRegister it panics if they are already
// registered there: create one Metrics per registry and share it between
// servers.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bootserve_tftp_transfers_total",
			Help: "TFTP read requests by outcome: ok, failed, aborted_probe (client ended after option negotiation, e.g. an EDK2 size probe), not_found, refused (bad name, write request, server busy).",
		}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bootserve_tftp_bytes_total",
			Help: "File bytes sent in TFTP DATA packets.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bootserve_tftp_malformed_packets_total",
			Help: "Packets that were not a well-formed TFTP request (or, during a transfer, neither ACK nor ERROR), including requests with bad option values.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bootserve_tftp_active_transfers",
			Help: "TFTP transfers holding a concurrency slot.",
		}),
		resent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bootserve_tftp_retransmitted_packets_total",
			Help: "DATA and OACK packets sent again after a timeout or a lost block (native engine).",
		}),
	}
	// Export every outcome from the start so rate() sees a zero, not a gap.
	for _, o := range []Outcome{OutcomeOK, OutcomeFailed, OutcomeAbortedProbe, OutcomeNotFound, OutcomeRefused} {
		m.transfers.WithLabelValues(string(o))
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.bytes, m.malformed, m.active, m.resent)
	}
	return m
}

func (m *Metrics) transferDone(o Outcome, bytes int64, retransmits int) {
	if m == nil {
		return
	}
	m.transfers.WithLabelValues(string(o)).Inc()
	if bytes > 0 {
		m.bytes.Add(float64(bytes))
	}
	if retransmits > 0 {
		m.resent.Add(float64(retransmits))
	}
}

func (m *Metrics) malformedPacket() {
	if m != nil {
		m.malformed.Inc()
	}
}

func (m *Metrics) activeAdd(d float64) {
	if m != nil {
		m.active.Add(d)
	}
}
