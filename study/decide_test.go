package study

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

// TestUseAndCheck marks two interpolated cells as used by a decision and
// checks them: on the knee curve, linear interpolation is far off at 40%
// (between 1 s at 20% and 50 ms at 60%) and within 20% at 80%.
func TestUseAndCheck(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	st := newStudy(t, "grid", 1, 1, 1)
	st.Window, st.TimeBound, st.CheckThreshold = 1e9, 10e9, 0.2
	if err := store.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	r := &curveRunner{rt: knee}
	e := newEngine(t, st, r, store)
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{20, 60, 100} {
		o, _ := r.Run(ctx, justrunit.Point{cpu})
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Interpolator.Interpolate(m); err != nil {
		t.Fatal(err)
	}
	// A metric the matrix does not record: nothing is marked.
	if _, err := e.Use(ctx, st, m, justrunit.Point{40}, justrunit.RTP95, justrunit.Power); err == nil {
		t.Fatal("Use of an unrecorded metric: no error")
	}
	if c, _ := m.Cell(justrunit.Point{40}, justrunit.RTP95); c.Prov != justrunit.Interpolated {
		t.Fatalf("cell cpu=40 after a failed Use = %+v, want still interpolated", c)
	}
	for _, cpu := range []float64{40, 80} {
		cells, err := e.Use(ctx, st, m, justrunit.Point{cpu}, justrunit.RTP95)
		if err != nil || cells[0].Prov != justrunit.Used {
			t.Fatalf("Use(cpu=%v) = %+v, %v; want a T cell", cpu, cells, err)
		}
	}
	stale, _ := m.Cell(justrunit.Point{30}, justrunit.RTP95)
	var alerts []justrunit.CheckResult
	results, err := e.Check(ctx, st, m, func(c justrunit.CheckResult) { alerts = append(alerts, c) })
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 {
		t.Fatalf("Check returned %d results, want 2: %+v", len(results), results)
	}
	for _, res := range results {
		wantPass := res.Point[0] == 80
		if res.Passed != wantPass {
			t.Errorf("check at cpu=%v: passed=%v (error %.2f), want %v", res.Point[0], res.Passed, res.RelError, wantPass)
		}
		c, _ := m.Cell(res.Point, justrunit.RTP95)
		if c.Prov != justrunit.Verified || c.Value != knee(res.Point[0]) {
			t.Errorf("cell at cpu=%v after check = %+v, want V with the measured %v", res.Point[0], c, knee(res.Point[0]))
		}
	}
	if len(alerts) != 1 || alerts[0].Point[0] != 40 {
		t.Errorf("alerts = %+v, want one for cpu=40", alerts)
	}
	// cpu=40's measurement missed its interpolation: cpu=30, between it
	// and cpu=20, is filled again from it.
	if c, _ := m.Cell(justrunit.Point{30}, justrunit.RTP95); c.Prov != justrunit.Interpolated || c.Value == stale.Value {
		t.Errorf("cell cpu=30 after the checks = %+v, want interpolated again (was %v)", c, stale.Value)
	}
	stored, err := store.Checks(ctx, st.ID)
	if err != nil || len(stored) != 2 {
		t.Errorf("stored checks = %+v, %v", stored, err)
	}
	evs, _ := store.Events(ctx, justrunit.EventFilter{StudyID: st.ID, Kind: justrunit.EventCheckFailed})
	if len(evs) != 1 {
		t.Errorf("check.failed events = %+v, want 1", evs)
	}
	sm, _ := store.Matrix(ctx, st.ID)
	if sm == nil || sm.Counts()[justrunit.Verified] != 2 {
		t.Errorf("stored matrix lacks the V cells")
	}
}

// TestCheckCountsExperiments checks that the checker's experiments count in
// the study with a store and without one.
func TestCheckCountsExperiments(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		ctx := context.Background()
		st := newStudy(t, "grid", 1, 1, 1)
		st.Window, st.TimeBound = 1e9, 10e9
		var store justrunit.Store
		if withStore {
			s := openStore(t)
			if err := s.CreateStudy(ctx, st); err != nil {
				t.Fatal(err)
			}
			store = s
		}
		r := &curveRunner{rt: knee}
		e := newEngine(t, st, r, store)
		m, err := justrunit.NewMatrix(st.Space, st.Metrics)
		if err != nil {
			t.Fatal(err)
		}
		for _, cpu := range []float64{20, 100} {
			o, _ := r.Run(ctx, justrunit.Point{cpu})
			if err := m.Record(o); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Interpolator.Interpolate(m); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Use(ctx, st, m, justrunit.Point{60}, justrunit.RTP95); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Check(ctx, st, m, nil); err != nil {
			t.Fatal(err)
		}
		if st.Experiments != 1 {
			t.Errorf("store %v: %d experiments counted after one check, want 1", withStore, st.Experiments)
		}
	}
}

// TestCheckUnmeasurable: a checking experiment that measures too few
// responses is a failed check stored with its reason and a check.failed
// event saying it, not an error; the point is marked unmeasurable in the
// stored matrix and the experiment counts in the study.
func TestCheckUnmeasurable(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	st := newStudy(t, "grid", 1, 1, 1)
	st.Window, st.TimeBound = 1e9, 10e9
	if err := store.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	r := &curveRunner{rt: knee}
	e := newEngine(t, st, funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
		if p[0] == 60 {
			return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
		}
		return r.Run(ctx, p)
	}), store)
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{20, 100} {
		o, _ := r.Run(ctx, justrunit.Point{cpu})
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Interpolator.Interpolate(m); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Use(ctx, st, m, justrunit.Point{60}, justrunit.RTP95); err != nil {
		t.Fatal(err)
	}
	var alerts []justrunit.CheckResult
	results, err := e.Check(ctx, st, m, func(c justrunit.CheckResult) { alerts = append(alerts, c) })
	if err != nil {
		t.Fatalf("Check = %v, want the unmeasurable point as a failed check", err)
	}
	if len(results) != 1 || results[0].Passed || !strings.Contains(results[0].Reason, "0 successful responses") || len(alerts) != 1 {
		t.Errorf("Check = %+v (alerts %+v), want one failed check saying why", results, alerts)
	}
	if st.Experiments != 1 {
		t.Errorf("%d experiments counted, want the checking one", st.Experiments)
	}
	evs, _ := store.Events(ctx, justrunit.EventFilter{StudyID: st.ID, Kind: justrunit.EventCheckFailed})
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "0 successful responses") || strings.Contains(evs[0].Message, "measured 0") {
		t.Errorf("check.failed events = %+v, want one saying the point could not be measured", evs)
	}
	stored, err := store.Checks(ctx, st.ID)
	if err != nil || len(stored) != 1 || stored[0].Reason != results[0].Reason {
		t.Errorf("stored checks = %+v, %v; want the failed check with its reason", stored, err)
	}
	if sm, err := store.Matrix(ctx, st.ID); err != nil || len(sm.Unmeasurable()) != 1 {
		t.Errorf("stored matrix: unmeasurable %v, %v; want cpu=60", sm.Unmeasurable(), err)
	}
}

