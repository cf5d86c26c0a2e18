package study

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/store/sqlite"
)

// curveRunner is a test double for the experimenter: it "measures" response
// times from a known curve of the cpu share, taking hold to do so.
type curveRunner struct {
	rt      func(cpu float64) float64
	hold    time.Duration
	failAt  float64 // a cpu value whose experiment fails; 0 for none
	mu      sync.Mutex
	active  int
	maxSeen int
	runs    atomic.Int64
}

func (r *curveRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.runs.Add(1)
	r.mu.Lock()
	r.active++
	r.maxSeen = max(r.maxSeen, r.active)
	r.mu.Unlock()
	defer func() { r.mu.Lock(); r.active--; r.mu.Unlock() }()
	select {
	case <-time.After(r.hold):
	case <-ctx.Done():
		return justrunit.Observation{}, ctx.Err()
	}
	if p[0] == r.failAt {
		return justrunit.Observation{}, errors.New("clone crashed")
	}
	rt := r.rt(p[0])
	return justrunit.Observation{
		Point: p, Window: justrunit.Duration(r.hold), Samples: 1000, Throughput: 100,
		RT:     justrunit.ResponseTime{Mean: rt * 0.7, P50: rt * 0.6, P95: rt, P99: rt * 1.3},
		Energy: justrunit.Energy{PerRequest: 0.5, Source: justrunit.EnergyModel},
	}, nil
}

// knee is a response-time curve with a knee: saturated (1 s) at or below
// 40% of a core, 80 ms at 50%, 50 ms at 60%, 30 ms at a full core.
func knee(cpu float64) float64 {
	if cpu <= 40 {
		return 1000
	}
	return 20 + 600/(cpu-40)
}

func newStudy(t *testing.T, strategy string, window, bound time.Duration, slots int) *justrunit.Study {
	t.Helper()
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	return &justrunit.Study{
		Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTP95, justrunit.Throughput},
		SLA:     &justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
		Window:  justrunit.Duration(window), TimeBound: justrunit.Duration(bound),
		Slots: slots, Strategy: strategy, Interpolator: "linear", CheckThreshold: 0.1,
	}
}

