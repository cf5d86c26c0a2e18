package interp

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/mat"

	"github.com/justrunit/justrunit"
)

// GP fills cells by Gaussian-process regression, the "machine learning to
// improve the interpolation" the paper points at. It follows curved response
// surfaces, such as the knee of a response-time curve as the CPU share
// approaches the load, which linear interpolation cuts across.
//
// The model, per metric and categorical slice, in coordinates normalised so
// that every numeric axis spans [0, 1]:
//
//   - z = (y^λ − 1)/λ, a Box-Cox transform with λ chosen by likelihood
//     (including the transform's Jacobian) among 1 (none), 0 (log y) and −1
//     (≈ −1/y); λ = 1 unless every measured value is positive. Response
//     times usually pick −1: an M/M/1-like s/(1 − load/cpu) is, as −1/rt,
//     a smooth curve without a pole, which a GP follows well; log alone
//     leaves the knee too sharp. Estimates are capped at 10× the largest
//     measured value, since past a saturation knee −1/y can reach its pole.
//     Past the last measurement a response-time curve flattens towards
//     the service time, where the trend of its knee would carry it on to
//     zero (measured 990, 72 and 25 ms at cpu 20, 30 and 40%, the trend
//     alone gave 0.0 ms at 90%); the package's floor for metrics that
//     level off (see levelsOff) keeps it at the least measured value.
//   - z(x) = β₀ + βᵀx + f(x): a linear trend, so that extrapolation follows
//     the measured slope rather than falling back to a constant, with a
//     weak prior on the slopes (standard deviation twice the range of z per
//     unit of axis) so that slopes the data cannot fix stay near zero; and
//     f a zero-mean GP with a Matérn 5/2 kernel, σ² k(r), with one length
//     scale per axis (ARD), plus a nugget g for measurement noise.
//   - Hyperparameters maximise the likelihood (σ² profiled out) times a
//     log-normal prior on each length scale (median 1, the axis range;
//     σ = 1): with a handful of points, plain maximum likelihood prefers
//     length scales shorter than the spacing of the measurements, and the
//     GP then falls back to its trend between them. The search: a grid over
//     a common length scale (0.05 to 3.2) and g ∈ {10⁻⁶, 10⁻⁴, 10⁻²} for
//     each λ, then two coordinate sweeps over each axis's length scale. It
//     uses at most 64 of the measured points; the final model uses all of
//     them. The model is fitted once per slice and evaluated at every cell
//     (O(n³) once, O(n²) per cell, in blocks of 128 cells).
//
// A cell's value is the back-transformed posterior mean μ of z (for λ ≠ 1
// the posterior median of y), and its uncertainty the half-width of the
// back-transformed one-σ band, (y(μ+σ) − y(μ−σ))/2, in the metric's unit;
// for λ = 1 that is σ, for λ = 0 exp(μ)·sinh(σ). σ² is the universal-kriging
// posterior variance of z: the GP term σ²(1 − kᵀK⁻¹k) plus the trend's
// uncertainty, which grows outside the measured points. The package floor
// of 0.1% applies as for Linear.
//
// A slice with fewer than 3 measured points (too few to fit anything) or more
// than MaxTrain (where the cubic cost bites and dense data makes linear
// interpolation good anyway) is filled by Linear instead.
type GP struct {
	// MaxTrain is the largest number of measured points per slice the GP
	// fits; larger slices are filled by Linear. DefaultMaxTrain when ≤ 0.
	MaxTrain int
}

var _ justrunit.Interpolator = (*GP)(nil)

// DefaultMaxTrain is GP.MaxTrain's default: at 256 measured points the fit
// and a 20×20×20 space take well under a second.
const DefaultMaxTrain = 256

// Hyperparameter search settings.
const (
	gpMaxSearch = 64 // measured points used to choose hyperparameters
	gpSweeps    = 2  // coordinate sweeps over the per-axis length scales
)

var (
	gpLengths = []float64{0.05, 0.0707, 0.1, 0.141, 0.2, 0.283, 0.4, 0.566, 0.8, 1.13, 1.6, 2.26, 3.2}
	gpNuggets = []float64{1e-6, 1e-4, 1e-2}
	gpLambdas = []float64{1, 0, -1} // Box-Cox: identity, log, reciprocal
)

// gpCeiling caps an estimate at this multiple of the largest measured
// value: past a saturation knee the reciprocal transform can predict an
// infinite response time, and "ten times the worst we saw" says as much.
const gpCeiling = 10

