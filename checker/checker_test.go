package checker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// curveRunner is a test-double Runner (the experimenter is outside the unit
// under test): it "measures" p95 = f(cpu) and throughput = 5·cpu.
type curveRunner struct {
	f     func(cpu float64) float64
	calls atomic.Int64
	fail  map[float64]error // cpu → error to return
	point justrunit.Point   // when set, the point it claims to have measured
}

func (r *curveRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.calls.Add(1)
	if err := r.fail[p[0]]; err != nil {
		return justrunit.Observation{}, err
	}
	o := justrunit.Observation{
		Point: p, Window: justrunit.Duration(time.Minute), Samples: 1000,
		Throughput: 5 * p[0], RT: justrunit.ResponseTime{P95: r.f(p[0])},
	}
	if r.point != nil {
		o.Point = r.point
	}
	return o, nil
}

var (
	metrics  = []justrunit.Metric{justrunit.RTP95, justrunit.Throughput}
	inverse  = func(cpu float64) float64 { return 1000 / cpu }
	linear   = func(cpu float64) float64 { return 110 - cpu }
	fixedNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
)

// study returns a matrix over cpu=10..100 step 10 with both ends measured
// from f and every other cell interpolated linearly between them, as the
// paper's interpolator would.
func study(t testing.TB, f func(float64) float64) *justrunit.Matrix {
	t.Helper()
	p, err := justrunit.ParseParameter("cpu=10..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	s, err := justrunit.NewSpace(p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := justrunit.NewMatrix(s, metrics)
	if err != nil {
		t.Fatal(err)
	}
	r := &curveRunner{f: f}
	for _, x := range []float64{10, 100} {
		o, _ := r.Run(context.Background(), justrunit.Point{x})
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	lo, hi := m.Rows[0], m.Rows[len(m.Rows)-1]
	for i := 1; i < len(m.Rows)-1; i++ {
		w := (m.Rows[i].Point[0] - 10) / 90
		for j := range metrics {
			v := lo.Cells[j].Value + w*(hi.Cells[j].Value-lo.Cells[j].Value)
			m.Rows[i].Cells[j] = justrunit.Cell{Value: v, Prov: justrunit.Interpolated}
		}
	}
	return m
}

func use(t testing.TB, m *justrunit.Matrix, cpu float64, mt justrunit.Metric) {
	t.Helper()
	if _, err := m.Use(justrunit.Point{cpu}, mt); err != nil {
		t.Fatal(err)
	}
}

// newChecker returns a checker over r logging to a buffer and collecting
// notifications.
func newChecker(t testing.TB, r justrunit.Runner, threshold float64) (*Checker, *bytes.Buffer, *[]justrunit.CheckResult) {
	t.Helper()
	c, err := New(r, threshold)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	var notified []justrunit.CheckResult
	c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c.Notify = func(r justrunit.CheckResult) {
		mu.Lock()
		defer mu.Unlock()
		notified = append(notified, r)
	}
	c.StudyID = "s1"
	c.Now = func() time.Time { return fixedNow }
	return c, &logs, &notified
}

func TestCheckFlagsBadInterpolationNotGood(t *testing.T) {
	tests := []struct {
		name       string
		truth      func(float64) float64
		cpu        float64
		threshold  float64
		wantPassed bool
		wantRel    float64
	}{
		// Linear interpolation of a linear curve is exact.
		{"linear curve", linear, 50, 0.1, true, 0},
		// Of a convex curve it is far off in the middle: predicted
		// 100 + (10-100)·40/90 = 60 ms where 1000/50 = 20 ms is measured.
		{"convex curve", inverse, 50, 0.1, false, 2},
		// Near a measured end it is closer, but still out: predicted 90,
		// measured 1000/20 = 50.
		{"convex curve near an end", inverse, 20, 0.5, false, 0.8},
		{"convex curve, lenient threshold", inverse, 20, 0.81, true, 0.8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := study(t, tt.truth)
			use(t, m, tt.cpu, justrunit.RTP95)
			before, _ := m.Cell(justrunit.Point{tt.cpu}, justrunit.RTP95)
			r := &curveRunner{f: tt.truth}
			c, logs, notified := newChecker(t, r, tt.threshold)

			got, err := c.Check(context.Background(), m, justrunit.Point{tt.cpu}, justrunit.RTP95)
			if err != nil {
				t.Fatal(err)
			}
			want := justrunit.CheckResult{
				StudyID: "s1", Point: justrunit.Point{tt.cpu}, Metric: justrunit.RTP95,
				Predicted: before.Value, Measured: tt.truth(tt.cpu), Threshold: tt.threshold,
				Passed: tt.wantPassed, Time: fixedNow,
			}
			if math.Abs(got.RelError-tt.wantRel) > 1e-9 {
				t.Errorf("RelError = %v, want %v", got.RelError, tt.wantRel)
			}
			got.RelError = 0
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Check = %+v\nwant    %+v", got, want)
			}
			cell, _ := m.Cell(justrunit.Point{tt.cpu}, justrunit.RTP95)
			if cell.Prov != justrunit.Verified || cell.Value != tt.truth(tt.cpu) || cell.Predicted != before.Value {
				t.Errorf("cell after the check = %+v, want V with the measured value and the prediction", cell)
			}
			if r.calls.Load() != 1 {
				t.Errorf("ran %d experiments, want 1", r.calls.Load())
			}
			if n := len(*notified); tt.wantPassed != (n == 0) || n > 1 {
				t.Errorf("Notify called %d times; passed %v", n, tt.wantPassed)
			}
			warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "event="+justrunit.EventCheckFailed)
			if warned == tt.wantPassed {
				t.Errorf("warning logged = %v for passed = %v; log:\n%s", warned, tt.wantPassed, logs)
			}
			if !tt.wantPassed {
				for _, k := range []string{keyStudy + "=s1", keyPoint + "=\"cpu=", keyMetric + "=rt_p95", keyPredicted + "=", keyMeasured + "=", keyRelError + "=", keyThreshold + "="} {
					if !strings.Contains(logs.String(), k) {
						t.Errorf("warning lacks %q: %s", k, logs)
					}
				}
			}
		})
	}
}