func newEngine(t *testing.T, st *justrunit.Study, r justrunit.Runner, store justrunit.Store) *Engine {
	t.Helper()
	in, err := interp.New(st.Interpolator)
	if err != nil {
		t.Fatal(err)
	}
	strat, err := driver.New(st.Strategy, driver.Options{Interpolator: in})
	if err != nil {
		t.Fatal(err)
	}
	return &Engine{Runner: r, Strategy: strat, Interpolator: in, Store: store, Owner: sqlite.OwnerID(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSLAStudy runs the acceptance case of the engine: an SLA study of an
// 9-point cpu axis finds the least passing share in a few experiments, the
// rest interpolated, and everything is stored.
func TestSLAStudy(t *testing.T) {
	store := openStore(t)
	st := newStudy(t, "sla", 10*time.Millisecond, time.Minute, 1)
	r := &curveRunner{rt: knee, hold: time.Millisecond}
	var progress []Progress
	e := newEngine(t, st, r, store)
	e.Progress = func(p Progress) { progress = append(progress, p) }
	m, err := e.Run(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != justrunit.StudyDone || st.Experiments > 5 || st.Experiments < 2 {
		t.Fatalf("study state %s after %d experiments, want done after 2..5", st.State, st.Experiments)
	}
	c := m.Counts()
	if c[justrunit.Measured] != 2*st.Experiments || c[justrunit.Interpolated] != 2*(9-st.Experiments) || c[justrunit.Empty] != 0 {
		t.Errorf("matrix counts %v after %d experiments", c, st.Experiments)
	}
	p, ok, err := driver.LeastPassing(m, *st.SLA, "cpu")
	if err != nil || !ok {
		t.Fatalf("LeastPassing: %v %v", ok, err)
	}
	var want float64
	for cpu := 20.0; cpu <= 100; cpu += 10 {
		if knee(cpu) <= 50 {
			want = cpu
			break
		}
	}
	if p[0] != want {
		t.Errorf("least passing cpu = %v, want %v (curve %.1f ms there)", p[0], want, knee(want))
	}
	if len(progress) == 0 || progress[len(progress)-1].Done != st.Experiments {
		t.Errorf("progress reports: %+v", progress)
	}

	// Everything is in the store, also after reopening it.
	ctx := context.Background()
	got, err := store.Study(ctx, st.ID)
	if err != nil || got.State != justrunit.StudyDone || got.Experiments != st.Experiments {
		t.Fatalf("stored study = %+v, %v", got, err)
	}
	sm, err := store.Matrix(ctx, st.ID)
	if err != nil || sm.Counts()[justrunit.Measured] != c[justrunit.Measured] {
		t.Fatalf("stored matrix counts %v, %v", sm.Counts(), err)
	}
	obs, err := store.Observations(ctx, st.ID)
	if err != nil || len(obs) != st.Experiments {
		t.Errorf("stored %d observations, want %d (%v)", len(obs), st.Experiments, err)
	}
	evs, err := store.Events(ctx, justrunit.EventFilter{StudyID: st.ID})
	if err != nil || len(evs) != st.Experiments+2 || evs[0].Kind != justrunit.EventStudyStarted || evs[len(evs)-1].Kind != justrunit.EventStudyFinished {
		t.Errorf("events = %+v, %v", evs, err)
	}
}

// TestTimeBound checks that no experiment runs past the time bound, with one
// slot and with several run in parallel.
func TestTimeBound(t *testing.T) {
	for _, slots := range []int{1, 2, 3} {
		t.Run(fmt.Sprint("slots=", slots), func(t *testing.T) {
			hold := 40 * time.Millisecond
			bound := 150 * time.Millisecond // room for 3 rounds of slots
			st := newStudy(t, "grid", hold, bound, slots)
			r := &curveRunner{rt: knee, hold: hold}
			start := time.Now()
			m, err := newEngine(t, st, r, nil).Run(context.Background(), st)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if took > bound+100*time.Millisecond {
				t.Errorf("study took %v, time bound %v", took, bound)
			}
			if budget := 3 * slots; st.Experiments > budget {
				t.Errorf("ran %d experiments, budget %d", st.Experiments, budget)
			}
			if r.maxSeen > slots {
				t.Errorf("%d experiments ran at once, slots %d", r.maxSeen, slots)
			}
			if slots > 1 && r.maxSeen < 2 {
				t.Errorf("never ran experiments in parallel with %d slots", slots)
			}
			if got := len(m.Measured()); got != st.Experiments {
				t.Errorf("%d points measured, %d experiments", got, st.Experiments)
			}
		})
	}
}

// TestFailedExperiment checks that a failing experiment fails the study and
// keeps what was measured before it.
func TestFailedExperiment(t *testing.T) {
	store := openStore(t)
	st := newStudy(t, "grid", 10*time.Millisecond, time.Minute, 1)
	r := &curveRunner{rt: knee, hold: time.Millisecond, failAt: 60}
	m, err := newEngine(t, st, r, store).Run(context.Background(), st)
	if err == nil || !strings.Contains(err.Error(), "cpu=60") || !strings.Contains(err.Error(), "clone crashed") {
		t.Fatalf("Run error = %v, want one naming cpu=60 and the cause", err)
	}
	if st.State != justrunit.StudyFailed {
		t.Errorf("state = %s, want failed", st.State)
	}
	got, _ := store.Study(context.Background(), st.ID)
	if got == nil || got.State != justrunit.StudyFailed || got.Error == "" {
		t.Errorf("stored study = %+v", got)
	}
	if m == nil || len(m.Measured()) != st.Experiments {
		t.Errorf("matrix lost the measured points")
	}
}

// TestCancel checks that cancelling a study stops its experiments promptly
// and records it as cancelled; or as interrupted, when the cause is that its
// process stops (ErrInterrupted), with a study.interrupted event and no
// study.finished one. A stored study whose context ended before Run's first
// write is recorded so too, not left pending.
func TestCancel(t *testing.T) {
	stopping := fmt.Errorf("%w: the test's process stops", ErrInterrupted)
	for _, tt := range []struct {
		name      string
		cause     error
		before    bool // the study is stored pending and cancelled before Run
		state     justrunit.StudyState
		wantError string
		event     string
	}{
		{"cancelled", nil, false, justrunit.StudyCancelled, "context canceled", justrunit.EventStudyFinished},
		{"interrupted", stopping, false, justrunit.StudyInterrupted, stopping.Error(), justrunit.EventStudyInterrupted},
		{"cancelled before start", nil, true, justrunit.StudyCancelled, "context canceled", justrunit.EventStudyFinished},
		{"interrupted before start", stopping, true, justrunit.StudyInterrupted, stopping.Error(), justrunit.EventStudyInterrupted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := openStore(t)
			st := newStudy(t, "grid", time.Hour, 10*time.Hour, 2)
			r := &curveRunner{rt: knee, hold: time.Hour}
			ctx, cancel := context.WithCancelCause(context.Background())
			if tt.before {
				st.State = justrunit.StudyPending
				if err := store.CreateStudy(context.Background(), st); err != nil {
					t.Fatal(err)
				}
				cancel(tt.cause)
			} else {
				time.AfterFunc(50*time.Millisecond, func() { cancel(tt.cause) })
			}
			done := make(chan error, 1)
			go func() { _, err := newEngine(t, st, r, store).Run(ctx, st); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run error = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			got, _ := store.Study(context.Background(), st.ID)
			if got == nil || got.State != tt.state || !strings.Contains(got.Error, tt.wantError) || got.Finished.IsZero() {
				t.Errorf("stored study = %+v, want %s (%q) with its finish time", got, tt.state, tt.wantError)
			}
			for _, kind := range []string{justrunit.EventStudyFinished, justrunit.EventStudyInterrupted} {
				evs, err := store.Events(context.Background(), justrunit.EventFilter{StudyID: st.ID, Kind: kind})
				want := 0
				if kind == tt.event {
					want = 1
				}
				if err != nil || len(evs) != want {
					t.Errorf("%s events = %d (%v), want %d", kind, len(evs), err, want)
				}
			}
		})
	}
}

func TestInvalidStudy(t *testing.T) {
	st := newStudy(t, "grid", time.Minute, time.Second, 1)
	_, err := newEngine(t, st, &curveRunner{rt: knee}, nil).Run(context.Background(), st)
	if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "time_bound") {
		t.Errorf("Run error = %v, want an invalid time_bound", err)
	}
}

// funcRunner is a Runner made of a function.
type funcRunner func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error)

func (f funcRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	return f(ctx, p)
}

// TestCutByTimeBound checks that an experiment the time bound stops is not
// a failure: the study keeps what was measured and says what was cut; and
// that a study that measured nothing within its bound fails saying so.
func TestCutByTimeBound(t *testing.T) {
	window := 20 * time.Millisecond
	t.Run("AfterOne", func(t *testing.T) {
		store := openStore(t)
		// The first experiment measures at once; the second never ends by
		// itself, so the bound cuts it.
		st := newStudy(t, "grid", window, 500*time.Millisecond, 1)
		curve := &curveRunner{rt: knee}
		var calls atomic.Int64
		r := funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
			if calls.Add(1) == 1 {
				return curve.Run(ctx, p)
			}
			<-ctx.Done()
			return justrunit.Observation{}, ctx.Err()
		})
		m, err := newEngine(t, st, r, store).Run(context.Background(), st)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if st.State != justrunit.StudyDone || st.Experiments != 1 || len(m.Measured()) != 1 {
			t.Errorf("state %s, %d experiments, %d measured; want done, 1, 1", st.State, st.Experiments, len(m.Measured()))
		}
		evs, err := store.Events(context.Background(), justrunit.EventFilter{StudyID: st.ID})
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, ev := range evs {
			kinds[ev.Kind]++
		}
		if kinds[justrunit.EventExperimentCut] != 1 || kinds[justrunit.EventExperimentFailed] != 0 {
			t.Errorf("event kinds %v, want one %s and no %s", kinds, justrunit.EventExperimentCut, justrunit.EventExperimentFailed)
		}
	})
	for name, c := range map[string]struct {
		bound, hold time.Duration
		cut         string
	}{
		"OnlyCut": {bound: window + 20*time.Millisecond, hold: time.Hour, cut: "1 cut short"},
	} {
		t.Run(name, func(t *testing.T) {
			st := newStudy(t, "grid", window, c.bound, 1)
			_, err := newEngine(t, st, &curveRunner{rt: knee, hold: c.hold}, nil).Run(context.Background(), st)
			if !errors.Is(err, ErrNothingMeasured) || !strings.Contains(err.Error(), "time_bound") || !strings.Contains(err.Error(), c.cut) {
				t.Fatalf("Run error = %v, want %v naming time_bound and %q", err, ErrNothingMeasured, c.cut)
			}
			if st.State != justrunit.StudyFailed {
				t.Errorf("state %s, want failed", st.State)
			}
		})
	}
}

