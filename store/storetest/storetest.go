// Package storetest is the conformance suite every justrunit.Store
// implementation runs, and the fixtures it is built from: a study with a
// numeric and a categorical parameter, and a matrix holding every cell
// provenance. An implementation's tests call Run with a function that opens
// a fresh, empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// Space returns a space with a numeric parameter (cpu, 5 values) and a
// categorical one (hostclass: old, new).
func Space(t testing.TB) justrunit.Space {
	t.Helper()
	sp, err := justrunit.NewSpace(
		justrunit.Parameter{Name: "cpu", Unit: "%", Values: []float64{20, 40, 60, 80, 100}},
		justrunit.Parameter{Name: "hostclass", Values: []float64{0, 1}, Labels: []string{"old", "new"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// Study returns a valid study over Space with every field set except ID,
// Created, State, Owner, Finished, Error and Experiments. Started is in a
// non-UTC zone with nanoseconds, to catch stores that drop either.
func Study(t testing.TB) *justrunit.Study {
	return &justrunit.Study{
		Name:           "app tier p95",
		Target:         "auction/app-1",
		Space:          Space(t),
		Metrics:        []justrunit.Metric{justrunit.Throughput, justrunit.RTP95, justrunit.EnergyPerRequest},
		SLA:            &justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
		TimeBound:      justrunit.Duration(10 * time.Minute),
		WarmUp:         justrunit.Duration(5 * time.Second),
		Window:         justrunit.Duration(1500 * time.Millisecond),
		Slots:          2,
		Strategy:       "sla",
		Interpolator:   "linear",
		CheckThreshold: 0.1,
		MinSamples:     50,
		Started:        time.Date(2026, 11, 25, 13, 5, 1, 123456789, time.FixedZone("CET", 3600)),
	}
}

// SameStudy reports a test error unless got equals want, comparing times by
// instant (a store may return them in another zone, without a monotonic
// reading).
func SameStudy(t testing.TB, got, want *justrunit.Study) {
	t.Helper()
	for _, tt := range []struct {
		name      string
		got, want time.Time
	}{{"Created", got.Created, want.Created}, {"Started", got.Started, want.Started}, {"Finished", got.Finished, want.Finished}} {
		if !tt.got.Equal(tt.want) || tt.got.IsZero() != tt.want.IsZero() {
			t.Errorf("study %s %s = %v, want %v", want.ID, tt.name, tt.got, tt.want)
		}
	}
	g, w := *got, *want
	g.Created, g.Started, g.Finished = time.Time{}, time.Time{}, time.Time{}
	w.Created, w.Started, w.Finished = time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("study %s:\n got %+v\nwant %+v", want.ID, g, w)
	}
}

// Matrix returns a matrix over sp holding cells of every provenance (X, I,
// T, V and empty), and the observations recorded in it, in order.
func Matrix(t testing.TB, sp justrunit.Space, metrics []justrunit.Metric) (*justrunit.Matrix, []justrunit.Observation) {
	t.Helper()
	m, err := justrunit.NewMatrix(sp, metrics)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Rows) < 5 {
		t.Fatalf("storetest.Matrix needs a space of at least 5 points, got %d", len(m.Rows))
	}
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	obs := func(p justrunit.Point, rt float64) justrunit.Observation {
		return justrunit.Observation{
			Point: p, Start: start, WarmUp: justrunit.Duration(5 * time.Second), Window: justrunit.Duration(30 * time.Second),
			Samples: 3000, Errors: 2, Throughput: 100,
			RT: justrunit.ResponseTime{Mean: rt / 2, P50: rt / 3, P95: rt, P99: rt * 1.5, Max: rt * 3, P95Low: rt - 1, P95High: rt + 1},
			Energy: justrunit.Energy{Joules: 900, PerRequest: 0.3, Watts: 30, Source: justrunit.EnergyModel,
				Model: "linear std: idle 100 W, max 200 W", Utilisation: 0.42},
			MatchRate: 0.99, Dropped: 1, Offered: 49.5, NextTier: &justrunit.ResponseTime{Mean: 2, P50: 1.5, P95: 6, P99: 9, Max: 12}, Stop: "converged", Clone: "cold", Source: "local",
		}
	}
	var measured []justrunit.Observation
	for _, i := range []int{0, len(m.Rows) - 1} { // X
		o := obs(m.Rows[i].Point, 80-float64(i))
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
		measured = append(measured, o)
	}
	for i := 1; i <= 3; i++ { // I; the rest stay empty
		for j := range m.Rows[i].Cells {
			m.Rows[i].Cells[j] = justrunit.Cell{Value: 50 + float64(i), Prov: justrunit.Interpolated, Uncertainty: 1.5}
		}
	}
	mt := metrics[len(metrics)-1]
	for _, i := range []int{1, 2} { // T
		if _, err := m.Use(m.Rows[i].Point, mt); err != nil {
			t.Fatal(err)
		}
	}
	v := obs(m.Rows[2].Point, 55)
	if _, err := m.Verify(v, mt); err != nil { // V
		t.Fatal(err)
	}
	measured = append(measured, v)
	counts := m.Counts()
	for _, p := range []justrunit.Provenance{justrunit.Measured, justrunit.Interpolated, justrunit.Used, justrunit.Verified, justrunit.Empty} {
		if counts[p] == 0 {
			t.Fatalf("storetest.Matrix has no %s cell: %v", p, counts)
		}
	}
	return m, measured
}

// PollEvents reads s's events until it has seen at least want of them,
// reading at least once, checks that their IDs only increase, and returns
// how many it saw. It gives up when ctx is done.
func PollEvents(ctx context.Context, s justrunit.Store, want int) (int, error) {
	var after int64
	seen := 0
	for first := true; first || seen < want; first = false {
		evs, err := s.Events(ctx, justrunit.EventFilter{AfterID: after})
		if err != nil {
			return seen, err
		}
		for _, e := range evs {
			if e.ID <= after {
				return seen, fmt.Errorf("event IDs out of order: %d after %d", e.ID, after)
			}
			after = e.ID
			seen++
		}
		if err := ctx.Err(); err != nil {
			return seen, err
		}
	}
	return seen, nil
}

// Run runs the conformance suite, each test against a fresh, empty store
// from open (which should close it in t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) justrunit.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s justrunit.Store)
	}{
		{"StudyRoundTrip", testStudyRoundTrip},
		{"Errors", testErrors},
		{"StudiesNewestFirst", testStudiesNewestFirst},
		{"MatrixRoundTrip", testMatrixRoundTrip},
		{"RecordsOrder", testRecordsOrder},
		{"Events", testEvents},
		{"Concurrent", testConcurrent},
		{"RecordResult", testRecordResult},
		{"RecordResultAllOrNothing", testRecordResultAllOrNothing},
		{"Export", testExport},
		{"ExportConsistent", testExportConsistent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

func testStudyRoundTrip(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatalf("CreateStudy = %v", err)
	}
	if st.ID == "" {
		t.Error("CreateStudy left ID empty")
	}
	if st.Created.IsZero() || time.Since(st.Created) > time.Minute {
		t.Errorf("CreateStudy set Created = %v, want about now", st.Created)
	}
	got, err := s.Study(ctx, st.ID)
	if err != nil {
		t.Fatalf("Study(%s) = %v", st.ID, err)
	}
	SameStudy(t, got, st)
	if p := got.Space.Params[1]; !p.Categorical() || p.Format(1) != "new" {
		t.Errorf("categorical parameter lost: %+v", p)
	}

	// Update every mutable field.
	upd := *got
	upd.State = justrunit.StudyDone
	upd.Owner = "1234@somewhere"
	upd.Finished = upd.Started.Add(90 * time.Second)
	upd.Error = "partly"
	upd.Experiments = 7
	upd.SLA = nil
	upd.Metrics = []justrunit.Metric{justrunit.RTP99}
	upd.MinSamples = 0
	if err := s.UpdateStudy(ctx, &upd); err != nil {
		t.Fatalf("UpdateStudy = %v", err)
	}
	got, err = s.Study(ctx, st.ID)
	if err != nil {
		t.Fatalf("Study(%s) = %v", st.ID, err)
	}
	SameStudy(t, got, &upd)

	// A study with a given ID, no SLA and no metrics.
	bare := &justrunit.Study{ID: "mine.1", Target: "x", Space: Space(t), State: justrunit.StudyFailed}
	if err := s.CreateStudy(ctx, bare); err != nil {
		t.Fatalf("CreateStudy(%s) = %v", bare.ID, err)
	}
	got, err = s.Study(ctx, "mine.1")
	if err != nil {
		t.Fatalf("Study(mine.1) = %v", err)
	}
	SameStudy(t, got, bare)
}

func testErrors(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	st := Study(t)
	st.ID = "dup"
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	again := Study(t)
	again.ID, again.Name = "dup", "second"
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"CreateStudy(existing ID)", s.CreateStudy(ctx, again), justrunit.ErrExists},
		{"UpdateStudy(unknown)", s.UpdateStudy(ctx, &justrunit.Study{ID: "nope", Target: "x"}), justrunit.ErrNotFound},
		{"Study(unknown)", func() error { _, err := s.Study(ctx, "nope"); return err }(), justrunit.ErrNotFound},
		{"Matrix(unknown study)", func() error { _, err := s.Matrix(ctx, "nope"); return err }(), justrunit.ErrNotFound},
		{"Matrix(none saved)", func() error { _, err := s.Matrix(ctx, "dup"); return err }(), justrunit.ErrNotFound},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s = %v, want an error wrapping %v", tt.name, tt.err, tt.want)
		}
	}
	got, err := s.Study(ctx, "dup")
	if err != nil {
		t.Fatal(err)
	}
	SameStudy(t, got, st) // the failed create changed nothing
}

