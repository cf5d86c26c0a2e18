package driver

import (
	"context"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/justrunit/justrunit"
)

// SLASearch finds the least allocation that meets the study's SLA (the
// paper's "what CPU share brings p95 back under 50 ms?") with as few
// experiments as possible, then stops; the engine interpolates the rest.
//
// It searches one axis, a numeric parameter where a larger value is a larger
// allocation and so never a worse metric (monotone): for a ceiling such as
// rt_p95<=50 the metric does not rise as the allocation grows, for a floor
// such as throughput>=900 it does not fall; either way the allocations
// that meet the SLA lie above those that miss it. With n values on the
// axis the answer is one of n+1 outcomes (the least passing value, or
// none), and an experiment at value i tells which side of i the answer lies
// on. Each probe is placed where interpolation of the measured values
// predicts the SLA is crossed (regula falsi between the highest failing and
// the lowest passing value, or a secant through two values on one side),
// but only within the range that keeps the worst case of bisection: with S
// outcomes left, both sides of the probe hold at most 2^(⌈log2 S⌉−1). So a
// search never takes more than ⌈log2(n+1)⌉ experiments — 4 for an 11-value
// axis — and usually fewer when the curve is smooth. Before two values are
// measured it bisects.
//
// In a space with other parameters, the search runs along the axis once for
// every combination of the other parameters (a "line"), independently, the
// lines sharing the free slots. A line with an experiment running waits for
// it. When the time left cannot fit a line's sequential search (⌈log2 S⌉
// rounds) and slots are free, the line gets several probes at once, evenly
// splitting its outcomes so that it finishes in the rounds left; otherwise
// spare slots stay idle, because every experiment costs sandbox time.
//
// Measured values are read from the cells of the SLA's metric (X and V). If
// noise makes them non-monotone, the answer is the least measured passing
// value above every measured failing one. A measured point whose
// observation saw no successful response never passes an SLA on a response
// time, the error rate or the energy per request: those figures read 0
// there, which is no measurement (see noFigure). Nor does a point whose
// experiment ran its window and measured too few responses to count
// (Row.Unmeasurable): the clone was saturated there, or got no traffic.
// Nor, on a response time, does a point where the clone answered clearly
// fewer requests than it was sent (Observation.Saturated): its figures are
// those of the requests that got through.
type SLASearch struct {
	axis string
}

var _ justrunit.Strategy = (*SLASearch)(nil)

// NewSLASearch returns the sla strategy searching opts.Axis (see Options).
// The study's SLA comes with each PlanState; a plan without one is an error.
func NewSLASearch(opts Options) (*SLASearch, error) {
	if strings.ContainsAny(opts.Axis, " =,;") {
		return nil, justrunit.Invalid("axis", opts.Axis, "not a parameter name")
	}
	return &SLASearch{axis: opts.Axis}, nil
}

// Name returns "sla".
func (s *SLASearch) Name() string { return NameSLA }

// Next returns the next probes of every line whose answer is not settled and
// that has no experiment running, or none when every line is settled (or
// waiting, when st.Running is not empty) or no experiment fits.
func (s *SLASearch) Next(ctx context.Context, st justrunit.PlanState) ([]justrunit.Point, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := slotsNow(st)
	if err != nil {
		return nil, err
	}
	sr, err := newSearch(st.Matrix, st.SLA, s.axis)
	if err != nil || n == 0 {
		return nil, err
	}
	running, err := runningSet(st)
	if err != nil {
		return nil, err
	}
	rounds := int(st.TimeLeft / st.ExperimentLength)
	type job struct {
		ln     line
		lo, hi int
		q      int
	}
	var jobs []job
	for _, b := range sr.bases {
		if len(jobs) == n {
			break
		}
		ln := sr.line(b)
		lo, hi := ln.bounds()
		if lo == hi || ln.running(running) > 0 {
			continue
		}
		jobs = append(jobs, job{ln: ln, lo: lo, hi: hi, q: 1})
	}
	spare := n - len(jobs)
	for k := range jobs {
		if spare == 0 {
			break
		}
		extra := min(probesFor(jobs[k].hi-jobs[k].lo+1, rounds)-1, spare)
		jobs[k].q += extra
		spare -= extra
	}
	var out []justrunit.Point
	for _, j := range jobs {
		for _, i := range j.ln.probes(j.lo, j.hi, j.q) {
			out = append(out, pointAt(sr.m, j.ln.flat(i)))
		}
	}
	return out, nil
}

