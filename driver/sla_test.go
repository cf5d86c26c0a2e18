package driver

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// slaCurves are p95 response times (ms) against cpu share (%), all
// non-increasing in cpu: the shapes a tier's latency takes as it gets more
// CPU.
var slaCurves = []struct {
	name string
	f    func(cpu float64) float64
}{
	{"linear", func(x float64) float64 { return 110 - x }},
	{"convex 1/x", func(x float64) float64 { return 10 + 4000/(x+10) }},
	{"queueing knee", func(x float64) float64 {
		if x <= 30 {
			return 1e4
		}
		return 5 * 70 / (x - 30) * 10
	}},
	{"concave", func(x float64) float64 { return 100 - x*x/100 }},
	{"exponential", func(x float64) float64 { return 20 + 500*math.Exp(-x/15) }},
	{"flat, passing everywhere", func(float64) float64 { return 20 }},
	{"flat, failing everywhere", func(float64) float64 { return 100 }},
	{"plateaus", func(x float64) float64 { return 100 - 20*math.Floor(x/30) }},
}

// knee returns a step curve: 200 ms below at, 20 ms from at up.
func knee(at float64) func(float64) float64 {
	return func(x float64) float64 {
		if x < at {
			return 200
		}
		return 20
	}
}

// leastPassing is the brute-force answer: the least cpu value whose p95 is
// within max, or -1.
func leastPassing(xs []float64, f func(float64) float64, max float64) float64 {
	for _, x := range xs {
		if f(x) <= max {
			return x
		}
	}
	return -1
}

func onCPU(f func(float64) float64) curve { return func(p justrunit.Point) float64 { return f(p[0]) } }

// TestSLAFindsTheLeastPassingAllocation is the acceptance test: on
// an 11-point axis (cpu 0..100 step 10) the sla strategy finds the least
// passing allocation of every monotone curve in at most 4 experiments.
func TestSLAFindsTheLeastPassingAllocation(t *testing.T) {
	type tc struct {
		name string
		f    func(float64) float64
		max  float64
	}
	var tests []tc
	for _, c := range slaCurves {
		tests = append(tests, tc{c.name, c.f, 50})
	}
	for at := 0.0; at <= 110; at += 10 { // a steep knee at every position, and none
		tests = append(tests, tc{fmt.Sprintf("steep knee at %g", at), knee(at), 50})
	}
	for _, c := range slaCurves { // every curve against many SLA levels
		for _, max := range []float64{15, 21, 25, 33, 40, 45, 55, 60, 70, 80, 90, 99, 150, 500} {
			tests = append(tests, tc{fmt.Sprintf("%s, max %g", c.name, max), c.f, max})
		}
	}
	xs := space(t, "cpu=0..100 step 10").Params[0].Values
	total := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: tt.max}
			m := matrix(t, space(t, "cpu=0..100 step 10"))
			run := simulate(t, mustSLA(t, ""), m, onCPU(tt.f), simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute, sla: sla})
			total += len(run.order)
			if len(run.order) > 4 {
				t.Errorf("sla ran %d experiments (%v), want ≤ 4", len(run.order), values(run.order, 0))
			}
			got, ok, err := LeastPassing(m, *sla, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			want := leastPassing(xs, tt.f, tt.max)
			if (want < 0) != !ok || (ok && got[0] != want) {
				t.Errorf("LeastPassing = %v, %v after running %v; want cpu=%v", got, ok, values(run.order, 0), want)
			}
			lines, _ := Lines(m, *sla, "")
			if !lines[0].Settled {
				t.Errorf("the search ended unsettled: %+v", lines[0])
			}
		})
	}
	t.Logf("%d searches, %.2f experiments on average (bisection alone: 3.5-4)", len(tests), float64(total)/float64(len(tests)))
}

// observeThroughput makes an observation whose throughput is the curve's
// value (its p95 a fixed 10 ms).
func observeThroughput(p justrunit.Point, f curve) justrunit.Observation {
	o := observe(p, func(justrunit.Point) float64 { return 10 })
	o.Throughput = f(p)
	return o
}