// overRunner is an experimenter whose every experiment takes its nominal
// length l and over more, as a real one does (its allocation is set, its
// clone checked), and is cut by its context's end.
func overRunner(l, over time.Duration) funcRunner {
	return func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
		select {
		case <-time.After(l + over):
		case <-ctx.Done():
			return justrunit.Observation{}, ctx.Err()
		}
		return justrunit.Observation{Point: p, Window: justrunit.Duration(l), Samples: 1000, Throughput: 100,
			RT: justrunit.ResponseTime{Mean: 7, P50: 6, P95: 10, P99: 13}}, nil
	}
}

// TestBoundRunsItsNominalExperiments: a time bound of N experiment lengths
// (warm-up + window) runs N experiments on each slot, whole, although each
// takes a little longer than its length; what they take beyond it runs the
// study past its bound, never by more than Grace. Overheads beyond the
// grace cost experiments rather than run the study longer. The clock is
// synctest's: the minutes pass at once.
func TestBoundRunsItsNominalExperiments(t *testing.T) {
	type run struct {
		n, slots             int
		warmUp, window, over time.Duration
		want                 int // experiments per slot
	}
	check := func(t *testing.T, c run) {
		l := c.warmUp + c.window
		st := newStudy(t, "grid", c.window, time.Duration(c.n)*l, c.slots)
		st.WarmUp = justrunit.Duration(c.warmUp)
		cpu, err := justrunit.ParseParameter("cpu=1..100 step 1")
		if err != nil {
			t.Fatal(err)
		}
		st.Space = justrunit.Space{Params: []justrunit.Parameter{cpu}}
		var started atomic.Int64
		run := overRunner(l, c.over)
		counted := funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
			started.Add(1)
			return run(ctx, p)
		})
		e := newEngine(t, st, counted, nil)
		var last Progress
		var lastAt time.Time
		e.Progress = func(p Progress) { last, lastAt = p, time.Now() }
		start := time.Now()
		if _, err := e.Run(context.Background(), st); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		// Past the bound, the last progress says what was left of the
		// grace when it was made: no more than the grace less how far
		// past the bound it came (as seen from here, which started the
		// clock first and saw the progress last; 2 ms for the real clock's
		// scheduling in between).
		if over := lastAt.Sub(start) - time.Duration(st.TimeBound); over > 0 && (last.TimeLeft != 0 || last.GraceLeft <= 0 || last.GraceLeft > Grace(st)-over+2*time.Millisecond) {
			t.Errorf("last progress %v past the bound: %v of the bound and %v of the grace (%v) left", over, last.TimeLeft, last.GraceLeft, Grace(st))
		}
		if n := started.Load(); n != int64(st.Experiments) {
			t.Errorf("%d experiments started, %d measured: the bound and its grace cut some", n, st.Experiments)
		}
		if want := c.want * c.slots; st.Experiments != want {
			t.Errorf("%d experiments of %v (taking %v more each) in a bound of %v on %d slot(s), want %d",
				st.Experiments, l, c.over, st.TimeBound, c.slots, want)
		}
		if limit := time.Duration(st.TimeBound) + Grace(st); took > limit {
			t.Errorf("the study took %v, more than its bound %v and grace %v", took, st.TimeBound, Grace(st))
		}
	}
	for name, c := range map[string]run{
		"5m of 1m experiments":      {5, 1, 10 * time.Second, 50 * time.Second, 2 * time.Second, 5},
		"one experiment":            {1, 1, 10 * time.Second, 50 * time.Second, 5 * time.Second, 1},
		"20 short experiments":      {20, 1, 0, 10 * time.Second, 300 * time.Millisecond, 20},
		"two slots":                 {4, 2, 10 * time.Second, 50 * time.Second, 2 * time.Second, 4},
		"exact length":              {5, 1, 10 * time.Second, 50 * time.Second, 0, 5},
		"overhead beyond the grace": {5, 1, 10 * time.Second, 50 * time.Second, 10 * time.Second, 4},
		"overhead near the grace":   {5, 1, 10 * time.Second, 50 * time.Second, 7 * time.Second, 4},
	} {
		t.Run(name, func(t *testing.T) { synctest.Test(t, func(t *testing.T) { check(t, c) }) })
	}
	// On the real clock, where the engine's own bookkeeping takes time too.
	t.Run("real clock", func(t *testing.T) { check(t, run{4, 1, 0, 100 * time.Millisecond, 5 * time.Millisecond, 4}) })
}

