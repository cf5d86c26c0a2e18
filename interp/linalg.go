package interp

import "math"

// Small dense helpers for the (d+1)×(d+1) systems of the linear
// interpolator, written out so that the per-cell loop allocates nothing.

// luFactor factorises the n×n row-major matrix a in place (PA = LU, partial
// pivoting) and records the row order in piv. It returns the smallest and the
// largest absolute pivot; a zero smallest pivot means a is singular and
// luSolve must not be called.
func luFactor(a []float64, n int, piv []int) (minPiv, maxPiv float64) {
	for i := range n {
		piv[i] = i
	}
	minPiv = math.Inf(1)
	for k := range n {
		p, best := k, math.Abs(a[k*n+k])
		for i := k + 1; i < n; i++ {
			if v := math.Abs(a[i*n+k]); v > best {
				p, best = i, v
			}
		}
		if p != k {
			for j := range n {
				a[k*n+j], a[p*n+j] = a[p*n+j], a[k*n+j]
			}
			piv[k], piv[p] = piv[p], piv[k]
		}
		minPiv, maxPiv = math.Min(minPiv, best), math.Max(maxPiv, best)
		if best == 0 {
			return 0, maxPiv
		}
		for i := k + 1; i < n; i++ {
			f := a[i*n+k] / a[k*n+k]
			a[i*n+k] = f
			for j := k + 1; j < n; j++ {
				a[i*n+j] -= f * a[k*n+j]
			}
		}
	}
	return minPiv, maxPiv
}

// luSolve solves A·x = b with the factors from luFactor, writing x into out
// (len n); b is left unchanged.
func luSolve(a []float64, n int, piv []int, b, out []float64) {
	for i := range n {
		out[i] = b[piv[i]]
	}
	for i := range n {
		for j := range i {
			out[i] -= a[i*n+j] * out[j]
		}
	}
	for i := n - 1; i >= 0; i-- {
		for j := i + 1; j < n; j++ {
			out[i] -= a[i*n+j] * out[j]
		}
		out[i] /= a[i*n+i]
	}
}

// dist2 returns the squared Euclidean distance between a and b.
func dist2(a, b []float64) float64 {
	s := 0.0
	for i := range a {
		d := a[i] - b[i]
		s += d * d
	}
	return s
}

// neighbours holds measured point numbers sorted by distance, nearest first.
type neighbours struct {
	idx []int
	d2  []float64
}

// nearest fills nb with the k measured points of p nearest to x; ties keep
// the lower point number, so results do not depend on anything but input.
func (p *problem) nearest(x []float64, k int, nb *neighbours) {
	nb.idx, nb.d2 = nb.idx[:0], nb.d2[:0]
	for i := range p.ys {
		d := dist2(x, p.x(i))
		n := len(nb.idx)
		if n == k && d >= nb.d2[n-1] {
			continue
		}
		if n < k {
			nb.idx, nb.d2 = append(nb.idx, 0), append(nb.d2, 0)
			n++
		}
		j := n - 1
		for j > 0 && nb.d2[j-1] > d {
			nb.idx[j], nb.d2[j] = nb.idx[j-1], nb.d2[j-1]
			j--
		}
		nb.idx[j], nb.d2[j] = i, d
	}
}
