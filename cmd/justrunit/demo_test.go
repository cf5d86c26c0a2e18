package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/examples/auction/auction"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/manager"
)

// TestDemo runs the paper's server-expansion case, time-compressed: the
// load of auction0 rises, its SLA is violated, the manager studies, plans
// and applies an expansion, and at the end every SLA is met and nothing is
// left behind.
func TestDemo(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs the demo for about two minutes")
	}
	out := t.TempDir()
	cmd := newRootCmd()
	var stdout bytes.Buffer
	progress := &lockedBuffer{}
	cmd.SetOut(&stdout)
	cmd.SetErr(progress) // the monitor and the manager write from two goroutines
	cmd.SetArgs([]string{"--data-dir", t.TempDir(), "demo", "--interval", "8s", "--intervals", "13", "--json", "--out", out})
	err := cmd.ExecuteContext(context.Background())
	t.Logf("demo progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	var sum demoSummary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("demo --json printed no summary: %v\n%s", err, stdout.String())
	}
	kinds := map[string]int{}
	for _, e := range sum.Timeline.Events {
		kinds[e.Kind]++
	}
	for _, k := range []string{"manager.sla_violated", manager.EventStudy, manager.EventDecision, manager.EventPlan, manager.EventApplied, "manager.sla_met"} {
		if kinds[k] == 0 {
			t.Errorf("no %s event in the timeline", k)
		}
	}
	if !sum.FinalSLAMet {
		t.Errorf("SLAs at the end: %v, want all met", sum.SLAMet)
	}
	if len(sum.Violations) == 0 || sum.Violations[0].Service != "auction0" {
		t.Errorf("violations = %+v, want auction0's", sum.Violations)
	}
	if st := sum.Study; st == nil || len(st.Measured) == 0 || len(st.Measured)+len(st.Interpolated) < 3 || st.Chosen <= 25 {
		t.Errorf("study = %+v, want measured and interpolated points and a share above the 25%% auction0's app had", st)
	}
	if len(sum.Actions) == 0 || len(sum.Intervals["auction0"]) < 10 {
		t.Errorf("actions %v, %d intervals of auction0", sum.Actions, len(sum.Intervals["auction0"]))
	}
	if sum.Leftovers != 0 {
		t.Errorf("%d objects left behind", sum.Leftovers)
	}
	if !(sum.Work > 0) {
		t.Errorf("work = %g, want the calibrated --work (> 0)", sum.Work)
	}
	powered := 0
	for _, h := range sum.Hosts {
		if h.On && !h.Sandbox {
			powered++
		}
	}
	if powered != 2 {
		t.Errorf("%d on-line hosts powered at the end, want 2 (pm2 powered on to make room)", powered)
	}
	for _, f := range []string{"timeline.svg", "timeline.json"} {
		if st, err := os.Stat(out + "/" + f); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for writers on several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFidelityPoints(t *testing.T) {
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 10")
	space := justrunit.Space{Params: []justrunit.Parameter{cpu}}
	for _, tt := range []struct {
		measured []float64
		want     []float64
	}{
		{[]float64{20, 30, 40, 60, 90}, []float64{30, 40, 60}},
		// In the order measured, as the sla strategy measures them.
		{[]float64{60, 40, 20, 30}, []float64{60, 40, 30}},
		{[]float64{40, 100}, []float64{40, 60, 70}},
		// Unmeasurable at 70 (-70): no prediction to check there.
		{[]float64{40, -70, 100}, []float64{40, 50, 60}},
		{nil, nil},
	} {
		m, err := justrunit.NewMatrix(space, []justrunit.Metric{justrunit.RTP95})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Date(2026, 11, 27, 23, 0, 0, 0, time.UTC)
		for k, c := range tt.measured {
			var err error
			if c < 0 {
				err = m.MarkUnmeasurable(justrunit.Point{-c}, "too few responses")
			} else {
				err = m.Record(justrunit.Observation{Point: justrunit.Point{c}, Start: start.Add(time.Duration(k) * time.Minute), RT: justrunit.ResponseTime{P95: 10}})
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if len(tt.measured) > 0 { // as the study fills the rest
			in, _ := interp.New("linear")
			if err := in.Interpolate(m); err != nil {
				t.Fatal(err)
			}
		}
		if got := fidelityPoints(m, 70); !slices.Equal(got, tt.want) {
			t.Errorf("measured %v: fidelityPoints = %v, want %v", tt.measured, got, tt.want)
		}
	}
}

// TestDemoStudy runs "demo study --json" with short windows and checks its
// contract: the keys, cell counts that add up, the study within its time
// bound, three fidelity points, the out-proxy's match rate, no clone call
// reaching the data tier and nothing left behind. The fidelity figures
// are logged, not judged: on a shared 2-core machine single windows are
// too noisy for a pass/fail (see the README).
func TestDemoStudy(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs the study demo for about two minutes")
	}
	cmd := newRootCmd()
	var stdout bytes.Buffer
	progress := &lockedBuffer{}
	cmd.SetOut(&stdout)
	cmd.SetErr(progress)
	cmd.SetArgs([]string{"--data-dir", t.TempDir(), "demo", "study", "--json", "--out", t.TempDir(), "--window", "8s", "--online-window", "8s", "--settle", "5s"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("demo study: %v\n%s", err, progress.String())
	}
	var raw map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &raw); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	for _, k := range []string{"measured", "interpolated", "time_bound_s", "elapsed_s", "sla_allocation", "fidelity",
		"match_rate", "clone_requests_reaching_data_tier", "online_p95_ratio", "leftovers"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("key %q missing from the report", k)
		}
	}
	var rep demoStudyReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("measured %d, interpolated %d cells in %.0f s of %.0f s; match rate %.3f; on-line p95 ratio %.2f",
		rep.Measured, rep.Interpolated, rep.ElapsedS, rep.TimeBoundS, rep.MatchRate, rep.OnlineP95Ratio)
	for _, f := range rep.Fidelity {
		t.Logf("fidelity %s (%s): p95 %.1f predicted, %.1f on-line, %.1f on a clone over the same requests; mean %.1f, %.1f, %.1f", f.Point, f.Provenance,
			f.PredictedP95Ms, f.ActualP95Ms, f.SandboxP95Ms, f.PredictedMeanMs, f.ActualMeanMs, f.SandboxMeanMs)
		if f.PredictedP95Ms <= 0 || f.ActualP95Ms <= 0 || f.ActualMeanMs <= 0 || f.SandboxP95Ms <= 0 || f.SandboxMeanMs <= 0 {
			t.Errorf("fidelity point %s has empty figures: %+v", f.Point, f)
		}
		if ci := f.ActualP95CIMs; ci[0] > f.ActualP95Ms || f.ActualP95Ms > ci[1] {
			t.Errorf("fidelity point %s: on-line p95 %.2f outside its interval %v", f.Point, f.ActualP95Ms, ci)
		}
		switch ci := f.PredictedP95CIMs; {
		case f.Provenance != "X" && ci == nil:
		case ci == nil || f.P95IntervalsOverlap == nil:
			t.Errorf("fidelity point %s (%s): no interval for the measured prediction", f.Point, f.Provenance)
		case ci[0] > f.PredictedP95Ms || f.PredictedP95Ms > ci[1]:
			t.Errorf("fidelity point %s: predicted p95 %.2f outside its interval %v", f.Point, f.PredictedP95Ms, *ci)
		default:
			t.Logf("fidelity %s: p95 intervals %v and %v, overlapping: %v", f.Point, *ci, f.ActualP95CIMs, *f.P95IntervalsOverlap)
		}
	}
	const metrics, points = 4, 9
	if rep.Measured+rep.Interpolated != metrics*points || rep.Measured == 0 || rep.Measured > 5*metrics {
		t.Errorf("%d measured and %d interpolated cells, want at most %d measured of %d", rep.Measured, rep.Interpolated, 5*metrics, metrics*points)
	}
	if rep.ElapsedS > rep.TimeBoundS+5 {
		t.Errorf("the study took %.0f s of a %.0f s time bound", rep.ElapsedS, rep.TimeBoundS)
	}
	if len(rep.Fidelity) != 3 {
		t.Errorf("%d fidelity points, want 3", len(rep.Fidelity))
	}
	if rep.MatchRate < 0.95 {
		t.Errorf("match rate %.3f, want ≥ 0.95 with the shipped masks", rep.MatchRate)
	}
	if rep.CloneRequestsReachingDataTier != 0 || rep.Leftovers != 0 {
		t.Errorf("%d clone calls reached the data tier, %d leftovers; want none", rep.CloneRequestsReachingDataTier, rep.Leftovers)
	}
	if rep.OnlineP95Ratio <= 0 {
		t.Errorf("online_p95_ratio = %v", rep.OnlineP95Ratio)
	}
	switch p := rep.OnlineProc; {
	case p == nil && os.Getenv("CI") == "true":
		t.Errorf("no figures of the process under CI: %s", rep.OnlineProcNote)
	case p == nil:
		t.Logf("no figures of the process: %s", rep.OnlineProcNote)
	case p.Before.CPUUs <= 0 || p.During.CPUUs <= 0 || p.After.CPUUs <= 0 || p.During.Runs <= 0:
		t.Errorf("the process's figures are missing a window: %+v", *p)
	default:
		t.Logf("the process per on-line response before, during, after: waiting %.0f, %.0f, %.0f µs", p.Before.WaitUs, p.During.WaitUs, p.After.WaitUs)
	}
	if rep.Arrival != "uniform" || rep.Work <= 0 {
		t.Errorf("arrival %q, work %g: want the default uniform arrivals and the calibrated work (> 0)", rep.Arrival, rep.Work)
	}
}

// TestCalibratedWork scales a work factor by how much slower or faster a
// unit of work is here than where the example was measured.
func TestCalibratedWork(t *testing.T) {
	for _, c := range []struct {
		work float64
		unit time.Duration
		want float64
	}{
		{2, auction.NominalUnit, 2},
		{2, 125 * time.Microsecond, 1.6},
		{2, 50 * time.Microsecond, 4},
		{1, 300 * time.Microsecond, 0.33},
		{2, 0, 2},
		{1.5, 125 * time.Microsecond, 1.2},
		{1.5, 121 * time.Microsecond, 1.2},
	} {
		if got := calibratedWork(c.work, c.unit); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("calibratedWork(%g, %v) = %g, want %g", c.work, c.unit, got, c.want)
		}
	}
}

