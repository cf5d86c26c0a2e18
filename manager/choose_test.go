package manager

import (
	"math"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

// TestChoose checks the decision's ladder: the least allocation that meets
// the goal, else the least that meets it without the headroom, else the
// best predicted when it is better than the tier on-line now, else none.
func TestChoose(t *testing.T) {
	cpu, err := justrunit.ParseParameter("cpu=30..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	space := justrunit.Space{Params: []justrunit.Parameter{cpu}}
	matrix := func(values ...float64) *justrunit.Matrix {
		m, err := justrunit.NewMatrix(space, []justrunit.Metric{justrunit.Throughput, justrunit.RTMean})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range values {
			switch {
			case math.IsInf(v, 1): // a measured cell without a value
				m.Rows[i].Cells[1] = justrunit.Cell{Value: math.NaN(), Prov: justrunit.Measured}
			case !math.IsNaN(v):
				m.Rows[i].Cells[1] = justrunit.Cell{Value: v, Prov: justrunit.Measured}
			}
		}
		return m
	}
	nan := math.NaN()
	goal := justrunit.SLA{Metric: justrunit.RTMean, Max: 45} // 50 less 10% headroom
	for _, tt := range []struct {
		name     string
		values   []float64
		headroom float64
		online   float64
		want     float64 // the row's cpu, 0 for none
		why      string
	}{
		{"least meeting the goal", []float64{300, nan, 60, 44, 40, 38, 35, 34}, 0.1, 900, 60, ""},
		{"empty cells are skipped", []float64{nan, nan, nan, nan, nan, nan, 44, 30}, 0.1, 900, 90, ""},
		{"without the headroom", []float64{300, 200, 100, 49, 48, 47, 46, 46}, 0.1, 900, 60, "without"},
		{"no headroom to drop", []float64{300, 200, 100, 49, 48, 47, 46, 46}, 0, 900, 90, "best effort"},
		{"best effort", []float64{300, 200, 100, 80, 70, 60, 55, 56}, 0.1, 900, 90, "best effort"},
		{"best no better than on-line", []float64{300, 200, 100, 80, 70, 60, 55, 56}, 0.1, 55, 0, ""},
		{"best better only within the threshold", []float64{300, 200, 100, 80, 70, 60, 55, 56}, 0.1, 60, 0, ""},
		{"best better beyond the threshold", []float64{300, 200, 100, 80, 70, 60, 55, 56}, 0.1, 62, 90, "best effort"},
		{"on-line not known", []float64{300, 200, 100, 80, 70, 60, 55, 56}, 0.1, nan, 0, ""},
		{"a NaN cell is never the best", []float64{math.Inf(1), 200, 100, 80, 70, 60, 55, 56}, 0.1, 900, 90, "best effort"},
		{"nothing measured", []float64{nan, nan, nan, nan, nan, nan, nan, nan}, 0.1, 900, 0, ""},
		// cpu=30 and 40 saturated (below): their figures understate.
		{"saturated points are no candidates", []float64{30, 40, 60, 44, 40, 38, 35, 34}, 0.1, 900, 60, ""},
		{"nor the best effort", []float64{30, 40, 60, 55, 52, 51, 52, 53}, 0.1, 900, 80, "best effort"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := matrix(tt.values...)
			if strings.HasPrefix(tt.name, "saturated") || strings.HasPrefix(tt.name, "nor") {
				for i := range 2 {
					m.Rows[i].Observation = &justrunit.Observation{Point: m.Rows[i].Point, Saturated: true}
				}
			}
			i, bound, why := choose(m, justrunit.RTMean, goal, tt.headroom, tt.online, 0.1)
			got := 0.0
			if i >= 0 {
				got = m.Rows[i].Point[0]
			}
			if got != tt.want || (tt.why == "") != (why == "") || !strings.Contains(why, tt.why) {
				t.Errorf("choose = cpu %g (%q), want cpu %g (%q)", got, why, tt.want, tt.why)
			}
			// The bound the choice is within: none for a best effort.
			want := math.NaN()
			switch {
			case tt.want > 0 && tt.why == "":
				want = goal.Max
			case tt.want > 0 && tt.why == "without":
				want = goal.Max / (1 - tt.headroom)
			}
			if bound != want && !(math.IsNaN(bound) && math.IsNaN(want)) {
				t.Errorf("choose = cpu %g within %g, want within %g", got, bound, want)
			}
		})
	}
}

// TestUpgradeMeetsSLA: a class whose clone was saturated meets no SLA on
// a response time, however low its figures.
func TestUpgradeMeetsSLA(t *testing.T) {
	p95, err := justrunit.ParseSLA("rt_p95<=50")
	if err != nil {
		t.Fatal(err)
	}
	tput, err := justrunit.ParseSLA("throughput>=40")
	if err != nil {
		t.Fatal(err)
	}
	ok := justrunit.Observation{Samples: 500, Throughput: 50, RT: justrunit.ResponseTime{P95: 20}}
	saturated := ok
	saturated.Saturated = true
	for _, c := range []struct {
		name string
		sla  *justrunit.SLA
		o    justrunit.Observation
		want bool
	}{
		{"no SLA", nil, saturated, true},
		{"met", &p95, ok, true},
		{"missed", &p95, justrunit.Observation{Samples: 500, RT: justrunit.ResponseTime{P95: 60}}, false},
		{"saturated, response time", &p95, saturated, false},
		{"saturated, throughput", &tput, saturated, true},
	} {
		if got := meetsSLA(c.sla, &c.o); got != c.want {
			t.Errorf("%s: meetsSLA = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSLAFigure: a violation names response times in ms and the error
// rate as the fraction it is.
func TestSLAFigure(t *testing.T) {
	for _, c := range []struct {
		metric justrunit.Metric
		v      float64
		format string
		want   string
	}{
		{justrunit.RTMean, 62.44, "%.1f", "62.4 ms"},
		{justrunit.RTP95, 50, "%g", "50 ms"},
		{justrunit.ErrorRate, 0.1, "%.1f", "0.1"},
		{justrunit.ErrorRate, 0.0125, "%g", "0.0125"},
	} {
		if got := slaFigure(c.metric, c.v, c.format); got != c.want {
			t.Errorf("slaFigure(%s, %g, %q) = %q, want %q", c.metric, c.v, c.format, got, c.want)
		}
	}
}

// TestFigureErrorRate: the manager's messages write an error rate (a
// fraction) with its significant digits, a time with one decimal.
func TestFigureErrorRate(t *testing.T) {
	m := &Manager{cfg: Config{Headroom: 0.1}}
	_, msg := m.goal("svc", "svc-app", justrunit.SLA{Metric: justrunit.ErrorRate, Max: 0.01})
	if !strings.Contains(msg, "error_rate<=0.009") {
		t.Errorf("budget message %q, want the goal error_rate<=0.009", msg)
	}
	if got := figure(justrunit.RTMean, 31.86); got != "31.9" {
		t.Errorf("figure(rt_mean, 31.86) = %q, want 31.9", got)
	}
}