// gpChoice is a transform and hyperparameters with their objective.
type gpChoice struct {
	lam, g float64
	ls     []float64
	obj    float64
}

// lengthPrior is −log of a log-normal prior on each length scale with
// median 1 (the axis range) and σ = 1: response surfaces over resource
// settings are smooth at the scale of the axis, and a handful of
// measurements cannot tell a short length scale from noise.
func lengthPrior(ls []float64) float64 {
	s := 0.0
	for _, l := range ls {
		s += math.Log(l) * math.Log(l) / 2
	}
	return s
}

// searchIsotropic returns the nugget and common length scale that minimise
// the negative log posterior of z.
func searchIsotropic(xs, z []float64, d int) gpChoice {
	best := gpChoice{obj: math.Inf(1), ls: make([]float64, d)}
	ls := make([]float64, d)
	for _, g := range gpNuggets {
		for _, l := range gpLengths {
			for a := range ls {
				ls[a] = l
			}
			if m, ok := fitGP(xs, z, d, ls, g); ok && m.nll+lengthPrior(ls) < best.obj {
				best.obj, best.g = m.nll+lengthPrior(ls), g
				copy(best.ls, ls)
			}
		}
	}
	return best
}

// boxCox returns the Box-Cox transform (y^λ − 1)/λ of ys (log y for λ = 0,
// and y itself for λ = 1: the shift changes nothing but would need y > 0).
func boxCox(ys []float64, lam float64) []float64 {
	z := make([]float64, len(ys))
	for i, y := range ys {
		switch lam {
		case 1:
			z[i] = y // no shift: y may be ≤ 0
		case 0:
			z[i] = math.Log(y)
		default:
			z[i] = (math.Pow(y, lam) - 1) / lam
		}
	}
	return z
}

// invBoxCox inverts boxCox; a z past the transform's pole gives +Inf.
func invBoxCox(z, lam float64) float64 {
	switch lam {
	case 1:
		return z
	case 0:
		return math.Exp(z)
	}
	b := 1 + lam*z
	if b <= 0 {
		return math.Inf(1)
	}
	return math.Pow(b, 1/lam)
}

// NewGP returns a Gaussian-process interpolator with default settings.
func NewGP() *GP { return &GP{MaxTrain: DefaultMaxTrain} }

// Name returns "gp".
func (*GP) Name() string { return "gp" }

// Interpolate fills every Empty and I cell of m from its X and V cells; see
// justrunit.Interpolator for the contract.
func (g *GP) Interpolate(m *justrunit.Matrix) error {
	return run(g.Name(), m, g.fill)
}

func (g *GP) fill(p *problem) []estimate {
	maxTrain := g.MaxTrain
	if maxTrain <= 0 {
		maxTrain = DefaultMaxTrain
	}
	n, d := len(p.ys), p.dims()
	if n < 3 || n > maxTrain {
		return fillLinear(p)
	}
	positive := true
	for _, y := range p.ys {
		positive = positive && y > 0
	}
	lambdas := []float64{1}
	if positive {
		lambdas = gpLambdas
	}

	// Choose the transform and the hyperparameters on a strided subset.
	ns := min(n, gpMaxSearch)
	sub := make([]int, ns)
	for i := range sub {
		sub[i] = i * n / ns
	}
	sx, sy := make([]float64, 0, ns*d), make([]float64, 0, ns)
	for _, i := range sub {
		sx, sy = append(sx, p.x(i)...), append(sy, p.ys[i])
	}
	best := gpChoice{obj: math.Inf(1)}
	for _, lam := range lambdas {
		c := searchIsotropic(sx, boxCox(sy, lam), d)
		if lam != 1 {
			// the Jacobian of the transform, so that likelihoods of
			// different transforms compare
			for _, y := range sy {
				c.obj -= (lam - 1) * math.Log(y)
			}
		}
		if c.lam = lam; c.obj < best.obj {
			best = c
		}
	}
	if math.IsInf(best.obj, 1) {
		return fillLinear(p)
	}
	ls := best.ls
	if d > 1 {
		sz := boxCox(sy, best.lam)
		obj := math.Inf(1)
		if m, ok := fitGP(sx, sz, d, ls, best.g); ok {
			obj = m.nll + lengthPrior(ls)
		}
		for range gpSweeps {
			for a := range ls {
				keep := ls[a]
				for _, l := range gpLengths {
					ls[a] = l
					if m, ok := fitGP(sx, sz, d, ls, best.g); ok && m.nll+lengthPrior(ls) < obj {
						obj, keep = m.nll+lengthPrior(ls), l
					}
				}
				ls[a] = keep
			}
		}
	}

	m, ok := fitGP(p.xs, boxCox(p.ys, best.lam), d, ls, best.g)
	if !ok {
		return fillLinear(p)
	}
	ceiling := 0.0
	for _, y := range p.ys {
		ceiling = math.Max(ceiling, gpCeiling*math.Abs(y))
	}
	inv := func(z float64) float64 { return math.Min(invBoxCox(z, best.lam), ceiling) }
	out := make([]estimate, len(p.fill))
	idx := make([]int, d)
	xb := make([]float64, gpBatch*d)
	mus, vs := make([]float64, gpBatch), make([]float64, gpBatch)
	var sc gpScratch
	for start := 0; start < len(p.fill); start += gpBatch {
		cells := p.fill[start:min(start+gpBatch, len(p.fill))]
		for c, loc := range cells {
			p.locate(loc, xb[c*d:(c+1)*d], idx)
		}
		m.predict(xb[:len(cells)*d], mus, vs, &sc)
		for c := range cells {
			mu, s := mus[c], math.Sqrt(vs[c])
			e := &out[start+c]
			switch best.lam {
			case 1:
				*e = estimate{v: mu, u: s}
			case 0:
				*e = estimate{v: math.Min(math.Exp(mu), ceiling), u: math.Min(math.Exp(mu)*math.Sinh(s), ceiling)}
			default:
				*e = estimate{v: inv(mu), u: (inv(mu+s) - inv(mu-s)) / 2}
			}
		}
	}
	return out
}

