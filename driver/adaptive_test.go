package driver

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

func rtCurve(p justrunit.Point) float64 { return 2000 / (p[0] + 10) }

func newAdaptive(t *testing.T, opts Options) *Adaptive {
	t.Helper()
	a, err := NewAdaptive(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// lineCurve is linear, so the nearest-neighbour double's uncertainty is
// honest on it (its error at distance d is 100d, its uncertainty d·|v| with
// |v| ≥ 100) and leave-one-out checks leave it as it is.
func lineCurve(p justrunit.Point) float64 { return 200 - p[0] }

func TestAdaptiveOrder(t *testing.T) {
	// With the nearest-neighbour double, relative uncertainty is the
	// normalised distance to the nearest measured point, so adaptive must
	// run the ends, then always the point farthest from what it measured,
	// until every point is within the target's distance of one.
	tests := []struct {
		name   string
		target float64
		slots  int
		want   []justrunit.Point
	}{
		{"target 0.15", 0.15, 1, pts1(0, 100, 50, 20, 70)},
		{"target 0.25", 0.25, 1, pts1(0, 100, 50)},
		// The ends alone leave nothing to check the interpolator against.
		{"target 0.6: the ends and one check", 0.6, 1, pts1(0, 100, 50)},
		{"target 0.15, 3 slots: spread, not clustered", 0.15, 3, pts1(0, 100, 50, 20, 70)},
		{"tiny target: everything", 1e-9, 1, pts1(0, 100, 50, 20, 70, 10, 30, 40, 60, 80, 90)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAdaptive(t, Options{Interpolator: nearest{}, UncertaintyTarget: tt.target})
			run := simulate(t, a, matrix(t, space(t, "cpu=0..100 step 10")), lineCurve,
				simConfig{slots: tt.slots, timeBound: time.Hour, expLen: time.Minute})
			if !slices.EqualFunc(run.order, tt.want, justrunit.Point.Equal) {
				t.Errorf("adaptive ran %v, want %v", values(run.order, 0), values(tt.want, 0))
			}
		})
	}
}

func TestAdaptiveBatchBelievesItsPicks(t *testing.T) {
	// The ends are measured; three free slots must go to three different
	// gaps (50, then 20 and 70), not to 40, 50 and 60 around the widest one.
	s := space(t, "cpu=0..100 step 10")
	m := matrix(t, s)
	record(t, m, lineCurve, pts1(0, 100)...)
	a := newAdaptive(t, Options{Interpolator: nearest{}, UncertaintyTarget: 0.01})
	st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 3, Free: 3}
	got, err := a.Next(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if want := pts1(50, 20, 70); !slices.EqualFunc(got, want, justrunit.Point.Equal) {
		t.Errorf("Next = %v, want %v", got, want)
	}
	// A running point counts as about to be measured.
	st.Running, st.Free = pts1(50), 1
	got, err = a.Next(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if want := pts1(20); !slices.EqualFunc(got, want, justrunit.Point.Equal) {
		t.Errorf("Next with cpu=50 running = %v, want %v", got, want)
	}
}

func TestAdaptiveCorners(t *testing.T) {
	tests := []struct {
		name   string
		params []string
		want   int // corners
	}{
		{"2d", []string{"cpu=10..100 step 10", "freq=1.2,1.8,2.4"}, 4},
		{"3d", []string{"a=1..10 step 1", "b=1..10 step 1", "c=1..10 step 1"}, 8},
		{"categorical: every label", []string{"cpu=10..100 step 10", "hostclass=old,mid,new"}, 6},
		{"single value", []string{"cpu=10..100 step 10", "mem=512"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := space(t, tt.params...)
			// A loose target: adaptive stops soon after the corners (once
			// one more point has checked the interpolator).
			a := newAdaptive(t, Options{Interpolator: nearest{}, UncertaintyTarget: 100})
			run := simulate(t, a, matrix(t, s), rtCurve, simConfig{slots: 2, timeBound: time.Hour, expLen: time.Minute})
			if len(run.order) <= tt.want || len(run.order) > tt.want+2 {
				t.Fatalf("adaptive ran %d points, want the %d corners and a check: %v", len(run.order), tt.want, run.order)
			}
			for _, p := range run.order[:tt.want] {
				for d, v := range p {
					par := s.Params[d]
					if !par.Categorical() && v != par.Values[0] && v != par.Values[len(par.Values)-1] {
						t.Errorf("%s is not a corner", s.Format(p))
					}
				}
			}
		})
	}
}

func TestAdaptiveStopsAtTheTimeBound(t *testing.T) {
	s := space(t, "a=1..10 step 1", "b=1..10 step 1", "c=1..10 step 1")
	a := newAdaptive(t, Options{Interpolator: nearest{}, UncertaintyTarget: 1e-9})
	for _, slots := range []int{1, 4} {
		run := simulate(t, a, matrix(t, s), func(p justrunit.Point) float64 { return p[0] + p[1]*p[2] },
			simConfig{slots: slots, timeBound: 6*time.Minute + 59*time.Second, expLen: time.Minute})
		if want := 6 * slots; len(run.order) != want {
			t.Errorf("slots %d: adaptive ran %d experiments in 6 rounds, want %d", slots, len(run.order), want)
		}
	}
}

func TestAdaptiveMetric(t *testing.T) {
	s := space(t, "cpu=0..100 step 10")
	m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.Throughput, justrunit.RTP99})
	if err != nil {
		t.Fatal(err)
	}
	// Without rt_p95 in the matrix and no SLA, the first metric.
	a := newAdaptive(t, Options{Interpolator: nearest{}})
	if j, err := a.column(m, nil); err != nil || j != 0 {
		t.Errorf("column() = %d, %v; want 0 (the first metric)", j, err)
	}
	if j, err := a.column(m, &justrunit.SLA{Metric: justrunit.RTP99, Max: 50}); err != nil || j != 1 {
		t.Errorf("column(SLA on rt_p99) = %d, %v; want 1", j, err)
	}
	a = newAdaptive(t, Options{Interpolator: nearest{}, Metric: justrunit.RTP95})
	_, err = a.Next(context.Background(), justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 1, Free: 1})
	if fieldOf(err) != "metric" {
		t.Errorf("Next with a metric the matrix lacks = %v, want an error on metric", err)
	}
}

