package interp

import (
	"math"
	"testing"

	"github.com/justrunit/justrunit"
)

// axis returns a numeric parameter with values lo, lo+step, …, hi.
func axis(name string, lo, hi, step float64) justrunit.Parameter {
	p := justrunit.Parameter{Name: name}
	for v := lo; v <= hi+1e-9; v += step {
		p.Values = append(p.Values, v)
	}
	return p
}

// labels returns a categorical parameter.
func labels(name string, ls ...string) justrunit.Parameter {
	p := justrunit.Parameter{Name: name, Labels: ls}
	for i := range ls {
		p.Values = append(p.Values, float64(i))
	}
	return p
}

// newMatrix returns an empty one-metric matrix over params: power, which
// has no bound but zero, so tests of the filling itself see it unclamped.
func newMatrix(tb testing.TB, params ...justrunit.Parameter) *justrunit.Matrix {
	tb.Helper()
	s, err := justrunit.NewSpace(params...)
	if err != nil {
		tb.Fatalf("NewSpace: %v", err)
	}
	m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.Power})
	if err != nil {
		tb.Fatalf("NewMatrix: %v", err)
	}
	return m
}

// measure sets the cell of every point where keep is true to f(point), as
// an experiment would (provenance X).
func measure(m *justrunit.Matrix, f func(justrunit.Point) float64, keep func(justrunit.Point) bool) {
	for i := range m.Rows {
		if keep(m.Rows[i].Point) {
			m.Rows[i].Cells[0] = justrunit.Cell{Value: f(m.Rows[i].Point), Prov: justrunit.Measured}
		}
	}
}

// at reports whether point p has value v on axis d.
func at(d int, vs ...float64) func(justrunit.Point) bool {
	return func(p justrunit.Point) bool {
		for _, v := range vs {
			if math.Abs(p[d]-v) < 1e-9 {
				return true
			}
		}
		return false
	}
}

// all combines predicates with AND.
func all(fs ...func(justrunit.Point) bool) func(justrunit.Point) bool {
	return func(p justrunit.Point) bool {
		for _, f := range fs {
			if !f(p) {
				return false
			}
		}
		return true
	}
}

// errorsAgainst returns the max and mean absolute error of the interpolated cells
// of m against f.
func errorsAgainst(m *justrunit.Matrix, f func(justrunit.Point) float64) (maxErr, meanErr float64) {
	n := 0
	for _, r := range m.Rows {
		c := r.Cells[0]
		if c.Prov != justrunit.Interpolated {
			continue
		}
		e := math.Abs(c.Value - f(r.Point))
		maxErr = math.Max(maxErr, e)
		meanErr += e
		n++
	}
	if n > 0 {
		meanErr /= float64(n)
	}
	return maxErr, meanErr
}

// mm1 is an M/M/1-like response time: service time s ms, offered load
// `load` in percent of a core, CPU share cpu in percent.
func mm1(s, load float64) func(justrunit.Point) float64 {
	return func(p justrunit.Point) float64 { return s / (1 - load/p[0]) }
}
