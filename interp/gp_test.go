package interp

import (
	"math"
	"testing"

	"github.com/justrunit/justrunit"
)

// TestGPBeatsLinearOnConvexRT is the acceptance test for the second
// interpolator: on M/M/1-like response-time curves, measured at a few CPU
// shares, the GP's max and mean errors on the unmeasured shares are below
// Linear's.
func TestGPBeatsLinearOnConvexRT(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	tests := []struct {
		name     string
		s, load  float64
		measured []float64
	}{
		{"every other share", 10, 15, []float64{20, 40, 60, 80, 100}},
		{"paper's 60/80/100 plus ends", 8, 12, []float64{20, 60, 80, 100}},
		{"steep knee", 5, 18, []float64{20, 30, 50, 70, 100}},
		{"mild load", 20, 10, []float64{20, 50, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := mm1(tt.s, tt.load)
			errs := map[string][2]float64{}
			for _, name := range []string{"linear", "gp"} {
				m := newMatrix(t, cpu)
				measure(m, rt, at(0, tt.measured...))
				ip, err := New(name)
				if err != nil {
					t.Fatal(err)
				}
				if err := ip.Interpolate(m); err != nil {
					t.Fatalf("%s Interpolate: %v", name, err)
				}
				mx, mean := errorsAgainst(m, rt)
				errs[name] = [2]float64{mx, mean}
			}
			lin, gp := errs["linear"], errs["gp"]
			t.Logf("max/mean error: linear %.3g/%.3g ms, gp %.3g/%.3g ms", lin[0], lin[1], gp[0], gp[1])
			if !(gp[0] < lin[0]) || !(gp[1] < lin[1]) {
				t.Errorf("gp max/mean error %.3g/%.3g, want below linear's %.3g/%.3g", gp[0], gp[1], lin[0], lin[1])
			}
		})
	}
}

// TestGPBeatsLinearOn2DSurface runs the same comparison on a response-time
// surface over CPU share and frequency, measured on a sparse set.
func TestGPBeatsLinearOn2DSurface(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	freq := justrunit.Parameter{Name: "freq", Values: []float64{1.2, 1.6, 2.0, 2.4}}
	// capacity scales with share × frequency; load 9% of a core at 2.4 GHz
	rt := func(p justrunit.Point) float64 { return 6 / (1 - 9/(p[0]*p[1]/2.4)) }
	keep := func(p justrunit.Point) bool {
		for _, q := range [][2]float64{{30, 1.2}, {60, 1.2}, {100, 1.2}, {20, 1.6}, {40, 2.0}, {80, 1.6}, {20, 2.4}, {50, 2.4}, {100, 2.4}, {70, 2.0}} {
			if p[0] == q[0] && math.Abs(p[1]-q[1]) < 1e-9 {
				return true
			}
		}
		return false
	}
	errs := map[string][2]float64{}
	for _, name := range []string{"linear", "gp"} {
		m := newMatrix(t, cpu, freq)
		measure(m, rt, keep)
		ip, _ := New(name)
		if err := ip.Interpolate(m); err != nil {
			t.Fatalf("%s Interpolate: %v", name, err)
		}
		mx, mean := errorsAgainst(m, rt)
		errs[name] = [2]float64{mx, mean}
	}
	lin, gp := errs["linear"], errs["gp"]
	t.Logf("max/mean error: linear %.3g/%.3g ms, gp %.3g/%.3g ms", lin[0], lin[1], gp[0], gp[1])
	if !(gp[0] < lin[0]) || !(gp[1] < lin[1]) {
		t.Errorf("gp max/mean error %.3g/%.3g, want below linear's %.3g/%.3g", gp[0], gp[1], lin[0], lin[1])
	}
}

