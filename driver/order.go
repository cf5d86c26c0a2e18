package driver

import (
	"slices"

	"github.com/justrunit/justrunit"
)

// axisLevels returns the refinement level of each value index of a
// parameter: the two ends are level 0, the midpoint between them level 1,
// the midpoints of the two halves level 2, and so on. Every value of a
// categorical parameter is level 0: labels have no "between", and every
// label is a slice of the space the interpolators treat on its own.
func axisLevels(p justrunit.Parameter) []int {
	n := len(p.Values)
	lv := make([]int, n)
	if p.Categorical() || n <= 2 {
		return lv
	}
	type span struct{ a, b, level int }
	queue := []span{{0, n - 1, 1}}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		if s.b-s.a < 2 {
			continue
		}
		mid := (s.a + s.b) / 2
		lv[mid] = s.level
		queue = append(queue, span{s.a, mid, s.level + 1}, span{mid, s.b, s.level + 1})
	}
	return lv
}

// refinementOrder returns every flat index of s, coarsest grid first: first
// the corners (every point all of whose values are level 0), then the points
// that complete the grid of levels ≤ 1, then ≤ 2, and so on. Within a grid,
// points with a smaller sum of levels come first, then flat order. Cut
// anywhere, the prefix is a coarse but space-filling sample.
func refinementOrder(s justrunit.Space) []int {
	levels := make([][]int, len(s.Params))
	for d, p := range s.Params {
		levels[d] = axisLevels(p)
	}
	n := s.Size()
	type key struct{ maxL, sumL, flat int }
	keys := make([]key, n)
	coords := make([]int, len(s.Params))
	for i := range n {
		k := key{flat: i}
		for d, c := range coords {
			l := levels[d][c]
			k.maxL = max(k.maxL, l)
			k.sumL += l
		}
		keys[i] = k
		// Advance coords like an odometer, the last parameter fastest.
		for d := len(coords) - 1; d >= 0; d-- {
			coords[d]++
			if coords[d] < len(s.Params[d].Values) {
				break
			}
			coords[d] = 0
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.maxL != b.maxL {
			return a.maxL - b.maxL
		}
		if a.sumL != b.sumL {
			return a.sumL - b.sumL
		}
		return a.flat - b.flat
	})
	order := make([]int, n)
	for i, k := range keys {
		order[i] = k.flat
	}
	return order
}

// corners returns the flat indexes of the level-0 points of s in flat order:
// the ends of every numeric parameter combined with every label of every
// categorical one.
func corners(s justrunit.Space) []int {
	ends := make([][]int, len(s.Params))
	total := 1
	for d, p := range s.Params {
		for i, l := range axisLevels(p) {
			if l == 0 {
				ends[d] = append(ends[d], i)
			}
		}
		total *= len(ends[d])
	}
	out := make([]int, 0, total)
	pick := make([]int, len(s.Params)) // position within ends[d]
	coords := make([]int, len(s.Params))
	for range total {
		for d := range coords {
			coords[d] = ends[d][pick[d]]
		}
		out = append(out, s.Flat(coords))
		for d := len(pick) - 1; d >= 0; d-- {
			pick[d]++
			if pick[d] < len(ends[d]) {
				break
			}
			pick[d] = 0
		}
	}
	return out
}
