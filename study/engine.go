// Package study is the study engine: it runs the experiments a Strategy asks
// for through a Runner, within the study's time bound and parallel slots,
// records each observation in the matrix, interpolates the rest, and keeps
// the study, its matrix, observations and events in a Store.
//
// The engine depends on the root package's interfaces only; the experimenter
// (a Runner on a platform with proxies), the drivers, interpolators and the
// store are plugged in by the caller.
package study

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
)

// Log attribute keys.
const (
	keyStudy = "study"
	keyPoint = "point"
	keyErr   = "err"
)

// Progress is what the engine reports after each change.
type Progress struct {
	Study *justrunit.Study
	// Done counts finished experiments; Planned is the strategy's estimate of
	// the total (Done included).
	Done, Planned int
	// Running lists the points being measured now.
	Running []justrunit.Point
	// TimeLeft is what remains of the time bound. Past it, GraceLeft is
	// what remains of its grace (see Grace), within which the experiments
	// still running end; 0 before.
	TimeLeft, GraceLeft time.Duration
	// Last is the most recent observation, if any.
	Last *justrunit.Observation
}

// Engine runs studies. Set the fields, then call Run; an Engine may run
// several studies one after another but holds no per-study state itself.
type Engine struct {
	Runner       justrunit.Runner
	Strategy     justrunit.Strategy
	Interpolator justrunit.Interpolator
	// Store is optional; without it nothing is persisted.
	Store justrunit.Store
	// Logger is optional; slog.Default() when nil.
	Logger *slog.Logger
	// Progress, when set, is called from the engine's goroutine after the
	// study starts, after each experiment and at the end.
	Progress func(Progress)
	// Owner identifies the running process in the store (sqlite.OwnerID), so a
	// study whose process died can be told apart from a running one.
	Owner string
}

type result struct {
	point justrunit.Point
	obs   justrunit.Observation
	err   error
	slot  int       // the engine's slot it ran on
	begun time.Time // when the planning that started it began
}

// Run validates st, runs it to the end of its strategy, its time bound (see
// Grace), a failed experiment or ctx's end, and returns the matrix (interpolated where
// anything was measured). The study's State, Error, Experiments and times
// are updated in st and in the Store. A failed experiment fails the study:
// the matrix keeps what was measured before it. ctx's end cancels the
// study, or interrupts it when its cause is ErrInterrupted. A stored study
// (st.ID set) that Run accepts is left in an end state in the Store, even
// when ctx ended before Run's first write; one it refuses as invalid is
// not touched.
func (e *Engine) Run(ctx context.Context, st *justrunit.Study) (*justrunit.Matrix, error) {
	if err := e.check(st); err != nil {
		return nil, err
	}
	st.FillMetrics()
	if st.Strategy == "" {
		st.Strategy = e.Strategy.Name()
	}
	if st.Interpolator == "" {
		st.Interpolator = e.Interpolator.Name()
	}
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		return nil, err
	}
	log := e.logger().With(keyStudy, st.ID)
	st.State, st.Started, st.Owner = justrunit.StudyRunning, time.Now(), e.Owner
	if st.Created.IsZero() {
		st.Created = st.Started
	}
	deadline := st.Started.Add(time.Duration(st.TimeBound))
	if e.Store != nil {
		if st.ID == "" {
			if err := e.Store.CreateStudy(ctx, st); err != nil {
				return nil, fmt.Errorf("create study: %w", err)
			}
			log = e.logger().With(keyStudy, st.ID)
		} else if err := e.Store.UpdateStudy(ctx, st); err != nil {
			// Stored already (pending), it must not stay so: record its
			// end all the same. A cancel that came before this first
			// write is the usual reason.
			return m, e.end(ctx, st, m, fmt.Errorf("start study: %w", err), deadline, log)
		}
	}
	e.event(ctx, st, justrunit.EventStudyStarted, "info", fmt.Sprintf("study of %s over %d points, %s strategy, time bound %v",
		st.Target, st.Space.Size(), st.Strategy, st.TimeBound), nil)
	log.Info("study started", "target", st.Target, "points", st.Space.Size(), "strategy", st.Strategy, "time_bound", st.TimeBound)

	cut, runErr := e.loop(ctx, st, m, deadline, log)
	if runErr == nil && len(m.Measured()) == 0 {
		if u := m.Unmeasurable(); len(u) > 0 {
			runErr = fmt.Errorf("%w: every experiment's window had too few responses to measure (%d points; at %s: %s)",
				ErrNothingMeasured, len(u), st.Space.Format(m.Rows[u[0]].Point), m.Rows[u[0]].Unmeasurable)
		} else {
			runErr = fmt.Errorf("%w: the time bound of %v ran out before any experiment measured its window (one takes %v of warm-up and window after its allocation is set; %d cut short); raise time_bound",
				ErrNothingMeasured, st.TimeBound, st.ExperimentLength(), cut)
		}
	}
	return m, e.end(ctx, st, m, runErr, deadline, log)
}

