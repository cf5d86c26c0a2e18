package measure

import (
	"math"
	"time"
)

// Warm-up detection defaults.
const (
	DefaultSubWindow     = 500 * time.Millisecond
	DefaultWarmTolerance = 0.2
	DefaultWarmAgree     = 3
	DefaultWarmSamples   = 20
)

// WarmUpDetector decides when a freshly started or re-allocated instance has
// settled, from the summaries of short successive sub-windows of its
// responses (fed to Add, typically Recorder.Reset every SubWindow).
//
// The rule: the instance is warm when the last Agree sub-windows each hold
// at least MinSamples responses and agree with each other:
//   - their mean response times lie within Tolerance of one another,
//     relative to their average: (max − min) / average ≤ Tolerance; and
//   - their p95s do too, or, failing that, their p95 confidence intervals
//     (Summary.RT.P95Low..P95High) all overlap — p95 of a short sub-window is
//     noisy, and sub-windows whose p95s are statistically indistinguishable
//     agree.
//
// A clone that starts cold (empty caches, JIT, a lazily filled connection
// pool) shows falling response times; once they stop falling and only noise
// is left, consecutive sub-windows agree. Sub-windows with too few samples
// do not count and break a run of agreeing ones, so an idle instance is
// never declared warm.
//
// Tolerance must exceed the sampling noise of a sub-window's mean: for an
// exponential-like distribution the mean of n responses has a relative
// standard error of about 1/√n, and the spread of three sub-windows is
// typically 1.7 times that, so Tolerance 0.2 wants a few hundred responses
// per sub-window (choose SubWindow from the request rate). With fewer, or a
// heavy tail, the detector may not see agreement and the caller's bound
// (WindowConfig.MaxWarmUp) ends the warm-up, which Result.WarmUpSettled
// records; a warm-up is then longer than needed, never shorter. The
// detector has no clock of its own.
type WarmUpDetector struct {
	// Tolerance is the relative spread allowed between agreeing sub-windows
	// (default DefaultWarmTolerance).
	Tolerance float64
	// Agree is how many consecutive sub-windows must agree (default
	// DefaultWarmAgree, at least 2).
	Agree int
	// MinSamples is the number of responses a sub-window needs to count
	// (default DefaultWarmSamples).
	MinSamples int64

	recent []Summary
}

// Add feeds the summary of the next sub-window and reports whether the
// instance is now warm (and stays warm while sub-windows keep agreeing).
func (d *WarmUpDetector) Add(s Summary) bool {
	agree := d.Agree
	if agree == 0 {
		agree = DefaultWarmAgree
	}
	agree = max(agree, 2)
	minN := d.MinSamples
	if minN == 0 {
		minN = DefaultWarmSamples
	}
	if s.Count < minN {
		d.recent = d.recent[:0]
		return false
	}
	d.recent = append(d.recent, s)
	if len(d.recent) > agree {
		d.recent = append(d.recent[:0], d.recent[len(d.recent)-agree:]...)
	}
	if len(d.recent) < agree {
		return false
	}
	tol := d.Tolerance
	if tol == 0 {
		tol = DefaultWarmTolerance
	}
	return spread(d.recent, func(s Summary) float64 { return s.RT.Mean }) <= tol &&
		(spread(d.recent, func(s Summary) float64 { return s.RT.P95 }) <= tol || p95Overlap(d.recent))
}

// p95Overlap reports whether the p95 confidence intervals of ss share a
// point.
func p95Overlap(ss []Summary) bool {
	lo, hi := math.Inf(-1), math.Inf(1)
	for _, s := range ss {
		lo, hi = max(lo, s.RT.P95Low), min(hi, s.RT.P95High)
	}
	return lo <= hi
}

// spread returns (max − min) / mean of f over ss; 0 when all are 0.
func spread(ss []Summary, f func(Summary) float64) float64 {
	lo, hi, sum := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range ss {
		v := f(s)
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	avg := sum / float64(len(ss))
	if avg == 0 {
		return 0
	}
	return (hi - lo) / avg
}