// TestFailureCancelsOthers checks that when one of several parallel
// experiments fails, the others are stopped and not reported as failures
// of their own.
func TestFailureCancelsOthers(t *testing.T) {
	store := openStore(t)
	st := newStudy(t, "grid", time.Hour, 10*time.Hour, 3)
	var calls atomic.Int64
	all := make(chan struct{}) // closed when the three have started
	r := funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
		n := calls.Add(1)
		if n == 3 {
			close(all)
		}
		if n == 1 {
			select {
			case <-all:
			case <-time.After(10 * time.Second): // the check below says so
			}
			return justrunit.Observation{}, errors.New("clone crashed")
		}
		<-ctx.Done()
		return justrunit.Observation{}, ctx.Err()
	})
	done := make(chan error, 1)
	go func() { _, err := newEngine(t, st, r, store).Run(context.Background(), st); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "clone crashed") || errors.Is(err, context.Canceled) {
			t.Fatalf("Run error = %v, want the crash alone", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after an experiment failed")
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d experiments started, want 3 in parallel", n)
	}
	evs, err := store.Events(context.Background(), justrunit.EventFilter{StudyID: st.ID, Kind: justrunit.EventExperimentFailed})
	if err != nil || len(evs) != 1 {
		t.Errorf("%d %s events (%v), want 1", len(evs), justrunit.EventExperimentFailed, err)
	}
}