// TestSLAFloorFindsTheLeastPassingAllocation is the acceptance test again
// for a floor (throughput>=MIN), where a larger allocation gives a larger
// value: every throughput curve is the mirror image 20000 − f of a
// response-time curve, non-decreasing in cpu.
func TestSLAFloorFindsTheLeastPassingAllocation(t *testing.T) {
	const top = 20000
	xs := space(t, "cpu=0..100 step 10").Params[0].Values
	for _, c := range slaCurves {
		for _, max := range []float64{15, 21, 25, 33, 40, 45, 50, 55, 60, 70, 80, 90, 99, 150, 500} {
			min := top - max
			t.Run(fmt.Sprintf("%s, throughput>=%g", c.name, min), func(t *testing.T) {
				sla := &justrunit.SLA{Metric: justrunit.Throughput, Min: min}
				g := func(x float64) float64 { return top - c.f(x) }
				m := matrix(t, space(t, "cpu=0..100 step 10"))
				run := simulate(t, mustSLA(t, ""), m, onCPU(g), simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute, sla: sla, observe: observeThroughput})
				if len(run.order) > 4 {
					t.Errorf("sla ran %d experiments (%v), want ≤ 4", len(run.order), values(run.order, 0))
				}
				got, ok, err := LeastPassing(m, *sla, "cpu")
				if err != nil {
					t.Fatal(err)
				}
				want := -1.0
				for _, x := range xs {
					if g(x) >= min {
						want = x
						break
					}
				}
				if (want < 0) != !ok || (ok && got[0] != want) {
					t.Errorf("LeastPassing = %v, %v after running %v; want cpu=%v", got, ok, values(run.order, 0), want)
				}
				if lines, _ := Lines(m, *sla, ""); !lines[0].Settled {
					t.Errorf("the search ended unsettled: %+v", lines[0])
				}
				// A floor is a ceiling upside down: the search must probe
				// exactly as it does for the mirrored ceiling rt_p95<=max.
				mc := matrix(t, space(t, "cpu=0..100 step 10"))
				ceiling := simulate(t, mustSLA(t, ""), mc, onCPU(c.f), simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute,
					sla: &justrunit.SLA{Metric: justrunit.RTP95, Max: max}})
				if !slices.Equal(values(run.order, 0), values(ceiling.order, 0)) {
					t.Errorf("floor probed %v, the mirrored ceiling %v; want the same", values(run.order, 0), values(ceiling.order, 0))
				}
			})
		}
	}
}

func TestSLAFloorInterpolates(t *testing.T) {
	// The mirror of TestSLAInterpolationSavesExperiments: throughput 10x
	// the cpu share, throughput>=600: bisection 50 (fails), 80 (passes),
	// then the interpolated crossing, 60, passes and is settled.
	sla := &justrunit.SLA{Metric: justrunit.Throughput, Min: 600}
	m := matrix(t, space(t, "cpu=0..100 step 10"))
	run := simulate(t, mustSLA(t, ""), m, onCPU(func(x float64) float64 { return 10 * x }),
		simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute, sla: sla, observe: observeThroughput})
	if want := []float64{50, 80, 60}; !slices.Equal(values(run.order, 0), want) {
		t.Errorf("sla ran %v, want %v", values(run.order, 0), want)
	}
}

// TestSLAZeroSamplesIsNoPass: a measured point whose window saw no
// successful response reads rt_p95 = 0, which is no measurement and must
// not count as meeting rt_p95<=50; a real 0 (responses faster than the
// histogram tells apart) still does.
func TestSLAZeroSamplesIsNoPass(t *testing.T) {
	s := space(t, "cpu=0..100 step 10")
	type meas struct {
		samples int64
		p95     float64
	}
	tests := []struct {
		name     string
		sla      justrunit.SLA
		measured map[float64]meas
		want     float64 // -1: none
	}{
		{"no responses at the least share", justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
			map[float64]meas{0: {0, 0}}, -1},
		{"no responses below a real pass", justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
			map[float64]meas{30: {0, 0}, 100: {1000, 20}}, 100},
		{"a real 0 ms passes", justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
			map[float64]meas{30: {1000, 0}}, 30},
		{"throughput 0 with no responses fails a floor as it is", justrunit.SLA{Metric: justrunit.Throughput, Min: 100},
			map[float64]meas{30: {0, 0}, 60: {1000, 20}}, 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(t, s)
			for x, v := range tt.measured {
				o := observe(justrunit.Point{x}, func(justrunit.Point) float64 { return v.p95 })
				o.Samples = v.samples
				if v.samples == 0 {
					o.Throughput = 0
				}
				if err := m.Record(o); err != nil {
					t.Fatal(err)
				}
			}
			got, ok, err := LeastPassing(m, tt.sla, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			if (tt.want < 0) == ok || (ok && got[0] != tt.want) {
				t.Errorf("LeastPassing(%s) = %v, %v; want %v", tt.sla, got, ok, tt.want)
			}
		})
	}
}