// gpModel is a fitted GP with a linear trend. K = R + gI is the correlation
// matrix of the training points; U is its upper Cholesky factor (K = UᵀU).
type gpModel struct {
	n, d   int
	xs     []float64         // training inputs, n×d
	ls     []float64         // length scale per axis
	u      blas64.Triangular // U
	alpha  []float64         // K⁻¹(z − Aβ)
	beta   []float64         // trend coefficients (β₀, β)
	w      []float64         // U⁻ᵀA, n×(d+1), A's rows (1, xᵢ)
	minv   []float64         // (WᵀW + Λ)⁻¹, (d+1)×(d+1)
	sigma2 float64           // profiled signal variance
	nll    float64           // negative log likelihood, up to a constant
}

// matern52 is the Matérn 5/2 correlation at scaled distance r.
func matern52(r float64) float64 {
	s := math.Sqrt(5) * r
	return (1 + s + s*s/3) * math.Exp(-s)
}

func (m *gpModel) corr(a, b []float64) float64 {
	r2 := 0.0
	for i := range a {
		t := (a[i] - b[i]) / m.ls[i]
		r2 += t * t
	}
	return matern52(math.Sqrt(r2))
}

// solveUT overwrites v with U⁻ᵀv (forward substitution with Uᵀ).
func (m *gpModel) solveUT(v []float64) {
	blas64.Trsv(blas.Trans, m.u, blas64.Vector{N: m.n, Data: v, Inc: 1})
}

// solveU overwrites v with U⁻¹v (back substitution).
func (m *gpModel) solveU(v []float64) {
	blas64.Trsv(blas.NoTrans, m.u, blas64.Vector{N: m.n, Data: v, Inc: 1})
}

