package interp

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

func TestNew(t *testing.T) {
	if got, want := Names(), []string{"gp", "linear"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	for _, name := range Names() {
		ip, err := New(name)
		if err != nil {
			t.Fatalf("New(%q): %v", name, err)
		}
		if ip.Name() != name {
			t.Errorf("New(%q).Name() = %q, want %q", name, ip.Name(), name)
		}
	}
	_, err := New("cubic")
	if !errors.Is(err, justrunit.ErrInvalid) {
		t.Fatalf("New(%q) error = %v, want one wrapping ErrInvalid", "cubic", err)
	}
	var fe *justrunit.FieldError
	if !errors.As(err, &fe) || fe.Field != "interpolator" || !strings.Contains(err.Error(), "gp, linear") {
		t.Errorf("New(%q) error = %q, want field \"interpolator\" listing the known names", "cubic", err)
	}
}

// The tests below are the contract every registered interpolator keeps.

// TestContractProvenance checks that X, V and T cells are left exactly as
// they were, that Empty and stale I cells are (re)filled as I from X and V
// cells only, and that measured cells carry no uncertainty.
func TestContractProvenance(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			m := newMatrix(t, axis("cpu", 20, 100, 10), justrunit.Parameter{Name: "freq", Values: []float64{1.2, 1.8, 2.4}})
			f := func(p justrunit.Point) float64 { return 5 + 200/p[0] + 3/p[1] }
			measure(m, f, all(at(0, 20, 60, 100), at(1, 1.2, 2.4)))
			set := func(p justrunit.Point, c justrunit.Cell) {
				i, err := m.Space.IndexOf(p)
				if err != nil {
					t.Fatal(err)
				}
				m.Rows[i].Cells[0] = c
			}
			// A verified cell counts as measured; a T cell keeps its
			// (deliberately wrong) value and is no source; a stale I cell
			// is refilled.
			set(justrunit.Point{40, 1.8}, justrunit.Cell{Value: f(justrunit.Point{40, 1.8}), Prov: justrunit.Verified, Predicted: 99})
			set(justrunit.Point{80, 1.8}, justrunit.Cell{Value: 1e6, Prov: justrunit.Used, Uncertainty: 3})
			set(justrunit.Point{30, 1.2}, justrunit.Cell{Value: -7, Prov: justrunit.Interpolated, Uncertainty: 1})
			before := m.Clone()

			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatalf("Interpolate: %v", err)
			}
			for i, r := range m.Rows {
				was, c := before.Rows[i].Cells[0], r.Cells[0]
				pt := m.Space.Format(r.Point)
				switch was.Prov {
				case justrunit.Measured, justrunit.Verified, justrunit.Used:
					if c != was {
						t.Errorf("cell %s = %+v, want it untouched: %+v", pt, c, was)
					}
				default:
					if c.Prov != justrunit.Interpolated {
						t.Errorf("cell %s provenance %v, want I", pt, c.Prov)
					}
					if !(c.Uncertainty > 0) || math.IsInf(c.Uncertainty, 0) || math.IsNaN(c.Value) {
						t.Errorf("cell %s = %+v, want a finite value with uncertainty > 0", pt, c)
					}
					// The T cell's 1e6 must not leak into its neighbours.
					if c.Value > 1000 || c.Value < 0 {
						t.Errorf("Interpolate(%s) = %v, want between the measured values", pt, c.Value)
					}
				}
			}
		})
	}
}

func TestContractNoMeasurement(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			m := newMatrix(t, axis("cpu", 20, 100, 10))
			// Only a T cell: still nothing measured to interpolate from.
			m.Rows[3].Cells[0] = justrunit.Cell{Value: 12, Prov: justrunit.Used}
			before := m.Clone()
			ip, _ := New(name)
			if err := ip.Interpolate(m); !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("Interpolate(no measurement) error = %v, want one wrapping ErrInvalid", err)
			}
			for i := range m.Rows {
				if m.Rows[i].Cells[0] != before.Rows[i].Cells[0] {
					t.Errorf("Interpolate changed cell %d to %+v after failing", i, m.Rows[i].Cells[0])
				}
			}
			if err := ip.Interpolate(nil); !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("Interpolate(nil) error = %v, want one wrapping ErrInvalid", err)
			}
		})
	}
}

// TestContractCategorical checks that categories are separate slices: each
// is interpolated from its own measurements only, and a category with none
// is left empty rather than borrowed from its neighbour.
func TestContractCategorical(t *testing.T) {
	cpu := axis("cpu", 20, 100, 10)
	host := labels("hostclass", "old", "new", "spare")
	// The new host class is 3× faster; a linear blend of the classes would
	// be far off in both.
	f := func(p justrunit.Point) float64 {
		if p[1] == 1 {
			return 300 / p[0]
		}
		return 900 / p[0]
	}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			// The categorical axis comes last, so each class's points are
			// interleaved in flat order.
			m := newMatrix(t, cpu, host)
			measure(m, f, all(at(0, 20, 40, 60, 100), at(1, 0)))
			measure(m, f, all(at(0, 20, 50, 80, 100), at(1, 1)))
			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatalf("Interpolate: %v", err)
			}
			for _, r := range m.Rows {
				c, pt := r.Cells[0], m.Space.Format(r.Point)
				if r.Point[1] == 2 {
					if c.Prov != justrunit.Empty {
						t.Errorf("cell %s = %+v, want it left empty: nothing was measured on that host class", pt, c)
					}
					continue
				}
				if c.Prov != justrunit.Interpolated {
					continue
				}
				want := f(r.Point)
				if math.Abs(c.Value-want) > 0.3*want {
					t.Errorf("Interpolate(%s) = %.2f, want %.2f within 30%%", pt, c.Value, want)
				}
			}
		})
	}
}