// TestSummariseKeepsTheDecidedStudy: a later study that leads to no
// decision does not replace, in the summary, the one whose decision was
// applied.
func TestSummariseKeepsTheDecidedStudy(t *testing.T) {
	matrix := func(measured ...float64) *justrunit.Matrix {
		cpu, err := justrunit.ParseParameter("cpu=30..100 step 10")
		if err != nil {
			t.Fatal(err)
		}
		m, err := justrunit.NewMatrix(justrunit.Space{Params: []justrunit.Parameter{cpu}}, []justrunit.Metric{justrunit.RTMean})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range measured {
			if err := m.Record(justrunit.Observation{Point: justrunit.Point{v}, Samples: 200, RT: justrunit.ResponseTime{Mean: 10}}); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	tl := &manager.Timeline{Events: []manager.Event{
		{Kind: manager.EventStudyDone, Data: map[string]any{"matrix": matrix(30, 80, 100)}},
		{Kind: manager.EventDecision, Data: map[string]any{"target": "auction0-app", "cpu": 60.0}},
		{Kind: manager.EventCheck}, // the check failed: decided again
		{Kind: manager.EventDecision, Data: map[string]any{"target": "auction0-app", "cpu": 80.0}},
		{Kind: manager.EventStudyDone, Data: map[string]any{"matrix": matrix(90, 100)}},
	}}
	var sum demoSummary
	sum.summarise(tl)
	if st := sum.Study; st == nil || st.Chosen != 80 || st.Target != "auction0-app" || !slices.Equal(st.Measured, []float64{30, 80, 100}) {
		t.Fatalf("study = %+v, want the one decided from (30, 80, 100 measured; 80 chosen last)", st)
	}

	tl.Events = tl.Events[4:] // no decision at all: the last study
	sum = demoSummary{}
	sum.summarise(tl)
	if st := sum.Study; st == nil || st.Chosen != 0 || !slices.Equal(st.Measured, []float64{90, 100}) {
		t.Fatalf("study = %+v, want the last one, nothing chosen", st)
	}
}

// TestBenchOnline runs "bench online --json" for one short cycle and checks
// its report: a window without an experiment and one with, both with
// responses, their ratios, and nothing left behind.
func TestBenchOnline(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs the study demo's site for about half a minute")
	}
	cmd := newRootCmd()
	var stdout bytes.Buffer
	progress := &lockedBuffer{}
	cmd.SetOut(&stdout)
	cmd.SetErr(progress)
	cmd.SetArgs([]string{"--data-dir", t.TempDir(), "bench", "online", "--json", "--out", t.TempDir(), "--cycles", "1", "--window", "4s", "--settle", "2s"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("bench online: %v\n%s", err, progress.String())
	}
	var rep benchOnlineReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	if len(rep.Cycles) != 1 {
		t.Fatalf("%d cycles in the report, want 1: %s", len(rep.Cycles), stdout.String())
	}
	c := rep.Cycles[0]
	t.Logf("on-line p95 %.2f ms with an experiment, %.2f without; mean %.2f, %.2f", c.FedP95Ms, c.NoneP95Ms, c.FedMeanMs, c.NoneMeanMs)
	if c.Samples[0] == 0 || c.Samples[1] == 0 || c.NoneP95Ms <= 0 || c.FedP95Ms <= 0 || c.WindowsS[0] != 8 || c.WindowsS[1] <= 4 {
		t.Errorf("a window measured nothing: %+v", c)
	}
	if c.P95Ratio != c.FedP95Ms/c.NoneP95Ms || rep.P95RatioMedian != c.P95Ratio || rep.MeanRatioMedian != c.MeanRatio {
		t.Errorf("ratios do not follow from the windows: %+v, medians %v %v", c, rep.P95RatioMedian, rep.MeanRatioMedian)
	}
	switch {
	case !rep.ProcSched && os.Getenv("CI") == "true":
		t.Errorf("no figures of the process under CI: %s", rep.Note)
	case !rep.ProcSched:
		t.Logf("no figures of the process: %s", rep.Note)
	case c.Proc[0].CPUUs <= 0 || c.Proc[1].CPUUs <= 0 || c.Proc[0].WaitUs < 0 || c.Proc[1].WaitUs < 0 || c.Proc[0].Runs <= 0 || c.Proc[1].Runs <= 0 ||
		rep.ProcWaitUsMedian != [2]float64{c.Proc[0].WaitUs, c.Proc[1].WaitUs}:
		t.Errorf("the process's figures do not add up: %+v per response, median wait %v", c.Proc, rep.ProcWaitUsMedian)
	default:
		t.Logf("the process per on-line response: CPU %.0f µs with an experiment, %.0f without; waiting %.0f, %.0f", c.Proc[1].CPUUs, c.Proc[0].CPUUs, c.Proc[1].WaitUs, c.Proc[0].WaitUs)
	}
	if rep.Leftovers != 0 {
		t.Errorf("%d objects left behind", rep.Leftovers)
	}
	if !strings.Contains(progress.String(), "Cycle 1/1") {
		t.Errorf("no progress line names the cycle:\n%s", progress.String())
	}
}