func TestCheckNeedsATCell(t *testing.T) {
	tests := []struct {
		name  string
		cpu   float64
		setup func(t *testing.T, m *justrunit.Matrix)
	}{
		{"measured", 10, nil},
		{"interpolated, not used", 50, nil},
		{"empty", 50, func(t *testing.T, m *justrunit.Matrix) { m.Rows[4].Cells[0] = justrunit.Cell{Prov: justrunit.Empty} }},
		{"already verified", 50, func(t *testing.T, m *justrunit.Matrix) {
			use(t, m, 50, justrunit.RTP95)
			c, _, _ := newChecker(t, &curveRunner{f: linear}, 0.1)
			if _, err := c.Check(context.Background(), m, justrunit.Point{50}, justrunit.RTP95); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := study(t, linear)
			if tt.setup != nil {
				tt.setup(t, m)
			}
			r := &curveRunner{f: linear}
			c, _, notified := newChecker(t, r, 0.1)
			_, err := c.Check(context.Background(), m, justrunit.Point{tt.cpu}, justrunit.RTP95)
			if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "want T") {
				t.Errorf("Check = %v, want an ErrInvalid saying it wants a T cell", err)
			}
			if r.calls.Load() != 0 || len(*notified) != 0 {
				t.Errorf("ran %d experiments and notified %d times for a non-T cell", r.calls.Load(), len(*notified))
			}
		})
	}
	c, _, _ := newChecker(t, &curveRunner{f: linear}, 0.1)
	if _, err := c.Check(context.Background(), study(t, linear), justrunit.Point{55}, justrunit.RTP95); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("Check outside the space = %v, want ErrInvalid", err)
	}
	if _, err := c.Check(context.Background(), study(t, linear), justrunit.Point{50}, justrunit.RTP99); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("Check of a metric the matrix lacks = %v, want ErrInvalid", err)
	}
	if _, err := c.CheckPoint(context.Background(), study(t, linear), justrunit.Point{50}); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("CheckPoint without T cells = %v, want ErrInvalid", err)
	}
}

