package cpiocache

import "github.com/prometheus/client_golang/prometheus"

// counter names one of the cache's event counters; each is kept both in
// Stats and, when configured, in Prometheus.
type counter int

const (
	cHits counter = iota
	cMisses
	cBuilds
	cBuildErrors
	cEvictions
	cBytesWritten
	nCounters
)

// Metrics are the Prometheus metrics of a Cache. A nil *Metrics records
// nothing.
type Metrics struct {
	counters [nCounters]prometheus.Counter
	bytes    prometheus.Gauge
	members  prometheus.Gauge
}

// NewMetrics creates the cache metrics and registers them with reg (if reg is
// not nil). Registering twice with the same registry panics, as with
// prometheus.MustRegister. Names start with "bootserve_cache_".
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "bootserve_cache_" + name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "bootserve_cache_" + name, Help: help})
	}
	m := &Metrics{
		counters: [nCounters]prometheus.Counter{
			cHits:         c("hits_total", "Member requests served from the cache without waiting."),
			cMisses:       c("misses_total", "Member requests that waited for a build or an integrity check."),
			cBuilds:       c("builds_total", "Members archived and compressed."),
			cBuildErrors:  c("build_errors_total", "Member builds that failed."),
			cEvictions:    c("evictions_total", "Members deleted to stay under the size limit."),
			cBytesWritten: c("written_bytes_total", "Bytes of members written to the cache directory."),
		},
		bytes:   g("bytes", "Bytes of members in the cache directory."),
		members: g("members", "Members in the cache directory."),
	}
	if reg != nil {
		for _, x := range m.counters {
			reg.MustRegister(x)
		}
		reg.MustRegister(m.bytes, m.members)
	}
	return m
}

func (m *Metrics) add(k counter, v int64) {
	if m != nil {
		m.counters[k].Add(float64(v))
	}
}

func (m *Metrics) setSize(bytes int64, members int) {
	if m != nil {
		m.bytes.Set(float64(bytes))
		m.members.Set(float64(members))
	}
}
