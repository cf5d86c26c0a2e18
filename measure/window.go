package measure

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/justrunit/justrunit"
)

// Window defaults.
const (
	DefaultTick       = 250 * time.Millisecond
	DefaultMinSamples = 100
	// DeadlineGuard is how long before ctx's deadline MeasureWindow stops
	// measuring, so that closing the window (merging the histogram, reading
	// the energy meter) finishes before the deadline rather than after. The
	// guard grows by twice the longest Snapshot seen in the window.
	DeadlineGuard = 25 * time.Millisecond
)

// Why a window stopped; the values of Result.Stop and Observation.Stop.
const (
	StopConverged = "converged" // the p95 confidence interval was tight enough
	StopWindow    = "window"    // the window ran to its maximum length
	StopDeadline  = "deadline"  // ctx's deadline cut the window short
)

// Phases reported to a progress callback.
const (
	PhaseWarmUp  = "warm-up"
	PhaseMeasure = "measure"
)

// ErrTooFewSamples means a window ended with fewer successful responses
// than WindowConfig.MinSamples: at its full length, or cut by its deadline
// (then the error wraps context.DeadlineExceeded too). Such a window
// measured nothing: with no response there is no response time or energy
// per request, and with a handful the p95 is noise.
var ErrTooFewSamples = justrunit.ErrTooFewSamples

// WindowConfig is how MeasureWindow runs one experiment's window: a warm-up,
// then a measurement window between Min and Max long that stops early once
// p95 is known precisely enough.
type WindowConfig struct {
	// WarmUp is a fixed warm-up, used when DetectWarmUp is false.
	WarmUp time.Duration
	// DetectWarmUp replaces the fixed warm-up by detection (see
	// WarmUpDetector): sub-windows of SubWindow are compared until Detector
	// declares the instance warm or MaxWarmUp has passed.
	DetectWarmUp bool
	// MaxWarmUp bounds a detected warm-up; required with DetectWarmUp.
	MaxWarmUp time.Duration
	// SubWindow is the length of the sub-windows warm-up detection compares
	// (default DefaultSubWindow).
	SubWindow time.Duration
	// Detector holds the detection rule's tolerances; its zero value uses
	// the defaults.
	Detector WarmUpDetector

	// Min and Max bound the measurement window's length. The window never
	// stops as converged before Min; it always stops at Max.
	Min, Max time.Duration
	// RelCI stops the window early when the 95% confidence interval of p95
	// is at most this wide relative to p95, (P95High − P95Low)/P95 ≤ RelCI,
	// and at least MinSamples responses were measured. 0 disables early
	// stopping.
	RelCI float64
	// MinSamples is the fewest successful responses a window needs to stop
	// early, and to be returned without ErrTooFewSamples at all, whether it
	// ran its full length or a deadline cut it (default DefaultMinSamples).
	MinSamples int64
	// Tick is how often the stopping rule is evaluated and progress
	// reported (default DefaultTick).
	Tick time.Duration
}

// Validate checks the configuration; errors name the field.
func (c WindowConfig) Validate() error {
	switch {
	case c.Max <= 0:
		return justrunit.Invalid("window.max", c.Max, "must be > 0")
	case c.Min < 0 || c.Min > c.Max:
		return justrunit.Invalid("window.min", c.Min, "must be between 0 and window.max (%v)", c.Max)
	case c.WarmUp < 0:
		return justrunit.Invalid("window.warm_up", c.WarmUp, "must be ≥ 0")
	case c.DetectWarmUp && c.MaxWarmUp <= 0:
		return justrunit.Invalid("window.max_warm_up", c.MaxWarmUp, "must be > 0 when detecting the warm-up")
	case c.SubWindow < 0:
		return justrunit.Invalid("window.sub_window", c.SubWindow, "must be ≥ 0")
	case c.RelCI < 0:
		return justrunit.Invalid("window.rel_ci", c.RelCI, "must be ≥ 0 (0 disables early stopping)")
	case c.MinSamples < 0:
		return justrunit.Invalid("window.min_samples", c.MinSamples, "must be ≥ 0")
	case c.Tick < 0:
		return justrunit.Invalid("window.tick", c.Tick, "must be ≥ 0")
	case c.Detector.Tolerance < 0:
		return justrunit.Invalid("window.detector.tolerance", c.Detector.Tolerance, "must be ≥ 0")
	case c.Detector.Agree < 0:
		return justrunit.Invalid("window.detector.agree", c.Detector.Agree, "must be ≥ 0")
	case c.Detector.MinSamples < 0:
		return justrunit.Invalid("window.detector.min_samples", c.Detector.MinSamples, "must be ≥ 0")
	}
	return nil
}

