package interp

import (
	"testing"

	"github.com/justrunit/justrunit"
)

// TestGPNoCollapseBeyondMeasured: past the last measurement, the trend of
// a response-time knee would carry a positive metric on to zero; the GP
// fills no cell of a positive metric below the least measured value.
// (Linear extrapolates linearly, by contract, down to zero.)
func TestGPNoCollapseBeyondMeasured(t *testing.T) {
	for _, in := range []justrunit.Interpolator{NewGP()} {
		for _, vals := range []map[float64]float64{
			{20: 990, 30: 72, 40: 24.57}, // the trend alone gave 0.0 at 90
			{20: 990, 30: 72, 40: 24.57, 60: 13.38},
			{30: 27.2, 40: 15.4, 60: 11.5},
		} {
			m := newMatrix(t, axis("cpu", 20, 100, 10))
			least := 1e9
			for _, v := range vals {
				least = min(least, v)
			}
			measure(m, func(p justrunit.Point) float64 { return vals[p[0]] }, func(p justrunit.Point) bool { _, ok := vals[p[0]]; return ok })
			if err := in.Interpolate(m); err != nil {
				t.Fatal(err)
			}
			for _, r := range m.Rows {
				c := r.Cells[0]
				if c.Prov == justrunit.Interpolated && c.Value < least {
					t.Errorf("%s from %v: cpu=%g filled with %.2f, below the least measured %.2f", in.Name(), vals, r.Point[0], c.Value, least)
				}
				if c.Prov == justrunit.Interpolated && r.Point[0] < 30 && c.Value <= vals[30] {
					t.Errorf("%s from %v: cpu=%g filled with %.2f, not above the knee's %.2f at cpu=30", in.Name(), vals, r.Point[0], c.Value, vals[30])
				}
			}
		}
	}
}

// TestThroughputNotBeyondMeasured: a clone serves copies of the live load,
// so no interpolator fills a throughput cell above the largest measured
// throughput, where the slope below saturation would carry it on.
func TestThroughputNotBeyondMeasured(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 10))
	for _, name := range Names() {
		for _, vals := range []map[float64]float64{
			{20: 30, 30: 38, 40: 40}, // extrapolated to 52–59 at 100
			{20: 30, 30: 38, 40: 40.2, 60: 40.3},
		} {
			m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.Throughput})
			if err != nil {
				t.Fatal(err)
			}
			most := 0.0
			for cpu, v := range vals {
				most = max(most, v)
				if err := m.Record(justrunit.Observation{Point: justrunit.Point{cpu}, Throughput: v}); err != nil {
					t.Fatal(err)
				}
			}
			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatal(err)
			}
			for _, r := range m.Rows {
				if c := r.Cells[0]; c.Prov == justrunit.Interpolated && c.Value > most {
					t.Errorf("%s from %v: cpu=%g filled with %.1f req/s, above the largest measured %.1f", name, vals, r.Point[0], c.Value, most)
				}
			}
		}
	}
}

// TestThroughputUpToOffered: where the observations say what load was
// offered, that is the throughput's ceiling, not the largest measured
// throughput, which below it is a saturated point's.
func TestThroughputUpToOffered(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 10))
	for _, name := range Names() {
		m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.Throughput})
		if err != nil {
			t.Fatal(err)
		}
		for cpu, v := range map[float64]float64{20: 30, 30: 38} {
			if err := m.Record(justrunit.Observation{Point: justrunit.Point{cpu}, Throughput: v, Offered: 40}); err != nil {
				t.Fatal(err)
			}
		}
		ip, _ := New(name)
		if err := ip.Interpolate(m); err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Rows {
			if c := r.Cells[0]; c.Prov == justrunit.Interpolated && c.Value > 40 {
				t.Errorf("%s: cpu=%g filled with %.1f req/s, above the 40 offered", name, r.Point[0], c.Value)
			}
		}
		if c, _ := m.Cell(justrunit.Point{100}, justrunit.Throughput); name == "linear" && c.Value != 40 {
			t.Errorf("linear: cpu=100 filled with %.1f req/s, want the 40 offered (the slope 30→38 carried on, capped)", c.Value)
		}
	}
}