// failingStrategy plans its first points with another strategy and fails
// after that.
type failingStrategy struct {
	justrunit.Strategy
	calls int
}

func (s *failingStrategy) Next(ctx context.Context, ps justrunit.PlanState) ([]justrunit.Point, error) {
	s.calls++
	if s.calls > 1 {
		return nil, errors.New("planner broke")
	}
	return s.Strategy.Next(ctx, ps)
}

// TestPlanErrorCancels checks that a planning error stops the running
// experiments at once rather than waiting them out.
func TestPlanErrorCancels(t *testing.T) {
	st := newStudy(t, "grid", time.Hour, 10*time.Hour, 2)
	var calls atomic.Int64
	r := funcRunner(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
		if calls.Add(1) > 1 {
			<-ctx.Done() // the other slot's experiment runs on
			return justrunit.Observation{}, ctx.Err()
		}
		return justrunit.Observation{Point: p, Samples: 1000, Throughput: 100, RT: justrunit.ResponseTime{Mean: 20, P50: 18, P95: 30, P99: 40}}, nil
	})
	e := newEngine(t, st, r, nil)
	e.Strategy = &failingStrategy{Strategy: e.Strategy}
	done := make(chan error, 1)
	go func() { _, err := e.Run(context.Background(), st); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "planner broke") {
			t.Fatalf("Run error = %v, want the planning error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run waited for the running experiment after a planning error")
	}
}

