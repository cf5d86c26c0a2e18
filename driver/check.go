package driver

import (
	"slices"
	"strings"

	"github.com/justrunit/justrunit"
)

// DefaultName names the strategy a study runs when it names none: sla when
// it has an SLA (its question is then the least allocation meeting it),
// else adaptive.
func DefaultName(sla *justrunit.SLA) string {
	if sla != nil {
		return NameSLA
	}
	return NameAdaptive
}

// NameFor names the strategy st runs: its own, or DefaultName.
func NameFor(st *justrunit.Study) string {
	if st.Strategy != "" {
		return st.Strategy
	}
	return DefaultName(st.SLA)
}

// CheckStudy checks, before anything is cloned, that the strategy st runs
// (NameFor) exists and can run it. The sla strategy needs an SLA on a metric
// that never gets worse as the allocation grows (see Monotone), recorded
// by the study (st.Metrics after FillMetrics), and a numeric parameter to
// search.
func CheckStudy(st *justrunit.Study) error {
	name := NameFor(st)
	if !slices.Contains(names, name) {
		return justrunit.Invalid("strategy", name, "unknown; known: %s", strings.Join(names, ", "))
	}
	if name != NameSLA {
		return nil
	}
	if st.SLA == nil {
		return justrunit.Invalid("sla", nil, "the sla strategy searches for the least allocation meeting an SLA; give one, e.g. rt_p95<=50")
	}
	if err := st.SLA.Validate(); err != nil {
		return err
	}
	if !Monotone(st.SLA.Metric) {
		return justrunit.Invalid("sla.metric", string(st.SLA.Metric),
			"the sla strategy searches for the least allocation meeting the SLA, so its metric must never get worse as the allocation grows "+
				"(response times, error_rate, throughput); use the adaptive or grid strategy for an SLA on %s", st.SLA.Metric)
	}
	if len(st.Metrics) > 0 && !slices.Contains(st.Metrics, st.SLA.Metric) {
		return justrunit.Invalid("metrics", st.Metrics, "the SLA is on %s: add it to the metrics the study records", st.SLA.Metric)
	}
	_, err := resolveAxis(st.Space, "")
	return err
}

// Monotone reports whether metric mt never gets worse as an allocation
// grows, as the sla strategy assumes: response times and the error rate do
// not rise, throughput does not fall. Power rises with the allocation, and
// energy per request (power over throughput) can go either way.
func Monotone(mt justrunit.Metric) bool {
	switch mt {
	case justrunit.RTMean, justrunit.RTP50, justrunit.RTP95, justrunit.RTP99, justrunit.ErrorRate, justrunit.Throughput:
		return true
	}
	return false
}
