package driver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// This file holds the test doubles (an interpolator and a workload curve,
// both outside the unit under test) and a simulator of the study engine's
// planning loop.

// nearest is a test-double interpolator: every unmeasured cell takes the
// value of the nearest measured cell of its column (normalised L1 distance
// over value indexes, ties to the lower flat index), and its uncertainty is
// that distance times the value — so the relative uncertainty adaptive sees
// is exactly the normalised distance to the nearest measurement.
type nearest struct{}

func (nearest) Name() string { return "nearest" }

func (nearest) Interpolate(m *justrunit.Matrix) error {
	dims := m.Space.Dims()
	coords := make([][]int, len(m.Rows))
	for i := range m.Rows {
		coords[i] = m.Space.Coords(i)
	}
	for j := range m.Metrics {
		var meas []int
		for i, r := range m.Rows {
			if r.Cells[j].Prov.HasMeasurement() {
				meas = append(meas, i)
			}
		}
		if len(meas) == 0 {
			return fmt.Errorf("nearest: %w: no measured cell", justrunit.ErrInvalid)
		}
		for i := range m.Rows {
			c := &m.Rows[i].Cells[j]
			if c.Prov.HasMeasurement() || c.Prov == justrunit.Used {
				continue
			}
			best, bestD := -1, math.Inf(1)
			for _, k := range meas {
				d := 0.0
				for a := range dims {
					d += math.Abs(float64(coords[i][a]-coords[k][a])) / math.Max(1, float64(dims[a]-1))
				}
				if d < bestD {
					best, bestD = k, d
				}
			}
			v := m.Rows[best].Cells[j].Value
			*c = justrunit.Cell{Value: v, Prov: justrunit.Interpolated, Uncertainty: bestD * math.Abs(v)}
		}
	}
	return nil
}

// fixedInterp is a test-double interpolator that fills every blank cell
// with value and uncertainty unc, or fails with err.
type fixedInterp struct {
	value, unc float64
	err        error
	fill       bool
}

func (f fixedInterp) Name() string { return "fixed" }

func (f fixedInterp) Interpolate(m *justrunit.Matrix) error {
	if f.err != nil {
		return f.err
	}
	if !f.fill {
		return nil
	}
	for i := range m.Rows {
		for j := range m.Rows[i].Cells {
			if c := &m.Rows[i].Cells[j]; c.Prov == justrunit.Empty || c.Prov == justrunit.Interpolated {
				*c = justrunit.Cell{Value: f.value, Prov: justrunit.Interpolated, Uncertainty: f.unc}
			}
		}
	}
	return nil
}

// curve gives a point's p95 response time in ms: the known workload the
// double runner "measures".
type curve func(p justrunit.Point) float64

func observe(p justrunit.Point, f curve) justrunit.Observation {
	v := f(p)
	return justrunit.Observation{
		Point:      append(justrunit.Point(nil), p...),
		Window:     justrunit.Duration(time.Minute),
		Samples:    1000,
		Throughput: 500,
		RT:         justrunit.ResponseTime{Mean: 0.6 * v, P50: 0.5 * v, P95: v, P99: 1.3 * v, Max: 2 * v},
		Source:     "test curve",
	}
}

func space(t testing.TB, params ...string) justrunit.Space {
	t.Helper()
	var ps []justrunit.Parameter
	for _, s := range params {
		p, err := justrunit.ParseParameter(s)
		if err != nil {
			t.Fatalf("ParseParameter(%q): %v", s, err)
		}
		ps = append(ps, p)
	}
	sp, err := justrunit.NewSpace(ps...)
	if err != nil {
		t.Fatalf("NewSpace: %v", err)
	}
	return sp
}

func matrix(t testing.TB, s justrunit.Space) *justrunit.Matrix {
	t.Helper()
	m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.Throughput, justrunit.RTP95})
	if err != nil {
		t.Fatalf("NewMatrix: %v", err)
	}
	return m
}

func record(t testing.TB, m *justrunit.Matrix, f curve, pts ...justrunit.Point) {
	t.Helper()
	for _, p := range pts {
		if err := m.Record(observe(p, f)); err != nil {
			t.Fatalf("Record(%v): %v", p, err)
		}
	}
}

// simRun is what a simulated study did.
type simRun struct {
	order    []justrunit.Point // points in the order they started
	rounds   int               // Next calls that returned points
	estimate int               // Estimate at the start
	budget   int               // Budget at the start
}

// simConfig describes a simulated study.
type simConfig struct {
	slots     int
	timeBound time.Duration
	expLen    time.Duration
	sla       *justrunit.SLA
	// durations, when set, makes the simulation asynchronous like the study
	// engine: experiment k takes durations[k%len] × expLen (each ≤ 1: a
	// window may end early, never late), and Next is called whenever a slot
	// is free, with the running points.
	durations []float64
	// observe, when set, makes the observation of a point from the curve
	// in place of observe (whose curve is the p95).
	observe func(justrunit.Point, curve) justrunit.Observation
}

