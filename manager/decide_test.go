package manager

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/study"
)

// lineRunner is a test double for the experimenter: rt_mean falls on a
// line from 100 ms at cpu 30% to 20 ms at 100%, and the points of
// unmeasurable measure too few responses.
type lineRunner struct {
	unmeasurable map[float64]bool
	runs         []float64
}

func (r *lineRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.runs = append(r.runs, p[0])
	if r.unmeasurable[p[0]] {
		return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
	}
	rt := 100 - 80*(p[0]-30)/70
	return justrunit.Observation{Point: p, Samples: 1000, Throughput: 50, RT: justrunit.ResponseTime{Mean: rt}}, nil
}

// TestDecideMovesOnFromAnUnmeasurablePoint: the allocation a decision
// rests on is interpolated, and its check finds it cannot even be measured
// (the clone saturated there): the decision moves on to the next
// allocation, checked in its turn, rather than failing.
func TestDecideMovesOnFromAnUnmeasurablePoint(t *testing.T) {
	ctx := context.Background()
	cpu, err := justrunit.ParseParameter("cpu=30..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean}, SLA: &justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, CheckThreshold: 0.1}
	in, err := interp.New("linear")
	if err != nil {
		t.Fatal(err)
	}
	r := &lineRunner{unmeasurable: map[float64]bool{80: true}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x := &siterun.Study{Engine: &study.Engine{Runner: r, Interpolator: in, Logger: log}}
	mat, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []float64{30, 100} {
		o, _ := r.Run(ctx, justrunit.Point{c})
		if err := mat.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Interpolate(mat); err != nil {
		t.Fatal(err)
	}
	var events []Event
	m := &Manager{cfg: Config{Headroom: 0.1, CheckThreshold: 0.1, OnEvent: func(e Event) { events = append(events, e) }},
		log: log, recent: map[string][]tick{}}
	goal := justrunit.SLA{Metric: justrunit.RTMean, Max: 45}
	// cpu=80 is the least predicted to meet 45 ms (42.9), and cannot be
	// measured; cpu=90 is next (31.4), and measures so.
	got, err := m.decide(ctx, x, st, mat, "s", goal)
	if err != nil {
		t.Fatalf("decide = %v, want the next allocation", err)
	}
	// cpu=70 below 80, interpolated at 54.3, is checked with it and
	// measures so; when 90 is chosen, 80 below it is unmeasurable: no
	// candidate, and nothing to check.
	if got != 90 || !slices.Equal(r.runs, []float64{30, 100, 70, 80, 90}) {
		t.Errorf("decide = cpu %g after experiments at %v, want 90 after checking 70 and 80, then 90", got, r.runs)
	}
	found := false
	for _, e := range events {
		found = found || e.Kind == EventCheck && strings.Contains(e.Message, "could not confirm") && strings.Contains(e.Message, "0 successful responses")
	}
	if !found {
		t.Errorf("no %s event saying the check failed: %+v", EventCheck, events)
	}
}

// tableRunner is a test double for the experimenter: rt_mean at each cpu
// is rt's; at the points of unmeasurable it measures too few responses,
// and at those of saturated the clone answers fewer requests than it was
// sent (its response time understates).
type tableRunner struct {
	rt           map[float64]float64
	unmeasurable map[float64]bool
	saturated    map[float64]bool
	runs         []float64
}

func (r *tableRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.runs = append(r.runs, p[0])
	if r.unmeasurable[p[0]] {
		return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
	}
	rt, ok := r.rt[p[0]]
	if !ok {
		return justrunit.Observation{}, fmt.Errorf("no figure for cpu %g in the test", p[0])
	}
	return justrunit.Observation{Point: p, Samples: 1000, Throughput: 50, Saturated: r.saturated[p[0]], RT: justrunit.ResponseTime{Mean: rt}}, nil
}

// TestDecideChecksTheRowBelow: a decision for the least allocation within
// a bound rests on the next smaller one missing it; when that one was
// interpolated, the checker re-measures it in the same round as the
// chosen cell, and the decision is made again when it is found within.
func TestDecideChecksTheRowBelow(t *testing.T) {
	// The study measured cpu 20, 50 and 100 (90, 30 and 20 ms) unless a
	// case says otherwise; interpolated, cpu=30 is 70 ms and 40 is 50 ms,
	// the least within the goal of 50 ms.
	base := map[float64]float64{20: 90, 50: 30, 60: 28, 70: 26, 80: 24, 90: 22, 100: 20}
	with := func(rt map[float64]float64) map[float64]float64 {
		m := maps.Clone(base)
		maps.Copy(m, rt)
		return m
	}
	for _, tt := range []struct {
		name       string
		measured   []float64 // what the study measured
		rt         map[float64]float64
		r          tableRunner // unmeasurable, saturated
		goal       float64
		online     float64 // the tier on-line now, 0 for not known
		want       float64
		runs       []float64 // every experiment, the study's first
		rounds     int       // check rounds
		check      []string  // in the last check's message
		decision   string    // in the first decision's message
		noDecision string    // not in any decision's message
	}{
		{name: "the row below meets the goal when measured", measured: []float64{20, 50, 100}, rt: with(map[float64]float64{30: 48, 40: 47}), goal: 50,
			want: 30, runs: []float64{20, 50, 100, 30, 40}, rounds: 1,
			check:    []string{"the checker confirmed the interpolated value of cpu=40 (measured 47.0) and found cpu=30 meets rt_mean<=50.0 (measured 48.0): deciding again"},
			decision: "app0 needs cpu=40: rt_mean 50.0 (T); cpu=30 below it was interpolated as missing rt_mean<=50.0 (rt_mean 70.0, T): the checker re-measures it"},
		{name: "the row below measured", measured: []float64{20, 30, 50, 100}, rt: with(map[float64]float64{30: 70, 40: 49}), goal: 50,
			want: 40, runs: []float64{20, 30, 50, 100, 40}, rounds: 1,
			check: []string{"the checker confirmed the interpolated value of cpu=40 (measured 49.0)"}, noDecision: "below it"},
		{name: "the row below confirmed missing", measured: []float64{20, 50, 100}, rt: with(map[float64]float64{30: 72, 40: 49}), goal: 50,
			want: 40, runs: []float64{20, 50, 100, 30, 40}, rounds: 1,
			check: []string{"confirmed that cpu=30 misses rt_mean<=50.0 (measured 72.0)"}},
		{name: "the row below off by more than the threshold, still missing", measured: []float64{20, 50, 100}, rt: with(map[float64]float64{30: 60, 40: 49}), goal: 50,
			want: 40, runs: []float64{20, 50, 100, 30, 40}, rounds: 1,
			check: []string{"confirmed that cpu=30 misses rt_mean<=50.0 (measured 60.0)"}},
		{name: "the row below unmeasurable", measured: []float64{20, 50, 100}, rt: with(map[float64]float64{40: 49}), r: tableRunner{unmeasurable: map[float64]bool{30: true}}, goal: 50,
			want: 40, runs: []float64{20, 50, 100, 30, 40}, rounds: 1,
			check: []string{"found that cpu=30 misses rt_mean<=50.0 (unmeasurable", "0 successful responses"}},
		{name: "the row below saturated", measured: []float64{20, 50, 100}, rt: with(map[float64]float64{30: 40, 40: 49}), r: tableRunner{saturated: map[float64]bool{30: true}}, goal: 50,
			want: 40, runs: []float64{20, 50, 100, 30, 40}, rounds: 1,
			check: []string{"found that cpu=30 misses rt_mean<=50.0 (saturated: "}},
		{name: "the chosen row measured", measured: []float64{20, 40, 100}, rt: with(map[float64]float64{30: 48, 40: 50}), goal: 50,
			want: 30, runs: []float64{20, 40, 100, 30}, rounds: 1,
			check:    []string{"the checker found cpu=30 meets rt_mean<=50.0 (measured 48.0): deciding again"},
			decision: "app0 needs cpu=40: rt_mean 50.0 (X); cpu=30 below it"},
		// Interpolated from 20 (90 ms) and 60 (30 ms): 40 is 60 ms, 50 is
		// 45 ms. 40 measures within the goal, and the decision made again
		// rests on 30 (interpolated again: 69 ms), checked in turn.
		{name: "down twice", measured: []float64{20, 60, 100}, rt: with(map[float64]float64{30: 66, 40: 48, 50: 44}), goal: 50,
			want: 40, runs: []float64{20, 60, 100, 40, 50, 30}, rounds: 2,
			check: []string{"the checker confirmed that cpu=30 misses rt_mean<=50.0 (measured 66.0)"}},
		// Nothing is within 30 ms less 10% (27): 50 (30 ms, measured) is
		// the least within 30, resting on 40 (interpolated: 50 ms) missing
		// it; 40 measures within it, and the decision made again rests
		// on 30, checked in turn.
		{name: "without the headroom", measured: []float64{20, 50, 100}, rt: map[float64]float64{20: 90, 30: 60, 40: 29, 50: 30, 100: 29}, goal: 27,
			want: 40, runs: []float64{20, 50, 100, 40, 30}, rounds: 2,
			check:    []string{"the checker confirmed that cpu=30 misses rt_mean<=30.0 (measured 60.0)"},
			decision: "app0 takes cpu=50: rt_mean 30.0 (X); none meets rt_mean<=27.0 with the 10% headroom; this is the least that meets it without; cpu=40 below it was interpolated as missing rt_mean<=30.0 (rt_mean 50.0, T)"},
		// Nothing is within 11.1 ms: 100 (20 ms) is the best, measured;
		// 90 below it, interpolated, is not checked.
		{name: "a best effort checks no neighbour", measured: []float64{20, 50, 100}, rt: base, goal: 10, online: 100,
			want: 100, runs: []float64{20, 50, 100}, rounds: 0, noDecision: "below it"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			r.rt = tt.rt
			m, x, st, mat := decision(t, &r, tt.measured)
			if tt.online > 0 {
				m.recent["s"] = []tick{{tier: tt.online, tierCount: 1000}}
			}
			var events []Event
			m.cfg.OnEvent = func(e Event) { events = append(events, e) }
			got, err := m.decide(context.Background(), x, st, mat, "s", justrunit.SLA{Metric: justrunit.RTMean, Max: tt.goal})
			if err != nil {
				t.Fatalf("decide = %v, want cpu %g", err, tt.want)
			}
			if got != tt.want || !slices.Equal(r.runs, tt.runs) {
				t.Errorf("decide = cpu %g after experiments at %v, want %g after %v", got, r.runs, tt.want, tt.runs)
			}
			var checks, decisions []string
			for _, e := range events {
				switch e.Kind {
				case EventCheck:
					checks = append(checks, e.Message)
				case EventDecision:
					decisions = append(decisions, e.Message)
				}
			}
			if len(checks) != tt.rounds {
				t.Errorf("%d check rounds, want %d: %q", len(checks), tt.rounds, checks)
			}
			for _, want := range tt.check {
				if len(checks) == 0 || !strings.Contains(checks[len(checks)-1], want) {
					t.Errorf("check events %q, want the last with %q", checks, want)
				}
			}
			if tt.decision != "" && (len(decisions) == 0 || !strings.Contains(decisions[0], tt.decision)) {
				t.Errorf("decision events %q, want the first with %q", decisions, tt.decision)
			}
			for _, d := range decisions {
				if tt.noDecision != "" && strings.Contains(d, tt.noDecision) {
					t.Errorf("decision event %q, want none with %q", d, tt.noDecision)
				}
			}
			// Every cell a decision used was checked.
			if c := mat.Counts()[justrunit.Used]; c != 0 {
				t.Errorf("%d cells left T (used, never checked)", c)
			}
		})
	}
}

// decision prepares a decision on app0 over cpu=20..100 step 10 against
// rt_mean, through r: the study measured the points of measured, and the
// linear interpolator filled the rest.
func decision(t *testing.T, r justrunit.Runner, measured []float64) (*Manager, *siterun.Study, *justrunit.Study, *justrunit.Matrix) {
	t.Helper()
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean}, SLA: &justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, CheckThreshold: 0.1}
	in, err := interp.New("linear")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x := &siterun.Study{Engine: &study.Engine{Runner: r, Interpolator: in, Logger: log}}
	mat, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range measured {
		o, err := r.Run(context.Background(), justrunit.Point{c})
		if err != nil {
			t.Fatal(err)
		}
		if err := mat.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Interpolate(mat); err != nil {
		t.Fatal(err)
	}
	m := &Manager{cfg: Config{Headroom: 0.1, CheckThreshold: 0.1}, log: log, recent: map[string][]tick{}}
	return m, x, st, mat
}