func TestCheckVerifiesEveryTCellOfThePoint(t *testing.T) {
	m := study(t, inverse)
	use(t, m, 50, justrunit.RTP95)
	use(t, m, 50, justrunit.Throughput)
	r := &curveRunner{f: inverse}
	c, _, notified := newChecker(t, r, 0.1)
	got, err := c.Check(context.Background(), m, justrunit.Point{50}, justrunit.Throughput)
	if err != nil {
		t.Fatal(err)
	}
	// Throughput is linear in cpu: exact. The p95 cell, verified by the
	// same experiment, is off and must be reported, not silently turned V.
	if got.Metric != justrunit.Throughput || !got.Passed {
		t.Errorf("Check(throughput) = %+v, want a pass on throughput", got)
	}
	if r.calls.Load() != 1 {
		t.Errorf("ran %d experiments, want 1 for the point", r.calls.Load())
	}
	if len(*notified) != 1 || (*notified)[0].Metric != justrunit.RTP95 {
		t.Errorf("notified %+v, want the rt_p95 failure", *notified)
	}
	for _, mt := range metrics {
		if cell, _ := m.Cell(justrunit.Point{50}, mt); cell.Prov != justrunit.Verified {
			t.Errorf("%s cell = %+v, want V", mt, cell)
		}
	}
}

func TestCheckAll(t *testing.T) {
	m := study(t, inverse)
	use(t, m, 20, justrunit.RTP95)
	use(t, m, 50, justrunit.RTP95)
	use(t, m, 50, justrunit.Throughput)
	use(t, m, 90, justrunit.Throughput)
	r := &curveRunner{f: inverse}
	c, _, notified := newChecker(t, r, 0.1)
	results, err := c.CheckAll(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if r.calls.Load() != 3 {
		t.Errorf("ran %d experiments, want 3 (one per point)", r.calls.Load())
	}
	var got []string
	for _, res := range results {
		got = append(got, fmt.Sprintf("%g/%s/%v", res.Point[0], res.Metric, res.Passed))
	}
	want := []string{"20/rt_p95/false", "50/rt_p95/false", "50/throughput/true", "90/throughput/true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("CheckAll = %v, want %v", got, want)
	}
	if len(*notified) != 2 {
		t.Errorf("notified %d failures, want 2", len(*notified))
	}
	counts := m.Counts()
	if counts[justrunit.Used] != 0 || counts[justrunit.Verified] != 4 {
		t.Errorf("after CheckAll: %v, want no T and 4 V", counts)
	}
	// Cells no decision used stay interpolated, except at checked points,
	// where the experiment measured them (X).
	if cell, _ := m.Cell(justrunit.Point{20}, justrunit.Throughput); cell.Prov != justrunit.Measured {
		t.Errorf("throughput at a checked point = %+v, want X", cell)
	}
	if cell, _ := m.Cell(justrunit.Point{30}, justrunit.RTP95); cell.Prov != justrunit.Interpolated {
		t.Errorf("an unused cell = %+v, want I", cell)
	}
	// Nothing left to check: nothing runs.
	if results, err := c.CheckAll(context.Background(), m); err != nil || len(results) != 0 || r.calls.Load() != 3 {
		t.Errorf("second CheckAll = %v, %v after %d experiments; want nothing", results, err, r.calls.Load())
	}
}

func TestCheckAllGoesOnAfterAFailedExperiment(t *testing.T) {
	m := study(t, linear)
	for _, cpu := range []float64{20, 50, 80} {
		use(t, m, cpu, justrunit.RTP95)
	}
	boom := errors.New("clone crashed")
	r := &curveRunner{f: linear, fail: map[float64]error{50: boom}}
	c, logs, _ := newChecker(t, r, 0.1)
	results, err := c.CheckAll(context.Background(), m)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "cpu=50") {
		t.Errorf("CheckAll = %v, want the failure at cpu=50", err)
	}
	if len(results) != 2 || r.calls.Load() != 3 {
		t.Errorf("%d results after %d experiments, want 2 after 3", len(results), r.calls.Load())
	}
	if cell, _ := m.Cell(justrunit.Point{50}, justrunit.RTP95); cell.Prov != justrunit.Used {
		t.Errorf("cell of the failed experiment = %+v, want still T", cell)
	}
	if !strings.Contains(logs.String(), "check experiment failed") {
		t.Errorf("the failed experiment was not logged: %s", logs)
	}
}