// end interpolates what was measured, records the study's end state (done
// when runErr is nil, else cancelled, interrupted or failed) with its matrix
// and event, and returns runErr with what failed to be recorded. It stores
// even when ctx is cancelled, with a bound of its own: the study must not
// be left running, or pending, in the store.
func (e *Engine) end(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, runErr error, deadline time.Time, log *slog.Logger) error {
	if len(m.Measured()) > 0 {
		if err := e.Interpolator.Interpolate(m); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("interpolate: %w", err))
		}
	}
	st.Finished = time.Now()
	kind, level := justrunit.EventStudyFinished, levelOf(runErr)
	switch {
	case runErr == nil:
		st.State = justrunit.StudyDone
	case ctx.Err() != nil && errors.Is(runErr, ctx.Err()) && errors.Is(context.Cause(ctx), ErrInterrupted):
		// Its process is stopping: no one cancelled it, and it did not end.
		st.State, st.Error = justrunit.StudyInterrupted, context.Cause(ctx).Error()
		kind, level = justrunit.EventStudyInterrupted, "warn"
	case ctx.Err() != nil && errors.Is(runErr, ctx.Err()):
		st.State, st.Error = justrunit.StudyCancelled, runErr.Error()
	default:
		st.State, st.Error = justrunit.StudyFailed, runErr.Error()
	}
	saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if e.Store != nil {
		counts := m.Counts()
		ev := newEvent(st, kind, level,
			fmt.Sprintf("study %s: %d experiments, %d cells measured, %d interpolated", st.State, st.Experiments,
				counts[justrunit.Measured], counts[justrunit.Interpolated]), map[string]any{"state": string(st.State)})
		// The end state, the final matrix and the event saying so are
		// seen together, or not at all.
		err := e.Store.RecordResult(saveCtx, st.ID, justrunit.Result{Study: st, Matrix: m, Events: []*justrunit.Event{ev}})
		if err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("finish study: %w", err))
			// The study must not stay running in the store: record its
			// end without the matrix, in case the matrix was what failed.
			if err := e.Store.RecordResult(saveCtx, st.ID, justrunit.Result{Study: st, Events: []*justrunit.Event{ev}}); err != nil {
				runErr = errors.Join(runErr, fmt.Errorf("finish study without its matrix: %w", err))
			}
		}
	}
	e.report(st, nil, nil, 0, deadline)
	log.Info("study finished", "state", st.State, "experiments", st.Experiments, "took", st.Finished.Sub(st.Started).Round(time.Millisecond))
	return runErr
}

// ErrInterrupted, as the cause a study's context is cancelled with
// (context.WithCancelCause), says that the process running the study is
// stopping, not that anyone cancelled the study: Run then records it
// interrupted (with a study.interrupted event, not study.finished), as the
// store's recovery records a study whose process died. Wrap it to say why.
var ErrInterrupted = errors.New("interrupted")

// ErrNothingMeasured means a study ended within its time bound without a
// single measured experiment.
var ErrNothingMeasured = errors.New("nothing measured")

// cutMargin is how close to the time bound an experiment that ended with a
// deadline error must end to count as cut by the bound rather than failed:
// the experimenter stops its window a little before the deadline, and
// checks the clone after it.
const cutMargin = time.Second

