package interp

import (
	"math"
	"testing"

	"github.com/justrunit/justrunit"
)

func TestLinearExactOnLinearFunctions(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	freq := justrunit.Parameter{Name: "freq", Values: []float64{1.2, 1.5, 1.8, 2.1, 2.4}}
	mem := axis("mem", 256, 2048, 256)
	tests := []struct {
		name   string
		params []justrunit.Parameter
		f      func(justrunit.Point) float64
		keep   func(justrunit.Point) bool
	}{
		{"1d ends", []justrunit.Parameter{cpu},
			func(p justrunit.Point) float64 { return 100 - 0.8*p[0] }, at(0, 20, 100)},
		{"1d uneven", []justrunit.Parameter{cpu},
			func(p justrunit.Point) float64 { return 3 + 0.5*p[0] }, at(0, 20, 30, 70, 100)},
		{"1d extrapolate both sides", []justrunit.Parameter{cpu},
			func(p justrunit.Point) float64 { return 200 - 1.5*p[0] }, at(0, 50, 70)},
		{"2d corners", []justrunit.Parameter{cpu, freq},
			func(p justrunit.Point) float64 { return 10 + 0.3*p[0] - 4*p[1] }, all(at(0, 20, 100), at(1, 1.2, 2.4))},
		{"2d coarse grid, bilinear", []justrunit.Parameter{cpu, freq},
			func(p justrunit.Point) float64 { return 1 + 0.1*p[0] + 2*p[1] + 0.05*p[0]*p[1] }, all(at(0, 20, 60, 100), at(1, 1.2, 1.8, 2.4))},
		{"2d extrapolated edge", []justrunit.Parameter{cpu, freq},
			func(p justrunit.Point) float64 { return 7 + 0.2*p[0] + 3*p[1] }, all(at(0, 40, 60, 100), at(1, 1.5, 2.1))},
		{"3d corners", []justrunit.Parameter{cpu, freq, mem},
			func(p justrunit.Point) float64 { return 5 + 0.2*p[0] + 3*p[1] - 0.001*p[2] }, all(at(0, 20, 100), at(1, 1.2, 2.4), at(2, 256, 2048))},
		{"3d coarse grid, trilinear", []justrunit.Parameter{cpu, freq, mem},
			func(p justrunit.Point) float64 { return 1 + p[0]*p[1]*p[2]/1000 + p[0] }, all(at(0, 20, 50, 100), at(1, 1.2, 2.4), at(2, 256, 1024, 2048))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMatrix(t, tt.params...)
			measure(m, tt.f, tt.keep)
			if err := NewLinear().Interpolate(m); err != nil {
				t.Fatalf("Interpolate: %v", err)
			}
			for _, r := range m.Rows {
				c, want := r.Cells[0], tt.f(r.Point)
				if c.Prov == justrunit.Empty {
					t.Fatalf("Interpolate left %s empty", m.Space.Format(r.Point))
				}
				if math.Abs(c.Value-want) > 1e-9*math.Max(1, math.Abs(want)) {
					t.Errorf("Interpolate(%s) = %v, want %v", m.Space.Format(r.Point), c.Value, want)
				}
			}
		})
	}
}

func TestLinearScattered(t *testing.T) {
	x := axis("x", 0, 8, 1)
	y := axis("y", 0, 8, 1)
	diag := func(p justrunit.Point) bool { return p[0] == p[1] }
	// a sparse, irregular set that no grid box encloses
	sparse := func(p justrunit.Point) bool {
		for _, q := range [][2]float64{{0, 0}, {8, 0}, {0, 8}, {8, 8}, {3, 1}, {1, 5}, {5, 6}, {6, 3}, {4, 4}, {2, 7}} {
			if p[0] == q[0] && p[1] == q[1] {
				return true
			}
		}
		return false
	}
	tests := []struct {
		name string
		f    func(justrunit.Point) float64
		keep func(justrunit.Point) bool
		// exact: the interpolant must reproduce f everywhere
		exact bool
	}{
		{"diagonal, f along it", func(p justrunit.Point) float64 { return 10 + p[0] + p[1] }, diag, true},
		{"diagonal, curved", func(p justrunit.Point) float64 { return 10 + p[0]*p[0] + p[1] }, diag, false},
		{"sparse, linear", func(p justrunit.Point) float64 { return 1 + 2*p[0] - 0.5*p[1] }, sparse, true},
		{"sparse, curved", func(p justrunit.Point) float64 { return 50 / (1 + p[0] + 0.5*p[1]) }, sparse, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMatrix(t, x, y)
			measure(m, tt.f, tt.keep)
			if err := NewLinear().Interpolate(m); err != nil {
				t.Fatalf("Interpolate: %v", err)
			}
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range m.Rows {
				if tt.keep(r.Point) {
					lo, hi = math.Min(lo, tt.f(r.Point)), math.Max(hi, tt.f(r.Point))
				}
			}
			for _, r := range m.Rows {
				c, want := r.Cells[0], tt.f(r.Point)
				pt := m.Space.Format(r.Point)
				switch {
				case tt.keep(r.Point):
					if c.Prov != justrunit.Measured || c.Value != want || c.Uncertainty != 0 {
						t.Errorf("measured cell %s = %+v, want X %v with no uncertainty", pt, c, want)
					}
					continue
				case c.Prov != justrunit.Interpolated:
					t.Errorf("cell %s has provenance %v, want I", pt, c.Prov)
				case !(c.Uncertainty > 0) || math.IsInf(c.Uncertainty, 0):
					t.Errorf("cell %s has uncertainty %v, want > 0 and finite", pt, c.Uncertainty)
				case math.IsNaN(c.Value) || math.IsInf(c.Value, 0):
					t.Errorf("Interpolate(%s) = %v, want a finite value", pt, c.Value)
				}
				if tt.exact && math.Abs(c.Value-want) > 1e-6*math.Max(1, math.Abs(want)) {
					t.Errorf("Interpolate(%s) = %v, want %v", pt, c.Value, want)
				}
				// A smooth monotone function stays within a generous band of
				// its measured range.
				if span := hi - lo; c.Value < lo-span || c.Value > hi+span {
					t.Errorf("Interpolate(%s) = %v, want within [%v, %v]", pt, c.Value, lo-span, hi+span)
				}
			}
		})
	}
}

