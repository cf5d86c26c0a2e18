package measure

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// feed records rate responses per second into rec until stopped, each
// taking rt(t) where t is the time since the feed started. It keeps the rate
// by elapsed time rather than by sleeping once per response, so a busy
// machine delays responses but does not thin them out.
func feed(t *testing.T, rec *Recorder, rate float64, rt func(time.Duration, *rand.Rand) time.Duration) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(7, 8))
		start := time.Now()
		var n int64
		for {
			select {
			case <-done:
				return
			default:
			}
			el := time.Since(start)
			for due := int64(el.Seconds() * rate); n < due; n++ {
				rec.Record(rt(el, rng))
			}
			time.Sleep(time.Millisecond)
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// tight is 10 ms ± 1%.
func tight(_ time.Duration, rng *rand.Rand) time.Duration {
	return time.Duration(float64(10*time.Millisecond) * (0.99 + 0.02*rng.Float64()))
}

// wide is lognormal with median 10 ms and σ = 1.5: p95 ≈ 12x the median.
func wide(_ time.Duration, rng *rand.Rand) time.Duration {
	return time.Duration(float64(10*time.Millisecond) * math.Exp(1.5*rng.NormFloat64()))
}

// bounded returns a context that ends the test's wait after d.
func bounded(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestMeasureWindowConvergesOnTightDistribution(t *testing.T) {
	rec := NewRecorder()
	feed(t, rec, 1000, tight)
	cfg := WindowConfig{WarmUp: 100 * time.Millisecond, Max: time.Second, RelCI: 0.05, MinSamples: 100, Tick: 50 * time.Millisecond}
	var ticks int
	res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, func(Progress) { ticks++ })
	if err != nil {
		t.Fatal(err)
	}
	if res.Stop != StopConverged {
		t.Fatalf("Stop = %q after %v with %d samples (rel CI %g), want %q",
			res.Stop, res.Summary.Duration(), res.Summary.Count, res.Summary.P95RelWidth(), StopConverged)
	}
	if d := res.Summary.Duration(); d > 800*time.Millisecond {
		t.Errorf("converged window lasted %v, want well under Max (1s)", d)
	}
	if res.Summary.Count < cfg.MinSamples {
		t.Errorf("converged with %d samples, want ≥ MinSamples %d", res.Summary.Count, cfg.MinSamples)
	}
	if res.WarmUp < cfg.WarmUp || !res.WarmUpSettled {
		t.Errorf("WarmUp = %v (settled %v), want ≥ %v, settled", res.WarmUp, res.WarmUpSettled, cfg.WarmUp)
	}
	if p := res.Summary.RT.P95; p < 9.8 || p > 10.2 {
		t.Errorf("p95 = %g ms, want ≈ 10", p)
	}
	if ticks == 0 {
		t.Error("progress was never called")
	}
}

func TestMeasureWindowRunsToMaxOnWideDistribution(t *testing.T) {
	rec := NewRecorder()
	feed(t, rec, 1000, wide)
	cfg := WindowConfig{WarmUp: 100 * time.Millisecond, Max: time.Second, RelCI: 0.01, MinSamples: 100, Tick: 50 * time.Millisecond}
	start := time.Now()
	res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stop != StopWindow {
		t.Fatalf("Stop = %q (rel CI %g with %d samples), want %q", res.Stop, res.Summary.P95RelWidth(), res.Summary.Count, StopWindow)
	}
	if d := res.Summary.Duration(); d < cfg.Max || d > cfg.Max+500*time.Millisecond {
		t.Errorf("window lasted %v, want Max %v (+ scheduling slack)", d, cfg.Max)
	}
	if el := time.Since(start); el < cfg.WarmUp+cfg.Max {
		t.Errorf("MeasureWindow returned after %v, want ≥ warm-up + Max", el)
	}
	if w := res.Summary.P95RelWidth(); w <= cfg.RelCI {
		t.Errorf("rel CI %g ≤ RelCI %g yet the window did not converge", w, cfg.RelCI)
	}
}

func TestMeasureWindowMinHoldsOffConvergence(t *testing.T) {
	rec := NewRecorder()
	feed(t, rec, 1000, tight)
	cfg := WindowConfig{WarmUp: 0, Min: 400 * time.Millisecond, Max: time.Second, RelCI: 0.05, MinSamples: 10, Tick: 50 * time.Millisecond}
	res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stop != StopConverged || res.Summary.Duration() < cfg.Min {
		t.Errorf("Stop = %q after %v, want %q no earlier than Min %v", res.Stop, res.Summary.Duration(), StopConverged, cfg.Min)
	}
}

func TestMeasureWindowDeadline(t *testing.T) {
	rec := NewRecorder()
	feed(t, rec, 1000, wide)
	cfg := WindowConfig{WarmUp: 100 * time.Millisecond, Max: 5 * time.Second, MinSamples: 50, Tick: 50 * time.Millisecond}
	ctx := bounded(t, 500*time.Millisecond)
	deadline, _ := ctx.Deadline()
	meter := &ModelMeter{Model: justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}, HostCores: 2, CPUTime: ProcessCPUTime}
	res, err := MeasureWindow(ctx, cfg, rec, meter, nil)
	returned := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if res.Stop != StopDeadline {
		t.Errorf("Stop = %q, want %q", res.Stop, StopDeadline)
	}
	if res.Summary.End.After(deadline) {
		t.Errorf("window ended %v after the deadline", res.Summary.End.Sub(deadline))
	}
	// The guard makes returning late unlikely; allow a busy machine a little.
	if late := returned.Sub(deadline); late > 20*time.Millisecond {
		t.Errorf("returned %v after the deadline", late)
	}
	t.Logf("returned %v before the deadline, window %v, %d samples", deadline.Sub(returned), res.Summary.Duration(), res.Summary.Count)
	if res.Energy.Source != justrunit.EnergyModel || res.Energy.Joules <= 0 {
		t.Errorf("Energy = %+v, want a model figure", res.Energy)
	}
	o := res.Observation(justrunit.Point{50})
	if o.Samples != res.Summary.Count || o.Stop != StopDeadline || time.Duration(o.Window) != res.Summary.Duration() ||
		time.Duration(o.WarmUp) != res.WarmUp || o.RT != res.Summary.RT || o.Energy != res.Energy || !o.Point.Equal(justrunit.Point{50}) {
		t.Errorf("Observation = %+v, does not match result %+v", o, res)
	}
}