// Estimate returns how many more experiments the search expects to start:
// per unsettled line, ⌈log2 S⌉ for its S outcomes left (fewer once its
// running probes report), more when the time left forces several probes per
// round; bounded by what fits into the time left. It is 0 without an SLA.
func (s *SLASearch) Estimate(st justrunit.PlanState) int {
	if st.Matrix == nil || st.ExperimentLength <= 0 {
		return 0
	}
	sr, err := newSearch(st.Matrix, st.SLA, s.axis)
	if err != nil {
		return 0
	}
	running, err := runningSet(st)
	if err != nil {
		return 0
	}
	rounds := int(st.TimeLeft / st.ExperimentLength)
	total := 0
	for _, b := range sr.bases {
		ln := sr.line(b)
		lo, hi := ln.bounds()
		size := hi - lo + 1
		if r := ln.running(running); r > 0 {
			size = (size + r) / (r + 1) // ⌈S/(r+1)⌉: what r probes leave at worst
		}
		if size <= 1 {
			continue
		}
		k := ceilLog2(size)
		if k <= rounds || st.Slots <= 1 {
			total += k
			continue
		}
		q := min(probesFor(size, rounds), st.Slots)
		total += q * ceilLog(size, q+1)
	}
	return min(total, estimateCap(st))
}

// Line is the state of the sla search on one line of the space: the points
// that differ only in the axis's value.
type Line struct {
	// At is the line's point with the axis at its least value; its other
	// values say which combination of the other parameters the line is.
	At justrunit.Point `json:"at"`
	// Least is the least measured point of the line that meets the SLA with
	// every larger measured allocation meeting it too; nil when no measured
	// point passes.
	Least justrunit.Point `json:"least,omitempty"`
	// Settled reports that no unmeasured allocation can change the answer:
	// the value just below Least was measured and fails (or Least is the
	// axis's first value), or nothing passes and the largest value was
	// measured and fails. An unsettled Least is a safe but maybe generous
	// answer (a search cut short by the time bound).
	Settled bool `json:"settled"`
	// Measured counts the line's measured points.
	Measured int `json:"measured"`
}

// Lines returns the search's state on every line of m along axis (see
// Options.Axis for the default), in the space's flat order of their
// first points. It reads only measured cells (X and V) of sla's metric (and
// their rows' observations, for the sample count).
func Lines(m *justrunit.Matrix, sla justrunit.SLA, axis string) ([]Line, error) {
	sr, err := newSearch(m, &sla, axis)
	if err != nil {
		return nil, err
	}
	out := make([]Line, len(sr.bases))
	for k, b := range sr.bases {
		ln := sr.line(b)
		lo, hi := ln.bounds()
		out[k] = Line{At: pointAt(m, b), Settled: lo == hi}
		if hi < ln.n() {
			out[k].Least = pointAt(m, ln.flat(hi))
		}
		for _, h := range ln.has {
			if h {
				out[k].Measured++
			}
		}
	}
	return out, nil
}

// LeastPassing returns the least measured allocation along axis that meets
// sla (with every larger measured allocation meeting it too), and whether
// there is one. The space must be a single line along the axis (every other
// parameter has one value); use Lines for the others. The answer is exact
// once the sla strategy has finished; before that it is the best safe
// answer measured so far.
func LeastPassing(m *justrunit.Matrix, sla justrunit.SLA, axis string) (justrunit.Point, bool, error) {
	lines, err := Lines(m, sla, axis)
	if err != nil {
		return nil, false, err
	}
	if len(lines) != 1 {
		if d, err := resolveAxis(m.Space, axis); err == nil {
			axis = m.Space.Params[d].Name // the default's name
		}
		return nil, false, justrunit.Invalid("axis", axis, "the space has %d lines along the axis (one per combination of the other parameters); use driver.Lines", len(lines))
	}
	return lines[0].Least, lines[0].Least != nil, nil
}

// search is the geometry of an sla search over one matrix.
type search struct {
	m   *justrunit.Matrix
	sla justrunit.SLA
	// sign and level turn every SLA into a ceiling: a value v passes when
	// sign·v ≤ level. sign is +1 for a ceiling (level Max) and −1 for a
	// floor (level −Min), so that the search and its interpolation need
	// only one direction.
	sign, level float64
	col         int       // the SLA metric's column
	axis        int       // the axis's parameter index
	x           []float64 // the axis's values
	stride      int       // flat distance between neighbours on the axis
	bases       []int     // flat index of every line's first point
}

