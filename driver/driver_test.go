package driver

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantField string // "" means no error
	}{
		{"grid", Options{}, ""},
		{"adaptive", Options{Interpolator: nearest{}}, ""},
		{"adaptive", Options{Interpolator: nearest{}, Metric: justrunit.RTP99, UncertaintyTarget: 0.1}, ""},
		{"sla", Options{}, ""},
		{"sla", Options{Axis: "cpu"}, ""},
		{"random", Options{}, "strategy"},
		{"", Options{}, "strategy"},
		{"adaptive", Options{}, "interpolator"},
		{"adaptive", Options{Interpolator: nearest{}, Metric: "latency"}, "metric"},
		{"adaptive", Options{Interpolator: nearest{}, UncertaintyTarget: -0.1}, "uncertainty_target"},
		{"adaptive", Options{Interpolator: nearest{}, UncertaintyTarget: math.NaN()}, "uncertainty_target"},
		{"sla", Options{Axis: "cpu=10"}, "axis"},
	}
	for _, tt := range tests {
		s, err := New(tt.name, tt.opts)
		if tt.wantField == "" {
			if err != nil {
				t.Errorf("New(%q, %+v) = %v, want no error", tt.name, tt.opts, err)
				continue
			}
			if s.Name() != tt.name {
				t.Errorf("New(%q).Name() = %q", tt.name, s.Name())
			}
			continue
		}
		if !errors.Is(err, justrunit.ErrInvalid) || fieldOf(err) != tt.wantField {
			t.Errorf("New(%q, %+v) = %v, want a FieldError on %q", tt.name, tt.opts, err, tt.wantField)
		}
	}
	_, err := New("random", Options{})
	if want := "unknown; known: grid, adaptive, sla"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("New(random) = %v, want it to say %q", err, want)
	}
}

func TestNames(t *testing.T) {
	if got, want := Names(), []string{"grid", "adaptive", "sla"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	for _, n := range Names() {
		if _, err := New(n, Options{Interpolator: nearest{}}); err != nil {
			t.Errorf("New(%q): %v", n, err)
		}
	}
}

func TestAdaptiveDefaultTarget(t *testing.T) {
	a, err := NewAdaptive(Options{Interpolator: nearest{}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Target() != DefaultUncertaintyTarget {
		t.Errorf("Target() = %v, want %v", a.Target(), DefaultUncertaintyTarget)
	}
}

// TestStrategiesKeepTheContract runs every strategy over several spaces,
// slot counts and time bounds, round-based and asynchronous like the
// engine; simulate checks the Strategy contract on every call.
func TestStrategiesKeepTheContract(t *testing.T) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	spaces := []struct {
		name   string
		params []string
	}{
		{"1d", []string{"cpu=0..100 step 10"}},
		{"2d", []string{"cpu=20..100 step 20", "freq=1.2,1.8,2.4"}},
		{"3d-categorical", []string{"cpu=10..100 step 30", "mem=256,512", "hostclass=old,new"}},
	}
	// A smooth, monotone curve in cpu; freq and mem help a little; the new
	// host class is faster.
	f := func(s justrunit.Space) curve {
		return func(p justrunit.Point) float64 {
			v := 3000 / (p[s.Param("cpu")] + 5)
			if d := s.Param("freq"); d >= 0 {
				v /= p[d] / 1.2
			}
			if d := s.Param("hostclass"); d >= 0 && p[d] == 1 {
				v *= 0.7
			}
			return v
		}
	}
	const expLen = time.Minute
	for _, sp := range spaces {
		for _, name := range Names() {
			for _, slots := range []int{1, 3} {
				for _, bound := range []int{1, 2, 5, 1000} { // experiments per slot
					for _, async := range []bool{false, true} {
						s := space(t, sp.params...)
						strat, err := New(name, Options{Interpolator: nearest{}, UncertaintyTarget: 0.2})
						if err != nil {
							t.Fatal(err)
						}
						cfg := simConfig{slots: slots, timeBound: time.Duration(bound)*expLen + expLen/2, expLen: expLen, sla: sla}
						if async {
							cfg.durations = []float64{1, 0.5, 0.8, 0.3}
						}
						t.Run(strings.Join([]string{sp.name, name, strconv.Itoa(slots) + "slots", strconv.Itoa(bound) + "exp", map[bool]string{false: "rounds", true: "async"}[async]}, "/"), func(t *testing.T) {
							run := simulate(t, strat, matrix(t, s), f(s), cfg)
							if len(run.order) == 0 {
								t.Errorf("ran nothing with room for %d experiments", run.budget)
							}
							if name == NameGrid && !async && len(run.order) != min(s.Size(), run.budget) {
								t.Errorf("grid ran %d of %d points with a budget of %d", len(run.order), s.Size(), run.budget)
							}
						})
					}
				}
			}
		}
	}
}

func TestNextChecksPlanState(t *testing.T) {
	ctx := context.Background()
	m := matrix(t, space(t, "cpu=0..100 step 10"))
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	for _, name := range Names() {
		s, err := New(name, Options{Interpolator: nearest{}})
		if err != nil {
			t.Fatal(err)
		}
		ok := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 2, Free: 2, SLA: sla}

		st := ok
		st.Matrix = nil
		if _, err := s.Next(ctx, st); fieldOf(err) != "matrix" {
			t.Errorf("%s: Next without a matrix = %v, want an error on matrix", name, err)
		}
		st = ok
		st.ExperimentLength = 0
		if _, err := s.Next(ctx, st); fieldOf(err) != "experiment_length" {
			t.Errorf("%s: Next with no experiment length = %v, want an error on experiment_length", name, err)
		}
		st = ok
		st.TimeLeft = time.Minute - time.Second
		if pts, err := s.Next(ctx, st); err != nil || len(pts) != 0 {
			t.Errorf("%s: Next with less time than one experiment = %v, %v; want nothing", name, pts, err)
		}
		if got := s.Estimate(st); got != 0 {
			t.Errorf("%s: Estimate with less time than one experiment = %d, want 0", name, got)
		}
		st = ok
		st.Free = 0
		if pts, err := s.Next(ctx, st); err != nil || len(pts) != 0 {
			t.Errorf("%s: Next with no free slot = %v, %v; want nothing", name, pts, err)
		}
		st = ok
		st.Running = []justrunit.Point{{55}}
		if _, err := s.Next(ctx, st); !errors.Is(err, justrunit.ErrInvalid) {
			t.Errorf("%s: Next with a running point outside the space = %v, want ErrInvalid", name, err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Next(cctx, ok); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Next with a cancelled context = %v, want context.Canceled", name, err)
		}
	}
}