func TestMeasureWindowErrors(t *testing.T) {
	t.Run("too few samples by the deadline", func(t *testing.T) {
		rec := NewRecorder() // nothing feeds it
		cfg := WindowConfig{Max: 5 * time.Second, MinSamples: 10, Tick: 50 * time.Millisecond}
		_, err := MeasureWindow(bounded(t, 300*time.Millisecond), cfg, rec, nil, nil)
		if !errors.Is(err, ErrTooFewSamples) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want ErrTooFewSamples and DeadlineExceeded", err)
		}
	})
	// A window that runs its full length is no measurement either when
	// too few responses succeeded in it: not cut by a deadline, so the
	// error is not DeadlineExceeded (the study engine would take it for a
	// cut experiment); and with no response at all, the result's
	// observation has no response time.
	fullWindow := []struct {
		name   string
		record func(rec *Recorder)
	}{
		{"no responses in the full window", func(*Recorder) {}},
		{"only errors in the full window", func(rec *Recorder) {
			for range 500 {
				rec.RecordError()
			}
		}},
		{"fewer than MinSamples in the full window", func(rec *Recorder) {
			for range 9 {
				rec.Record(10 * time.Millisecond)
			}
		}},
	}
	for _, tt := range fullWindow {
		t.Run(tt.name, func(t *testing.T) {
			rec := NewRecorder()
			cfg := WindowConfig{Max: 200 * time.Millisecond, MinSamples: 10, Tick: 50 * time.Millisecond}
			res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, func(p Progress) {
				if p.Phase == PhaseMeasure {
					tt.record(rec)
					tt.record = func(*Recorder) {}
				}
			})
			if !errors.Is(err, ErrTooFewSamples) || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want ErrTooFewSamples and not DeadlineExceeded", err)
			}
			if res.Stop != StopWindow || res.Summary.Count >= cfg.MinSamples {
				t.Errorf("result: stop %q, %d samples; want %q with fewer than %d", res.Stop, res.Summary.Count, StopWindow, cfg.MinSamples)
			}
			if o := res.Observation(justrunit.Point{1}); res.Summary.Count == 0 && !math.IsNaN(o.RT.P95) {
				t.Errorf("Observation of a window without responses has p95 %g, want NaN", o.RT.P95)
			}
		})
	}
	t.Run("deadline during the warm-up", func(t *testing.T) {
		rec := NewRecorder()
		feed(t, rec, 1000, tight)
		cfg := WindowConfig{WarmUp: 5 * time.Second, Max: time.Second, Tick: 50 * time.Millisecond}
		start := time.Now()
		_, err := MeasureWindow(bounded(t, 300*time.Millisecond), cfg, rec, nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("returned after %v, want at the 300ms deadline", el)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		rec := NewRecorder()
		feed(t, rec, 1000, tight)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		defer cancel()
		cfg := WindowConfig{WarmUp: 100 * time.Millisecond, Max: 5 * time.Second, Tick: 50 * time.Millisecond}
		start := time.Now()
		_, err := MeasureWindow(ctx, cfg, rec, nil, nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want Canceled", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("returned %v after start, want soon after the cancel at 300ms", el)
		}
	})
	t.Run("meter fails", func(t *testing.T) {
		rec := NewRecorder()
		feed(t, rec, 1000, tight)
		meter := &ModelMeter{Model: justrunit.PowerModel{IdleWatts: 1, MaxWatts: 2}, HostCores: 1,
			CPUTime: func() (time.Duration, error) { return 0, errors.New("cgroup gone") }}
		cfg := WindowConfig{Max: 200 * time.Millisecond, MinSamples: 10, Tick: 50 * time.Millisecond}
		res, err := MeasureWindow(bounded(t, 5*time.Second), cfg, rec, meter, nil)
		if err == nil || res.Summary.Count == 0 || res.Stop != StopWindow {
			t.Errorf("MeasureWindow = %d samples, stop %q, err %v; want the window and the meter's error", res.Summary.Count, res.Stop, err)
		}
	})
	bad := []struct {
		field string
		cfg   WindowConfig
	}{
		{"window.max", WindowConfig{}},
		{"window.min", WindowConfig{Min: 2 * time.Second, Max: time.Second}},
		{"window.max_warm_up", WindowConfig{Max: time.Second, DetectWarmUp: true}},
		{"window.rel_ci", WindowConfig{Max: time.Second, RelCI: -1}},
		{"window.warm_up", WindowConfig{Max: time.Second, WarmUp: -1}},
	}
	for _, tt := range bad {
		_, err := MeasureWindow(context.Background(), tt.cfg, NewRecorder(), nil, nil)
		var fe *justrunit.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("MeasureWindow(%+v) error = %v, want a FieldError for %s", tt.cfg, err, tt.field)
		}
	}
}

