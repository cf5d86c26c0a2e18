// Package interp fills the cells of a JustRunIt matrix that no experiment
// measured (the paper's interpolator).
//
// Two interpolators implement justrunit.Interpolator:
//
//   - Linear ("linear"): multilinear interpolation on the grid where the
//     enclosing corners were measured, piecewise-linear interpolation on the
//     Delaunay simplices of scattered measured points elsewhere, and a local
//     linear least-squares fit outside their hull. It is exact on linear
//     functions and never invents curvature.
//   - GP ("gp"): Gaussian-process regression on a Box-Cox transform of the
//     metric (identity, log or reciprocal, chosen by likelihood), with a
//     linear trend, a Matérn 5/2 kernel and hyperparameters fitted by
//     maximum a posteriori. It follows the convex knee of response-time
//     curves that linear interpolation cuts across, and its uncertainty is
//     the posterior standard deviation.
//
// Both keep the same contract: they fill Empty and I cells of every metric
// from the measured (X) and verified (V) cells, leave X, V and T cells as
// they are, never interpolate across a categorical parameter (each category
// is a separate slice of the space), and give every filled cell an absolute
// uncertainty in the metric's unit. A category in which nothing was measured
// has nothing to interpolate from, so its cells are left as they are; so is a
// measured cell whose value is not a finite number, which is also never used
// as a source. Both respect four bounds of what a study measures: no metric
// measured ≥ 0 is filled below zero; no cost that levels off (response
// times, energy per request) below the least measured value, where the
// slope of a knee would carry it on to zero; no fraction (error_rate) above
// 1; and no throughput above the larger of the load offered to the measured
// points and the largest measured throughput (a clone serves copies of the
// live load, and no allocation makes it serve more than arrives).
//
// The package is pure computation: no I/O, no goroutines.
package interp

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/justrunit/justrunit"
)

// registry maps a registered name to its constructor.
var registry = map[string]func() justrunit.Interpolator{
	"linear": func() justrunit.Interpolator { return NewLinear() },
	"gp":     func() justrunit.Interpolator { return NewGP() },
}

// Names returns the registered interpolator names, sorted.
func Names() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// New returns the interpolator registered as name with its default settings.
// An unknown name gives an error wrapping justrunit.ErrInvalid that lists the
// known ones.
func New(name string) (justrunit.Interpolator, error) {
	mk, ok := registry[name]
	if !ok {
		return nil, justrunit.Invalid("interpolator", name, "unknown; known: %s", strings.Join(Names(), ", "))
	}
	return mk(), nil
}

// relFloor is the smallest relative uncertainty a filled cell reports: a
// value nobody measured is not claimed to better than 0.1%, even when the
// measured neighbours lie exactly on a plane.
const relFloor = 1e-3

// estimate is an interpolated value and its absolute uncertainty.
type estimate struct{ v, u float64 }

// problem is one metric over one slice of the space: the numeric axes that
// have more than one value, at fixed values of every categorical parameter
// (and of every single-valued axis). Coordinates are normalised so that each
// axis spans [0, 1]; distances are measured in those units.
type problem struct {
	metric justrunit.Metric

	shape  []int       // values per axis
	coord  [][]float64 // coord[d][i]: normalised value i of axis d
	stride []int       // local flat index = Σ index[d]·stride[d]

	at   []int32   // local flat index → measured point number, or -1
	pts  []int     // local flat index of each measured point
	xs   []float64 // normalised coordinates of measured points, len(pts)·dims
	ys   []float64 // measured values
	fill []int     // local flat indexes to fill
}

func (p *problem) dims() int { return len(p.shape) }

// x returns measured point i's coordinates.
func (p *problem) x(i int) []float64 { d := p.dims(); return p.xs[i*d : (i+1)*d] }

// locate writes the coordinates and the axis indexes of local flat index
// loc into x and idx.
func (p *problem) locate(loc int, x []float64, idx []int) {
	for d := range p.shape {
		i := loc / p.stride[d] % p.shape[d]
		idx[d] = i
		x[d] = p.coord[d][i]
	}
}

// fraction reports whether metric mt is a fraction (of requests, say),
// which no estimate may put above 1. The unit is the root package's own
// statement of it, so a fraction added there is bounded here too.
func fraction(mt justrunit.Metric) bool { return mt.Unit() == "fraction" }

// levelsOff reports whether metric mt is a cost that falls as resources
// grow and levels off at a positive value, so that no estimate of it goes
// below the least measured value (its uncertainty then covers the
// interpolator's value). Response times level off at the
// service time (plus the next tier's latency); energy per request, power
// over throughput, at what the clone draws per request once it keeps up
// with its load. Past their last measurement the trend of the knee would
// carry them on to zero, and the least measured value is the nearest
// measured approach to the level. The floor is the conservative side for a
// cost (a filled cell never looks better than the best measured one, and
// the checker re-measures any a decision uses); where the level lies below
// every measurement, on a frequency axis say, the uncertainty covers the
// trend's value.
//
// The reasoning holds for nothing else. Throughput and power grow with the
// allocation, so a smaller one than any measured legitimately gives less
// than every measured value (38 and 40 req/s measured at cpu 60 and 80%,
// 34 at 20% is no error); an error rate falls towards zero, not a positive
// level. Those keep only the package's bounds.
func levelsOff(mt justrunit.Metric) bool {
	switch mt {
	case justrunit.RTMean, justrunit.RTP50, justrunit.RTP95, justrunit.RTP99, justrunit.EnergyPerRequest:
		return true
	}
	return false
}