// TestUnmeasurablePoint checks that an experiment that ran its whole window
// and measured too few responses marks its point and the study goes on (an
// sla search then takes the point as missing the SLA); a study in which
// every point is so fails saying why.
func TestUnmeasurablePoint(t *testing.T) {
	saturated := func(below float64) funcRunner {
		r := &curveRunner{rt: knee, hold: time.Millisecond}
		return func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
			if p[0] < below {
				return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
			}
			return r.Run(ctx, p)
		}
	}
	store := openStore(t)
	st := newStudy(t, "sla", 10*time.Millisecond, time.Minute, 1)
	m, err := newEngine(t, st, saturated(50), store).Run(context.Background(), st)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	p, ok, err := driver.LeastPassing(m, *st.SLA, "cpu")
	if err != nil || !ok || p[0] != 60 {
		t.Errorf("least passing = %v %v %v, want cpu=60 (knee: %.1f ms)", p, ok, err, knee(60))
	}
	for _, i := range m.Unmeasurable() {
		if m.Rows[i].Point[0] >= 50 || m.Rows[i].Cells[0].Prov != justrunit.Empty {
			t.Errorf("unmeasurable row %+v", m.Rows[i])
		}
	}
	evs, _ := store.Events(context.Background(), justrunit.EventFilter{StudyID: st.ID, Kind: justrunit.EventExperimentUnmeasurable})
	if len(evs) != len(m.Unmeasurable()) || len(evs) == 0 {
		t.Errorf("%d %s events for %d unmeasurable points", len(evs), justrunit.EventExperimentUnmeasurable, len(m.Unmeasurable()))
	}
	if sm, err := store.Matrix(context.Background(), st.ID); err != nil || len(sm.Unmeasurable()) != len(m.Unmeasurable()) {
		t.Errorf("stored matrix: %v unmeasurable (%v), want %d", sm.Unmeasurable(), err, len(m.Unmeasurable()))
	}

	st = newStudy(t, "grid", 10*time.Millisecond, time.Minute, 1)
	_, err = newEngine(t, st, saturated(1000), nil).Run(context.Background(), st)
	if !errors.Is(err, ErrNothingMeasured) || !strings.Contains(err.Error(), "too few responses") {
		t.Errorf("Run with every point saturated = %v, want %v saying why", err, ErrNothingMeasured)
	}
}

// slowPlanner plans cpu=100 first, then plans until ctx ends.
type slowPlanner struct{ calls int }