func TestCheckRunnerMeasuringElsewhere(t *testing.T) {
	m := study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	c, _, _ := newChecker(t, &curveRunner{f: linear, point: justrunit.Point{60}}, 0.1)
	if _, err := c.Check(context.Background(), m, justrunit.Point{50}, justrunit.RTP95); err == nil || !strings.Contains(err.Error(), "cpu=60 instead") {
		t.Errorf("Check with a runner measuring cpu=60 = %v, want an error", err)
	}
	if cell, _ := m.Cell(justrunit.Point{60}, justrunit.RTP95); cell.Prov != justrunit.Interpolated {
		t.Errorf("cpu=60 = %+v, want untouched", cell)
	}
	// A runner that leaves the point out measured the one it was given.
	c, _, _ = newChecker(t, &curveRunner{f: linear, point: justrunit.Point{}}, 0.1)
	if _, err := c.Check(context.Background(), m, justrunit.Point{50}, justrunit.RTP95); err != nil {
		t.Errorf("Check with a runner leaving the point out = %v", err)
	}
}

// blockingRunner blocks until its context ends, after saying it started.
type blockingRunner struct{ started chan struct{} }

func (r blockingRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	close(r.started)
	<-ctx.Done()
	return justrunit.Observation{}, ctx.Err()
}

func TestCheckCancel(t *testing.T) {
	m := study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	use(t, m, 70, justrunit.RTP95)
	r := blockingRunner{started: make(chan struct{})}
	c, _, notified := newChecker(t, r, 0.1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.CheckAll(ctx, m)
		done <- err
	}()
	<-r.started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("CheckAll after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second): // a guard against a hang, not a wait
		t.Fatal("CheckAll did not return after its context was cancelled")
	}
	if len(*notified) != 0 || m.Counts()[justrunit.Used] != 2 {
		t.Errorf("a cancelled check changed the matrix (%v) or notified %d", m.Counts(), len(*notified))
	}
	// Already cancelled: nothing runs.
	if _, err := c.Check(ctx, m, justrunit.Point{70}, justrunit.RTP95); !errors.Is(err, context.Canceled) {
		t.Errorf("Check with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestValidate(t *testing.T) {
	r := &curveRunner{f: linear}
	tests := []struct {
		runner    justrunit.Runner
		threshold float64
		wantField string
	}{
		{r, 0.1, ""},
		{r, 2, ""},
		{r, 0, "check_threshold"},
		{r, -0.1, "check_threshold"},
		{r, math.NaN(), "check_threshold"},
		{r, math.Inf(1), "check_threshold"},
		{nil, 0.1, "runner"},
	}
	for _, tt := range tests {
		_, err := New(tt.runner, tt.threshold)
		var fe *justrunit.FieldError
		switch {
		case tt.wantField == "" && err != nil:
			t.Errorf("New(%v) = %v, want no error", tt.threshold, err)
		case tt.wantField != "" && (!errors.As(err, &fe) || fe.Field != tt.wantField):
			t.Errorf("New(%v) = %v, want an error on %s", tt.threshold, err, tt.wantField)
		}
	}
	// A Checker built by hand is validated when used.
	m := study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	if _, err := (&Checker{Runner: r}).Check(context.Background(), m, justrunit.Point{50}, justrunit.RTP95); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("Check with no threshold = %v, want ErrInvalid", err)
	}
	if _, err := (&Checker{Threshold: 0.1}).CheckAll(context.Background(), m); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("CheckAll with no runner = %v, want ErrInvalid", err)
	}
}