func testStudiesNewestFirst(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		id  string
		age time.Duration
	}{{"b", 2 * time.Hour}, {"a", time.Hour}, {"c", 3 * time.Hour}, {"d", 0}} {
		st := Study(t)
		st.ID, st.Created = tt.id, base.Add(-tt.age)
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.Studies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, st := range list {
		ids = append(ids, st.ID)
	}
	if want := []string{"d", "a", "b", "c"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("Studies() = %v, want %v", ids, want)
	}
}

func testMatrixRoundTrip(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, _ := Matrix(t, st.Space, st.Metrics)
	first := m.Clone()
	first.Rows[0].Cells[0].Value = -1
	if err := s.SaveMatrix(ctx, st.ID, first); err != nil {
		t.Fatalf("SaveMatrix = %v", err)
	}
	if err := s.SaveMatrix(ctx, st.ID, m); err != nil { // replaces the first
		t.Fatalf("SaveMatrix = %v", err)
	}
	got, err := s.Matrix(ctx, st.ID)
	if err != nil {
		t.Fatalf("Matrix = %v", err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("Matrix(%s) differs from the saved one:\n got %+v\nwant %+v", st.ID, got, m)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Matrix(%s).Validate() = %v", st.ID, err)
	}
}

func testRecordsOrder(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		st := Study(t)
		st.ID = id
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		for _, id := range []string{"a", "b"} {
			o := justrunit.Observation{Point: justrunit.Point{float64(20 * (i + 1)), 0}, Throughput: float64(i), Stop: id}
			if err := s.AddObservation(ctx, id, o); err != nil {
				t.Fatalf("AddObservation(%s) = %v", id, err)
			}
			c := justrunit.CheckResult{StudyID: id, Point: o.Point, Metric: justrunit.RTP95, Predicted: float64(i), Measured: 1,
				Passed: i%2 == 0, Time: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)}
			if err := s.AddCheck(ctx, c); err != nil {
				t.Fatalf("AddCheck(%s) = %v", id, err)
			}
		}
	}
	for _, id := range []string{"a", "b"} {
		obs, err := s.Observations(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		checks, err := s.Checks(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(obs) != 5 || len(checks) != 5 {
			t.Fatalf("study %s: %d observations, %d checks, want 5 each", id, len(obs), len(checks))
		}
		for i := range obs {
			if obs[i].Throughput != float64(i) || obs[i].Stop != id {
				t.Errorf("Observations(%s)[%d] = %+v, want throughput %d of study %s", id, i, obs[i], i, id)
			}
			c := checks[i]
			if c.StudyID != id || c.Predicted != float64(i) || c.Passed != (i%2 == 0) || c.Time.Second() != i || !c.Point.Equal(obs[i].Point) {
				t.Errorf("Checks(%s)[%d] = %+v", id, i, c)
			}
		}
	}
}

func testEvents(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	at := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	in := []justrunit.Event{
		{StudyID: "a", Kind: justrunit.EventStudyStarted, Level: "info", Message: "go"},
		{StudyID: "a", Kind: justrunit.EventExperimentDone, Level: "info", Data: map[string]any{"point": "cpu=20", "p95": 48.5}},
		{StudyID: "b", Kind: justrunit.EventStudyStarted, Level: "info", Time: at},
		{Kind: "manager.plan", Level: "warn", Message: "not about a study"},
		{StudyID: "a", Kind: justrunit.EventCheckFailed, Level: "error", Data: map[string]any{"rel_error": 0.25, "ok": false}},
		{StudyID: "a", Kind: justrunit.EventExperimentDone, Level: "info"},
	}
	var ids []int64
	for i := range in {
		e := &in[i]
		if err := s.AddEvent(ctx, e); err != nil {
			t.Fatalf("AddEvent(%s) = %v", e.Kind, err)
		}
		if e.ID == 0 || (len(ids) > 0 && e.ID <= ids[len(ids)-1]) {
			t.Fatalf("AddEvent set ID %d after %v", e.ID, ids)
		}
		if e.Time.IsZero() {
			t.Errorf("AddEvent left Time zero")
		}
		ids = append(ids, e.ID)
	}
	if !in[2].Time.Equal(at) {
		t.Errorf("AddEvent changed a given Time to %v", in[2].Time)
	}
	pick := func(idx ...int) []int64 {
		var out []int64
		for _, i := range idx {
			out = append(out, ids[i])
		}
		return out
	}
	tests := []struct {
		name string
		f    justrunit.EventFilter
		want []int64
	}{
		{"all", justrunit.EventFilter{}, ids},
		{"study", justrunit.EventFilter{StudyID: "a"}, pick(0, 1, 4, 5)},
		{"kind", justrunit.EventFilter{Kind: justrunit.EventStudyStarted}, pick(0, 2)},
		{"study and kind", justrunit.EventFilter{StudyID: "a", Kind: justrunit.EventExperimentDone}, pick(1, 5)},
		{"after", justrunit.EventFilter{AfterID: ids[2]}, pick(3, 4, 5)},
		{"limit", justrunit.EventFilter{Limit: 2}, pick(0, 1)},
		{"study, after and limit", justrunit.EventFilter{StudyID: "a", AfterID: ids[0], Limit: 2}, pick(1, 4)},
		{"none", justrunit.EventFilter{StudyID: "zzz"}, nil},
		{"family", justrunit.EventFilter{Kind: "study.*"}, pick(0, 2)},
		{"other family", justrunit.EventFilter{Kind: "manager.*"}, pick(3)},
		{"family and study", justrunit.EventFilter{Kind: "experiment.*", StudyID: "a", AfterID: ids[1]}, pick(5)},
		{"not a family", justrunit.EventFilter{Kind: "manager*"}, nil},
		{"newest", justrunit.EventFilter{Newest: true, Limit: 2}, pick(4, 5)},
		{"newest of a study", justrunit.EventFilter{StudyID: "b", Newest: true, Limit: 5}, pick(2)},
		{"newest after", justrunit.EventFilter{Newest: true, AfterID: ids[3]}, pick(4, 5)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Events(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var gotIDs []int64
			for _, e := range got {
				gotIDs = append(gotIDs, e.ID)
			}
			if !reflect.DeepEqual(gotIDs, tt.want) {
				t.Errorf("Events(%+v) IDs = %v, want %v", tt.f, gotIDs, tt.want)
			}
		})
	}
	all, err := s.Events(ctx, justrunit.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range all {
		w := in[i]
		if !e.Time.Equal(w.Time) {
			t.Errorf("event %d Time = %v, want %v", e.ID, e.Time, w.Time)
		}
		e.Time, w.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(e, w) {
			t.Errorf("event %d:\n got %+v\nwant %+v", e.ID, e, w)
		}
	}
}

// testConcurrent has goroutines write observations, events, matrices and
// study updates while others read; run it under -race.
func testConcurrent(t *testing.T, s justrunit.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, _ := Matrix(t, st.Space, st.Metrics)

	const writers, perWriter = 4, 25
	var wg, readers sync.WaitGroup
	done := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Go(func() {
			for i := 0; i < perWriter; i++ {
				if err := s.AddObservation(ctx, st.ID, justrunit.Observation{Throughput: float64(w*perWriter + i)}); err != nil {
					t.Errorf("writer %d: AddObservation = %v", w, err)
					return
				}
				if err := s.AddEvent(ctx, &justrunit.Event{StudyID: st.ID, Kind: justrunit.EventExperimentDone}); err != nil {
					t.Errorf("writer %d: AddEvent = %v", w, err)
					return
				}
				if i%5 == 0 {
					if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
						t.Errorf("writer %d: SaveMatrix = %v", w, err)
						return
					}
					cp := *st
					cp.Experiments = i
					if err := s.UpdateStudy(ctx, &cp); err != nil {
						t.Errorf("writer %d: UpdateStudy = %v", w, err)
						return
					}
				}
			}
		})
	}
	for r := 0; r < 4; r++ {
		readers.Go(func() {
			lastObs := 0
			for {
				select {
				case <-done:
					return
				default:
				}
				obs, err := s.Observations(ctx, st.ID)
				if err != nil {
					t.Errorf("reader %d: Observations = %v", r, err)
					return
				}
				if len(obs) < lastObs {
					t.Errorf("reader %d: %d observations after %d", r, len(obs), lastObs)
				}
				lastObs = len(obs)
				if _, err := PollEvents(ctx, s, 0); err != nil {
					t.Errorf("reader %d: %v", r, err)
					return
				}
				if _, err := s.Study(ctx, st.ID); err != nil {
					t.Errorf("reader %d: Study = %v", r, err)
					return
				}
				if _, err := s.Studies(ctx); err != nil {
					t.Errorf("reader %d: Studies = %v", r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()

	obs, err := s.Observations(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs) != writers*perWriter {
		t.Errorf("%d observations stored, want %d", len(obs), writers*perWriter)
	}
	if n, err := PollEvents(ctx, s, writers*perWriter); err != nil || n != writers*perWriter {
		t.Errorf("%d events stored (%v), want %d", n, err, writers*perWriter)
	}
}

// Parts returns a result holding one of each part for the study st: st
// itself with Experiments 1 (compare with SameStudy), an observation, a
// check with its StudyID left empty, a matrix over st's space and an
// event with only its kind and message set.
func Parts(t testing.TB, st *justrunit.Study) justrunit.Result {
	t.Helper()
	m, obs := Matrix(t, st.Space, st.Metrics)
	upd := *st
	upd.State, upd.Experiments = justrunit.StudyRunning, 1
	return justrunit.Result{
		Study:        &upd,
		Observations: obs[:1],
		Checks: []justrunit.CheckResult{{Point: obs[0].Point, Metric: justrunit.RTP95, Predicted: 52, Measured: 55,
			RelError: 0.05, Threshold: 0.1, Passed: true, Time: time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)}},
		Matrix: m,
		Events: []*justrunit.Event{{Kind: justrunit.EventExperimentDone, Message: "measured"}},
	}
}

func testRecordResult(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordResult(ctx, st.ID, justrunit.Result{}); err != nil {
		t.Errorf("RecordResult(empty) = %v", err)
	}
	r := Parts(t, st)
	ev := r.Events[0]
	if err := s.RecordResult(ctx, st.ID, r); err != nil {
		t.Fatalf("RecordResult = %v", err)
	}
	if ev.ID == 0 || ev.Time.IsZero() || ev.Level != "info" || ev.StudyID != st.ID {
		t.Errorf("RecordResult left the event %+v; want its ID, Time, Level (info) and StudyID set", *ev)
	}
	// A second result appends its observations, checks and events, and
	// replaces the matrix and study.
	r2 := Parts(t, st)
	r2.Study.Experiments = 2
	r2.Matrix.Rows[3].Cells[0].Value = -7
	r2.Checks[0].StudyID = st.ID
	r2.Events[0].Level = "warn"
	if err := s.RecordResult(ctx, st.ID, r2); err != nil {
		t.Fatalf("RecordResult (second) = %v", err)
	}
	if r2.Events[0].ID <= ev.ID || r2.Events[0].Level != "warn" {
		t.Errorf("second event = %+v, want an ID above %d and level warn as given", *r2.Events[0], ev.ID)
	}

	got, err := s.Study(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	SameStudy(t, got, r2.Study)
	m, err := s.Matrix(ctx, st.ID)
	if err != nil || !reflect.DeepEqual(m, r2.Matrix) {
		t.Errorf("Matrix after RecordResult = %+v, %v; want the second result's", m, err)
	}
	obs, err := s.Observations(ctx, st.ID)
	if err != nil || len(obs) != 2 || !reflect.DeepEqual(obs[0], r.Observations[0]) {
		t.Errorf("Observations after RecordResult = %d (%v), want 2, the first %+v", len(obs), err, r.Observations[0])
	}
	checks, err := s.Checks(ctx, st.ID)
	want := r.Checks[0]
	want.StudyID = st.ID // an empty StudyID is the study's
	if err != nil || len(checks) != 2 || !reflect.DeepEqual(checks[0], want) {
		t.Errorf("Checks after RecordResult = %+v (%v), want 2, the first %+v", checks, err, want)
	}
	evs, err := s.Events(ctx, justrunit.EventFilter{StudyID: st.ID})
	if err != nil || len(evs) != 2 || evs[0].ID != ev.ID || evs[0].Kind != ev.Kind || evs[0].Message != ev.Message || !evs[0].Time.Equal(ev.Time) {
		t.Errorf("Events after RecordResult = %+v (%v), want 2, the first %+v", evs, err, *ev)
	}
}

// testRecordResultAllOrNothing records results one of whose parts fails,
// the others valid, and checks that none of them was stored: each failing
// part comes after the ones a store writing them one by one, in the
// Result's order, would have written first.
func testRecordResultAllOrNothing(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	other := Study(t)
	if err := s.CreateStudy(ctx, other); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		id    string
		spoil func(r *justrunit.Result)
		want  error
	}{
		{"matrix of another shape", st.ID, func(r *justrunit.Result) {
			r.Matrix = &justrunit.Matrix{Space: st.Space, Metrics: st.Metrics}
		}, justrunit.ErrInvalid},
		{"event without a kind", st.ID, func(r *justrunit.Result) {
			r.Events = append(r.Events, &justrunit.Event{Message: "no kind"})
		}, justrunit.ErrInvalid},
		{"nil event", st.ID, func(r *justrunit.Result) { r.Events = append(r.Events, nil) }, justrunit.ErrInvalid},
		{"event of another study", st.ID, func(r *justrunit.Result) {
			r.Events = append(r.Events, &justrunit.Event{StudyID: other.ID, Kind: justrunit.EventExperimentDone})
		}, justrunit.ErrInvalid},
		{"check of another study", st.ID, func(r *justrunit.Result) {
			c := r.Checks[0]
			c.StudyID = other.ID
			r.Checks = append(r.Checks, c)
		}, justrunit.ErrInvalid},
		{"study of another ID", st.ID, func(r *justrunit.Result) {
			cp := *other
			r.Study = &cp
		}, justrunit.ErrInvalid},
		{"unknown study", "nope", func(r *justrunit.Result) { r.Study.ID = "nope" }, justrunit.ErrNotFound},
		{"unknown study, events only", "nope", func(r *justrunit.Result) {
			*r = justrunit.Result{Events: r.Events}
		}, justrunit.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Parts(t, st)
			r.Study.Experiments = 99
			tt.spoil(&r)
			err := s.RecordResult(ctx, tt.id, r)
			if !errors.Is(err, tt.want) {
				t.Fatalf("RecordResult = %v, want an error wrapping %v", err, tt.want)
			}
			for i, e := range r.Events {
				if e != nil && e.ID != 0 {
					t.Errorf("failed RecordResult set events[%d].ID to %d", i, e.ID)
				}
			}
			for _, id := range []string{st.ID, other.ID, "nope"} {
				obs, err1 := s.Observations(ctx, id)
				checks, err2 := s.Checks(ctx, id)
				evs, err3 := s.Events(ctx, justrunit.EventFilter{StudyID: id})
				if err := errors.Join(err1, err2, err3); err != nil {
					t.Fatal(err)
				}
				if len(obs)+len(checks)+len(evs) > 0 {
					t.Errorf("failed RecordResult left study %s %d observations, %d checks, %d events", id, len(obs), len(checks), len(evs))
				}
				if _, err := s.Matrix(ctx, id); !errors.Is(err, justrunit.ErrNotFound) {
					t.Errorf("failed RecordResult left study %s a matrix (Matrix = %v)", id, err)
				}
			}
			for _, want := range []*justrunit.Study{st, other} {
				got, err := s.Study(ctx, want.ID)
				if err != nil {
					t.Fatal(err)
				}
				SameStudy(t, got, want)
			}
		})
	}
}

func testExport(t *testing.T, s justrunit.Store) {
	ctx := context.Background()
	if _, err := s.Export(ctx, "nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("Export(unknown) = %v, want an error wrapping %v", err, justrunit.ErrNotFound)
	}
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	e, err := s.Export(ctx, st.ID)
	if err != nil {
		t.Fatalf("Export(new study) = %v", err)
	}
	SameStudy(t, e.Study, st)
	if e.Matrix != nil || len(e.Observations)+len(e.Checks)+len(e.Events) > 0 {
		t.Errorf("Export(new study) = %+v, want no matrix, observations, checks or events", e)
	}
	r := Parts(t, st)
	if err := s.RecordResult(ctx, st.ID, r); err != nil {
		t.Fatal(err)
	}
	// Another study's records are not this one's.
	other := Study(t)
	if err := s.CreateStudy(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordResult(ctx, other.ID, Parts(t, other)); err != nil {
		t.Fatal(err)
	}
	e, err = s.Export(ctx, st.ID)
	if err != nil {
		t.Fatalf("Export = %v", err)
	}
	SameStudy(t, e.Study, r.Study)
	if !reflect.DeepEqual(e.Matrix, r.Matrix) {
		t.Errorf("Export matrix differs from the recorded one")
	}
	if !reflect.DeepEqual(e.Observations, r.Observations) {
		t.Errorf("Export observations = %+v, want %+v", e.Observations, r.Observations)
	}
	if len(e.Checks) != 1 || e.Checks[0].StudyID != st.ID || e.Checks[0].Predicted != r.Checks[0].Predicted {
		t.Errorf("Export checks = %+v, want the one recorded", e.Checks)
	}
	if len(e.Events) != 1 || e.Events[0].ID != r.Events[0].ID {
		t.Errorf("Export events = %+v, want the one recorded (ID %d)", e.Events, r.Events[0].ID)
	}
}

// testExportConsistent has a writer record experiments one result at a
// time (study count, observation, matrix and event together) while a reader
// exports the study: every export must hold as many observations as the
// study counts experiments, as the matrix says and as events say. Run it
// under -race.
func testExportConsistent(t *testing.T, s justrunit.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st := Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, obs := Matrix(t, st.Space, st.Metrics)
	const results = 40
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := 1; i <= results; i++ {
			upd := *st
			upd.Experiments = i
			mi := m.Clone()
			mi.Rows[3].Cells[0].Value = float64(i) // an I cell: the matrix's own count
			o := obs[0]
			o.Samples = int64(i)
			err := s.RecordResult(ctx, st.ID, justrunit.Result{Study: &upd, Observations: []justrunit.Observation{o}, Matrix: mi,
				Events: []*justrunit.Event{{Kind: justrunit.EventExperimentDone}}})
			if err != nil {
				t.Errorf("RecordResult %d = %v", i, err)
				return
			}
		}
	})
	check := func() bool {
		e, err := s.Export(ctx, st.ID)
		if err != nil {
			t.Errorf("Export = %v", err)
			return false
		}
		n := len(e.Observations)
		matrixN := 0
		if e.Matrix != nil {
			matrixN = int(e.Matrix.Rows[3].Cells[0].Value)
		}
		if e.Study.Experiments != n || matrixN != n || len(e.Events) != n || (n > 0 && e.Observations[n-1].Samples != int64(n)) {
			t.Errorf("Export while recording: %d observations, study counts %d experiments, matrix %d, %d events; want all equal",
				n, e.Study.Experiments, matrixN, len(e.Events))
			return false
		}
		return true
	}
	exports := 0
	for running := true; running; exports++ {
		select {
		case <-done:
			running = false
		default:
		}
		if !check() {
			break
		}
	}
	wg.Wait()
	if e, err := s.Export(ctx, st.ID); err != nil || len(e.Observations) != results {
		t.Errorf("Export after the writer = %d observations (%v), want %d", len(e.Observations), err, results)
	}
	t.Logf("%d exports during %d results", exports, results)
}
