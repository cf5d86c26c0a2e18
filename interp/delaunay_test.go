package interp

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDelaunayLP checks the LP against brute force: among all simplices of
// the points that contain p, the one minimising Σ λᵢ‖p − vᵢ‖² (the Delaunay
// one), and infeasibility exactly outside the hull.
func TestDelaunayLP(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, d := range []int{2, 3} {
		for trial := range 200 {
			n := d + 1 + rng.IntN(8)
			xs := make([][]float64, n)
			for i := range xs {
				xs[i] = make([]float64, d)
				for a := range xs[i] {
					// a coarse lattice, so that degenerate (co-planar,
					// co-spherical) configurations occur
					xs[i][a] = float64(rng.IntN(5)) / 4
				}
			}
			p := make([]float64, d)
			for a := range p {
				p[a] = rng.Float64()
			}
			if trial%3 == 0 {
				for a := range p {
					p[a] = float64(rng.IntN(9)) / 8 // on edges and faces
				}
			}
			wantE, wantOK := bruteDelaunay(xs, p)
			var lp delaunayLP
			vs, lam := make([]int, d+1), make([]float64, d+1)
			ok := lp.solve(xs, p, vs, lam)
			if ok != wantOK {
				// A flat hull is reported as not ok by the LP and has no
				// full-dimensional simplex for the brute force either.
				t.Errorf("d=%d trial %d: solve(%v, %v) ok = %v, want %v", d, trial, xs, p, ok, wantOK)
				continue
			}
			if !ok {
				continue
			}
			E, sum := 0.0, 0.0
			for i, v := range vs {
				E += lam[i] * dist2(xs[v], p)
				sum += lam[i]
			}
			if math.Abs(E-wantE) > 1e-9 || math.Abs(sum-1) > 1e-9 {
				t.Errorf("d=%d trial %d: solve(%v, %v) E = %v (Σλ = %v), want %v", d, trial, xs, p, E, sum, wantE)
			}
		}
	}
}

// bruteDelaunay returns the least Σλᵢ‖p − vᵢ‖² over all non-degenerate
// simplices of xs containing p.
func bruteDelaunay(xs [][]float64, p []float64) (float64, bool) {
	d, n := len(p), len(xs)
	best, ok := math.Inf(1), false
	comb := make([]int, d+1)
	for i := range comb {
		comb[i] = i
	}
	a, piv := make([]float64, d*d), make([]int, d)
	rhs, sol := make([]float64, d), make([]float64, d)
	for {
		v0 := xs[comb[0]]
		for r := range d {
			for c := range d {
				a[r*d+c] = xs[comb[c+1]][r] - v0[r]
			}
			rhs[r] = p[r] - v0[r]
		}
		if minP, maxP := luFactor(a, d, piv); minP > 1e-10*maxP {
			luSolve(a, d, piv, rhs, sol)
			lam0, in := 1.0, true
			for _, l := range sol {
				lam0 -= l
				in = in && l >= -1e-9
			}
			if in && lam0 >= -1e-9 {
				E := lam0 * dist2(v0, p)
				for c, l := range sol {
					E += l * dist2(xs[comb[c+1]], p)
				}
				best, ok = math.Min(best, E), true
			}
		}
		i := d
		for i >= 0 && comb[i] == n-d-1+i {
			i--
		}
		if i < 0 {
			return best, ok
		}
		comb[i]++
		for j := i + 1; j <= d; j++ {
			comb[j] = comb[j-1] + 1
		}
	}
}