// Progress is what MeasureWindow reports every tick (and, while detecting
// the warm-up, every sub-window).
type Progress struct {
	// Phase is PhaseWarmUp or PhaseMeasure.
	Phase string
	// Elapsed is the time since MeasureWindow started.
	Elapsed time.Duration
	// Summary is the current window so far (in the warm-up with detection,
	// the sub-window that just ended).
	Summary Summary
	// RelWidth is Summary.P95RelWidth().
	RelWidth float64
}

// Result is one measured window.
type Result struct {
	// Summary is the measurement window, warm-up excluded.
	Summary Summary
	// WarmUp is the warm-up actually waited out.
	WarmUp time.Duration
	// WarmUpSettled is false when warm-up detection gave up at MaxWarmUp
	// without seeing the instance settle (true for a fixed warm-up).
	WarmUpSettled bool
	// Stop is why the window ended: StopConverged, StopWindow or
	// StopDeadline.
	Stop string
	// Energy is what the window consumed, per the meter; zero when
	// MeasureWindow was given no meter.
	Energy justrunit.Energy
}

// Observation returns the observation of point p this result makes. The
// caller fills what the measurement does not know: MatchRate, Dropped, Clone
// and Source.
//
// A window with no successful response has no response time and no energy
// per request: their fields are NaN, not 0, so that Matrix.Record refuses
// the observation and no SLA takes it for a pass. (MeasureWindow returns
// such a window only with ErrTooFewSamples.)
func (r Result) Observation(p justrunit.Point) justrunit.Observation {
	o := justrunit.Observation{
		Point:      p,
		Start:      r.Summary.Start,
		WarmUp:     justrunit.Duration(r.WarmUp),
		Window:     justrunit.Duration(r.Summary.Duration()),
		Samples:    r.Summary.Count,
		Errors:     r.Summary.Errors,
		Throughput: r.Summary.Throughput,
		RT:         r.Summary.RT,
		Energy:     r.Energy,
		Stop:       r.Stop,
	}
	if r.Summary.Count == 0 {
		nan := math.NaN()
		o.RT = justrunit.ResponseTime{Mean: nan, P50: nan, P95: nan, P99: nan, Max: nan, P95Low: nan, P95High: nan}
		o.Energy.PerRequest = nan
	}
	return o
}

// Windowed is what MeasureWindow reads: a *Recorder, or a source that keeps
// more per window than response times (an in-proxy's per-clone counters).
type Windowed interface {
	// Snapshot returns the window so far without ending it.
	Snapshot() Summary
	// Reset ends the window, returns it and starts a new one.
	Reset() Summary
}

var _ Windowed = (*Recorder)(nil)