func TestSLAInterpolationSavesExperiments(t *testing.T) {
	// On a linear curve regula falsi lands on the answer: bisection 50
	// (fails), then 80 (passes), then the interpolated crossing, 60, passes
	// and is settled by 50 failing — 3 experiments, not 4.
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	m := matrix(t, space(t, "cpu=0..100 step 10"))
	run := simulate(t, mustSLA(t, ""), m, onCPU(func(x float64) float64 { return 110 - x }), simConfig{slots: 1, timeBound: time.Hour, expLen: time.Minute, sla: sla})
	if want := []float64{50, 80, 60}; !slices.Equal(values(run.order, 0), want) {
		t.Errorf("sla ran %v, want %v", values(run.order, 0), want)
	}
}

func TestSLANeverExceedsTheTimeBound(t *testing.T) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	f := func(x float64) float64 { return 10 + 4000/(x+10) } // answer: cpu=90
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("%d experiments", n), func(t *testing.T) {
			m := matrix(t, space(t, "cpu=0..100 step 10"))
			run := simulate(t, mustSLA(t, ""), m, onCPU(f), simConfig{slots: 1, timeBound: time.Duration(n)*time.Minute + 59*time.Second, expLen: time.Minute, sla: sla})
			if len(run.order) > n {
				t.Fatalf("ran %d experiments with time for %d", len(run.order), n)
			}
			got, ok, err := LeastPassing(m, *sla, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			// Cut short, the answer is safe: a measured pass, never a fail.
			if ok && f(got[0]) > sla.Max {
				t.Errorf("LeastPassing = %v, which fails the SLA", got)
			}
		})
	}
}

func TestSLAUsesSlotsOnlyWhenTimeIsShort(t *testing.T) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	f := func(x float64) float64 { return 20 + 500*math.Exp(-x/15) } // answer: cpu=50
	tests := []struct {
		name      string
		rounds    int
		maxRounds int
		maxRuns   int
	}{
		{"time for bisection: one probe a round", 10, 4, 4},
		{"2 rounds: 3 probes a round", 2, 2, 6},
		{"1 round: every value at once", 1, 1, 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(t, space(t, "cpu=0..100 step 10"))
			run := simulate(t, mustSLA(t, ""), m, onCPU(f), simConfig{slots: 11, timeBound: time.Duration(tt.rounds) * time.Minute, expLen: time.Minute, sla: sla})
			if run.rounds > tt.maxRounds || len(run.order) > tt.maxRuns {
				t.Errorf("%d rounds, %d experiments (%v); want ≤ %d and ≤ %d", run.rounds, len(run.order), values(run.order, 0), tt.maxRounds, tt.maxRuns)
			}
			got, ok, _ := LeastPassing(m, *sla, "")
			if !ok || got[0] != 50 {
				t.Errorf("LeastPassing = %v, %v; want cpu=50", got, ok)
			}
		})
	}
}

