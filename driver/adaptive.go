package driver

import (
	"context"
	"fmt"
	"math"

	"github.com/justrunit/justrunit"
)

// Adaptive runs few experiments where the response surface is easy and more
// where it is not. It works in two phases:
//
//  1. The corners of the space: both ends of every numeric parameter
//     combined with every label of every categorical one (2^d points for d
//     numeric parameters). Corners rather than the ends of each axis with
//     the others held at a central value, because then every other point
//     lies inside the measured hull: multilinear interpolation over the grid
//     interpolates everywhere instead of extrapolating, and every categorical
//     slice (which interpolators never cross) gets points of its own.
//  2. Again and again, the unmeasured point whose cell of the chosen metric
//     has the largest relative uncertainty (Cell.Uncertainty / |Cell.Value|)
//     after running the Interpolator on a copy of the matrix. Cells the
//     interpolator leaves empty count as infinitely uncertain. Adaptive
//     stops when no cell is less sure than the target, when every point is
//     measured, or when no experiment fits into the time left.
//
// An interpolator's uncertainty is only as good as the points it was fitted
// to (a Gaussian process fitted to four corners is confidently wrong), so
// before stopping on the target adaptive checks it: it predicts up to
// MaxHoldouts measured points that are not corners from the other
// measurements and multiplies every uncertainty by the worst ratio of actual
// to claimed error (when above 1). Until such a point is measured there is
// nothing to check against, and adaptive does not stop on the target.
//
// To fill several free slots at once without picking neighbours of one gap,
// each chosen point (and each running one) is taken to measure what the
// interpolator predicts there, and the interpolator is run again before the
// next choice (the "believer" heuristic of batch Bayesian optimisation).
//
// An interpolator that reports no uncertainty (0 everywhere) is taken at its
// word once a held-out point confirms it (predicted exactly); otherwise it
// counts as infinitely overconfident and adaptive runs on.
type Adaptive struct {
	interp justrunit.Interpolator
	metric justrunit.Metric
	target float64
}

var _ justrunit.Strategy = (*Adaptive)(nil)

// NewAdaptive returns the adaptive strategy. opts.Interpolator is required;
// opts.Metric and opts.UncertaintyTarget are optional.
func NewAdaptive(opts Options) (*Adaptive, error) {
	if opts.Interpolator == nil {
		return nil, justrunit.Invalid("interpolator", nil, "the adaptive strategy needs an interpolator to tell where it is least sure")
	}
	if err := validateMetric(opts.Metric); err != nil {
		return nil, err
	}
	if err := validTarget(opts.UncertaintyTarget); err != nil {
		return nil, err
	}
	a := &Adaptive{interp: opts.Interpolator, metric: opts.Metric, target: opts.UncertaintyTarget}
	if a.target == 0 {
		a.target = DefaultUncertaintyTarget
	}
	return a, nil
}

// Name returns "adaptive".
func (a *Adaptive) Name() string { return NameAdaptive }

// Target returns the relative uncertainty at which a stops.
func (a *Adaptive) Target() float64 { return a.target }

// Next returns up to st.Free points: corners not yet measured or running
// first, then the least certain points, or none when done.
func (a *Adaptive) Next(ctx context.Context, st justrunit.PlanState) ([]justrunit.Point, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := slotsNow(st)
	if err != nil || n == 0 {
		return nil, err
	}
	m := st.Matrix
	col, err := a.column(m, st.SLA)
	if err != nil {
		return nil, err
	}
	running, err := runningSet(st)
	if err != nil {
		return nil, err
	}
	taken := make(map[int]bool, n)
	var picks []int
	for _, i := range corners(m.Space) {
		if len(picks) == n {
			break
		}
		if !tried(m, i) && !running[i] {
			picks = append(picks, i)
			taken[i] = true
		}
	}
	if len(picks) < n && len(m.Measured()) > 0 {
		more, err := a.leastSure(ctx, m, col, running, taken, n-len(picks))
		if err != nil {
			return nil, err
		}
		picks = append(picks, more...)
	}
	out := make([]justrunit.Point, len(picks))
	for k, i := range picks {
		out[k] = pointAt(m, i)
	}
	return out, nil
}

// leastSure returns up to n points, one at a time the least certain
// candidate, believing every running and chosen point measured at its
// predicted value.
func (a *Adaptive) leastSure(ctx context.Context, m *justrunit.Matrix, col int, running, taken map[int]bool, n int) ([]int, error) {
	work := m.Clone()
	if err := a.interp.Interpolate(work); err != nil {
		return nil, fmt.Errorf("adaptive: interpolate: %w", err)
	}
	believers := 0
	for i := range work.Rows {
		if (running[i] || taken[i]) && !measured(m, i) {
			believe(work, i)
			believers++
		}
	}
	if believers > 0 {
		if err := a.interp.Interpolate(work); err != nil {
			return nil, fmt.Errorf("adaptive: interpolate: %w", err)
		}
	}
	scale := measuredScale(m, col)
	trust := 0.0 // the calibration factor, computed when first needed
	var out []int
	for len(out) < n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		best, bestRel := -1, 0.0
		for i := range work.Rows {
			if tried(m, i) || running[i] || taken[i] {
				continue
			}
			if rel := relUncertainty(work.Rows[i].Cells[col], scale); best < 0 || rel > bestRel {
				best, bestRel = i, rel
			}
		}
		if best < 0 {
			break
		}
		if bestRel <= a.target && trust == 0 {
			var err error
			if trust, err = a.calibrate(ctx, m, col); err != nil {
				return nil, err
			}
		}
		if bestRel*max(trust, 1) <= a.target {
			break
		}
		out = append(out, best)
		taken[best] = true
		if len(out) == n {
			break
		}
		believe(work, best)
		if err := a.interp.Interpolate(work); err != nil {
			return nil, fmt.Errorf("adaptive: interpolate: %w", err)
		}
	}
	return out, nil
}