// MeasureWindow measures one window of the responses fed to rec (by a
// proxy, from any goroutines). It resets rec, waits out the warm-up —
// fixed, or detected and bounded by MaxWarmUp — resetting rec at its end,
// starts meter, then evaluates the stopping rule every Tick until the p95
// interval is tight enough (StopConverged), the window reaches Max
// (StopWindow) or ctx's deadline is near (StopDeadline). It stops
// DeadlineGuard before ctx's deadline, so it returns by the deadline.
//
// A window that ends with fewer than MinSamples successful responses comes
// back with an error wrapping ErrTooFewSamples (and, when a deadline cut it,
// context.DeadlineExceeded): its result is returned for the record, but it
// is no measurement. When a deadline cuts a window that has MinSamples
// responses, the partial result is returned. A deadline during the warm-up, or a cancelled
// ctx, is an error wrapping ctx's error. When the meter fails, the result
// is returned without energy together with the meter's error. meter and
// progress may be nil.
func MeasureWindow(ctx context.Context, cfg WindowConfig, rec Windowed, meter EnergyMeter, progress func(Progress)) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	cfg = cfg.withDefaults()
	if progress == nil {
		progress = func(Progress) {}
	}
	began := time.Now()
	stopBy := time.Time{} // zero: no deadline
	if dl, ok := ctx.Deadline(); ok {
		stopBy = dl.Add(-DeadlineGuard)
	}
	w := &waiter{ctx: ctx, stopBy: stopBy}
	defer w.stop()

	// Warm-up.
	rec.Reset()
	settled := true
	if cfg.DetectWarmUp {
		settled = false
		det := WarmUpDetector{Tolerance: cfg.Detector.Tolerance, Agree: cfg.Detector.Agree, MinSamples: cfg.Detector.MinSamples}
		end := began.Add(cfg.MaxWarmUp)
		for !settled && time.Now().Before(end) {
			if err := w.until(minTime(time.Now().Add(cfg.SubWindow), end)); err != nil {
				return Result{}, warmUpErr(err)
			}
			s := rec.Reset()
			settled = det.Add(s)
			progress(Progress{Phase: PhaseWarmUp, Elapsed: time.Since(began), Summary: s, RelWidth: s.P95RelWidth()})
		}
	} else {
		end := began.Add(cfg.WarmUp)
		for now := time.Now(); now.Before(end); now = time.Now() {
			if err := w.until(minTime(now.Add(cfg.Tick), end)); err != nil {
				return Result{}, warmUpErr(err)
			}
			s := rec.Snapshot()
			progress(Progress{Phase: PhaseWarmUp, Elapsed: time.Since(began), Summary: s, RelWidth: s.P95RelWidth()})
		}
	}
	rec.Reset()
	res := Result{WarmUp: time.Since(began), WarmUpSettled: settled}

	// Measurement.
	var meterErr error
	if meter != nil {
		if err := meter.Start(); err != nil {
			meterErr = fmt.Errorf("start energy meter: %w", err)
			meter = nil
		}
	}
	winStart := time.Now()
	winEnd := winStart.Add(cfg.Max)
	for {
		err := w.until(minTime(time.Now().Add(cfg.Tick), winEnd))
		if err != nil && !errors.Is(err, errStopBy) {
			if meter != nil {
				_, _ = meter.Stop(0)
			}
			return Result{}, fmt.Errorf("measure window: %w", err)
		}
		if err != nil { // deadline near: close the window now
			res.Stop = StopDeadline
			break
		}
		t0 := time.Now()
		s := rec.Snapshot()
		w.cost = max(w.cost, time.Since(t0))
		elapsed := s.Duration()
		progress(Progress{Phase: PhaseMeasure, Elapsed: time.Since(began), Summary: s, RelWidth: s.P95RelWidth()})
		switch {
		case time.Since(winStart) >= cfg.Max:
			res.Stop = StopWindow
		case cfg.RelCI > 0 && elapsed >= cfg.Min && s.Count >= cfg.MinSamples && s.P95RelWidth() <= cfg.RelCI:
			res.Stop = StopConverged
		default:
			continue
		}
		break
	}
	res.Summary = rec.Reset()
	progress(Progress{Phase: PhaseMeasure, Elapsed: time.Since(began), Summary: res.Summary, RelWidth: res.Summary.P95RelWidth()})
	if meter != nil {
		e, err := meter.Stop(res.Summary.Count)
		if err != nil {
			meterErr = fmt.Errorf("stop energy meter: %w", err)
		} else {
			res.Energy = e
		}
	}
	if res.Summary.Count < cfg.MinSamples {
		got, in := res.Summary.Count, res.Summary.Duration().Round(time.Millisecond)
		if res.Stop == StopDeadline {
			return res, fmt.Errorf("measure window: %d samples in %v before the deadline, need %d: %w (%w)",
				got, in, cfg.MinSamples, ErrTooFewSamples, context.DeadlineExceeded)
		}
		return res, fmt.Errorf("measure window: %d successful responses (%d errors) in the full window of %v, need %d: %w; "+
			"check that the target gets traffic and answers it, or lengthen the window (or lower the study's min_samples)",
			got, res.Summary.Errors, in, cfg.MinSamples, ErrTooFewSamples)
	}
	return res, meterErr
}

// warmUpErr is the error for a warm-up that ctx ended.
func warmUpErr(err error) error {
	if errors.Is(err, errStopBy) {
		err = context.DeadlineExceeded
	}
	return fmt.Errorf("measure window: warm-up cut short: %w", err)
}

func (c WindowConfig) withDefaults() WindowConfig {
	if c.Tick == 0 {
		c.Tick = DefaultTick
	}
	if c.SubWindow == 0 {
		c.SubWindow = DefaultSubWindow
	}
	if c.MinSamples == 0 {
		c.MinSamples = DefaultMinSamples
	}
	return c
}

// errStopBy means the time to stop before ctx's deadline has come.
var errStopBy = errors.New("deadline near")

// waiter sleeps until a time, ctx's end or the guard before its deadline.
type waiter struct {
	ctx    context.Context
	stopBy time.Time // the deadline less DeadlineGuard; zero without a deadline
	// cost is the longest a Snapshot of the recorder has taken; closing the
	// window costs about as much again, so the guard grows by it.
	cost  time.Duration
	timer *time.Timer
}

// until waits until t. It returns errStopBy when the guard before ctx's
// deadline comes first, ctx's error when ctx ends first.
func (w *waiter) until(t time.Time) error {
	stopBy := w.stopBy.Add(-2 * w.cost)
	guard := !w.stopBy.IsZero() && !t.Before(stopBy)
	if guard {
		t = stopBy
	}
	d := time.Until(t)
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	select {
	case <-w.ctx.Done():
		if err := w.ctx.Err(); errors.Is(err, context.DeadlineExceeded) {
			// The guard should have fired first; a late wake-up on a busy
			// machine still ends the window as cut by the deadline.
			return errors.Join(errStopBy, err)
		}
		return w.ctx.Err()
	case <-w.timer.C:
		if guard {
			return errStopBy
		}
		return nil
	}
}

func (w *waiter) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
