package interp

import (
	"math"
	"sort"

	"github.com/justrunit/justrunit"
)

// Linear fills cells by linear interpolation between measured points, the
// interpolator the paper describes. It never invents curvature, so it is
// exact on functions that are linear in each parameter; on convex
// response-time curves it overestimates between measurements (use GP there).
//
// Each cell is estimated by the first of three methods that applies, in
// coordinates normalised so that every numeric axis spans [0, 1]:
//
//  1. Multilinear on the grid. On each axis the cell is bracketed by the
//     nearest values at which anything was measured (or, outside them, by
//     the two nearest, which extrapolates linearly; with a single measured
//     value on an axis the cell takes that value's slice, i.e. nearest).
//     When every corner of that box was measured, the value is the
//     multilinear blend of the corners. With a full or coarse grid of
//     measurements this is the classical method and is exact on
//     multilinear functions.
//  2. Piecewise linear on scattered points (two or more numeric axes): the
//     value on the simplex of the Delaunay triangulation of the measured
//     points that contains the cell, blended by barycentric weights λ. The
//     simplex is found without building the triangulation: among the 24
//     measured points nearest to the cell, the convex combination that
//     minimises E = Σ λᵢ‖p − vᵢ‖² is the Delaunay simplex (the facet of the
//     points' lower hull when lifted onto a paraboloid), a small linear
//     program (see delaunayLP). Exact on linear functions. Scattered data
//     in 3-D makes thin simplices; there GP is markedly better.
//  3. Local linear least squares. Outside the hull of the measured points,
//     or when they are degenerate (all on a line in 2-D, say), a plane is
//     fitted to the 2d+4 nearest measured points, weighted by 1/(r²+10⁻⁶),
//     with a tiny ridge on the gradient so that an unidentifiable slope is
//     taken as zero (the minimum-norm plane). This extrapolates linearly.
//
// Every estimate is a weighted sum Σ wᵢ yᵢ of measured values. Its
// uncertainty follows the error bound of linear interpolation,
// |f − Lf| ≤ ½ κ Σ |wᵢ| ‖p − vᵢ‖², where κ bounds the second derivative:
//
//	u = ½ κ E(p) + s·δ,   E(p) = Σ |wᵢ| ‖p − vᵢ‖²
//
// κ is local slope disagreement: measured points next to the stencil (the
// next measured grid value beyond each edge of the box, the nearest
// candidates outside the simplex, or the fit's own points) are predicted by
// the stencil's linear model, and κ = max 2|y_q − L(q)| / |Σ wᵢ(q)‖q − vᵢ‖²|,
// the curvature of the quadratic that explains the worst miss (for the box
// and the simplex; the fit uses its residuals over E at each fitted point,
// and a simplex ignores points near its circumsphere, where that
// denominator vanishes). Where there is no such point, κ is
// taken as the stencil's largest secant slope divided by its diameter (at
// the midpoint of two measurements that is ±1/8 of their difference). E grows
// with the square of the distance outside the stencil, so extrapolated cells
// report more uncertainty. The term s·δ is added where a slope is unknown
// (an axis with a single measured value, or measured points that do not span
// the space): δ is the distance to the nearest measured value in that
// direction and s the largest secant slope between any two measured points
// of the slice. Uncertainties are in the metric's unit; the package adds a
// floor of 0.1% of the larger of |value| and the largest measured |value|.
type Linear struct{}

var _ justrunit.Interpolator = (*Linear)(nil)

// NewLinear returns a linear interpolator.
func NewLinear() *Linear { return &Linear{} }

// Name returns "linear".
func (*Linear) Name() string { return "linear" }

// Interpolate fills every Empty and I cell of m from its X and V cells; see
// justrunit.Interpolator for the contract.
func (l *Linear) Interpolate(m *justrunit.Matrix) error {
	return run(l.Name(), m, fillLinear)
}

// simplexCandidates is how many of the nearest measured points the
// Delaunay search considers for a cell.
const simplexCandidates = 24

// simplexCache is how many recent Delaunay simplices Linear remembers.
const simplexCache = 16