// Grace is how far past its time bound a study may run: a tenth of the
// bound. The bound is charged each experiment's nominal length (warm-up +
// window), not what it takes beyond that (its allocation is set, its clone
// checked, its observation stored, the next experiment planned), so that a
// bound of N experiment lengths runs N experiments on each slot, each whole;
// that overhead runs the study past its bound instead, up to the grace.
// Experiments are stopped at the bound plus the grace. Once the overhead
// exceeds the grace it is charged to the bound, and costs experiments.
func Grace(st *justrunit.Study) time.Duration { return time.Duration(st.TimeBound) / 10 }

// Budget is how many experiments study st's time bound holds on all its
// slots, floor(TimeBound / (WarmUp + Window)) on each: the PlanState's
// Budget of the engine's first planning. The engine runs that many, each
// whole, when what they take beyond their warm-up and window stays within
// Grace(st); more where windows end early (their estimates converged).
func Budget(st *justrunit.Study) int {
	return justrunit.PlanState{TimeLeft: time.Duration(st.TimeBound), ExperimentLength: st.ExperimentLength(), Slots: st.Slots}.Budget()
}

func (e *Engine) check(st *justrunit.Study) error {
	switch {
	case e.Runner == nil:
		return fmt.Errorf("study engine: no runner")
	case e.Strategy == nil:
		return fmt.Errorf("study engine: no strategy")
	case e.Interpolator == nil:
		return fmt.Errorf("study engine: no interpolator")
	}
	return st.Validate()
}