func TestAdaptiveInterpolatorBehaviour(t *testing.T) {
	s := space(t, "cpu=0..100 step 10")
	boom := errors.New("boom")
	ten := func(justrunit.Point) float64 { return 10 }
	tests := []struct {
		name     string
		interp   justrunit.Interpolator
		f        curve
		measured []justrunit.Point
		want     []justrunit.Point
		wantErr  error
	}{
		{"no uncertainty, nothing to check it against: go on", fixedInterp{value: 10, fill: true}, ten, pts1(0, 100), pts1(10, 20), nil},
		{"no uncertainty, confirmed by a measurement: stop", fixedInterp{value: 10, fill: true}, ten, pts1(0, 100, 50), nil, nil},
		{"no uncertainty, refuted by a measurement: go on", fixedInterp{value: 10, fill: true}, rtCurve, pts1(0, 100, 50), pts1(10, 20), nil},
		{"fills nothing: empty cells are least sure", fixedInterp{}, rtCurve, pts1(0, 100), pts1(10, 20), nil},
		{"fails: the error comes back", fixedInterp{err: boom}, rtCurve, pts1(0, 100), nil, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(t, s)
			record(t, m, tt.f, tt.measured...)
			a := newAdaptive(t, Options{Interpolator: tt.interp})
			got, err := a.Next(context.Background(), justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 2, Free: 2})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Next = %v, want error %v", err, tt.wantErr)
			}
			if !slices.EqualFunc(got, tt.want, justrunit.Point.Equal) {
				t.Errorf("Next = %v, want %v", got, tt.want)
			}
		})
	}
}

// overconfident is a test-double interpolator: nearest, claiming a
// hundredth of its uncertainty.
type overconfident struct{}

func (overconfident) Name() string { return "overconfident" }

func (overconfident) Interpolate(m *justrunit.Matrix) error {
	if err := (nearest{}).Interpolate(m); err != nil {
		return err
	}
	for i := range m.Rows {
		for j := range m.Rows[i].Cells {
			if c := &m.Rows[i].Cells[j]; c.Prov == justrunit.Interpolated {
				c.Uncertainty /= 100
			}
		}
	}
	return nil
}

func TestAdaptiveChecksTheInterpolator(t *testing.T) {
	// Taken at its word, the overconfident interpolator would stop adaptive
	// at the two ends; checked against held-out measurements, it stops
	// where the honest one does.
	s := space(t, "cpu=0..100 step 5")
	cfg := simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute}
	for _, target := range []float64{0.3, 0.15} {
		honest := simulate(t, newAdaptive(t, Options{Interpolator: nearest{}, UncertaintyTarget: target}), matrix(t, s), rtCurve, cfg)
		over := simulate(t, newAdaptive(t, Options{Interpolator: overconfident{}, UncertaintyTarget: target}), matrix(t, s), rtCurve, cfg)
		if len(over.order) <= 2 || len(over.order) != len(honest.order) {
			t.Errorf("target %v: overconfident ran %v, honest %v; want as many", target, values(over.order, 0), values(honest.order, 0))
		}
	}
}

func TestAdaptiveWaitsForItsFirstMeasurement(t *testing.T) {
	m := matrix(t, space(t, "cpu=0..100 step 10"))
	a := newAdaptive(t, Options{Interpolator: nearest{}})
	got, err := a.Next(context.Background(), justrunit.PlanState{Matrix: m, Running: pts1(0, 100),
		TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 4, Free: 2})
	if err != nil || len(got) != 0 {
		t.Errorf("Next with both ends running and nothing measured = %v, %v; want to wait", got, err)
	}
}

func TestRelUncertainty(t *testing.T) {
	tests := []struct {
		c     justrunit.Cell
		scale float64
		want  float64
	}{
		{justrunit.Cell{Value: 50, Uncertainty: 5, Prov: justrunit.Interpolated}, 100, 0.1},
		{justrunit.Cell{Value: -50, Uncertainty: 5, Prov: justrunit.Interpolated}, 100, 0.1},
		{justrunit.Cell{Value: 0, Uncertainty: 1e-3, Prov: justrunit.Interpolated}, 1000, 1}, // floored at 1e-6 of the scale
		{justrunit.Cell{Value: 0, Uncertainty: 0, Prov: justrunit.Interpolated}, 0, 0},
	}
	for _, tt := range tests {
		if got := relUncertainty(tt.c, tt.scale); got != tt.want {
			t.Errorf("relUncertainty(%+v, %v) = %v, want %v", tt.c, tt.scale, got, tt.want)
		}
	}
	if got := relUncertainty(justrunit.Cell{Prov: justrunit.Empty}, 1); got <= 1e300 {
		t.Errorf("relUncertainty(empty) = %v, want +Inf", got)
	}
}