// TestContractMultipleMetrics checks that every metric column is filled
// from its own measurements.
func TestContractMultipleMetrics(t *testing.T) {
	s, _ := justrunit.NewSpace(axis("cpu", 20, 100, 20))
	metrics := []justrunit.Metric{justrunit.Throughput, justrunit.RTP95}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			m, err := justrunit.NewMatrix(s, metrics)
			if err != nil {
				t.Fatal(err)
			}
			for _, cpu := range []float64{20, 60, 100} {
				o := justrunit.Observation{Point: justrunit.Point{cpu}, Throughput: 10 * cpu, RT: justrunit.ResponseTime{P95: 1000 / cpu}}
				if err := m.Record(o); err != nil {
					t.Fatal(err)
				}
			}
			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatalf("Interpolate: %v", err)
			}
			c, _ := m.Cell(justrunit.Point{40}, justrunit.Throughput)
			if math.Abs(c.Value-400) > 20 {
				t.Errorf("Interpolate(cpu=40 throughput) = %v, want 400", c.Value)
			}
			c, _ = m.Cell(justrunit.Point{80}, justrunit.RTP95)
			if math.Abs(c.Value-12.5) > 1.5 {
				t.Errorf("Interpolate(cpu=80 rt_p95) = %v, want 12.5", c.Value)
			}
		})
	}
}

// TestContractDeterministic checks that the same input gives the same
// output, bit for bit, and that interpolating twice changes nothing.
func TestContractDeterministic(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			m := scattered3D(t, 20, 30)
			ip, _ := New(name)
			if err := ip.Interpolate(m); err != nil {
				t.Fatal(err)
			}
			again := m.Clone()
			if err := ip.Interpolate(again); err != nil {
				t.Fatal(err)
			}
			for i := range m.Rows {
				if m.Rows[i].Cells[0] != again.Rows[i].Cells[0] {
					t.Fatalf("second Interpolate changed %v from %+v to %+v", m.Rows[i].Point, m.Rows[i].Cells[0], again.Rows[i].Cells[0])
				}
			}
		})
	}
}

// scattered3D returns an n×n×n space with k measured points spread by a
// fixed low-discrepancy sequence (so tests and benchmarks need no random
// seed), including the eight corners, on a smooth response surface.
func scattered3D(tb testing.TB, n, k int) *justrunit.Matrix {
	tb.Helper()
	cpu := axis("cpu", 10, 10*float64(n), 10)
	freq := axis("freq", 1, float64(n), 1)
	mem := axis("mem", 100, 100*float64(n), 100)
	m := newMatrix(tb, cpu, freq, mem)
	f := rtSurface(n)
	mark := func(i, j, l int) {
		r := &m.Rows[m.Space.Flat([]int{i, j, l})]
		r.Cells[0] = justrunit.Cell{Value: f(r.Point), Prov: justrunit.Measured}
	}
	for c := range 8 {
		mark((c&1)*(n-1), (c>>1&1)*(n-1), (c>>2&1)*(n-1))
	}
	for i := 1; i <= k-8; i++ {
		// additive recurrence with the plastic number's powers
		a := math.Mod(0.5+float64(i)*0.8191725133961645, 1)
		b := math.Mod(0.5+float64(i)*0.6710436067037893, 1)
		c := math.Mod(0.5+float64(i)*0.5497004779019703, 1)
		mark(int(a*float64(n)), int(b*float64(n)), int(c*float64(n)))
	}
	return m
}

// rtSurface is a smooth, convex response time over an n-valued cpu × freq
// × mem space.
func rtSurface(n int) func(justrunit.Point) float64 {
	return func(p justrunit.Point) float64 {
		capacity := p[0] * (0.5 + p[1]/float64(n))
		return 5/(1-4/capacity) + 2000/p[2]
	}
}