func newSearch(m *justrunit.Matrix, sla *justrunit.SLA, axisName string) (*search, error) {
	if sla == nil {
		return nil, justrunit.Invalid("sla", nil, "the sla strategy needs the study's SLA, e.g. rt_p95<=50")
	}
	if err := sla.Validate(); err != nil {
		return nil, err
	}
	col := m.MetricIndex(sla.Metric)
	if col < 0 {
		return nil, justrunit.Invalid("sla.metric", string(sla.Metric), "not recorded by the study's matrix (%v)", m.Metrics)
	}
	axis, err := resolveAxis(m.Space, axisName)
	if err != nil {
		return nil, err
	}
	sr := &search{m: m, sla: *sla, sign: 1, level: sla.Max, col: col, axis: axis, x: m.Space.Params[axis].Values, stride: 1}
	if sla.AtLeast() {
		sr.sign, sr.level = -1, -sla.Min
	}
	for _, p := range m.Space.Params[axis+1:] {
		sr.stride *= len(p.Values)
	}
	outer := 1
	for _, p := range m.Space.Params[:axis] {
		outer *= len(p.Values)
	}
	block := len(sr.x) * sr.stride
	sr.bases = make([]int, 0, outer*sr.stride)
	for o := range outer {
		for r := range sr.stride {
			sr.bases = append(sr.bases, o*block+r)
		}
	}
	return sr, nil
}

// resolveAxis returns the index of the parameter called name, or of the
// default axis when name is empty: "cpu" when it is numeric with more than
// one value, else the first such parameter, else the first numeric one (a
// single value: nothing to search, every line is one point).
func resolveAxis(s justrunit.Space, name string) (int, error) {
	if name == "" {
		searchable := func(p justrunit.Parameter) bool { return !p.Categorical() && len(p.Values) > 1 }
		if d := s.Param("cpu"); d >= 0 && searchable(s.Params[d]) {
			return d, nil
		}
		if d := slices.IndexFunc(s.Params, searchable); d >= 0 {
			return d, nil
		}
		if d := slices.IndexFunc(s.Params, func(p justrunit.Parameter) bool { return !p.Categorical() }); d >= 0 {
			return d, nil
		}
		return 0, justrunit.Invalid("axis", nil, "the space has no numeric parameter to search; the sla strategy needs one where more is better, e.g. cpu")
	}
	d := s.Param(name)
	if d < 0 {
		var have []string
		for _, p := range s.Params {
			have = append(have, p.Name)
		}
		return 0, justrunit.Invalid("axis", name, "not a parameter of the space; parameters: %s", strings.Join(have, ", "))
	}
	if s.Params[d].Categorical() {
		return 0, justrunit.Invalid("axis", name, "categorical; the sla strategy needs a numeric parameter where more is better, e.g. cpu")
	}
	return d, nil
}

// line is one line of the search: the axis's values at fixed other values,
// with what has been measured there.
type line struct {
	sr   *search
	base int
	vals []float64 // sign × the SLA metric's measured values, by axis index; NaN for no figure
	has  []bool    // whether vals[i] was measured
}

func (sr *search) line(base int) line {
	n := len(sr.x)
	ln := line{sr: sr, base: base, vals: make([]float64, n), has: make([]bool, n)}
	for i := range n {
		row := &sr.m.Rows[ln.flat(i)]
		if row.Unmeasurable != "" {
			ln.vals[i], ln.has[i] = math.NaN(), true // run, measured nothing: saturated, it fails
			continue
		}
		c := row.Cells[sr.col]
		if !c.Prov.HasMeasurement() {
			continue
		}
		ln.vals[i], ln.has[i] = sr.sign*c.Value, true
		if noFigure(row.Observation, sr.sla.Metric) || row.Observation.Understates(sr.sla.Metric) {
			ln.vals[i] = math.NaN() // measured, and fails: no figure, or saturated
		}
	}
	return ln
}

func (ln line) n() int            { return len(ln.vals) }
func (ln line) flat(i int) int    { return ln.base + i*ln.sr.stride }
func (ln line) x(i int) float64   { return ln.sr.x[i] }
func (ln line) passes(i int) bool { return ln.vals[i] <= ln.sr.level } // false for NaN

// running returns how many of the line's points are running.
func (ln line) running(set map[int]bool) int {
	r := 0
	for i := range ln.n() {
		if set[ln.flat(i)] {
			r++
		}
	}
	return r
}

// bounds returns the outcomes still possible: the least passing axis index
// lies in [lo, hi], where hi == n means no value passes. lo is one above the
// highest measured failure; hi is the least measured pass above it (or n).
// No point in [lo, hi) is measured.
func (ln line) bounds() (lo, hi int) {
	for i := range ln.n() {
		if ln.has[i] && !ln.passes(i) {
			lo = i + 1
		}
	}
	hi = ln.n()
	for i := lo; i < ln.n(); i++ {
		if ln.has[i] {
			hi = i
			break
		}
	}
	return lo, hi
}