func (s *slowPlanner) Name() string                     { return "slow" }
func (s *slowPlanner) Estimate(justrunit.PlanState) int { return 1 }
func (s *slowPlanner) Next(ctx context.Context, st justrunit.PlanState) ([]justrunit.Point, error) {
	if s.calls++; s.calls == 1 {
		return []justrunit.Point{{100}}, nil
	}
	if len(st.Running) > 0 {
		return nil, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestPlanningStopsAtTheBound checks that a strategy still planning when
// the time bound comes is stopped by it, and the study ends with what it
// measured rather than failing.
func TestPlanningStopsAtTheBound(t *testing.T) {
	st := newStudy(t, "grid", 20*time.Millisecond, 300*time.Millisecond, 1)
	e := newEngine(t, st, &curveRunner{rt: knee}, nil)
	e.Strategy = &slowPlanner{}
	done := make(chan error, 1)
	go func() { _, err := e.Run(context.Background(), st); done <- err }()
	select {
	case err := <-done:
		if err != nil || st.State != justrunit.StudyDone || st.Experiments != 1 {
			t.Fatalf("Run = %v, state %s, %d experiments; want done with 1", err, st.State, st.Experiments)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the planning outlived the time bound")
	}
}

// wholeResults is a store on which the engine must record an experiment's
// or a check round's parts together (RecordResult): their single writes
// fail the test while it is armed.
type wholeResults struct {
	justrunit.Store
	t     *testing.T
	armed atomic.Bool
}

func (s *wholeResults) refuse(name string) {
	if s.armed.Load() {
		s.t.Errorf("engine called %s; an experiment's or check's parts go in one RecordResult", name)
	}
}

func (s *wholeResults) SaveMatrix(ctx context.Context, id string, m *justrunit.Matrix) error {
	s.refuse("SaveMatrix")
	return s.Store.SaveMatrix(ctx, id, m)
}

func (s *wholeResults) AddObservation(ctx context.Context, id string, o justrunit.Observation) error {
	s.refuse("AddObservation")
	return s.Store.AddObservation(ctx, id, o)
}

func (s *wholeResults) AddCheck(ctx context.Context, c justrunit.CheckResult) error {
	s.refuse("AddCheck")
	return s.Store.AddCheck(ctx, c)
}

// TestResultsRecordedWhole: after every experiment of a study, and after a
// round of checks, the stored study, matrix, observations, checks and
// events agree, and the engine wrote them with RecordResult.
func TestResultsRecordedWhole(t *testing.T) {
	ctx := context.Background()
	store := &wholeResults{Store: openStore(t), t: t}
	store.armed.Store(true)
	st := newStudy(t, "grid", time.Millisecond, time.Minute, 2)
	e := newEngine(t, st, &curveRunner{rt: knee, hold: time.Millisecond}, store)
	agree := func(when string, checks int) {
		t.Helper()
		x, err := store.Export(ctx, st.ID)
		if err != nil {
			t.Fatalf("%s: Export = %v", when, err)
		}
		done := 0
		for _, ev := range x.Events {
			if ev.Kind == justrunit.EventExperimentDone {
				done++
			}
		}
		measured := 0
		if x.Matrix != nil {
			measured = x.Matrix.Counts()[justrunit.Measured] + x.Matrix.Counts()[justrunit.Verified]
		}
		n := len(x.Observations)
		if x.Study.Experiments != n || measured != n*len(st.Metrics) || len(x.Checks) != checks || done != n-checks {
			t.Errorf("%s: stored %d observations, %d experiments, %d measured cells (%d metrics), %d checks (want %d), %d experiment.done events",
				when, n, x.Study.Experiments, measured, len(st.Metrics), len(x.Checks), checks, done)
		}
	}
	e.Progress = func(p Progress) {
		if p.Study.ID != "" {
			agree(fmt.Sprintf("after %d experiments", p.Done), 0)
		}
	}
	m, err := e.Run(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if st.Experiments != st.Space.Size() {
		t.Fatalf("grid ran %d experiments, want %d", st.Experiments, st.Space.Size())
	}
	agree("after the study", 0)

	// Checks: two interpolated cells become T, then V.
	m2, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range m.Rows {
		if row.Point[0] != 50 && row.Point[0] != 70 {
			if err := m2.Record(*row.Observation); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Interpolator.Interpolate(m2); err != nil {
		t.Fatal(err)
	}
	store.armed.Store(false) // Use saves the matrix on its own
	for _, cpu := range []float64{50, 70} {
		if _, err := e.Use(ctx, st, m2, justrunit.Point{cpu}, justrunit.RTP95); err != nil {
			t.Fatal(err)
		}
	}
	store.armed.Store(true)
	results, err := e.Check(ctx, st, m2, nil)
	if err != nil || len(results) != 2 {
		t.Fatalf("Check = %+v, %v; want 2 results", results, err)
	}
	// The grid measured every point, so the export counts its observations
	// and the checks' two: each checked point's cells are V, the others X.
	x, err := store.Export(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Observations) != st.Space.Size()+2 || x.Study.Experiments != st.Space.Size()+2 || len(x.Checks) != 2 {
		t.Errorf("after Check: %d observations, %d experiments, %d checks; want %d, %d, 2",
			len(x.Observations), x.Study.Experiments, len(x.Checks), st.Space.Size()+2, st.Space.Size()+2)
	}
	if c := x.Matrix.Counts(); c[justrunit.Verified] != 2 {
		t.Errorf("stored matrix after Check: %v, want 2 V cells", c)
	}
}
