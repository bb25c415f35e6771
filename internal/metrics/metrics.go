// Package metrics holds Ferry's Prometheus metrics: the process's
// registry, the metrics its parts record into, the collector that asks each
// host's agent for its figures at scrape time, and the handler the API
// serves at /metrics (behind mutual TLS; the metrics role may read it and
// nothing else).
//
// Names follow Prometheus' conventions: the ferry_ prefix, base units
// (seconds, bytes, ratios), _total on counters. A counter counts what this
// process did (the migrations whose end it wrote, the restarts its leader
// issued), so a sum over every host's endpoint is the cluster's; host-level
// figures carry a host label, so that a process running many simulated
// hosts (ferry bench scale) reports each.
package metrics

import (
	"net/http"
	"runtime/debug"
	"slices"

	"github.com/ferryvm/ferry/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry is this process's metrics.
var Registry = prometheus.NewRegistry()

// Handler serves Registry in Prometheus' text format.
func Handler() http.Handler {
	return promhttp.HandlerFor(Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Buckets of the histograms: migrations take seconds to minutes, pauses
// milliseconds to seconds, guests megabytes to gigabytes.
var (
	durationBuckets = []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600}
	pauseBuckets    = []float64{0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5}
	byteBuckets     = prometheus.ExponentialBuckets(1<<20, 4, 8) // 1 MiB .. 16 GiB
	ratioBuckets    = []float64{0.5, 0.7, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.5, 2}
	latencyBuckets  = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}
)

// Migrations: recorded by whichever process writes a migration's end (the
// store's observer), once per migration.
var (
	MigrationsTotal = counter("ferry_migrations_total",
		"Live migrations that ended, by strategy, outcome (completed, failed, cancelled) and who asked (operator, drain).",
		"strategy", "outcome", "reason")
	MigrationDuration = histogram("ferry_migration_duration_seconds",
		"Completed live migrations' total time, from the request to the guest running on the target.", durationBuckets, "strategy")
	MigrationDowntime = histogram("ferry_migration_downtime_seconds",
		"Completed live migrations' downtime as QEMU reports it (the guest paused for the last pages).", pauseBuckets, "strategy")
	MigrationServicePause = histogram("ferry_migration_service_pause_seconds",
		"Completed live migrations' pause as the guest's clients saw it: paused on the source to answering on the target.", pauseBuckets, "strategy")
	MigrationBytes = histogram("ferry_migration_transferred_bytes",
		"Completed live migrations' bytes on the wire.", byteBuckets, "strategy")
	MigrationPredicted = histogram("ferry_migration_predicted_duration_seconds",
		"Completed live migrations' predicted total time (compare with ferry_migration_duration_seconds).", durationBuckets, "strategy")
	MigrationPredictionRatio = histogram("ferry_migration_prediction_ratio",
		"Completed live migrations' actual over predicted total time (1: exact).", ratioBuckets, "strategy")
	MigrationEscalations = counter("ferry_migration_escalations_total",
		"Escalations taken by migrations that did not converge (downtime, throttle, postcopy).", "escalation")
	MigrationSentBytes = counter("ferry_migration_sent_bytes_total",
		"Bytes the migrations from this host have put on the wire, counted as they go.", "host")
)

// High availability: counted by the leader that acted, or the host that
// fenced itself.
var (
	HAHostsLost = counter("ferry_ha_hosts_lost_total",
		"Hosts whose lease expired, as the leader saw them.").WithLabelValues()
	HARestarts = counter("ferry_ha_restarts_total",
		"HA guests the leader restarted on another host.").WithLabelValues()
	HARestartDelay = histogram("ferry_ha_restart_delay_seconds",
		"From a host's loss to the restart of one of its HA guests being issued.", durationBuckets).WithLabelValues()
	HARecovery = histogram("ferry_ha_recovery_seconds",
		"From a host's loss to one of its HA guests running again elsewhere (seen by the leader).", durationBuckets).WithLabelValues()
	HAFences = counter("ferry_ha_fences_total",
		"Fencing actions: a host killing its own HA guests after losing the store (kind self). (The watchdog, a process of its own, logs its firing; it is not counted here.)", "host", "kind")
	LeaseRenewal = histogram("ferry_lease_renewal_seconds",
		"How long a host's lease renewal took (etcd's answer to the keep-alive).", latencyBuckets, "host")
)

// The API.
var (
	APIRequests = counter("ferry_api_requests_total",
		"API requests answered, by route and HTTP status code.", "route", "code")
	APIDuration = histogram("ferry_api_request_duration_seconds",
		"API requests' time to answer, by route (streams excluded).", latencyBuckets, "route")
)

// BuildInfo is 1, labelled with this build's version.
var BuildInfo = gauge("ferry_build_info", "Ferry's version in this process.", "version")

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), hosts)
	BuildInfo.WithLabelValues(version()).Set(1)
	// Every series a dashboard asks for exists from the start, at 0:
	// Prometheus sees a counter's first increase only from a sample
	// before it (rate and increase need two).
	for _, s := range strategies {
		for _, o := range []string{api.MigCompleted, api.MigFailed, api.MigCancelled} {
			for _, r := range []string{"operator", "drain"} {
				MigrationsTotal.WithLabelValues(s, o, r)
			}
		}
		for _, h := range []*prometheus.HistogramVec{MigrationDuration, MigrationDowntime, MigrationServicePause, MigrationBytes, MigrationPredicted, MigrationPredictionRatio} {
			h.WithLabelValues(s)
		}
	}
	for _, e := range []string{api.EscalateDowntime, api.EscalateThrottle, api.EscalatePostcopy} {
		MigrationEscalations.WithLabelValues(e)
	}
}

// strategies are the values of the strategy label.
var strategies = []string{api.StrategyPrecopy, api.StrategyPostcopy, api.StrategyAutoConverge, api.StrategyMultifd, "compress"}

// InitHost creates a host's series at 0 (see init), when its agent starts.
func InitHost(host string) {
	MigrationSentBytes.WithLabelValues(host)
	HAFences.WithLabelValues(host, "self")
	LeaseRenewal.WithLabelValues(host)
}

// version is this build's module version, or its VCS revision.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && (v == "" || v == "(devel)") {
			v = s.Value[:min(12, len(s.Value))]
		}
	}
	return v
}

// names are the families this package defines (Names).
var names []string

// Names are the metric families Ferry defines (not the Go runtime's and
// the process's, which the registry also serves), sorted.
func Names() []string {
	out := append(slices.Clone(names), hostFamilies...)
	slices.Sort(out)
	return out
}

func counter(name, help string, labels ...string) *prometheus.CounterVec {
	names = append(names, name)
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(c)
	return c
}

func gauge(name, help string, labels ...string) *prometheus.GaugeVec {
	names = append(names, name)
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(g)
	return g
}

func histogram(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	names = append(names, name)
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	Registry.MustRegister(h)
	return h
}