// loop asks the strategy for points, runs them in up to st.Slots goroutines,
// and records results until the strategy is done or something fails. It
// returns how many experiments the time bound cut short: those measured
// nothing, and do not fail the study.
//
// It keeps the overhead of each slot, which is not charged to the bound (see
// Grace): the setup before the first planning, then what each experiment on
// the slot took beyond its nominal length, from the planning that started
// it to the end of the bookkeeping of its result. A free slot's time left is
// the bound's plus its overhead, at most the grace: with one slot, exactly
// the bound less the nominal length of each experiment run (or less the
// time it took, when a window ended early). The strategy is offered the
// free slots whose time left holds an experiment, with the most time left
// of them, and its points go to those slots, most time left first.
func (e *Engine) loop(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, deadline time.Time, log *slog.Logger) (cut int, _ error) {
	// Experiments may not run past the time bound and its grace.
	l, grace := st.ExperimentLength(), Grace(st)
	runCtx, cancel := context.WithDeadline(ctx, deadline.Add(grace))
	defer cancel()
	results := make(chan result)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // stop running experiments before waiting for them

	var running []justrunit.Point
	var last *justrunit.Observation
	var firstErr error
	planned := 0
	overhead := make([]time.Duration, st.Slots) // by slot
	extra := make([]time.Duration, st.Slots)    // what its experiments took beyond l, by slot
	runs := make([]int, st.Slots)               // its experiments, by slot
	busy := make([]bool, st.Slots)
	var handled *result // the result whose bookkeeping just ended
	for first := true; ; first = false {
		// One reading of the clock for the overhead and the time left, so
		// that they add up to the bound exactly.
		now := time.Now()
		switch {
		case first:
			for i := range overhead {
				overhead[i] = now.Sub(st.Started)
			}
		case handled != nil:
			x := max(now.Sub(handled.begun)-l, 0)
			overhead[handled.slot] += x
			extra[handled.slot] += x
			runs[handled.slot]++
			busy[handled.slot] = false
			handled = nil
		}
		if firstErr == nil && ctx.Err() == nil {
			// The free slots that hold another experiment, most time left
			// first: within the bound (less the slot's overhead up to
			// the grace), and, with what the slot's experiments took
			// beyond their length so far, before the experiments are
			// stopped at the bound and its grace (the last would be cut).
			var free []int
			for i := range busy {
				var expect time.Duration
				if runs[i] > 0 {
					expect = extra[i] / time.Duration(runs[i])
				}
				if !busy[i] && deadline.Sub(now)+min(overhead[i], grace) >= l && deadline.Add(grace).Sub(now) >= l+expect {
					free = append(free, i)
				}
			}
			slices.SortStableFunc(free, func(a, b int) int { return cmp.Compare(overhead[b], overhead[a]) })
			ps := justrunit.PlanState{
				Matrix:           m,
				Running:          running,
				ExperimentLength: l,
				Slots:            st.Slots,
				Free:             len(free),
				SLA:              st.SLA,
			}
			if len(free) > 0 {
				ps.TimeLeft = deadline.Sub(now) + min(overhead[free[0]], grace)
			}
			var next []justrunit.Point
			if ps.Free > 0 {
				var err error
				// Planning stops with the experiments, at the bound and its grace.
				next, err = e.Strategy.Next(runCtx, ps)
				switch {
				case err != nil && ctx.Err() == nil && runCtx.Err() != nil:
					next = nil // the bound ended the planning: nothing more fits
				case err != nil:
					firstErr = fmt.Errorf("plan next experiments: %w", err)
					next = nil
				case len(next) > ps.Free:
					firstErr = fmt.Errorf("strategy %s returned %d points for %d free slots", e.Strategy.Name(), len(next), ps.Free)
					next = nil
				}
				if firstErr != nil {
					cancel() // the study has failed: stop the running experiments
				}
			}
			for i, p := range next {
				p := append(justrunit.Point(nil), p...)
				running = append(running, p)
				slot := free[i]
				busy[slot] = true
				wg.Add(1)
				go func() {
					defer wg.Done()
					obs, err := e.Runner.Run(runCtx, p)
					results <- result{point: p, obs: obs, err: err, slot: slot, begun: now}
				}()
				log.Info("experiment started", keyPoint, st.Space.Format(p))
			}
			if len(next) > 0 {
				planned = st.Experiments + len(ps.Running) + e.Strategy.Estimate(ps)
				e.report(st, running, last, planned, deadline)
			}
		}
		if len(running) == 0 {
			break
		}
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			cancel()
			r = <-results
		}
		running = removePoint(running, r.point)
		handled = &r
		switch {
		case r.err == nil:
		case ctx.Err() != nil && r.err != nil:
			// Cancelled with the study, not failed, whatever the
			// experiment made of it (a window cut short says deadline).
			continue
		case firstErr != nil && errors.Is(r.err, context.Canceled):
			continue // stopped because the study had already failed
		case errors.Is(r.err, justrunit.ErrTooFewSamples) && !errors.Is(r.err, context.DeadlineExceeded):
			// The whole window ran and the clone answered (almost)
			// nothing: a fact about the point, not a failure of the study.
			where := st.Space.Format(r.point)
			if err := m.MarkUnmeasurable(r.point, r.err.Error()); err != nil && firstErr == nil {
				firstErr = fmt.Errorf("experiment at %s: %w", where, err)
				cancel()
				continue
			}
			st.Experiments++
			log.Warn("experiment measured nothing", keyPoint, where, keyErr, r.err)
			ev := newEvent(st, justrunit.EventExperimentUnmeasurable, "warn",
				fmt.Sprintf("experiment at %s measured nothing (saturated, or no traffic): %v", where, r.err), map[string]any{keyPoint: where})
			if err := e.persist(context.WithoutCancel(ctx), st, m, justrunit.Result{Events: []*justrunit.Event{ev}}); err != nil && firstErr == nil {
				firstErr = err
				cancel()
			}
			e.report(st, running, last, planned, deadline)
			continue
		case ctx.Err() == nil && errors.Is(r.err, context.DeadlineExceeded) && time.Until(deadline.Add(grace)) < cutMargin:
			cut++
			where := st.Space.Format(r.point)
			log.Warn("experiment cut by the time bound", keyPoint, where, keyErr, r.err)
			e.event(ctx, st, justrunit.EventExperimentCut, "warn",
				fmt.Sprintf("experiment at %s cut short by the time bound, not measured: %v", where, r.err), map[string]any{keyPoint: where})
			e.report(st, running, last, planned, deadline)
			continue
		}
		// Store what was measured even while the study is being cancelled.
		if err := e.record(context.WithoutCancel(ctx), st, m, r, log); err != nil && firstErr == nil {
			firstErr = err
			cancel() // stop the other experiments: the study has failed
		}
		if r.err == nil {
			last = &r.obs
		}
		e.report(st, running, last, planned, deadline)
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return cut, firstErr
}

