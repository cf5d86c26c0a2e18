package interp

import (
	"testing"

	"github.com/justrunit/justrunit"
)

// BenchmarkInterpolate3D interpolates a 20×20×20 space (8000 cells) with
// each interpolator, from ~50 and ~250 scattered measurements (the latter
// near GP's DefaultMaxTrain, its worst case) and from a coarse
// 5×5×5 grid of measurements (every enclosing box measured). Each iteration
// refills every I cell of the same matrix. It also reports the mean
// absolute error against the true surface, so speed and accuracy are read
// from one run.
func BenchmarkInterpolate3D(b *testing.B) {
	const n = 20
	cases := []struct {
		name string
		make func(testing.TB) *justrunit.Matrix
	}{
		{"scattered50", func(tb testing.TB) *justrunit.Matrix { return scattered3D(tb, n, 50) }},
		{"scattered250", func(tb testing.TB) *justrunit.Matrix { return scattered3D(tb, n, 250) }},
		{"grid5x5x5", func(tb testing.TB) *justrunit.Matrix { return grid3D(tb, n, []int{0, 5, 10, 15, 19}) }},
	}
	for _, c := range cases {
		for _, name := range Names() {
			b.Run(c.name+"/"+name, func(b *testing.B) {
				m := c.make(b)
				ip, _ := New(name)
				b.ReportAllocs()
				for b.Loop() {
					if err := ip.Interpolate(m); err != nil {
						b.Fatal(err)
					}
				}
				_, mean := errorsAgainst(m, rtSurface(n))
				b.ReportMetric(mean, "mean-abs-err-ms")
			})
		}
	}
}

// grid3D returns an n×n×n space measured at every combination of the value
// indexes idx on each axis.
func grid3D(tb testing.TB, n int, idx []int) *justrunit.Matrix {
	m := scattered3D(tb, n, 8) // corners only
	f := rtSurface(n)
	for _, i := range idx {
		for _, j := range idx {
			for _, l := range idx {
				r := &m.Rows[m.Space.Flat([]int{i, j, l})]
				r.Cells[0] = justrunit.Cell{Value: f(r.Point), Prov: justrunit.Measured}
			}
		}
	}
	return m
}
