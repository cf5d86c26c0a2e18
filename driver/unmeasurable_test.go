package driver

import (
	"context"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
)

// TestUnmeasurablePoints checks that no strategy runs a point found
// unmeasurable again, and that the sla search counts it as missing the SLA.
func TestUnmeasurablePoints(t *testing.T) {
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	newM := func() *justrunit.Matrix {
		m, err := justrunit.NewMatrix(justrunit.Space{Params: []justrunit.Parameter{cpu}}, []justrunit.Metric{justrunit.RTP95})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Record(justrunit.Observation{Point: justrunit.Point{100}, Samples: 500, Throughput: 50, RT: justrunit.ResponseTime{P95: 30}}); err != nil {
			t.Fatal(err)
		}
		if err := m.MarkUnmeasurable(justrunit.Point{20}, "0 successful responses in the full window"); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, name := range Names() {
		strat, err := New(name, Options{Interpolator: interp.NewLinear()})
		if err != nil {
			t.Fatal(err)
		}
		m := newM()
		st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 9, Free: 9, SLA: sla}
		pts, err := strat.Next(context.Background(), st)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, p := range pts {
			if p[0] == 20 || p[0] == 100 {
				t.Errorf("%s: plans cpu=%g again", name, p[0])
			}
		}
		if est := strat.Estimate(st); est > 7 {
			t.Errorf("%s: estimates %d more experiments, at most 7 points are left", name, est)
		}
	}
	// Only cpu=100 passes and cpu=20 failed: the least passing is 100
	// until something between is measured.
	if p, ok, err := LeastPassing(newM(), *sla, ""); err != nil || !ok || p[0] != 100 {
		t.Errorf("LeastPassing = %v, %v, %v; want cpu=100", p, ok, err)
	}
}

// TestSaturatedFailsSLA checks that the sla search counts a point where the
// clone was saturated as missing an SLA on a response time, whatever the
// requests that got through measured, and not one on throughput.
func TestSaturatedFailsSLA(t *testing.T) {
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	m, err := justrunit.NewMatrix(justrunit.Space{Params: []justrunit.Parameter{cpu}}, []justrunit.Metric{justrunit.RTP95, justrunit.Throughput})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []justrunit.Observation{
		{Point: justrunit.Point{30}, Samples: 300, Throughput: 30, Offered: 40, Saturated: true, RT: justrunit.ResponseTime{P95: 20}},
		{Point: justrunit.Point{60}, Samples: 400, Throughput: 40, Offered: 40, RT: justrunit.ResponseTime{P95: 25}},
	} {
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if p, ok, err := LeastPassing(m, justrunit.SLA{Metric: justrunit.RTP95, Max: 50}, ""); err != nil || !ok || p[0] != 60 {
		t.Errorf("LeastPassing(rt_p95<=50) = %v, %v, %v; want cpu=60, the saturated cpu=30 failing", p, ok, err)
	}
	if p, ok, err := LeastPassing(m, justrunit.SLA{Metric: justrunit.Throughput, Min: 25}, ""); err != nil || !ok || p[0] != 30 {
		t.Errorf("LeastPassing(throughput>=25) = %v, %v, %v; want cpu=30: a saturated clone's throughput is its capacity", p, ok, err)
	}
}