// linearWork is the per-slice state and scratch space of Linear.
type linearWork struct {
	p     *problem
	d     int
	known [][]int // per axis, the sorted value indexes at which something was measured
	slope float64 // largest secant slope between measured points (s)

	nb               neighbours
	lo, hi           []int
	t                []float64
	active           []int
	cy               []float64
	ck               []int
	a, rhs, sol, lam []float64
	piv, vs          []int
	beta, diff       []float64

	lp        delaunayLP
	cx        [][]float64  // candidate coordinates for lp
	found     simplexFit   // the simplex lp found
	cache     []simplexFit // recent Delaunay simplices
	cacheNext int
}

func fillLinear(p *problem) []estimate {
	d := p.dims()
	w := &linearWork{p: p, d: d, known: make([][]int, d)}
	for a := range d {
		seen := make([]bool, p.shape[a])
		for _, loc := range p.pts {
			seen[loc/p.stride[a]%p.shape[a]] = true
		}
		for i, ok := range seen {
			if ok {
				w.known[a] = append(w.known[a], i)
			}
		}
	}
	w.slope = maxSlope(p)
	n1 := d + 1
	w.lo, w.hi, w.t = make([]int, d), make([]int, d), make([]float64, d)
	w.a, w.rhs, w.sol = make([]float64, n1*n1), make([]float64, n1), make([]float64, n1)
	w.lam, w.beta, w.diff = make([]float64, n1), make([]float64, n1), make([]float64, n1)
	w.piv, w.vs = make([]int, n1), make([]int, n1)
	w.found = newSimplexFit(d)

	out := make([]estimate, len(p.fill))
	x, idx := make([]float64, d), make([]int, d)
	for k, loc := range p.fill {
		p.locate(loc, x, idx)
		if e, ok := w.tensor(x, idx); ok {
			out[k] = e
			continue
		}
		if d >= 2 {
			if e, ok := w.simplex(x); ok {
				out[k] = e
				continue
			}
		}
		out[k] = w.leastSquares(x)
	}
	return out
}

// maxSlope returns the largest |Δy|/‖Δx‖ between measured points (over a
// strided sample of at most 400 of them), or |y| when only one was measured:
// the value could change by all of itself across an axis.
func maxSlope(p *problem) float64 {
	n := len(p.ys)
	if n == 1 {
		return math.Abs(p.ys[0])
	}
	step := max(1, n/400)
	s := 0.0
	for i := 0; i < n; i += step {
		for j := i + step; j < n; j += step {
			if r := dist2(p.x(i), p.x(j)); r > 0 {
				s = math.Max(s, math.Abs(p.ys[i]-p.ys[j])/math.Sqrt(r))
			}
		}
	}
	return s
}