// settling starts at 50 ms and falls linearly to 5 ms over 600 ms, then
// stays at 5 ms ± 5%: a clone warming its caches.
func settling(el time.Duration, rng *rand.Rand) time.Duration {
	base := 5.0
	if f := 1 - el.Seconds()/0.6; f > 0 {
		base += 45 * f
	}
	return time.Duration(base * (0.95 + 0.1*rng.Float64()) * float64(time.Millisecond))
}

func TestMeasureWindowDetectsWarmUp(t *testing.T) {
	rec := NewRecorder()
	feed(t, rec, 1000, settling)
	cfg := WindowConfig{
		DetectWarmUp: true, MaxWarmUp: 4 * time.Second, SubWindow: 100 * time.Millisecond,
		Max: 300 * time.Millisecond, MinSamples: 50, Tick: 50 * time.Millisecond,
	}
	var phases []string
	res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, func(p Progress) { phases = append(phases, p.Phase) })
	if err != nil {
		t.Fatal(err)
	}
	if !res.WarmUpSettled {
		t.Fatalf("warm-up not detected within %v", cfg.MaxWarmUp)
	}
	if res.WarmUp < 600*time.Millisecond || res.WarmUp > 2500*time.Millisecond {
		t.Errorf("detected warm-up %v, want after the 600ms settling and well before MaxWarmUp", res.WarmUp)
	}
	if p := res.Summary.RT.P50; p < 4.5 || p > 5.5 {
		t.Errorf("p50 after warm-up = %g ms, want ≈ 5 (settled)", p)
	}
	if len(phases) == 0 || phases[0] != PhaseWarmUp || phases[len(phases)-1] != PhaseMeasure {
		t.Errorf("progress phases %v, want warm-up ... measure", phases)
	}
	t.Logf("detected warm-up %v", res.WarmUp)
}

