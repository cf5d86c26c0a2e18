// Package driver holds JustRunIt's experiment drivers: the strategies that
// choose which points of a space to run within a study's time bound (the
// paper's "driver").
//
// Three strategies implement justrunit.Strategy:
//
//   - grid runs every point, coarse grid first, so a run cut short by the
//     time bound still covers the whole space (the ground-truth baseline);
//   - adaptive runs the corners of the space, then again and again the point
//     where the interpolator is least sure, until its uncertainty target or
//     the time bound is met;
//   - sla searches a monotone axis for the least allocation that meets the
//     study's SLA with as few experiments as possible (bisection guided by
//     interpolation), then stops: the engine interpolates the rest.
//
// Strategies keep no state between calls: every decision is derived from the
// PlanState (the measured matrix, the running points, the time left), so a
// study can be resumed from its matrix and a strategy may be shared between
// studies and goroutines.
package driver

import (
	"fmt"
	"math"
	"strings"

	"github.com/justrunit/justrunit"
)

// Options configure a strategy. Fields a strategy does not use are ignored.
type Options struct {
	// Interpolator fills the blank cells when adaptive asks where it is
	// least sure; required by adaptive. It is run on a copy of the matrix.
	Interpolator justrunit.Interpolator
	// Metric is the column adaptive reduces the uncertainty of. Empty means
	// the SLA's metric when the study has an SLA, else rt_p95 when the matrix
	// records it, else the matrix's first metric. The sla strategy always
	// uses the SLA's metric.
	Metric justrunit.Metric
	// Axis is the parameter the sla strategy searches, a numeric one where a
	// larger value is a larger allocation (better). Empty means "cpu" when
	// the space has it, else the first numeric parameter.
	Axis string
	// UncertaintyTarget is the relative uncertainty (Cell.Uncertainty /
	// |Cell.Value|) at which adaptive stops: when no unmeasured cell of its
	// metric is less sure than this, it runs nothing more. 0 means
	// DefaultUncertaintyTarget.
	UncertaintyTarget float64
}

// DefaultUncertaintyTarget is adaptive's relative uncertainty target when
// Options.UncertaintyTarget is 0: stop once every interpolated cell is
// believed within 5% of its value.
const DefaultUncertaintyTarget = 0.05

// Strategy names.
const (
	NameGrid     = "grid"
	NameAdaptive = "adaptive"
	NameSLA      = "sla"
)

// names lists the strategies in the order help texts show them.
var names = []string{NameGrid, NameAdaptive, NameSLA}

// Names returns the names New accepts, in the order help texts show them.
func Names() []string { return append([]string(nil), names...) }

// New returns the strategy called name configured with opts. An unknown name
// or a missing or bad option gives a *justrunit.FieldError naming the field.
func New(name string, opts Options) (justrunit.Strategy, error) {
	switch name {
	case NameGrid:
		return NewGrid(), nil
	case NameAdaptive:
		return NewAdaptive(opts)
	case NameSLA:
		return NewSLASearch(opts)
	}
	return nil, justrunit.Invalid("strategy", name, "unknown; known: %s", strings.Join(names, ", "))
}

func validateMetric(mt justrunit.Metric) error {
	if mt == "" {
		return nil
	}
	if _, err := justrunit.ParseMetric(string(mt)); err != nil {
		return justrunit.Invalid("metric", string(mt), "unknown; known: %v", justrunit.AllMetrics)
	}
	return nil
}

// slotsNow checks st and returns how many points may start now: st.Free
// when one experiment still fits into the time left, else 0.
func slotsNow(st justrunit.PlanState) (int, error) {
	if st.Matrix == nil {
		return 0, justrunit.Invalid("matrix", nil, "the plan state has no matrix")
	}
	if st.ExperimentLength <= 0 {
		return 0, justrunit.Invalid("experiment_length", st.ExperimentLength, "must be > 0 (warm-up + window)")
	}
	if st.Free <= 0 || st.TimeLeft < st.ExperimentLength {
		return 0, nil
	}
	return st.Free, nil
}

// estimateCap is the most experiments an Estimate may promise from st: the
// budget, less one experiment for every slot still busy with a running one
// (it may hold its slot for up to a whole experiment length).
func estimateCap(st justrunit.PlanState) int {
	return max(0, st.Budget()-len(st.Running))
}

// runningSet returns the flat indexes of st.Running.
func runningSet(st justrunit.PlanState) (map[int]bool, error) {
	set := make(map[int]bool, len(st.Running))
	for _, p := range st.Running {
		i, err := st.Matrix.Space.IndexOf(p)
		if err != nil {
			return nil, fmt.Errorf("running point: %w", err)
		}
		set[i] = true
	}
	return set, nil
}

// measured reports whether the point at flat index i has an observation.
func measured(m *justrunit.Matrix, i int) bool { return m.Rows[i].Observation != nil }

// tried reports whether the point at flat index i needs no experiment any
// more: measured, or run and found unmeasurable (Row.Unmeasurable).
func tried(m *justrunit.Matrix, i int) bool { return measured(m, i) || m.Rows[i].Unmeasurable != "" }

// pointAt returns a copy of the point at flat index i, so callers cannot
// change the matrix through it.
func pointAt(m *justrunit.Matrix, i int) justrunit.Point {
	return append(justrunit.Point(nil), m.Rows[i].Point...)
}

// validTarget checks a relative uncertainty target.
func validTarget(v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return justrunit.Invalid("uncertainty_target", v, "must be a relative uncertainty ≥ 0, e.g. 0.05 for 5%% (0 means the default %g)", DefaultUncertaintyTarget)
	}
	return nil
}