// TestContractDegenerateValues checks constant metrics (an error rate that
// stays 0, a flat throughput) and that a non-finite measurement is neither
// used nor changed.
func TestContractDegenerateValues(t *testing.T) {
	tests := []struct {
		name  string
		f     func(justrunit.Point) float64
		want  float64
		wantU bool // uncertainty > 0 expected
	}{
		{"all zero", func(justrunit.Point) float64 { return 0 }, 0, false},
		{"constant", func(justrunit.Point) float64 { return 42 }, 42, true},
	}
	for _, name := range Names() {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				m := newMatrix(t, axis("cpu", 20, 100, 10), axis("mem", 1, 4, 1))
				measure(m, tt.f, all(at(0, 20, 50, 100), at(1, 1, 3, 4)))
				m.Rows[5].Cells[0] = justrunit.Cell{Value: math.NaN(), Prov: justrunit.Measured}
				ip, _ := New(name)
				if err := ip.Interpolate(m); err != nil {
					t.Fatalf("Interpolate: %v", err)
				}
				for i, r := range m.Rows {
					c := r.Cells[0]
					if i == 5 {
						if !math.IsNaN(c.Value) || c.Prov != justrunit.Measured {
							t.Errorf("non-finite measured cell became %+v, want it untouched", c)
						}
						continue
					}
					if c.Prov != justrunit.Interpolated {
						continue
					}
					if math.Abs(c.Value-tt.want) > 1e-6*math.Max(1, tt.want) {
						t.Errorf("Interpolate(%s) = %v, want %v", m.Space.Format(r.Point), c.Value, tt.want)
					}
					if c.Uncertainty < 0 || math.IsNaN(c.Uncertainty) || math.IsInf(c.Uncertainty, 0) || tt.wantU && c.Uncertainty == 0 {
						t.Errorf("cell %s uncertainty = %v, want finite and ≥ 0 (> 0: %v)", m.Space.Format(r.Point), c.Uncertainty, tt.wantU)
					}
				}
			})
		}
	}
}

// TestUnmeasurableStaysEmpty checks that neither interpolator fills a point
// whose experiment measured nothing.
func TestUnmeasurableStaysEmpty(t *testing.T) {
	for _, name := range Names() {
		m := newMatrix(t, axis("cpu", 20, 100, 10))
		measure(m, func(p justrunit.Point) float64 { return 200 - p[0] }, at(0, 40, 70, 100))
		if err := m.MarkUnmeasurable(justrunit.Point{20}, "too few samples"); err != nil {
			t.Fatal(err)
		}
		in, _ := New(name)
		if err := in.Interpolate(m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, r := range m.Rows {
			want := justrunit.Interpolated
			switch {
			case r.Point[0] == 20:
				want = justrunit.Empty
			case r.Point[0] == 40 || r.Point[0] == 70 || r.Point[0] == 100:
				want = justrunit.Measured
			}
			if r.Cells[0].Prov != want {
				t.Errorf("%s: cpu=%g is %c, want %c", name, r.Point[0], r.Cells[0].Prov, want)
			}
		}
	}
}

// TestBeyondUnmeasurableStaysEmpty checks that the points past a point
// found unmeasurable, away from every measured point, are not filled (from
// the measured side they would look like meeting an SLA their saturated
// neighbour missed), for both interpolators, while points between the
// unmeasurable point and a measured one are.
func TestBeyondUnmeasurableStaysEmpty(t *testing.T) {
	for _, in := range []justrunit.Interpolator{NewLinear(), NewGP()} {
		m := newMatrix(t, axis("cpu", 20, 100, 10))
		measure(m, func(p justrunit.Point) float64 { return 400 / p[0] }, at(0, 70, 80, 100))
		// A stale fill from before cpu=60 was found unmeasurable.
		m.Rows[0].Cells[0] = justrunit.Cell{Value: 20, Prov: justrunit.Interpolated, Uncertainty: 1}
		if err := m.MarkUnmeasurable(justrunit.Point{60}, "12 successful responses in the full window"); err != nil {
			t.Fatal(err)
		}
		if err := in.Interpolate(m); err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Rows {
			c := r.Cells[0]
			switch cpu := r.Point[0]; {
			case cpu <= 60 && c.Prov != justrunit.Empty:
				t.Errorf("%T: cpu=%g = %+v, want empty (beyond the unmeasurable cpu=60)", in, cpu, c)
			case cpu == 90 && c.Prov != justrunit.Interpolated:
				t.Errorf("%T: cpu=90 = %+v, want interpolated", in, c)
			}
		}
	}
	// Between an unmeasurable point and a measured one: filled.
	m := newMatrix(t, axis("cpu", 20, 100, 10))
	measure(m, func(p justrunit.Point) float64 { return 400 / p[0] }, at(0, 70, 100))
	if err := m.MarkUnmeasurable(justrunit.Point{40}, "saturated"); err != nil {
		t.Fatal(err)
	}
	if err := NewLinear().Interpolate(m); err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{50, 60, 80, 90} {
		if c, _ := m.Cell(justrunit.Point{cpu}, justrunit.Power); c.Prov != justrunit.Interpolated {
			t.Errorf("cpu=%g = %+v, want interpolated (between the unmeasurable cpu=40 and measured cpu=70)", cpu, c)
		}
	}
	for _, cpu := range []float64{20, 30} {
		if c, _ := m.Cell(justrunit.Point{cpu}, justrunit.Power); c.Prov != justrunit.Empty {
			t.Errorf("cpu=%g = %+v, want empty", cpu, c)
		}
	}
}
