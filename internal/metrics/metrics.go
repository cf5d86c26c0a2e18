// Package metrics defines, in one place, every Prometheus collector
// JustRunIt exports (all named justrunit_*), so the daemon, the study runner,
// the proxies and the manager register into the same set and a name is never
// defined twice.
//
// The daemon makes one Set with New on its registry and hands it to whatever
// it runs: the API's study runner and event watcher fill the study,
// experiment and checker collectors; the site runtime fills the proxy
// collectors from the proxies' statistics; the manager fills the per-service
// response time. Collectors with labels show up on /metrics once a first
// sample is recorded; the unlabelled and fixed-label ones are there from the
// start with 0.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/justrunit/justrunit"
)

// Namespace prefixes every metric name.
const Namespace = "justrunit"

// Label values of ExperimentsTotal and ChecksTotal.
const (
	ResultOK        = "ok"
	ResultFailed    = "failed"
	ResultCancelled = "cancelled"
	ResultPassed    = "passed"
)

// Set is every JustRunIt collector. Its fields are safe for concurrent use.
type Set struct {
	// ExperimentsTotal counts finished experiments by result: ok, failed
	// (the experiment returned an error) or cancelled.
	ExperimentsTotal *prometheus.CounterVec
	// StudiesTotal counts finished studies by final state (done, failed,
	// cancelled, interrupted).
	StudiesTotal *prometheus.CounterVec
	// StudiesRunning is the number of studies running in this daemon now.
	StudiesRunning prometheus.Gauge
	// StudyDuration observes how long finished studies ran, in seconds, by
	// final state.
	StudyDuration *prometheus.HistogramVec
	// ChecksTotal counts checker verdicts on T cells by result: passed or
	// failed.
	ChecksTotal *prometheus.CounterVec
	// CheckFailuresTotal counts checks whose interpolated value was off by
	// more than the study's threshold (the checker's alerts).
	CheckFailuresTotal prometheus.Counter

	// ProxyCopiesSent counts request copies the in-proxy of instance sent to
	// its clones. Labels: service, instance.
	ProxyCopiesSent *prometheus.CounterVec
	// ProxyCopiesDropped counts request copies the in-proxy could not send
	// (a clone at its in-flight bound, refusing connections, ...). Labels:
	// service, instance.
	ProxyCopiesDropped *prometheus.CounterVec
	// OutProxyMatchRate is the fraction of clones' next-tier calls the
	// out-proxy answered from its record in its last window. Labels:
	// service, instance.
	OutProxyMatchRate *prometheus.GaugeVec
	// ServiceResponseTime observes the on-line response time of each
	// service, in seconds, as the in-proxy in front of one of its tiers
	// saw it (that tier and the tiers behind it). Labels: service, tier.
	ServiceResponseTime *prometheus.HistogramVec
}

// New makes a Set and registers every collector with reg. It panics when reg
// already holds one of the names (two Sets on one registry is a bug).
func New(reg prometheus.Registerer) *Set {
	s := &Set{
		ExperimentsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "experiments_total",
			Help: "Experiments finished, by result (ok, failed, cancelled).",
		}, []string{"result"}),
		StudiesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "studies_total",
			Help: "Studies finished, by final state.",
		}, []string{"state"}),
		StudiesRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "studies_running",
			Help: "Studies running in this daemon.",
		}),
		StudyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "study_duration_seconds",
			Help:    "How long finished studies ran, by final state.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600},
		}, []string{"state"}),
		ChecksTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "checks_total",
			Help: "Checker verdicts on interpolated cells a decision used, by result (passed, failed).",
		}, []string{"result"}),
		CheckFailuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "checker_failures_total",
			Help: "Checks whose interpolated value differed from the re-measured one by more than the threshold.",
		}),
		ProxyCopiesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "proxy_copies_sent_total",
			Help: "Request copies the in-proxy sent to clones.",
		}, []string{"service", "instance"}),
		ProxyCopiesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "proxy_copies_dropped_total",
			Help: "Request copies the in-proxy could not send to clones (never waited for).",
		}, []string{"service", "instance"}),
		OutProxyMatchRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "outproxy_match_rate",
			Help: "Fraction of clones' next-tier calls the out-proxy answered from its record, last window.",
		}, []string{"service", "instance"}),
		ServiceResponseTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "service_response_time_seconds",
			Help:    "On-line response time of each service as the in-proxy in front of a tier saw it.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .03, .04, .05, .075, .1, .25, .5, 1, 2.5, 5},
		}, []string{"service", "tier"}),
	}
	reg.MustRegister(s.ExperimentsTotal, s.StudiesTotal, s.StudiesRunning, s.StudyDuration,
		s.ChecksTotal, s.CheckFailuresTotal, s.ProxyCopiesSent, s.ProxyCopiesDropped,
		s.OutProxyMatchRate, s.ServiceResponseTime)
	// Fixed label values start at 0 so dashboards and alerts see them
	// before the first study.
	for _, r := range []string{ResultOK, ResultFailed, ResultCancelled} {
		s.ExperimentsTotal.WithLabelValues(r)
	}
	for _, r := range []string{ResultPassed, ResultFailed} {
		s.ChecksTotal.WithLabelValues(r)
	}
	return s
}

// Names lists the metric families a Set defines, for tests and docs.
func Names() []string {
	return []string{
		"justrunit_experiments_total",
		"justrunit_studies_total",
		"justrunit_studies_running",
		"justrunit_study_duration_seconds",
		"justrunit_checks_total",
		"justrunit_checker_failures_total",
		"justrunit_proxy_copies_sent_total",
		"justrunit_proxy_copies_dropped_total",
		"justrunit_outproxy_match_rate",
		"justrunit_service_response_time_seconds",
	}
}

// ObserveChecks counts checker verdicts, for whoever runs the checker (the
// manager, through study.Engine.Check).
func (s *Set) ObserveChecks(results []justrunit.CheckResult) {
	for _, r := range results {
		if r.Passed {
			s.ChecksTotal.WithLabelValues(ResultPassed).Inc()
			continue
		}
		s.ChecksTotal.WithLabelValues(ResultFailed).Inc()
		s.CheckFailuresTotal.Inc()
	}
}
