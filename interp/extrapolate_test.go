package interp

import (
	"math"
	"testing"

	"github.com/justrunit/justrunit"
)

// TestNoCollapseBeyondMeasured: past the last measurement, the trend of
// a response-time knee would carry a positive metric on to zero; neither
// interpolator fills a cell of a metric that levels off (response times,
// energy per request) below the least measured value.
func TestNoCollapseBeyondMeasured(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 10))
	for _, mt := range []justrunit.Metric{justrunit.RTMean, justrunit.RTP95, justrunit.EnergyPerRequest} {
		for _, in := range []justrunit.Interpolator{NewGP(), NewLinear()} {
			for _, vals := range []map[float64]float64{
				{20: 990, 30: 72, 40: 24.57}, // the trend alone gave 0.0 at 90
				{20: 990, 30: 72, 40: 24.57, 60: 13.38},
				{30: 27.2, 40: 15.4, 60: 11.5},
			} {
				m, err := justrunit.NewMatrix(s, []justrunit.Metric{mt})
				if err != nil {
					t.Fatal(err)
				}
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
						t.Errorf("%s %s from %v: cpu=%g filled with %.2f, below the least measured %.2f", in.Name(), mt, vals, r.Point[0], c.Value, least)
					}
					if c.Prov == justrunit.Interpolated && r.Point[0] < 30 && c.Value <= vals[30] {
						t.Errorf("%s %s from %v: cpu=%g filled with %.2f, not above the knee's %.2f at cpu=30", in.Name(), mt, vals, r.Point[0], c.Value, vals[30])
					}
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

// TestGPNoFloorOnGrowingMetrics: throughput and power grow with the
// allocation, so at a smaller allocation than any measured they fall below
// every measured value. The GP follows the measured slope down instead of
// holding the least measured value (it held 38 req/s at every cpu below 60).
func TestGPNoFloorOnGrowingMetrics(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 10))
	for _, tc := range []struct {
		mt   justrunit.Metric
		vals map[float64]float64
	}{
		{justrunit.Throughput, map[float64]float64{60: 38, 80: 40, 100: 40}},
		{justrunit.Throughput, map[float64]float64{50: 30, 70: 36, 90: 40, 100: 40}},
		{justrunit.Power, map[float64]float64{60: 70, 80: 80, 100: 90}},
	} {
		m, err := justrunit.NewMatrix(s, []justrunit.Metric{tc.mt})
		if err != nil {
			t.Fatal(err)
		}
		least := math.Inf(1)
		for cpu, v := range tc.vals {
			least = min(least, v)
			i, _ := m.Space.IndexOf(justrunit.Point{cpu})
			m.Rows[i].Cells[0] = justrunit.Cell{Value: v, Prov: justrunit.Measured}
		}
		if err := NewGP().Interpolate(m); err != nil {
			t.Fatal(err)
		}
		c, _ := m.Cell(justrunit.Point{20}, tc.mt)
		if !(c.Value < least) || c.Value < 0 {
			t.Errorf("gp %s from %v: cpu=20 filled with %.2f, want in [0, %.2f): below the least measured, as the slope goes", tc.mt, tc.vals, c.Value, least)
		}
	}
}

// TestFractionNotAboveOne: an error rate is a fraction of requests; no
// interpolator fills one above 1, where a rising slope (linear) or the
// reciprocal transform's pole (GP) would carry it.
func TestFractionNotAboveOne(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 10))
	for _, name := range Names() {
		for _, vals := range []map[float64]float64{
			{40: 0.9, 50: 0.5, 60: 0.2},            // 1.7 (linear), 1.58 (gp) at 20
			{30: 0.4, 40: 0.8, 60: 0.9},            // 1.1 (linear), 1.41 (gp) at 100
			{40: 0.5, 50: 0.2, 60: 0.05, 70: 0.01}, // 5.0 (gp) at 20
		} {
			m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.ErrorRate})
			if err != nil {
				t.Fatal(err)
			}
			for cpu, r := range vals {
				o := justrunit.Observation{Point: justrunit.Point{cpu}, Samples: int64(math.Round(1000 * (1 - r))), Errors: int64(math.Round(1000 * r))}
				if err := m.Record(o); err != nil {
					t.Fatal(err)
				}
			}
			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatal(err)
			}
			for _, r := range m.Rows {
				if c := r.Cells[0]; c.Prov == justrunit.Interpolated && (c.Value < 0 || c.Value > 1) {
					t.Errorf("%s from %v: cpu=%g filled with error rate %.3g, want within [0, 1]", name, vals, r.Point[0], c.Value)
				}
			}
			if c, _ := m.Cell(justrunit.Point{20}, justrunit.ErrorRate); vals[40] == 0.9 && (c.Value != 1 || c.Uncertainty < 0.5) {
				t.Errorf("%s from %v: cpu=20 filled with %.3g±%.3g, want 1 with the slope's excess (≥ 0.5) as uncertainty", name, vals, c.Value, c.Uncertainty)
			}
		}
	}
}
