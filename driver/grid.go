package driver

import (
	"context"
	"slices"
	"sync"

	"github.com/justrunit/justrunit"
)

// Grid is the exhaustive strategy: it runs every point of the space, the
// ground truth the other strategies and the interpolators are judged
// against. It runs them coarse grid first: the corners (both ends of every
// numeric parameter, every label of a categorical one), then the points
// that complete the grid of ends and midpoints, then the grid of quarter
// points, and so on, halving the spacing each time; within one grid, points
// on fewer fine axes first. A grid study cut short by its time bound has
// thus sampled the whole space evenly rather than one corner of it densely.
//
// A Grid is safe for concurrent use; it caches the order of the last space
// it planned for.
type Grid struct {
	mu    sync.Mutex
	space justrunit.Space // the space order belongs to
	order []int
}

var _ justrunit.Strategy = (*Grid)(nil)

// NewGrid returns the grid strategy.
func NewGrid() *Grid { return &Grid{} }

// Name returns "grid".
func (g *Grid) Name() string { return NameGrid }

// Next returns the next st.Free points in refinement order that are neither
// measured nor running, or none when every point is measured or no
// experiment fits into the time left.
func (g *Grid) Next(ctx context.Context, st justrunit.PlanState) ([]justrunit.Point, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := slotsNow(st)
	if err != nil || n == 0 {
		return nil, err
	}
	running, err := runningSet(st)
	if err != nil {
		return nil, err
	}
	var out []justrunit.Point
	for _, i := range g.orderOf(st.Matrix.Space) {
		if tried(st.Matrix, i) || running[i] {
			continue
		}
		out = append(out, pointAt(st.Matrix, i))
		if len(out) == n {
			break
		}
	}
	return out, nil
}

// Estimate returns the number of points neither measured nor running,
// bounded by what fits into the time left.
func (g *Grid) Estimate(st justrunit.PlanState) int {
	if st.Matrix == nil {
		return 0
	}
	left := 0
	for i := range st.Matrix.Rows {
		if !tried(st.Matrix, i) {
			left++
		}
	}
	return max(0, min(left-len(st.Running), estimateCap(st)))
}

func (g *Grid) orderOf(s justrunit.Space) []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.order == nil || !sameShape(g.space, s) {
		g.space, g.order = s, refinementOrder(s)
	}
	return g.order
}

// sameShape reports whether two spaces have the same refinement order: the
// same number of values per parameter and the same categorical parameters.
func sameShape(a, b justrunit.Space) bool {
	return slices.EqualFunc(a.Params, b.Params, func(p, q justrunit.Parameter) bool {
		return len(p.Values) == len(q.Values) && p.Categorical() == q.Categorical()
	})
}