func TestRelErrorAndPasses(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		measured, predicted, threshold float64
		rel                            float64
		passed                         bool
	}{
		{100, 100, 0.1, 0, true},
		{100, 110, 0.1, 0.1, true},
		{100, 89, 0.1, 0.11, false},
		{-50, -40, 0.5, 0.2, true},
		{0, 0, 0.1, 0, true},
		{0, 0.001, 0.1, 1, false},
		{0, 0.001, 5, 1, false}, // a measured 0 has no relative scale
		{math.NaN(), 1, 0.1, 1, false},
		{1, math.NaN(), 0.1, 1, false},
		{inf, inf, 0.1, 0, false},
		{1e-320, 1e300, 0.1, math.MaxFloat64, false},
	}
	for _, tt := range tests {
		rel := RelError(tt.measured, tt.predicted)
		if math.Abs(rel-tt.rel) > 1e-12 || math.IsInf(rel, 0) || math.IsNaN(rel) {
			t.Errorf("RelError(%v, %v) = %v, want %v", tt.measured, tt.predicted, rel, tt.rel)
		}
		if got := Passes(tt.measured, tt.predicted, tt.threshold); got != tt.passed {
			t.Errorf("Passes(%v, %v, %v) = %v, want %v", tt.measured, tt.predicted, tt.threshold, got, tt.passed)
		}
	}
}