func TestSLASearchesEveryLine(t *testing.T) {
	// cpu × freq × host class: one search along cpu per (freq, class).
	s := space(t, "freq=1.2,2.4", "cpu=0..100 step 10", "hostclass=old,new")
	f := func(p justrunit.Point) float64 {
		v := 10 + 4000/(p[1]+10)
		v /= p[0] / 1.2
		if p[2] == 1 {
			v *= 0.6
		}
		return v
	}
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	for _, slots := range []int{1, 3, 4} {
		t.Run(fmt.Sprintf("%d slots", slots), func(t *testing.T) {
			m := matrix(t, s)
			run := simulate(t, mustSLA(t, ""), m, f, simConfig{slots: slots, timeBound: time.Hour, expLen: time.Minute, sla: sla, durations: []float64{1, 0.7, 0.4}})
			if len(run.order) > 4*4 {
				t.Errorf("ran %d experiments for 4 lines, want ≤ 16", len(run.order))
			}
			lines, err := Lines(m, *sla, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			if len(lines) != 4 {
				t.Fatalf("Lines = %d lines, want 4", len(lines))
			}
			for _, ln := range lines {
				if !ln.Settled || ln.Measured > 4 {
					t.Errorf("line %s: %+v, want settled in ≤ 4", s.Format(ln.At), ln)
				}
				want := -1.0
				for _, x := range s.Params[1].Values {
					p := append(justrunit.Point(nil), ln.At...)
					p[1] = x
					if f(p) <= sla.Max {
						want = x
						break
					}
				}
				if (want < 0) != (ln.Least == nil) || (ln.Least != nil && ln.Least[1] != want) {
					t.Errorf("line %s: least %v, want cpu=%v", s.Format(ln.At), ln.Least, want)
				}
			}
			if _, _, err := LeastPassing(m, *sla, "cpu"); fieldOf(err) != "axis" {
				t.Errorf("LeastPassing on 4 lines = %v, want an error on axis", err)
			}
		})
	}
}

func TestSLAParallelLines(t *testing.T) {
	s := space(t, "cpu=0..100 step 10", "freq=1.2,1.8,2.4")
	m := matrix(t, s)
	st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 2, Free: 2,
		SLA: &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}}
	got, err := mustSLA(t, "").Next(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if want := []justrunit.Point{{50, 1.2}, {50, 1.8}}; !slices.EqualFunc(got, want, justrunit.Point.Equal) {
		t.Errorf("Next = %v, want the first probe of two lines %v", got, want)
	}
	// A line with a probe running waits for it.
	st.Running, st.Slots, st.Free = got, 3, 1
	got, err = mustSLA(t, "").Next(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	if want := []justrunit.Point{{50, 2.4}}; !slices.EqualFunc(got, want, justrunit.Point.Equal) {
		t.Errorf("Next with two lines busy = %v, want %v", got, want)
	}
	if got := mustSLA(t, "").Estimate(st); got != 3+3+4 {
		t.Errorf("Estimate = %d, want 10 (3 left on each busy line after its probe, 4 on the idle one)", got)
	}
}

func TestSLAErrors(t *testing.T) {
	ctx := context.Background()
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	tests := []struct {
		name      string
		params    []string
		axis      string
		sla       *justrunit.SLA
		wantField string
	}{
		{"no SLA", []string{"cpu=0..100 step 10"}, "", nil, "sla"},
		{"SLA on a metric not recorded", []string{"cpu=0..100 step 10"}, "", &justrunit.SLA{Metric: justrunit.RTP99, Max: 50}, "sla.metric"},
		{"SLA max NaN", []string{"cpu=0..100 step 10"}, "", &justrunit.SLA{Metric: justrunit.RTP95, Max: math.NaN()}, "sla.max"},
		{"a ceiling on throughput", []string{"cpu=0..100 step 10"}, "", &justrunit.SLA{Metric: justrunit.Throughput, Max: 900}, "sla.max"},
		{"a floor on p95", []string{"cpu=0..100 step 10"}, "", &justrunit.SLA{Metric: justrunit.RTP95, Min: 50}, "sla.min"},
		{"SLA min infinite", []string{"cpu=0..100 step 10"}, "", &justrunit.SLA{Metric: justrunit.Throughput, Min: math.Inf(1)}, "sla.min"},
		{"unknown axis", []string{"cpu=0..100 step 10"}, "mem", sla, "axis"},
		{"categorical axis", []string{"cpu=0..100 step 10", "hostclass=a,b"}, "hostclass", sla, "axis"},
		{"nothing numeric", []string{"hostclass=a,b"}, "", sla, "axis"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(t, space(t, tt.params...))
			st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 1, Free: 1, SLA: tt.sla}
			_, err := mustSLA(t, tt.axis).Next(ctx, st)
			if fieldOf(err) != tt.wantField {
				t.Errorf("Next = %v, want an error on %s", err, tt.wantField)
			}
			if got := mustSLA(t, tt.axis).Estimate(st); got != 0 {
				t.Errorf("Estimate = %d, want 0 for a plan it cannot make", got)
			}
		})
	}
}