// MaxHoldouts is how many measured points adaptive predicts from the others
// to check the interpolator's uncertainty before it stops (see Adaptive).
const MaxHoldouts = 8

// calibrate returns how far to trust the interpolator's uncertainty: the
// worst ratio, over up to MaxHoldouts measured points that are not corners,
// of the error made predicting the point from the other measurements to the
// uncertainty claimed for that prediction (leave-one-out cross-validation),
// at least 1. With no such point it returns +Inf: nothing to check against.
func (a *Adaptive) calibrate(ctx context.Context, m *justrunit.Matrix, col int) (float64, error) {
	corner := map[int]bool{}
	for _, i := range corners(m.Space) {
		corner[i] = true
	}
	var inner []int
	for i, r := range m.Rows {
		if measured(m, i) && !corner[i] && r.Cells[col].Prov.HasMeasurement() {
			inner = append(inner, i)
		}
	}
	if len(inner) == 0 {
		return math.Inf(1), nil
	}
	if len(inner) > MaxHoldouts { // spread the holdouts over the space
		picked := make([]int, MaxHoldouts)
		for k := range picked {
			picked[k] = inner[k*len(inner)/MaxHoldouts]
		}
		inner = picked
	}
	scale := measuredScale(m, col)
	worst := 1.0
	for _, h := range inner {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		work := m.Clone()
		row := &work.Rows[h]
		for k := range row.Cells {
			row.Cells[k] = justrunit.Cell{Prov: justrunit.Empty}
		}
		row.Observation = nil
		if err := a.interp.Interpolate(work); err != nil {
			return 0, fmt.Errorf("adaptive: interpolate without %s: %w", m.Space.Format(m.Rows[h].Point), err)
		}
		got, want := row.Cells[col], m.Rows[h].Cells[col].Value
		miss := math.Abs(got.Value - want)
		switch {
		case got.Prov == justrunit.Empty || math.IsNaN(miss) || math.IsNaN(got.Uncertainty):
			return math.Inf(1), nil
		case miss <= 1e-9*max(scale, math.Abs(want)):
			// A hit: nothing to learn.
		case got.Uncertainty <= 0:
			return math.Inf(1), nil
		default:
			worst = max(worst, miss/got.Uncertainty)
		}
	}
	return worst, nil
}

// Estimate returns the number of points neither measured nor running,
// bounded by what fits into the time left: an upper bound, since adaptive
// stops as soon as its uncertainty target is met, which it cannot know
// before the measurements come in.
func (a *Adaptive) Estimate(st justrunit.PlanState) int {
	if st.Matrix == nil {
		return 0
	}
	left := 0
	for i := range st.Matrix.Rows {
		if !tried(st.Matrix, i) {
			left++
		}
	}
	return max(0, min(left-len(st.Running), estimateCap(st)))
}

// column returns the matrix column adaptive watches; see Options.Metric.
func (a *Adaptive) column(m *justrunit.Matrix, sla *justrunit.SLA) (int, error) {
	if a.metric != "" {
		j := m.MetricIndex(a.metric)
		if j < 0 {
			return 0, justrunit.Invalid("metric", string(a.metric), "not recorded by the study's matrix (%v)", m.Metrics)
		}
		return j, nil
	}
	if sla != nil {
		if j := m.MetricIndex(sla.Metric); j >= 0 {
			return j, nil
		}
	}
	if j := m.MetricIndex(justrunit.RTP95); j >= 0 {
		return j, nil
	}
	return 0, nil
}

// believe makes the point at flat index i of the working copy look measured
// at the values the interpolator predicted for it. A row the interpolator
// left (partly) empty is left alone: there is nothing to believe.
func believe(work *justrunit.Matrix, i int) {
	row := &work.Rows[i]
	for _, c := range row.Cells {
		if c.Prov == justrunit.Empty {
			return
		}
	}
	for k := range row.Cells {
		row.Cells[k] = justrunit.Cell{Value: row.Cells[k].Value, Prov: justrunit.Measured}
	}
	row.Observation = &justrunit.Observation{Point: row.Point, Source: "driver: believed prediction"}
}

// measuredScale returns the largest magnitude measured in column col, the
// scale below which a value counts as zero when dividing by it.
func measuredScale(m *justrunit.Matrix, col int) float64 {
	s := 0.0
	for _, r := range m.Rows {
		if c := r.Cells[col]; c.Prov.HasMeasurement() {
			s = max(s, math.Abs(c.Value))
		}
	}
	return s
}

// relUncertainty returns c's uncertainty relative to its value; an empty
// cell or a NaN is infinitely uncertain. Values smaller than a millionth of
// the measured scale count as that, so a cell predicted near zero does not
// attract every experiment.
func relUncertainty(c justrunit.Cell, scale float64) float64 {
	if c.Prov == justrunit.Empty || math.IsNaN(c.Uncertainty) || math.IsNaN(c.Value) {
		return math.Inf(1)
	}
	den := max(math.Abs(c.Value), 1e-6*scale, math.SmallestNonzeroFloat64)
	return math.Abs(c.Uncertainty) / den
}