// fitGP fits the trend and the GP to inputs xs (n×d) and targets z with
// length scales ls and nugget g. ok is false when K is not positive
// definite in floating point.
func fitGP(xs, z []float64, d int, ls []float64, g float64) (*gpModel, bool) {
	n := len(z)
	m := &gpModel{n: n, d: d, xs: xs, ls: append([]float64(nil), ls...)}
	k := mat.NewSymDense(n, nil)
	for i := range n {
		k.SetSym(i, i, 1+g)
		for j := i + 1; j < n; j++ {
			k.SetSym(i, j, m.corr(xs[i*d:(i+1)*d], xs[j*d:(j+1)*d]))
		}
	}
	var chol mat.Cholesky
	if !chol.Factorize(k) {
		return nil, false
	}
	var ut mat.TriDense
	chol.UTo(&ut)
	m.u = ut.RawTriangular()

	// W = U⁻ᵀA and zt = U⁻ᵀz, column by column.
	n1 := d + 1
	m.w = make([]float64, n*n1)
	col := make([]float64, n)
	for c := range n1 {
		for i := range n {
			col[i] = 1
			if c > 0 {
				col[i] = xs[i*d+c-1]
			}
		}
		m.solveUT(col)
		for i := range n {
			m.w[i*n1+c] = col[i]
		}
	}
	zt := append([]float64(nil), z...)
	m.solveUT(zt)

	// Slope prior: standard deviation tau per unit of axis.
	zmin, zmax := z[0], z[0]
	for _, v := range z {
		zmin, zmax = math.Min(zmin, v), math.Max(zmax, v)
	}
	tau := 2 * math.Max(zmax-zmin, 1e-3*(1+math.Abs(zmin)))

	res := make([]float64, n)
	m.beta = make([]float64, n1)
	m.minv = make([]float64, n1*n1)
	lambda := 1e-8
	for pass := range 2 {
		// β = (WᵀW + Λ)⁻¹ Wᵀzt, Λ = diag(1e-10, λ, …, λ).
		a := make([]float64, n1*n1)
		rhs := make([]float64, n1)
		for r := range n1 {
			for i := range n {
				rhs[r] += m.w[i*n1+r] * zt[i]
				for c := range n1 {
					a[r*n1+c] += m.w[i*n1+r] * m.w[i*n1+c]
				}
			}
			if r == 0 {
				a[0] += 1e-10
			} else {
				a[r*n1+r] += lambda
			}
		}
		piv := make([]int, n1)
		if minP, _ := luFactor(a, n1, piv); minP == 0 {
			return nil, false
		}
		luSolve(a, n1, piv, rhs, m.beta)
		e, inv := make([]float64, n1), make([]float64, n1) // n1 may exceed n
		for c := range n1 {
			clear(e)
			e[c] = 1
			luSolve(a, n1, piv, e, inv)
			for r := range n1 {
				m.minv[r*n1+c] = inv[r]
			}
		}
		ss := 0.0
		for i := range n {
			res[i] = zt[i] - dot(m.w[i*n1:(i+1)*n1], m.beta)
			ss += res[i] * res[i]
		}
		m.sigma2 = math.Max(ss/float64(n), 1e-12)
		if pass == 0 {
			lambda = math.Max(m.sigma2/(tau*tau), 1e-8)
		}
	}
	m.alpha = res
	m.solveU(m.alpha)
	m.nll = 0.5 * (float64(n)*math.Log(m.sigma2) + chol.LogDet())
	return m, true
}

// gpBatch is how many cells predict evaluates at once: the triangular
// solve for a block of cells is a matrix solve, which runs several times
// faster than one vector solve per cell.
const gpBatch = 128

// gpScratch is predict's working memory.
type gpScratch struct{ kx, q, t []float64 }

// predict writes the posterior mean and variance of z at each point of xb
// (len(xb)/d points) to mu and v.
func (m *gpModel) predict(xb, mu, v []float64, sc *gpScratch) {
	n, d, n1 := m.n, m.d, m.d+1
	b := len(xb) / d
	sc.kx = grow(sc.kx, b*n)
	sc.q, sc.t = grow(sc.q, n1), grow(sc.t, n1)
	for c := range b {
		x, kx := xb[c*d:(c+1)*d], sc.kx[c*n:(c+1)*n]
		for i := range n {
			kx[i] = m.corr(x, m.xs[i*d:(i+1)*d])
		}
		mu[c] = m.beta[0] + dot(m.beta[1:], x) + dot(kx, m.alpha)
	}
	// Row c becomes (U⁻ᵀk_c)ᵀ = k_cᵀU⁻¹.
	blas64.Trsm(blas.Right, blas.NoTrans, 1, m.u, blas64.General{Rows: b, Cols: n, Stride: n, Data: sc.kx[:b*n]})
	q, t := sc.q, sc.t
	for c := range b {
		x, kx := xb[c*d:(c+1)*d], sc.kx[c*n:(c+1)*n]
		vgp := math.Max(0, 1-dot(kx, kx))
		// trend term: q = h − Wᵀ U⁻ᵀk, variance qᵀ(WᵀW+Λ)⁻¹q
		q[0] = 1
		copy(q[1:], x)
		for i := range n {
			for r := range n1 {
				q[r] -= m.w[i*n1+r] * kx[i]
			}
		}
		for r := range n1 {
			t[r] = dot(m.minv[r*n1:(r+1)*n1], q)
		}
		vtr := math.Max(0, dot(q, t))
		v[c] = m.sigma2 * (vgp + vtr)
	}
}