// record stores one experiment's outcome.
func (e *Engine) record(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, r result, log *slog.Logger) error {
	where := st.Space.Format(r.point)
	if r.err != nil {
		log.Warn("experiment failed", keyPoint, where, keyErr, r.err)
		e.event(ctx, st, justrunit.EventExperimentFailed, "error", fmt.Sprintf("experiment at %s failed: %v", where, r.err), nil)
		return fmt.Errorf("experiment at %s: %w", where, r.err)
	}
	r.obs.Point = r.point
	if err := m.Record(r.obs); err != nil {
		return fmt.Errorf("record experiment at %s: %w", where, err)
	}
	st.Experiments++
	log.Info("experiment done", keyPoint, where, "samples", r.obs.Samples, "p95_ms", r.obs.RT.P95, "throughput", r.obs.Throughput, "offered", r.obs.Offered, "stop", r.obs.Stop)
	level, msg := "info", fmt.Sprintf("measured %s: p95 %.2f ms, %.1f req/s (%s)", where, r.obs.RT.P95, r.obs.Throughput, r.obs.Stop)
	if r.obs.Saturated {
		level, msg = "warn", msg+fmt.Sprintf("; saturated: %.1f req/s offered, so its response times understate", r.obs.Offered)
	}
	ev := newEvent(st, justrunit.EventExperimentDone, level, msg, map[string]any{keyPoint: where, "saturated": r.obs.Saturated})
	return e.persist(ctx, st, m, justrunit.Result{Observations: []justrunit.Observation{r.obs}, Events: []*justrunit.Event{ev}})
}

// persist keeps the stored matrix and study current so readers see
// progress, recording them with the observations and events of rest (an
// experiment's) in one transaction: a reader never sees an observation
// without its matrix cells or the study's count of it, nor does a crash
// leave one. The interpolation is redone on a copy so the strategy's view
// stays exactly what was measured. Without a Store it does nothing.
func (e *Engine) persist(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, rest justrunit.Result) error {
	if e.Store == nil {
		return nil
	}
	snap := m.Clone()
	if len(snap.Measured()) > 0 {
		if err := e.Interpolator.Interpolate(snap); err != nil {
			return fmt.Errorf("interpolate: %w", err)
		}
	}
	rest.Study, rest.Matrix = st, snap
	if err := e.Store.RecordResult(ctx, st.ID, rest); err != nil {
		return fmt.Errorf("store experiment: %w", err)
	}
	return nil
}

// event stores an event on its own: one that records no result (a study
// starting, an experiment failing or cut short). A failure to store it is
// logged, not returned: the study goes on without it.
func (e *Engine) event(ctx context.Context, st *justrunit.Study, kind, level, msg string, data map[string]any) {
	if e.Store == nil {
		return
	}
	if err := e.Store.AddEvent(ctx, newEvent(st, kind, level, msg, data)); err != nil {
		e.logger().Warn("store event", keyStudy, st.ID, keyErr, err)
	}
}

func newEvent(st *justrunit.Study, kind, level, msg string, data map[string]any) *justrunit.Event {
	return &justrunit.Event{StudyID: st.ID, Kind: kind, Level: level, Message: msg, Data: data}
}

func (e *Engine) report(st *justrunit.Study, running []justrunit.Point, last *justrunit.Observation, planned int, deadline time.Time) {
	if e.Progress == nil {
		return
	}
	left := time.Until(deadline)
	var grace time.Duration
	if left <= 0 {
		grace = max(left+Grace(st), 0)
	}
	e.Progress(Progress{
		Study:     st,
		Done:      st.Experiments,
		Planned:   max(planned, st.Experiments+len(running)),
		Running:   append([]justrunit.Point(nil), running...),
		TimeLeft:  max(left, 0),
		GraceLeft: grace,
		Last:      last,
	})
}

func (e *Engine) logger() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.Default()
}

func levelOf(err error) string {
	if err != nil {
		return "error"
	}
	return "info"
}

func removePoint(ps []justrunit.Point, p justrunit.Point) []justrunit.Point {
	for i, q := range ps {
		if q.Equal(p) {
			return append(ps[:i:i], ps[i+1:]...)
		}
	}
	return ps
}