// tensor tries multilinear interpolation in the box of measured grid values
// around the cell; ok is false when a corner of the box was not measured.
func (w *linearWork) tensor(x []float64, idx []int) (e estimate, ok bool) {
	p := w.p
	base, unknown2 := 0, 0.0
	w.active = w.active[:0]
	for a := range w.d {
		K, i, c := w.known[a], idx[a], p.coord[a]
		pos := sort.SearchInts(K, i)
		var lo, hi int
		switch {
		case pos < len(K) && K[pos] == i:
			lo, hi = i, i
		case len(K) == 1:
			lo, hi = K[0], K[0]
			unknown2 += (x[a] - c[lo]) * (x[a] - c[lo])
		case pos == 0:
			lo, hi = K[0], K[1]
		case pos == len(K):
			lo, hi = K[len(K)-2], K[len(K)-1]
		default:
			lo, hi = K[pos-1], K[pos]
		}
		w.lo[a], w.hi[a], w.t[a] = lo, hi, 0
		if lo != hi {
			w.t[a] = (x[a] - c[lo]) / (c[hi] - c[lo])
			w.active = append(w.active, a)
		}
		base += lo * p.stride[a]
	}
	if len(w.active) > 12 {
		return e, false
	}
	n := 1 << len(w.active)
	w.cy, w.ck = w.cy[:0], w.ck[:0]
	E := 0.0
	for mask := range n {
		loc, wt := w.corner(base, mask)
		k := p.at[loc]
		if k < 0 {
			return e, false
		}
		y := p.ys[k]
		w.cy, w.ck = append(w.cy, y), append(w.ck, int(k))
		e.v += wt * y
		E += math.Abs(wt) * dist2(x, p.x(int(k)))
	}

	// Slope disagreement: extend each edge of the box to the next measured
	// grid value beyond it and see how far the edge's line misses it.
	kappa, tested := 0.0, false
	for mask := range n {
		for b, a := range w.active {
			if mask>>b&1 == 1 {
				continue // visit each edge once, from its lo end
			}
			lo, hi := w.lo[a], w.hi[a]
			K := w.known[a]
			yl, yh := w.cy[mask], w.cy[mask|1<<b]
			vl, vh := p.x(w.ck[mask]), p.x(w.ck[mask|1<<b])
			loc, _ := w.corner(base, mask)
			pos := sort.SearchInts(K, lo)
			for _, ext := range [2]int{pos - 1, sort.SearchInts(K, hi) + 1} {
				if ext < 0 || ext >= len(K) || K[ext] == lo || K[ext] == hi {
					continue
				}
				q := p.at[loc+(K[ext]-lo)*p.stride[a]]
				if q < 0 {
					continue
				}
				c := p.coord[a]
				tq := (c[K[ext]] - c[lo]) / (c[hi] - c[lo])
				xq := p.x(int(q))
				Eq := math.Abs((1-tq)*dist2(xq, vl) + tq*dist2(xq, vh))
				if Eq > 0 {
					r := p.ys[q] - (yl + tq*(yh-yl))
					kappa, tested = math.Max(kappa, 2*math.Abs(r)/Eq), true
				}
			}
		}
	}
	if !tested {
		kappa = w.secantCurvature(w.ck)
	}
	e.u = 0.5*kappa*E + w.slope*math.Sqrt(unknown2)
	return e, true
}

// corner returns the local flat index and the multilinear weight of the
// box corner selected by mask (bit b set: active axis b at its hi value).
func (w *linearWork) corner(base, mask int) (loc int, wt float64) {
	loc, wt = base, 1.0
	for b, a := range w.active {
		if mask>>b&1 == 1 {
			loc += (w.hi[a] - w.lo[a]) * w.p.stride[a]
			wt *= w.t[a]
		} else {
			wt *= 1 - w.t[a]
		}
	}
	return loc, wt
}

// secantCurvature is κ when nothing beyond the stencil was measured: the
// largest secant slope between stencil points over the stencil's diameter.
func (w *linearWork) secantCurvature(pts []int) float64 {
	p := w.p
	slope, diam := 0.0, 0.0
	for i, a := range pts {
		for _, b := range pts[i+1:] {
			r := math.Sqrt(dist2(p.x(a), p.x(b)))
			if r > 0 {
				slope = math.Max(slope, math.Abs(p.ys[a]-p.ys[b])/r)
				diam = math.Max(diam, r)
			}
		}
	}
	if diam == 0 {
		return 0
	}
	return slope / diam
}

// simplexFit is a simplex of measured points with its factorised edge
// matrix, ready to give barycentric coordinates of any point.
type simplexFit struct {
	vs  []int     // d+1 measured point numbers
	lu  []float64 // LU of the d×d matrix of edges vᵢ − v₀
	piv []int
}

func newSimplexFit(d int) simplexFit {
	return simplexFit{vs: make([]int, d+1), lu: make([]float64, d*d), piv: make([]int, d)}
}

// factor sets s to the simplex vs; it reports false for a degenerate one.
func (w *linearWork) factor(s *simplexFit, vs []int) bool {
	p, d := w.p, w.d
	copy(s.vs, vs)
	v0 := p.x(vs[0])
	for r := range d {
		for c := range d {
			s.lu[r*d+c] = p.xs[vs[c+1]*d+r] - v0[r]
		}
	}
	minP, maxP := luFactor(s.lu, d, s.piv)
	return minP > 1e-10*maxP
}