// TestSharedCheckerManyMatrices runs one Checker from several goroutines,
// each on its own matrix; run it with -race.
func TestSharedCheckerManyMatrices(t *testing.T) {
	r := &curveRunner{f: inverse}
	c, _, notified := newChecker(t, r, 0.1)
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		m := study(t, inverse)
		for _, cpu := range []float64{20, 40, 60, 80} {
			use(t, m, cpu, justrunit.RTP95)
		}
		wg.Go(func() {
			results, err := c.CheckAll(context.Background(), m)
			if err == nil && len(results) != 4 {
				err = fmt.Errorf("%d results, want 4", len(results))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := r.calls.Load(); got != workers*4 {
		t.Errorf("ran %d experiments, want %d", got, workers*4)
	}
	if len(*notified) != workers*4 {
		t.Errorf("notified %d failures, want %d (linear interpolation of 1/x is off at every inner point)", len(*notified), workers*4)
	}
}

// TestCheckUnmeasurablePoint: a checking experiment that ran its window and
// measured too few responses (the clone saturated, or got no traffic) fails
// the check of every T cell of its point, the worst case for an
// interpolation, says why, and marks the point unmeasurable keeping the
// predictions; a window cut by a deadline stays an error.
func TestCheckUnmeasurablePoint(t *testing.T) {
	m := study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	use(t, m, 50, justrunit.Throughput)
	use(t, m, 70, justrunit.RTP95)
	predicted, _ := m.Cell(justrunit.Point{50}, justrunit.RTP95)
	tooFew := fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
	r := &curveRunner{f: linear, fail: map[float64]error{50: tooFew}}
	c, logs, notified := newChecker(t, r, 0.1)
	results, err := c.CheckAll(context.Background(), m)
	if err != nil {
		t.Fatalf("CheckAll = %v, want the unmeasurable point as failed checks", err)
	}
	if len(results) != 3 {
		t.Fatalf("CheckAll = %d results, want 3: %+v", len(results), results)
	}
	for _, res := range results[:2] {
		if res.Passed || !res.Point.Equal(justrunit.Point{50}) || !strings.Contains(res.Reason, "0 successful responses") ||
			math.IsNaN(res.Measured) || math.IsInf(res.Measured, 0) || res.RelError != 1 {
			t.Errorf("check of the unmeasurable point = %+v, want failed saying why, measured finite, error 1", res)
		}
	}
	if results[0].Predicted != predicted.Value {
		t.Errorf("predicted = %v, want the T cell's %v", results[0].Predicted, predicted.Value)
	}
	if !results[2].Passed || results[2].Reason != "" {
		t.Errorf("check at cpu=70 = %+v, want passed without a reason", results[2])
	}
	if len(*notified) != 2 {
		t.Errorf("notified %d, want the 2 cells of the unmeasurable point", len(*notified))
	}
	if !strings.Contains(logs.String(), justrunit.EventCheckFailed) || !strings.Contains(logs.String(), "0 successful responses") {
		t.Errorf("the failed checks were not logged with their reason: %s", logs)
	}
	if _, err := json.Marshal(results); err != nil {
		t.Errorf("results do not encode to JSON: %v", err)
	}
	row := m.Rows[4]
	if row.Unmeasurable == "" || row.Cells[0].Prov != justrunit.Empty || row.Cells[0].Predicted != predicted.Value {
		t.Errorf("row cpu=50 after the check = %+v, want unmeasurable with empty cells keeping the prediction", row)
	}
	if _, err := m.Use(justrunit.Point{50}, justrunit.RTP95); err == nil {
		t.Error("Use of the unmeasurable point: no error")
	}

	// Check of one cell says the same, not an error.
	m = study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	c, _, _ = newChecker(t, r, 0.1)
	if res, err := c.Check(context.Background(), m, justrunit.Point{50}, justrunit.RTP95); err != nil || res.Passed || res.Reason == "" {
		t.Errorf("Check of an unmeasurable point = %+v, %v; want a failed check with its reason", res, err)
	}

	// A window the deadline cut measured too few as well, but says nothing
	// of the point: an error, the cell stays T.
	m = study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	cut := fmt.Errorf("measure window: 3 successful responses: %w (%w)", justrunit.ErrTooFewSamples, context.DeadlineExceeded)
	c, _, notified = newChecker(t, &curveRunner{f: linear, fail: map[float64]error{50: cut}}, 0.1)
	if _, err := c.CheckAll(context.Background(), m); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("CheckAll with a window cut by its deadline = %v, want the error", err)
	}
	if cell, _ := m.Cell(justrunit.Point{50}, justrunit.RTP95); cell.Prov != justrunit.Used || len(*notified) != 0 || len(m.Unmeasurable()) != 0 {
		t.Errorf("after a cut window: cell %+v, %d notified, unmeasurable %v; want T, none, none", cell, len(*notified), m.Unmeasurable())
	}
}

// saturatedRunner measures as curveRunner, but its clone is saturated:
// it answered half the load offered, and its response times understate.
type saturatedRunner struct{ curveRunner }

func (r *saturatedRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	o, err := r.curveRunner.Run(ctx, p)
	o.Saturated, o.Offered = true, 2*o.Throughput
	return o, err
}

// TestCheckSaturated: a checking experiment whose clone was saturated
// fails the check of a response time however close its figure is, since
// that figure understates what clients would see, and says so; the
// throughput it measured is its capacity and is compared as usual.
func TestCheckSaturated(t *testing.T) {
	m := study(t, linear)
	use(t, m, 50, justrunit.RTP95)
	use(t, m, 50, justrunit.Throughput)
	c, logs, notified := newChecker(t, &saturatedRunner{curveRunner{f: linear}}, 0.1)
	results, err := c.CheckPoint(context.Background(), m, justrunit.Point{50})
	if err != nil || len(results) != 2 {
		t.Fatalf("CheckPoint = %+v, %v; want 2 results", results, err)
	}
	rt, tp := results[0], results[1]
	if rt.Passed || rt.RelError != 0 || !strings.Contains(rt.Reason, "saturated") || rt.Measured != linear(50) {
		t.Errorf("check of rt_p95 = %+v, want failed with the measured figure and the reason", rt)
	}
	if !tp.Passed || tp.Reason != "" {
		t.Errorf("check of throughput = %+v, want passed (5·cpu is linear)", tp)
	}
	if len(*notified) != 1 || (*notified)[0].Metric != justrunit.RTP95 {
		t.Errorf("notified %+v, want the rt_p95 check", *notified)
	}
	if !strings.Contains(logs.String(), justrunit.EventCheckFailed) || !strings.Contains(logs.String(), "saturated") {
		t.Errorf("the failed check was not logged with its reason: %s", logs)
	}
	if cell, _ := m.Cell(justrunit.Point{50}, justrunit.RTP95); cell.Prov != justrunit.Verified || !m.Rows[4].Observation.Saturated {
		t.Errorf("cell after the check = %+v, want V with the saturated observation", cell)
	}
}
