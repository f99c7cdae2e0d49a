package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

// Reasons for dropped packets counted by the server loop itself; plugins add
// their own (see leasedb's Drop* constants).
const (
	DropMalformed     = "malformed_packet"
	DropNotARequest   = "not_a_boot_request"
	DropUnhandledType = "unhandled_message_type"
	DropHandlerPanic  = "handler_panic"
	DropSendFailed    = "send_failed"
	// DropAddressesInUse: every address probed for a DISCOVER was in use.
	DropAddressesInUse = "probed_addresses_in_use"
	// DropStandby: this replica of a pair is the standby; the active answers.
	DropStandby = "standby"
)

// Metrics are hyperdhcpd's Prometheus metrics, in their own registry.
type Metrics struct {
	Registry       *prometheus.Registry
	received       *prometheus.CounterVec
	sent           *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	refused        *prometheus.CounterVec
	pinsRefused    prometheus.Counter
	handleDuration prometheus.Histogram
	commitBatch    prometheus.Histogram
	commitDuration prometheus.Histogram
	commitErrors   prometheus.Counter
	storageUp      prometheus.Gauge
	storageFaults  prometheus.Counter
	conflicts      prometheus.Counter
	probes         *prometheus.CounterVec
	// servedGeneration and configChanges tell when an edit is live.
	servedGeneration prometheus.Gauge
	configChanges    *prometheus.CounterVec
	// A replica of a pair: its role, failovers to it and the standby's lag.
	haActive     prometheus.Gauge
	haTakeovers  prometheus.Counter
	haLagSeconds prometheus.Gauge
}

// NewMetrics registers every metric; pool reports the pool usage on scrape.
func NewMetrics(pool func() leasedb.Stats) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_packets_received_total", Help: "DHCP packets received, by message type.",
		}, []string{"type"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_packets_sent_total", Help: "DHCP packets sent, by message type.",
		}, []string{"type"}),
		pinsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hyperdhcpd_vm_pins_refused_total", Help: "Pinned-address annotations of VMs that could not be honoured.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_naks_total", Help: "DHCPNAKs sent, by reason.",
		}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_packets_dropped_total", Help: "DHCP packets not answered, by reason.",
		}, []string{"reason"}),
		handleDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hyperdhcpd_handle_duration_seconds",
			Help:    "Time from receiving a packet to sending its reply, lease commit included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hyperdhcpd_lease_commit_batch_size",
			Help:    "Lease changes written per database transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hyperdhcpd_lease_commit_duration_seconds",
			Help:    "Time to make one batch of lease changes durable.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hyperdhcpd_lease_commit_errors_total", Help: "Failed lease database transactions.",
		}),
		storageUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hyperdhcpd_lease_storage_available",
			Help: "1 while lease writes succeed, 0 while they fail (no REQUEST is acknowledged then).",
		}),
		storageFaults: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hyperdhcpd_lease_storage_faults_total", Help: "Episodes of failing lease writes (disk full, read-only, I/O errors).",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hyperdhcpd_address_conflicts_total",
			Help: "Addresses found in use on the network by a probe before an OFFER, and quarantined.",
		}),
		haActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hyperdhcpd_ha_active", Help: "1 while this replica of a pair is the active one, 0 while it is the standby.",
		}),
		haTakeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hyperdhcpd_ha_takeovers_total", Help: "Times this replica took the Lease and became active.",
		}),
		haLagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hyperdhcpd_ha_replication_lag_seconds", Help: "On the active: time since the standby last confirmed a batch or heartbeat.",
		}),
		servedGeneration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hyperdhcpd_config_generation",
			Help: "The metadata.generation of the Server spec being served (0 outside Kubernetes).",
		}),
		configChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_config_changes_total",
			Help: "Edited configurations seen while serving, by outcome (applied, refused, restart_required).",
		}, []string{"result"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hyperdhcpd_probes_total", Help: "Probes of an address before an OFFER, by result (free, in_use, error).",
		}, []string{"result"}),
	}
	m.storageUp.Set(1)
	poolDesc := prometheus.NewDesc("hyperdhcpd_pool_addresses", "Addresses of all pools, by state.", []string{"state"}, nil)
	m.Registry.MustRegister(m.servedGeneration, m.configChanges, m.haActive, m.haTakeovers, m.haLagSeconds, m.received, m.sent, m.dropped, m.refused, m.pinsRefused, m.handleDuration, m.commitBatch, m.commitDuration, m.commitErrors, m.storageUp, m.storageFaults,
		m.conflicts, m.probes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		poolCollector{desc: poolDesc, stats: pool})
	return m
}

// Role records whether this replica is active.
func (m *Metrics) Role(active bool) {
	if active {
		m.haActive.Set(1)
	} else {
		m.haActive.Set(0)
	}
}

// Failover counts a takeover of the Lease by this replica.
func (m *Metrics) Failover() { m.haTakeovers.Inc() }

// WatchLag samples lag (the standby's, seen by the active) every second
// until ctx ends.
func (m *Metrics) WatchLag(ctx context.Context, lag func(time.Time) time.Duration) {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			m.haLagSeconds.Set(lag(now).Seconds())
		}
	}
}

// Serving records the Server generation now served.
func (m *Metrics) Serving(generation int64) { m.servedGeneration.Set(float64(generation)) }

// ConfigChange counts an edited configuration by outcome: applied,
// refused or restart_required.
func (m *Metrics) ConfigChange(result string) { m.configChanges.WithLabelValues(result).Inc() }

// Dropped implements leasedb.Observer.
func (m *Metrics) Dropped(reason string) { m.dropped.WithLabelValues(reason).Inc() }

// PinsRefused counts refused VM pins.
func (m *Metrics) PinsRefused(n int) { m.pinsRefused.Add(float64(n)) }

// Refused implements leasedb.Observer.
func (m *Metrics) Refused(reason string) { m.refused.WithLabelValues(reason).Inc() }

// Committed implements leasedb.Observer.
func (m *Metrics) Committed(batch int, took time.Duration, err error) {
	m.commitBatch.Observe(float64(batch))
	m.commitDuration.Observe(took.Seconds())
	if err != nil {
		m.commitErrors.Inc()
	}
}

// StorageAvailable implements leasedb.Observer.
func (m *Metrics) StorageAvailable(available bool) {
	if available {
		m.storageUp.Set(1)
		return
	}
	m.storageUp.Set(0)
	m.storageFaults.Inc()
}

type poolCollector struct {
	desc  *prometheus.Desc
	stats func() leasedb.Stats
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for state, n := range map[string]int64{"size": s.Size, "used": s.Used, "free": s.Free, "quarantined": s.Quarantined, "outside": s.Outside} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
}