// filler computes estimates for every cell of p.fill, in order.
type filler func(p *problem) []estimate

// run applies f to every metric of every categorical slice of m and writes
// the results. It checks everything before it changes anything, so on error
// m is untouched.
func run(name string, m *justrunit.Matrix, f filler) error {
	if m == nil {
		return fmt.Errorf("%s interpolate: %w", name, justrunit.Invalid("matrix", nil, "is nil"))
	}
	if err := validate(m); err != nil {
		return fmt.Errorf("%s interpolate: %w", name, err)
	}
	for j, mt := range m.Metrics {
		found := false
		for _, r := range m.Rows {
			if r.Cells[j].Prov.HasMeasurement() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%s interpolate: %w", name, justrunit.Invalid("matrix", string(mt), "no measured cell to interpolate from; run an experiment first"))
		}
	}

	// Slices: rows grouped by their categorical coordinates. Within a group,
	// rows come in flat order, so a row's position in its group is its local
	// flat index over the numeric axes.
	sp := m.Space
	var numeric []int
	catStride := map[int]int{}
	groups := 1
	for d, par := range sp.Params {
		if par.Categorical() {
			catStride[d] = groups
			groups *= len(par.Values)
		} else if len(par.Values) > 1 {
			numeric = append(numeric, d)
		}
	}
	members := make([][]int, groups)
	for i := range m.Rows {
		g := 0
		if len(catStride) > 0 {
			for d, c := range sp.Coords(i) {
				if s, ok := catStride[d]; ok {
					g += c * s
				}
			}
		}
		members[g] = append(members[g], i)
	}

	shape := make([]int, len(numeric))
	coord := make([][]float64, len(numeric))
	for k, d := range numeric {
		vals := sp.Params[d].Values
		shape[k] = len(vals)
		lo, span := vals[0], vals[len(vals)-1]-vals[0]
		coord[k] = make([]float64, len(vals))
		for i, v := range vals {
			coord[k][i] = (v - lo) / span
		}
	}
	stride := make([]int, len(numeric))
	s := 1
	for k := len(numeric) - 1; k >= 0; k-- {
		stride[k] = s
		s *= shape[k]
	}

	shadow := shadowed(m, numeric)
	for _, rows := range members {
		for j := range m.Metrics {
			p := &problem{metric: m.Metrics[j], shape: shape, coord: coord, stride: stride, at: make([]int32, len(rows))}
			offered := 0.0 // the most load offered to a measured point (0: not known)
			x := make([]float64, len(numeric))
			idx := make([]int, len(numeric))
			for loc, ri := range rows {
				c := m.Rows[ri].Cells[j]
				switch {
				case c.Prov.HasMeasurement() && !math.IsNaN(c.Value) && !math.IsInf(c.Value, 0):
					if o := m.Rows[ri].Observation; o != nil && o.Offered > offered {
						offered = o.Offered
					}
					p.at[loc] = int32(len(p.pts))
					p.pts = append(p.pts, loc)
					p.locate(loc, x, idx)
					p.xs = append(p.xs, x...)
					p.ys = append(p.ys, c.Value)
				case (c.Prov == justrunit.Empty || c.Prov == justrunit.Interpolated) && m.Rows[ri].Unmeasurable == "" && !shadow[ri]:
					p.at[loc] = -1
					p.fill = append(p.fill, loc)
				case c.Prov == justrunit.Interpolated && shadow[ri]:
					// Filled before the point beside it was found
					// unmeasurable: what filled it no longer reaches here.
					p.at[loc] = -1
					m.Rows[ri].Cells[j] = justrunit.Cell{Prov: justrunit.Empty}
				default: // T (a decision rests on its value), a non-finite X, or a point that measured nothing
					p.at[loc] = -1
				}
			}
			if len(p.pts) == 0 || len(p.fill) == 0 {
				continue
			}
			est := f(p)
			nonNeg, positive, maxAbs, most, least := true, true, 0.0, math.Inf(-1), math.Inf(1)
			for _, y := range p.ys {
				nonNeg, positive = nonNeg && y >= 0, positive && y > 0
				maxAbs = math.Max(maxAbs, math.Abs(y))
				most, least = math.Max(most, y), math.Min(least, y)
			}
			for k, loc := range p.fill {
				e := est[k]
				if positive && levelsOff(p.metric) && e.v < least {
					// Past the last measurement the slope of a knee
					// would carry a cost on to zero (990, 72 and 25 ms
					// at cpu 20, 30 and 40% extrapolated to 0 ms from
					// 50% on).
					e.u = math.Max(e.u, least-e.v)
					e.v = least
				}
				if nonNeg && e.v < 0 {
					// Every metric JustRunIt records is ≥ 0; an
					// extrapolated slope must not cross zero.
					e.u = math.Max(e.u, -e.v)
					e.v = 0
				}
				if fraction(p.metric) && e.v > 1 {
					// No more than every request can fail: the slope
					// of a rising error rate must not carry on past
					// it (0.9, 0.5 and 0.2 at cpu 40, 50 and 60%
					// extrapolated to 1.7 at 20%), nor the GP's
					// reciprocal transform run towards its pole.
					e.u = math.Max(e.u, e.v-1)
					e.v = 1
				}
				if ceil := math.Max(most, offered); p.metric == justrunit.Throughput && e.v > ceil {
					// A clone answers copies of the live load: no
					// allocation makes it serve more than arrives. The
					// slope below saturation must not carry on past it
					// (30, 38 and 40 req/s at cpu 20, 30 and 40%
					// extrapolated to 52–59 req/s at 100%). The load is
					// the most offered to a measured point, where the
					// observations say (Offered), else the largest
					// measured throughput, which may be a saturated one
					// under it.
					e.u = math.Max(e.u, e.v-ceil)
					e.v = ceil
				}
				e.u = math.Max(e.u, relFloor*math.Max(math.Abs(e.v), maxAbs))
				m.Rows[rows[loc]].Cells[j] = justrunit.Cell{Value: e.v, Prov: justrunit.Interpolated, Uncertainty: e.u}
			}
		}
	}
	return nil
}