// TestLinearSimplexIsLocal checks that scattered interpolation interpolates
// between the nearest measurements: inside a triangle of measured points,
// the value is the triangle's plane.
func TestLinearSimplexIsLocal(t *testing.T) {
	m := newMatrix(t, axis("x", 0, 10, 1), axis("y", 0, 10, 1))
	pts := map[[2]float64]float64{{2, 2}: 10, {6, 2}: 20, {2, 6}: 30, {9, 9}: 1000, {0, 9}: 5, {9, 0}: 7}
	measure(m, func(p justrunit.Point) float64 { return pts[[2]float64{p[0], p[1]}] },
		func(p justrunit.Point) bool { _, ok := pts[[2]float64{p[0], p[1]}]; return ok })
	if err := NewLinear().Interpolate(m); err != nil {
		t.Fatalf("Interpolate: %v", err)
	}
	// (3,3) lies inside the triangle (2,2) (6,2) (2,6): 10 + 2.5·1 + 5·1.
	c, err := m.Cell(justrunit.Point{3, 3}, justrunit.Power)
	if err != nil {
		t.Fatal(err)
	}
	if want := 17.5; math.Abs(c.Value-want) > 1e-9 {
		t.Errorf("Interpolate(x=3 y=3) = %v, want %v", c.Value, want)
	}
}

// TestLinearUncertainty checks the shape of the uncertainty: zero curvature
// gives only the floor, a curved function gives more between measurements,
// and extrapolation gives more than interpolation.
func TestLinearUncertainty(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	rt := mm1(10, 15)
	m := newMatrix(t, cpu)
	measure(m, rt, at(0, 40, 60, 80, 100))
	if err := NewLinear().Interpolate(m); err != nil {
		t.Fatalf("Interpolate: %v", err)
	}
	u := map[float64]float64{}
	for _, r := range m.Rows {
		u[r.Point[0]] = r.Cells[0].Uncertainty
	}
	if !(u[20] > u[30] && u[30] > u[50]) {
		t.Errorf("uncertainty at cpu 20, 30, 50 = %v, %v, %v; want growing with distance outside the measurements", u[20], u[30], u[50])
	}
	if !(u[50] > u[90]) {
		t.Errorf("uncertainty at cpu 50 = %v, at 90 = %v; want more where the curve bends more", u[50], u[90])
	}
	for _, r := range m.Rows {
		c := r.Cells[0]
		if c.Prov != justrunit.Interpolated || r.Point[0] < 40 {
			continue // extrapolating towards the knee is anyone's guess
		}
		if e := math.Abs(c.Value - rt(r.Point)); e > 2*c.Uncertainty {
			t.Errorf("cell cpu=%v: error %v exceeds twice its uncertainty %v", r.Point[0], e, c.Uncertainty)
		}
	}

	flat := newMatrix(t, cpu)
	measure(flat, func(p justrunit.Point) float64 { return 2 * p[0] }, at(0, 20, 60, 100))
	if err := NewLinear().Interpolate(flat); err != nil {
		t.Fatalf("Interpolate: %v", err)
	}
	for _, r := range flat.Rows {
		c := r.Cells[0]
		if c.Prov == justrunit.Interpolated && math.Abs(c.Uncertainty-relFloor*200) > 1e-9 {
			t.Errorf("uncertainty at cpu=%v on a straight line = %v, want the floor %v", r.Point[0], c.Uncertainty, relFloor*200)
		}
	}
}
