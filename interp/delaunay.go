package interp

// delaunayLP finds the Delaunay simplex of a set of points that contains a
// point p, without building the triangulation, by linear programming:
//
//	minimise   Σ λⱼ ‖vⱼ − p‖²
//	subject to Σ λⱼ (vⱼ − p) = 0,  Σ λⱼ = 1,  λ ≥ 0
//
// The feasible λ are the ways of writing p as a convex combination of the
// points; the objective is the height at p of the points lifted onto the
// paraboloid ‖x − p‖², so the optimum lies on the facet of their lower
// convex hull above p, which is the Delaunay simplex. An optimal basic
// solution has d+1 basic points: that simplex and p's barycentric
// coordinates in it. The LP is infeasible exactly when p lies outside the
// points' convex hull.
//
// It is a dense two-phase tableau simplex with Bland's rule, so it cannot
// cycle on the degenerate problems grids produce (p on an edge or a face)
// and its answer depends on nothing but the input order.
type delaunayLP struct {
	m, n int       // constraints (d+1), points
	tab  []float64 // m × (n+m): [A | I]
	rhs  []float64
	cost []float64 // reduced costs, len n+m
	c    []float64 // phase II costs of the points
	bas  []int     // basic column of each row
}

const lpEps = 1e-12

// solve sets up and solves the LP for the points xs[j] (each of length d)
// and p. It returns the basic point indexes (into xs) and their weights in
// vs and lam (len d+1 each), or false when p is outside their hull or the
// hull is flat (the points span less than d dimensions).
func (lp *delaunayLP) solve(xs [][]float64, p []float64, vs []int, lam []float64) bool {
	d, n := len(p), len(xs)
	m := d + 1
	w := n + m
	lp.m, lp.n = m, n
	lp.tab = grow(lp.tab, m*w)
	lp.rhs = grow(lp.rhs, m)
	lp.cost = grow(lp.cost, w)
	lp.c = grow(lp.c, n)
	if cap(lp.bas) < m {
		lp.bas = make([]int, m)
	}
	lp.bas = lp.bas[:m]
	clear(lp.tab)
	clear(lp.rhs)
	for j, x := range xs {
		lp.tab[j] = 1
		for r := 1; r < m; r++ {
			lp.tab[r*w+j] = x[r-1] - p[r-1]
		}
		lp.c[j] = dist2(x, p)
	}
	lp.rhs[0] = 1
	for r := range m {
		lp.tab[r*w+n+r] = 1
		lp.bas[r] = n + r
	}

	// Phase I: minimise the sum of the artificial variables.
	clear(lp.cost)
	for j := range n {
		for r := range m {
			lp.cost[j] -= lp.tab[r*w+j]
		}
	}
	if !lp.iterate(w) {
		return false
	}
	infeas := 0.0
	for r, b := range lp.bas {
		if b >= n {
			infeas += lp.rhs[r]
		}
	}
	if infeas > 1e-9 {
		return false // outside the hull
	}
	// Drive artificials that stayed basic at zero out of the basis.
	for r, b := range lp.bas {
		if b < n {
			continue
		}
		piv := -1
		for j := range n {
			if abs(lp.tab[r*w+j]) > 1e-9 {
				piv = j
				break
			}
		}
		if piv < 0 {
			return false // a redundant row: the points span less than d dimensions
		}
		lp.pivot(r, piv, w)
	}

	// Phase II: the lifted height, over the points only.
	for j := range w {
		lp.cost[j] = 0
		if j < n {
			lp.cost[j] = lp.c[j]
		}
	}
	for r, b := range lp.bas {
		cb := lp.c[b]
		for j := range w {
			lp.cost[j] -= cb * lp.tab[r*w+j]
		}
	}
	for j := n; j < w; j++ {
		lp.cost[j] = 0 // artificials never re-enter
	}
	if !lp.iterate(n) {
		return false
	}
	for r, b := range lp.bas {
		vs[r], lam[r] = b, lp.rhs[r]
	}
	return true
}

// iterate pivots until no column below limit has a negative reduced cost.
// It reports false if the LP is unbounded (cannot happen here: λ ≥ 0 and
// Σλ = 1 bound it) or fails to finish.
func (lp *delaunayLP) iterate(limit int) bool {
	m, w := lp.m, lp.n+lp.m
	for range 50 * (lp.n + m) {
		enter := -1
		for j := range limit {
			if lp.cost[j] < -lpEps {
				enter = j // Bland: the lowest index
				break
			}
		}
		if enter < 0 {
			return true
		}
		leave, best := -1, 0.0
		for r := range m {
			a := lp.tab[r*w+enter]
			if a <= 1e-12 {
				continue
			}
			ratio := lp.rhs[r] / a
			if leave < 0 || ratio < best-1e-15 || (ratio <= best+1e-15 && lp.bas[r] < lp.bas[leave]) {
				leave, best = r, ratio
			}
		}
		if leave < 0 {
			return false
		}
		lp.pivot(leave, enter, w)
	}
	return false
}

// pivot makes column j basic in row r.
func (lp *delaunayLP) pivot(r, j, w int) {
	row := lp.tab[r*w : (r+1)*w]
	f := 1 / row[j]
	for k := range row {
		row[k] *= f
	}
	lp.rhs[r] *= f
	for i := range lp.m {
		if i == r {
			continue
		}
		o := lp.tab[i*w : (i+1)*w]
		if g := o[j]; g != 0 {
			for k := range o {
				o[k] -= g * row[k]
			}
			lp.rhs[i] -= g * lp.rhs[r]
			if lp.rhs[i] < 0 && lp.rhs[i] > -1e-12 {
				lp.rhs[i] = 0
			}
		}
	}
	if g := lp.cost[j]; g != 0 {
		for k := range lp.cost {
			lp.cost[k] -= g * row[k]
		}
	}
	lp.bas[r] = j
}

func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	return s[:n]
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