// simulate runs s over m the way the study engine does, recording an
// observation from f for every point it asks for, and checks the Strategy
// contract on every call: at most Free points, none measured, running or
// repeated, none started when it cannot finish within the time bound, and
// in total no more than the budget at the start and the estimate at the
// start.
func simulate(t *testing.T, s justrunit.Strategy, m *justrunit.Matrix, f curve, cfg simConfig) simRun {
	t.Helper()
	ctx := context.Background()
	state := func(now time.Duration, running []justrunit.Point) justrunit.PlanState {
		return justrunit.PlanState{
			Matrix: m, Running: running, TimeLeft: cfg.timeBound - now, ExperimentLength: cfg.expLen,
			Slots: cfg.slots, Free: cfg.slots - len(running), SLA: cfg.sla,
		}
	}
	rec := func(p justrunit.Point) { record(t, m, f, p) }
	if cfg.observe != nil {
		rec = func(p justrunit.Point) {
			t.Helper()
			if err := m.Record(cfg.observe(p, f)); err != nil {
				t.Fatalf("Record(%v): %v", p, err)
			}
		}
	}
	st0 := state(0, nil)
	run := simRun{estimate: s.Estimate(st0), budget: st0.Budget()}
	if run.estimate > run.budget || run.estimate < 0 {
		t.Fatalf("%s: Estimate = %d, budget %d", s.Name(), run.estimate, run.budget)
	}
	type exp struct {
		p   justrunit.Point
		end time.Duration
	}
	var running []exp
	now := time.Duration(0)
	started := map[int]bool{}
	for step := 0; ; step++ {
		if step > 100000 {
			t.Fatalf("%s: no end after %d steps", s.Name(), step)
		}
		var rp []justrunit.Point
		for _, e := range running {
			rp = append(rp, e.p)
		}
		st := state(now, rp)
		var next []justrunit.Point
		if st.Free > 0 {
			var err error
			next, err = s.Next(ctx, st)
			if err != nil {
				t.Fatalf("%s: Next: %v", s.Name(), err)
			}
		}
		if len(next) > st.Free {
			t.Fatalf("%s: Next returned %d points for %d free slots", s.Name(), len(next), st.Free)
		}
		if len(next) > 0 {
			run.rounds++
			if st.TimeLeft < cfg.expLen {
				t.Fatalf("%s: Next returned %v with %v left, experiments take %v", s.Name(), next, st.TimeLeft, cfg.expLen)
			}
		}
		for _, p := range next {
			i, err := m.Space.IndexOf(p)
			if err != nil {
				t.Fatalf("%s: Next returned a point outside the space: %v", s.Name(), err)
			}
			if started[i] {
				t.Fatalf("%s: Next returned %s, already measured or running", s.Name(), m.Space.Format(p))
			}
			started[i] = true
			d := cfg.expLen
			if len(cfg.durations) > 0 {
				d = time.Duration(cfg.durations[len(run.order)%len(cfg.durations)] * float64(cfg.expLen))
			}
			running = append(running, exp{p: p, end: now + d})
			run.order = append(run.order, p)
		}
		if len(running) == 0 {
			break
		}
		if len(cfg.durations) == 0 {
			// Round-based: every experiment of the round ends together.
			now = running[0].end
			for _, e := range running {
				rec(e.p)
			}
			running = nil
			continue
		}
		// Asynchronous: the earliest experiment ends.
		k := 0
		for i, e := range running {
			if e.end < running[k].end {
				k = i
			}
		}
		now = running[k].end
		rec(running[k].p)
		running = append(running[:k], running[k+1:]...)
	}
	// The budget and the estimate assume every experiment takes its full
	// length; experiments that end early leave room for more.
	full := !slices.ContainsFunc(cfg.durations, func(d float64) bool { return d < 1 })
	if full && len(run.order) > run.budget {
		t.Errorf("%s: ran %d experiments, budget %d", s.Name(), len(run.order), run.budget)
	}
	if full && len(run.order) > run.estimate {
		t.Errorf("%s: ran %d experiments, Estimate said %d", s.Name(), len(run.order), run.estimate)
	}
	if now > cfg.timeBound {
		t.Errorf("%s: the last experiment ended at %v, past the time bound %v", s.Name(), now, cfg.timeBound)
	}
	return run
}

// values returns the value of parameter d at each point.
func values(pts []justrunit.Point, d int) []float64 {
	out := make([]float64, len(pts))
	for i, p := range pts {
		out[i] = p[d]
	}
	return out
}

func fieldOf(err error) string {
	var fe *justrunit.FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	return ""
}