// probes returns q axis indexes in [lo, hi) to measure next.
func (ln line) probes(lo, hi, q int) []int {
	size := hi - lo + 1
	q = min(q, size-1)
	if q > 1 {
		// Split the outcomes evenly into q+1 parts.
		out := make([]int, q)
		for j := 1; j <= q; j++ {
			out[j-1] = lo + (j*size+q)/(q+1) - 1
		}
		return out
	}
	// One probe: keep bisection's worst case, steer by interpolation.
	half := 1 << (ceilLog2(size) - 1)
	rlo, rhi := max(lo, hi-half), min(hi-1, lo+half-1)
	i := lo + (size-1)/2
	if g, ok := ln.guess(lo, hi); ok {
		switch {
		case g >= hi:
			i = hi - 1 // predicted: nothing below hi passes; confirm hi-1 fails
		case g <= lo:
			i = lo // predicted: lo passes
		case g-lo+1 <= hi-g+1:
			i = g // if it passes as predicted, [lo, g] is left
		default:
			i = g - 1 // if it fails as predicted, [g, hi] is left
		}
	}
	return []int{min(max(i, rlo), rhi)}
}

// guess predicts the least passing index in [lo, hi] by linear
// interpolation of measured values: between the highest failure and the
// lowest pass when both are known, else through the two measured values
// nearest the unknown range on one side, when they slope the right way.
func (ln line) guess(lo, hi int) (int, bool) {
	n, level := ln.n(), ln.sr.level
	a, b := lo-1, hi // highest failure, lowest pass (when in range)
	var xs float64
	switch {
	case a >= 0 && b < n:
		xs = cross(ln.x(a), ln.vals[a], ln.x(b), ln.vals[b], level)
	case a >= 0:
		a2 := a - 1
		for a2 >= 0 && !ln.has[a2] {
			a2--
		}
		if a2 < 0 || !(ln.vals[a2] > ln.vals[a]) {
			return 0, false
		}
		xs = cross(ln.x(a2), ln.vals[a2], ln.x(a), ln.vals[a], level)
	case b < n:
		b2 := b + 1
		for b2 < n && !ln.has[b2] {
			b2++
		}
		if b2 >= n || !(ln.vals[b2] < ln.vals[b]) {
			return 0, false
		}
		xs = cross(ln.x(b), ln.vals[b], ln.x(b2), ln.vals[b2], level)
	default:
		return 0, false
	}
	if math.IsNaN(xs) || math.IsInf(xs, 0) {
		return 0, false
	}
	for i := lo; i < hi; i++ {
		if ln.x(i) >= xs-1e-9*math.Max(1, math.Abs(xs)) {
			return i, true
		}
	}
	return hi, true
}

// noFigure reports whether o, the observation behind a measured cell of
// metric mt, has no figure for it: with no successful response there are
// no response times and no energy per request (they read 0, which would
// pass any ceiling), and no error rate to speak of (0 with no request at
// all, 1 with only failures). Throughput (0) and power are real figures
// even then. An observation that is not known (nil) is taken as measured.
func noFigure(o *justrunit.Observation, mt justrunit.Metric) bool {
	if o == nil || o.Samples > 0 {
		return false
	}
	switch mt {
	case justrunit.RTMean, justrunit.RTP50, justrunit.RTP95, justrunit.RTP99, justrunit.ErrorRate, justrunit.EnergyPerRequest:
		return true
	}
	return false
}

// cross returns where the line through (x1, f1) and (x2, f2) reaches level.
func cross(x1, f1, x2, f2, level float64) float64 {
	return x1 + (level-f1)*(x2-x1)/(f2-f1)
}

// ceilLog2 returns the least k with 2^k ≥ n, for n ≥ 1.
func ceilLog2(n int) int { return bits.Len(uint(n - 1)) }

// ceilLog returns the least r with base^r ≥ n, for n ≥ 1 and base ≥ 2.
func ceilLog(n, base int) int {
	r, p := 0, 1
	for p < n {
		p *= base
		r++
	}
	return r
}

// probesFor returns how many probes per round a line with size outcomes
// needs to finish within rounds rounds: 1 when bisection fits, else the
// least q with (q+1)^rounds ≥ size (at most size−1, one probe per value).
func probesFor(size, rounds int) int {
	if size <= 1 || rounds <= 0 || ceilLog2(size) <= rounds {
		return 1
	}
	for q := 1; q < size-1; q++ {
		if ceilLog(size, q+1) <= rounds {
			return q
		}
	}
	return size - 1
}