// barycentric writes the barycentric coordinates of x in s to lam.
func (w *linearWork) barycentric(s *simplexFit, x, lam []float64) {
	d := w.d
	v0 := w.p.x(s.vs[0])
	for r := range d {
		w.rhs[r] = x[r] - v0[r]
	}
	luSolve(s.lu, d, s.piv, w.rhs[:d], lam[1:])
	sum := 0.0
	for _, l := range lam[1:] {
		sum += l
	}
	lam[0] = 1 - sum
}

// inside reports whether barycentric coordinates lam put the point in the
// simplex (on its boundary included).
func inside(lam []float64) bool {
	for _, l := range lam {
		if l < -1e-9 {
			return false
		}
	}
	return true
}

// delaunay reports whether no measured point lies strictly inside the
// circumsphere of s, i.e. whether s is a simplex of the Delaunay
// triangulation of all the slice's measured points, not only of the
// candidates the search looked at.
func (w *linearWork) delaunay(s *simplexFit) bool {
	p, d := w.p, w.d
	// centre c: 2(vᵢ − v₀)·c = ‖vᵢ‖² − ‖v₀‖², i = 1..d
	v0 := p.x(s.vs[0])
	a, rhs, c := w.a[:d*d], w.rhs[:d], w.sol[:d]
	for i := range d {
		vi := p.x(s.vs[i+1])
		rhs[i] = 0
		for j := range d {
			a[i*d+j] = 2 * (vi[j] - v0[j])
			rhs[i] += vi[j]*vi[j] - v0[j]*v0[j]
		}
	}
	if minP, maxP := luFactor(a, d, w.piv); !(minP > 1e-12*maxP) {
		return false
	}
	luSolve(a, d, w.piv, rhs, w.beta[:d])
	copy(c, w.beta[:d])
	r2 := dist2(c, v0)
	for q := range p.ys {
		if dist2(c, p.x(q)) < r2*(1-1e-9) && !contains(s.vs, q) {
			return false
		}
	}
	return true
}