// TestCheckStoresObservations: the observation of every checking
// experiment that measured is stored with the study's, as Run stores its
// own; one that measured nothing stores none, and one that failed stores
// none and, as in Run, does not count.
func TestCheckStoresObservations(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	st := newStudy(t, "grid", 1, 1, 1)
	st.Window, st.TimeBound = 1e9, 10e9
	if err := store.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	r := &curveRunner{rt: knee}
	e := newEngine(t, st, funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
		switch p[0] {
		case 60:
			return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
		case 80:
			return justrunit.Observation{}, errors.New("clone crashed")
		}
		return r.Run(ctx, p)
	}), store)
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{20, 100} {
		o, _ := r.Run(ctx, justrunit.Point{cpu})
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Interpolator.Interpolate(m); err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{40, 60, 80} {
		if _, err := e.Use(ctx, st, m, justrunit.Point{cpu}, justrunit.RTP95); err != nil {
			t.Fatal(err)
		}
	}
	results, err := e.Check(ctx, st, m, nil)
	if err == nil || !strings.Contains(err.Error(), "clone crashed") || len(results) != 2 {
		t.Fatalf("Check = %+v, %v; want the checks at cpu=40 and 60 and the failure at 80", results, err)
	}
	obs, err := store.Observations(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs) != 1 || !obs[0].Point.Equal(justrunit.Point{40}) || obs[0].RT.P95 != knee(40) {
		t.Errorf("stored observations = %+v, want the checking experiment's at cpu=40", obs)
	}
	if st.Experiments != 2 {
		t.Errorf("%d experiments counted, want 2: the one measured and the one that measured nothing", st.Experiments)
	}
}