// shadowed marks the rows that no measurement speaks for because a point
// found unmeasurable (Row.Unmeasurable: a clone saturated there, or that
// got no traffic) stands between them and every measured point along one
// of the numeric axes: from an unmeasurable point along an axis, the
// untried points up to the edge, or up to another unmeasurable point. Such
// cells are left empty: filled from the measured side, a point below a
// saturated one would look like it meets an SLA its neighbour missed.
// Untried points between an unmeasurable point and a measured one are
// filled.
func shadowed(m *justrunit.Matrix, numeric []int) []bool {
	out := make([]bool, len(m.Rows))
	un := m.Unmeasurable()
	if len(un) == 0 {
		return out
	}
	sp := m.Space
	stride := make([]int, len(sp.Params)) // of the flat order, last axis fastest
	for d, s := len(sp.Params)-1, 1; d >= 0; d-- {
		stride[d] = s
		s *= len(sp.Params[d].Values)
	}
	measured := func(i int) bool {
		if m.Rows[i].Observation != nil {
			return true
		}
		return slices.ContainsFunc(m.Rows[i].Cells, func(c justrunit.Cell) bool { return c.Prov.HasMeasurement() })
	}
	var run []int
	for _, u := range un {
		c := sp.Coords(u)
		for _, d := range numeric {
			for _, dir := range []int{-1, 1} {
				run = run[:0]
				reached := false
				for k := c[d] + dir; k >= 0 && k < len(sp.Params[d].Values); k += dir {
					i := u + (k-c[d])*stride[d]
					if m.Rows[i].Unmeasurable != "" {
						break
					}
					if reached = measured(i); reached {
						break
					}
					run = append(run, i)
				}
				if !reached {
					for _, i := range run {
						out[i] = true
					}
				}
			}
		}
	}
	return out
}

// validate is justrunit.Matrix.Validate without its allocation per row:
// the slicing in run relies on rows being in the space's flat order.
func validate(m *justrunit.Matrix) error {
	sp := m.Space
	if err := sp.Validate(); err != nil {
		return err
	}
	if len(m.Rows) != sp.Size() {
		return justrunit.Invalid("rows", len(m.Rows), "want one row per point of the space (%d)", sp.Size())
	}
	c := make([]int, len(sp.Params)) // odometer over the space, last axis fastest
	for i, r := range m.Rows {
		if len(r.Cells) != len(m.Metrics) {
			return justrunit.Invalid(fmt.Sprintf("rows[%d].cells", i), len(r.Cells), "want one cell per metric (%d)", len(m.Metrics))
		}
		ok := len(r.Point) == len(c)
		for d := 0; ok && d < len(c); d++ {
			v := sp.Params[d].Values[c[d]]
			ok = math.Abs(r.Point[d]-v) <= 1e-9*math.Max(1, math.Abs(v))
		}
		if !ok {
			return justrunit.Invalid(fmt.Sprintf("rows[%d].point", i), sp.Format(r.Point), "rows must follow the space's order; want %s", sp.Format(sp.At(i)))
		}
		for d := len(c) - 1; d >= 0; d-- {
			if c[d]++; c[d] < len(sp.Params[d].Values) {
				break
			}
			c[d] = 0
		}
	}
	return nil
}