// simplex tries Delaunay piecewise-linear interpolation; ok is false when
// no simplex of the nearest measured points holds the cell.
//
// Simplices found to be globally Delaunay (empty circumsphere) are kept in
// a small cache: consecutive cells are neighbours and usually fall in the
// same one, which then is the answer without a search.
func (w *linearWork) simplex(x []float64) (e estimate, ok bool) {
	p, d := w.p, w.d
	k := min(len(p.ys), simplexCandidates)
	if k < d+1 {
		return e, false
	}
	p.nearest(x, k, &w.nb)
	cand := w.nb.idx

	var best *simplexFit
	for i := range w.cache {
		w.barycentric(&w.cache[i], x, w.lam)
		if inside(w.lam) {
			best = &w.cache[i]
			break
		}
	}
	if best == nil {
		w.cx = w.cx[:0]
		for _, q := range cand {
			w.cx = append(w.cx, p.x(q))
		}
		if !w.lp.solve(w.cx, x, w.vs, w.lam) {
			return e, false
		}
		for i, c := range w.vs {
			w.vs[i] = cand[c]
		}
		if !w.factor(&w.found, w.vs) {
			return e, false
		}
		best = &w.found
		if w.delaunay(best) {
			if len(w.cache) < simplexCache {
				w.cache = append(w.cache, newSimplexFit(d))
			}
			i := w.cacheNext % simplexCache
			w.cacheNext++
			copy(w.cache[i].vs, best.vs)
			copy(w.cache[i].lu, best.lu)
			copy(w.cache[i].piv, best.piv)
			best = &w.cache[i]
		}
	}
	w.barycentric(best, x, w.lam)
	E := 0.0
	for i, v := range best.vs {
		e.v += w.lam[i] * p.ys[v]
		E += w.lam[i] * dist2(x, p.x(v))
	}

	// Slope disagreement: predict the nearest candidates outside the
	// simplex with its plane.
	kappa, tests := 0.0, 0
	for _, q := range cand {
		if tests > d || contains(best.vs, q) {
			continue
		}
		xq := p.x(q)
		w.barycentric(best, xq, w.lam)
		L, Eq, Eabs := 0.0, 0.0, 0.0
		for i, v := range best.vs {
			L += w.lam[i] * p.ys[v]
			Eq += w.lam[i] * dist2(xq, p.x(v))
			Eabs += math.Abs(w.lam[i]) * dist2(xq, p.x(v))
		}
		// A quadratic with curvature κ misses q by ½κ|Eq|; Eq vanishes on
		// the simplex's circumsphere, where q says little about κ.
		if Eq = math.Abs(Eq); Eq > 0.1*Eabs {
			kappa, tests = math.Max(kappa, 2*math.Abs(p.ys[q]-L)/Eq), tests+1
		}
	}
	if tests == 0 {
		kappa = w.secantCurvature(best.vs)
	}
	e.u = 0.5 * kappa * E
	return e, true
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// leastSquares fits a plane to the nearest measured points, weighted by
// closeness, and evaluates it at x; it always gives an estimate.
func (w *linearWork) leastSquares(x []float64) estimate {
	p, d := w.p, w.d
	n1 := d + 1
	k := min(len(p.ys), 2*n1+2)
	p.nearest(x, k, &w.nb)
	nb := w.nb

	// Normal equations M β = b for y ≈ β₀ + β·(xᵢ − x), rows aᵢ = (1, xᵢ − x).
	M, b := w.a[:n1*n1], w.rhs[:n1]
	clear(M)
	clear(b)
	for i, q := range nb.idx {
		om := 1 / (nb.d2[i] + 1e-6)
		ai := w.row(q, x)
		for r := range n1 {
			b[r] += om * ai[r] * p.ys[q]
			for c := range n1 {
				M[r*n1+c] += om * ai[r] * ai[c]
			}
		}
	}
	trace := 0.0
	for r := range n1 {
		trace += M[r*n1+r]
	}
	for r := 1; r < n1; r++ {
		M[r*n1+r] += 1e-9 * trace / float64(n1)
	}
	minP, maxP := luFactor(M, n1, w.piv)
	if minP == 0 {
		q := nb.idx[0]
		return estimate{v: p.ys[q], u: w.slope * math.Sqrt(nb.d2[0])}
	}
	beta := w.beta
	luSolve(M, n1, w.piv, b, beta)

	// hat weights at x: wᵢ = ωᵢ (M⁻¹e₀)·aᵢ
	clear(w.diff)
	w.diff[0] = 1
	luSolve(M, n1, w.piv, w.diff, w.lam)
	E := 0.0
	for i, q := range nb.idx {
		om := 1 / (nb.d2[i] + 1e-6)
		E += math.Abs(om*dot(w.lam, w.row(q, x))) * nb.d2[i]
	}

	kappa := 0.0
	if k > n1 {
		// Slope disagreement: each fitted point's residual against the
		// error bound at that point.
		for _, qi := range nb.idx {
			xi := p.x(qi)
			h := w.row(qi, x)
			copy(w.diff, h)
			r := p.ys[qi] - dot(beta, w.diff)
			luSolve(M, n1, w.piv, w.diff, w.lam)
			Ei := 0.0
			for j, qj := range nb.idx {
				om := 1 / (nb.d2[j] + 1e-6)
				Ei += math.Abs(om*dot(w.lam, w.row(qj, x))) * dist2(xi, p.x(qj))
			}
			if Ei > 0 {
				kappa = math.Max(kappa, 2*math.Abs(r)/Ei)
			}
		}
	} else {
		kappa = w.secantCurvature(nb.idx)
	}
	u := 0.5 * kappa * E
	if k == 1 || minP < 1e-6*maxP {
		// The points do not fix every slope; the ridge took the unknown
		// ones as flat.
		u += w.slope * math.Sqrt(nb.d2[0])
	}
	return estimate{v: beta[0], u: u}
}

// row returns (1, x_q − x) in the scratch row xq∪{1}; valid until the next call.
func (w *linearWork) row(q int, x []float64) []float64 {
	r := w.sol[:w.d+1]
	r[0] = 1
	for i, v := range w.p.x(q) {
		r[i+1] = v - x[i]
	}
	return r
}

func dot(a, b []float64) float64 {
	s := 0.0
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}