func TestMeasureWindowWarmUpGivesUp(t *testing.T) {
	rec := NewRecorder()
	// Never settles: response times keep doubling every 100ms.
	feed(t, rec, 1000, func(el time.Duration, _ *rand.Rand) time.Duration {
		return time.Duration(math.Exp2(el.Seconds()*10)) * time.Millisecond
	})
	cfg := WindowConfig{
		DetectWarmUp: true, MaxWarmUp: 500 * time.Millisecond, SubWindow: 100 * time.Millisecond,
		Max: 100 * time.Millisecond, MinSamples: 10, Tick: 50 * time.Millisecond,
	}
	res, err := MeasureWindow(bounded(t, 10*time.Second), cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.WarmUpSettled {
		t.Error("WarmUpSettled on a feed that never settles")
	}
	if res.WarmUp < cfg.MaxWarmUp || res.WarmUp > cfg.MaxWarmUp+500*time.Millisecond {
		t.Errorf("WarmUp = %v, want MaxWarmUp %v", res.WarmUp, cfg.MaxWarmUp)
	}
}

func TestWarmUpDetector(t *testing.T) {
	sum := func(n int64, mean, p95 float64) Summary {
		return Summary{Count: n, RT: justrunit.ResponseTime{Mean: mean, P95: p95, P95Low: p95, P95High: p95}}
	}
	ci := func(n int64, mean, p95, lo, hi float64) Summary {
		return Summary{Count: n, RT: justrunit.ResponseTime{Mean: mean, P95: p95, P95Low: lo, P95High: hi}}
	}
	tests := []struct {
		name string
		subs []Summary
		want []bool
	}{
		{"steady", []Summary{sum(100, 5, 9), sum(100, 5.2, 9.3), sum(100, 4.9, 8.8), sum(100, 5, 9)},
			[]bool{false, false, true, true}},
		{"falling then steady", []Summary{sum(100, 40, 60), sum(100, 20, 30), sum(100, 6, 10), sum(100, 5, 9), sum(100, 5.1, 9.2)},
			[]bool{false, false, false, false, true}},
		{"mean steady, p95 not", []Summary{sum(100, 5, 9), sum(100, 5, 20), sum(100, 5, 9)},
			[]bool{false, false, false}},
		{"p95s differ but within each other's CI", []Summary{ci(100, 5, 8, 7, 11), ci(100, 5, 10.5, 8, 13), ci(100, 5, 8.5, 7.5, 11)},
			[]bool{false, false, true}},
		{"p95 CIs apart", []Summary{ci(100, 5, 8, 7, 8.5), ci(100, 5, 10, 9, 11), ci(100, 5, 8, 7, 8.5)},
			[]bool{false, false, false}},
		{"too few samples break the run", []Summary{sum(100, 5, 9), sum(100, 5, 9), sum(3, 5, 9), sum(100, 5, 9), sum(100, 5, 9)},
			[]bool{false, false, false, false, false}},
		{"idle never warm", []Summary{sum(0, 0, 0), sum(0, 0, 0), sum(0, 0, 0), sum(0, 0, 0)},
			[]bool{false, false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d WarmUpDetector
			for i, s := range tt.subs {
				if got := d.Add(s); got != tt.want[i] {
					t.Errorf("Add #%d (%+v) = %v, want %v", i, s.RT, got, tt.want[i])
				}
			}
		})
	}
}

func TestResultObservationWithoutSamples(t *testing.T) {
	now := time.Now()
	energy := justrunit.Energy{Joules: 30, Watts: 100, Source: justrunit.EnergyModel}
	empty := Result{Summary: Summary{Start: now, End: now.Add(time.Second), Errors: 4}, Stop: StopWindow, Energy: energy}
	o := empty.Observation(justrunit.Point{20})
	for _, v := range []float64{o.RT.Mean, o.RT.P50, o.RT.P95, o.RT.P99, o.RT.Max, o.RT.P95Low, o.RT.P95High, o.Energy.PerRequest} {
		if !math.IsNaN(v) {
			t.Fatalf("Observation of a window without samples = RT %+v, energy/request %g; want NaN, not a figure", o.RT, o.Energy.PerRequest)
		}
	}
	if o.Energy.Joules != 30 || o.Energy.Watts != 100 || o.Samples != 0 || o.Errors != 4 {
		t.Errorf("Observation = %+v; want the energy, samples and errors the window had", o)
	}
	// The matrix refuses it rather than storing rt_p95 = 0.
	s, err := justrunit.NewSpace(justrunit.Parameter{Name: "cpu", Values: []float64{20}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.RTP95, justrunit.EnergyPerRequest})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Record(o); err == nil {
		t.Errorf("Matrix.Record of a window without samples = nil, want an error; cells %+v", m.Rows[0].Cells)
	}

	full := empty
	full.Summary.Count = 100
	full.Summary.RT = justrunit.ResponseTime{Mean: 8, P50: 7, P95: 12, P99: 15, Max: 20, P95Low: 11, P95High: 13}
	full.Energy.PerRequest = 0.3
	if o := full.Observation(justrunit.Point{20}); o.RT != full.Summary.RT || o.Energy != full.Energy {
		t.Errorf("Observation = RT %+v energy %+v, want the window's %+v %+v", o.RT, o.Energy, full.Summary.RT, full.Energy)
	}
}