func TestSLADefaultAxis(t *testing.T) {
	tests := []struct {
		params []string
		want   int
	}{
		{[]string{"freq=1.2,2.4", "cpu=10,20"}, 1},
		{[]string{"hostclass=a,b", "mem=128,256", "freq=1,2"}, 1},
	}
	for _, tt := range tests {
		if got, err := resolveAxis(space(t, tt.params...), ""); err != nil || got != tt.want {
			t.Errorf("resolveAxis(%v) = %d, %v; want %d", tt.params, got, err, tt.want)
		}
	}
}

func TestLeastPassingNoisyMeasurements(t *testing.T) {
	s := space(t, "cpu=0..100 step 10")
	sla := justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	tests := []struct {
		name     string
		measured map[float64]float64
		want     float64 // -1: none
		settled  bool
	}{
		{"nothing measured", nil, -1, false},
		{"monotone", map[float64]float64{30: 80, 40: 45, 100: 10}, 40, true},
		{"a pass below a fail is not trusted", map[float64]float64{20: 40, 50: 60, 70: 30}, 70, false},
		{"least value passes", map[float64]float64{0: 10}, 0, true},
		{"largest value fails", map[float64]float64{100: 51}, -1, true},
		{"only passes high up", map[float64]float64{80: 40}, 80, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(t, s)
			for x, v := range tt.measured {
				record(t, m, func(justrunit.Point) float64 { return v }, justrunit.Point{x})
			}
			got, ok, err := LeastPassing(m, sla, "cpu")
			if err != nil {
				t.Fatal(err)
			}
			if (tt.want < 0) == ok || (ok && got[0] != tt.want) {
				t.Errorf("LeastPassing = %v, %v; want %v", got, ok, tt.want)
			}
			lines, _ := Lines(m, sla, "cpu")
			if lines[0].Settled != tt.settled || lines[0].Measured != len(tt.measured) {
				t.Errorf("Lines = %+v, want settled %v, %d measured", lines[0], tt.settled, len(tt.measured))
			}
		})
	}
}

func TestProbesFor(t *testing.T) {
	tests := []struct{ size, rounds, want int }{
		{12, 4, 1}, {12, 10, 1}, {12, 3, 2}, {12, 2, 3}, {12, 1, 11}, {2, 1, 1}, {1, 1, 1}, {5, 0, 1},
	}
	for _, tt := range tests {
		if got := probesFor(tt.size, tt.rounds); got != tt.want {
			t.Errorf("probesFor(%d, %d) = %d, want %d", tt.size, tt.rounds, got, tt.want)
		}
	}
}

func mustSLA(t testing.TB, axis string) *SLASearch {
	t.Helper()
	s, err := NewSLASearch(Options{Axis: axis})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSLADefaultAxisHasValues checks that the default axis is a parameter
// with values to search: with cpu held at one value, the search bisects
// mem rather than measuring every mem value as a line of its own.
func TestSLADefaultAxisHasValues(t *testing.T) {
	s, err := justrunit.NewSpace(justrunit.Parameter{Name: "cpu", Values: []float64{50}},
		justrunit.Parameter{Name: "mem", Values: []float64{128, 256, 384, 512, 640, 768, 896, 1024, 1152}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := resolveAxis(s, "")
	if err != nil || s.Params[d].Name != "mem" {
		t.Fatalf("resolveAxis = %d, %v; want mem", d, err)
	}
	one, err := justrunit.NewSpace(justrunit.Parameter{Name: "cpu", Values: []float64{50}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := resolveAxis(one, ""); err != nil || d != 0 {
		t.Errorf("resolveAxis of a one-point space = %d, %v; want cpu", d, err)
	}
}