// TestGPUncertainty checks that the posterior band is honest on a smooth
// curve: the error stays within 3σ, and σ grows away from measurements.
func TestGPUncertainty(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	rt := mm1(10, 15)
	m := newMatrix(t, cpu)
	measure(m, rt, at(0, 20, 40, 60, 80, 100))
	if err := NewGP().Interpolate(m); err != nil {
		t.Fatalf("Interpolate: %v", err)
	}
	for _, r := range m.Rows {
		c := r.Cells[0]
		if c.Prov != justrunit.Interpolated {
			continue
		}
		if e := math.Abs(c.Value - rt(r.Point)); e > 3*c.Uncertainty {
			t.Errorf("cell cpu=%v: error %.3g exceeds 3× its uncertainty %.3g", r.Point[0], e, c.Uncertainty)
		}
	}
}

// TestGPSmallSlicesUseLinear checks the fallback: with fewer than three
// measured points the GP gives what Linear gives.
func TestGPSmallSlicesUseLinear(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	f := func(p justrunit.Point) float64 { return 100 - p[0] }
	a, b := newMatrix(t, cpu), newMatrix(t, cpu)
	measure(a, f, at(0, 40, 80))
	measure(b, f, at(0, 40, 80))
	if err := NewGP().Interpolate(a); err != nil {
		t.Fatal(err)
	}
	if err := NewLinear().Interpolate(b); err != nil {
		t.Fatal(err)
	}
	for i := range a.Rows {
		if a.Rows[i].Cells[0] != b.Rows[i].Cells[0] {
			t.Errorf("gp cell %v = %+v, want linear's %+v", a.Rows[i].Point, a.Rows[i].Cells[0], b.Rows[i].Cells[0])
		}
	}
}

// TestGPExtrapolation checks that cells outside the measured range report
// more uncertainty the further out they are, and stay positive.
func TestGPExtrapolation(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	rt := mm1(10, 15)
	m := newMatrix(t, cpu)
	measure(m, rt, at(0, 50, 60, 80, 100))
	if err := NewGP().Interpolate(m); err != nil {
		t.Fatalf("Interpolate: %v", err)
	}
	u := map[float64]float64{}
	for _, r := range m.Rows {
		c := r.Cells[0]
		u[r.Point[0]] = c.Uncertainty
		if c.Prov == justrunit.Interpolated && !(c.Value > 0) {
			t.Errorf("Interpolate(cpu=%v) = %v, want > 0", r.Point[0], c.Value)
		}
		t.Logf("cpu=%v: %.2f ± %.2f (true %.2f)", r.Point[0], c.Value, c.Uncertainty, rt(r.Point))
	}
	if !(u[20] > u[30] && u[30] > u[40] && u[40] > u[70]) {
		t.Errorf("uncertainty at cpu 20, 30, 40, 70 = %.3g, %.3g, %.3g, %.3g; want decreasing towards the measurements", u[20], u[30], u[40], u[70])
	}
}

// TestGPFewerPointsThanAxes checks a slice with fewer measured points than
// its numeric axes plus one (three points in a 3-D space), which used to
// panic.
func TestGPFewerPointsThanAxes(t *testing.T) {
	m := newMatrix(t, justrunit.Parameter{Name: "cpu", Values: []float64{20, 60, 100}},
		justrunit.Parameter{Name: "freq", Values: []float64{1, 2}}, justrunit.Parameter{Name: "mem", Values: []float64{256, 512}})
	f := func(p justrunit.Point) float64 { return 1000/p[0] + 10/p[1] + p[2]/100 }
	measure(m, f, func(p justrunit.Point) bool {
		return (p[0] == 20 && p[1] == 1 && p[2] == 256) || (p[0] == 60 && p[1] == 2 && p[2] == 256) || (p[0] == 100 && p[1] == 1 && p[2] == 512)
	})
	if err := NewGP().Interpolate(m); err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Rows {
		if c := r.Cells[0]; c.Prov == justrunit.Empty || math.IsNaN(c.Value) || math.IsInf(c.Value, 0) {
			t.Errorf("cell %v = %+v, want a finite filled value", r.Point, c)
		}
	}
}
