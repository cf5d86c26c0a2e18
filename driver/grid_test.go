package driver

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

func flat(p justrunit.Point) float64 { return 10 }

func TestAxisLevels(t *testing.T) {
	tests := []struct {
		param string
		want  []int
	}{
		{"cpu=50", []int{0}},
		{"cpu=50,100", []int{0, 0}},
		{"cpu=0..100 step 50", []int{0, 1, 0}},
		{"cpu=0..100 step 10", []int{0, 3, 2, 3, 4, 1, 3, 2, 3, 4, 0}},
		{"hostclass=a,b,c,d", []int{0, 0, 0, 0}},
	}
	for _, tt := range tests {
		p, err := justrunit.ParseParameter(tt.param)
		if err != nil {
			t.Fatal(err)
		}
		if got := axisLevels(p); !slices.Equal(got, tt.want) {
			t.Errorf("axisLevels(%s) = %v, want %v", tt.param, got, tt.want)
		}
	}
}

func TestRefinementOrderIsAPermutation(t *testing.T) {
	for _, params := range [][]string{
		{"cpu=1"},
		{"cpu=0..100 step 10"},
		{"cpu=0..100 step 25", "freq=1.2,1.8,2.4"},
		{"a=1..7 step 1", "b=1,2", "hostclass=x,y,z", "c=1..5 step 1"},
	} {
		s := space(t, params...)
		order := refinementOrder(s)
		seen := make([]bool, s.Size())
		for _, i := range order {
			if i < 0 || i >= s.Size() || seen[i] {
				t.Fatalf("refinementOrder(%v): index %d out of range or repeated", params, i)
			}
			seen[i] = true
		}
		if len(order) != s.Size() {
			t.Fatalf("refinementOrder(%v) has %d indexes, want %d", params, len(order), s.Size())
		}
		// The corners come first.
		c := corners(s)
		if !slices.Equal(order[:len(c)], c) {
			t.Errorf("refinementOrder(%v) starts %v, want the corners %v", params, order[:len(c)], c)
		}
	}
}

func TestGridOrder(t *testing.T) {
	tests := []struct {
		name   string
		params []string
		slots  int
		want   []justrunit.Point
	}{
		{"1d: ends, middle, then recursively", []string{"cpu=0..100 step 10"}, 1,
			pts1(0, 100, 50, 20, 70, 10, 30, 60, 80, 40, 90)},
		{"1d, 4 slots: the same order", []string{"cpu=0..100 step 10"}, 4,
			pts1(0, 100, 50, 20, 70, 10, 30, 60, 80, 40, 90)},
		{"2d: corners, then the 3x3 grid", []string{"cpu=0..100 step 50", "freq=1,2"}, 1,
			[]justrunit.Point{{0, 1}, {0, 2}, {100, 1}, {100, 2}, {50, 1}, {50, 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := space(t, tt.params...)
			run := simulate(t, NewGrid(), matrix(t, s), flat, simConfig{slots: tt.slots, timeBound: time.Hour, expLen: time.Minute})
			if !slices.EqualFunc(run.order, tt.want, justrunit.Point.Equal) {
				t.Errorf("grid ran %v, want %v", run.order, tt.want)
			}
			if run.estimate != s.Size() {
				t.Errorf("Estimate = %d, want %d", run.estimate, s.Size())
			}
		})
	}
}

func TestGridCoversEverythingGivenTime(t *testing.T) {
	s := space(t, "cpu=10..100 step 10", "freq=1.2,1.8,2.4", "hostclass=old,new")
	for _, slots := range []int{1, 2, 7} {
		m := matrix(t, s)
		run := simulate(t, NewGrid(), m, flat, simConfig{slots: slots, timeBound: 24 * time.Hour, expLen: time.Minute})
		if len(run.order) != s.Size() || len(m.Measured()) != s.Size() {
			t.Errorf("slots %d: grid ran %d, measured %d of %d points", slots, len(run.order), len(m.Measured()), s.Size())
		}
		if want := (s.Size() + slots - 1) / slots; run.rounds != want {
			t.Errorf("slots %d: %d rounds, want %d (every slot busy)", slots, run.rounds, want)
		}
	}
}

func TestGridCutShortSamplesTheWholeSpace(t *testing.T) {
	s := space(t, "cpu=0..100 step 10", "mem=128..1024 step 128")
	m := matrix(t, s)
	run := simulate(t, NewGrid(), m, flat, simConfig{slots: 2, timeBound: 5*time.Minute + 30*time.Second, expLen: time.Minute})
	if len(run.order) != 10 {
		t.Fatalf("grid ran %d experiments in 5 rounds of 2 slots, want 10", len(run.order))
	}
	// Corners first, then the centre lines.
	want := []justrunit.Point{{0, 128}, {0, 1024}, {100, 128}, {100, 1024}}
	if !slices.EqualFunc(run.order[:4], want, justrunit.Point.Equal) {
		t.Errorf("grid started with %v, want the corners %v", run.order[:4], want)
	}
	if !slices.Contains(values(run.order, 0), 50) {
		t.Errorf("grid cut short never ran cpu=50: %v", run.order)
	}
}

func TestGridSkipsRunningAndMeasured(t *testing.T) {
	s := space(t, "cpu=0..100 step 10")
	m := matrix(t, s)
	record(t, m, flat, justrunit.Point{0})
	st := justrunit.PlanState{Matrix: m, Running: pts1(100), TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 3, Free: 2}
	got, err := NewGrid().Next(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if want := pts1(50, 20); !slices.EqualFunc(got, want, justrunit.Point.Equal) {
		t.Errorf("Next = %v, want %v", got, want)
	}
	if got, want := NewGrid().Estimate(st), 9; got != want {
		t.Errorf("Estimate = %d, want %d (11 points, 1 measured, 1 running)", got, want)
	}
	// The returned points are copies: changing them leaves the matrix alone.
	got[0][0] = -1
	if m.Rows[5].Point[0] != 50 {
		t.Errorf("changing a returned point changed the matrix")
	}
}

func TestGridSharedAcrossSpaces(t *testing.T) {
	g := NewGrid()
	a := matrix(t, space(t, "cpu=0..100 step 50"))
	b := matrix(t, space(t, "cpu=0..100 step 25"))
	st := func(m *justrunit.Matrix) justrunit.PlanState {
		return justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 5, Free: 5}
	}
	for range 2 {
		pa, _ := g.Next(context.Background(), st(a))
		pb, _ := g.Next(context.Background(), st(b))
		if !slices.EqualFunc(pa, pts1(0, 100, 50), justrunit.Point.Equal) || !slices.EqualFunc(pb, pts1(0, 100, 50, 25, 75), justrunit.Point.Equal) {
			t.Fatalf("one Grid over two spaces: %v and %v", pa, pb)
		}
	}
}

func pts1(vs ...float64) []justrunit.Point {
	out := make([]justrunit.Point, len(vs))
	for i, v := range vs {
		out[i] = justrunit.Point{v}
	}
	return out
}
