package driver

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// benchMatrix returns a matrix over s with its first measured points of the
// grid's refinement order measured from a smooth curve.
func benchMatrix(b *testing.B, s justrunit.Space, measured int) *justrunit.Matrix {
	m := matrix(b, s)
	f := func(p justrunit.Point) float64 {
		v := 10.0
		for _, x := range p {
			v += 1000 / (x + 5)
		}
		return v
	}
	for _, i := range refinementOrder(s)[:measured] {
		record(b, m, f, m.Rows[i].Point)
	}
	return m
}

// BenchmarkPlanAdaptive measures one adaptive Next on a 3-D 10x10x10 space
// with the corners and 24 more points measured, using the nearest-neighbour
// interpolator double (O(points × measured) per interpolation); with 4 free
// slots it interpolates 4 times (one per believed pick).
func BenchmarkPlanAdaptive(b *testing.B) {
	s := space(b, "a=1..10 step 1", "b=1..10 step 1", "c=1..10 step 1")
	m := benchMatrix(b, s, 32)
	a, err := NewAdaptive(Options{Interpolator: nearest{}, UncertaintyTarget: 1e-9})
	if err != nil {
		b.Fatal(err)
	}
	for _, free := range []int{1, 4} {
		b.Run(fmt.Sprintf("10x10x10/free=%d", free), func(b *testing.B) {
			st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: free, Free: free}
			b.ReportAllocs()
			for b.Loop() {
				pts, err := a.Next(context.Background(), st)
				if err != nil || len(pts) != free {
					b.Fatalf("Next = %v, %v", pts, err)
				}
			}
		})
	}
	// With a loose target, Next checks the interpolator against
	// MaxHoldouts held-out points before it stops.
	loose, err := NewAdaptive(Options{Interpolator: nearest{}, UncertaintyTarget: 1e6})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("10x10x10/stop-check", func(b *testing.B) {
		st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 1, Free: 1}
		b.ReportAllocs()
		for b.Loop() {
			if pts, err := loose.Next(context.Background(), st); err != nil || len(pts) != 0 {
				b.Fatalf("Next = %v, %v; want to stop", pts, err)
			}
		}
	})
}

// BenchmarkPlanGrid measures one grid Next on a 20x20x20 space (8000
// points) with half of them measured: a scan of the cached refinement order.
func BenchmarkPlanGrid(b *testing.B) {
	s := space(b, "a=1..20 step 1", "b=1..20 step 1", "c=1..20 step 1")
	m := benchMatrix(b, s, 4000)
	g := NewGrid()
	st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 4, Free: 4}
	b.Run("20x20x20/free=4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if pts, err := g.Next(context.Background(), st); err != nil || len(pts) != 4 {
				b.Fatalf("Next = %v, %v", pts, err)
			}
		}
	})
	b.Run("20x20x20/order", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			refinementOrder(s)
		}
	})
}

// BenchmarkPlanSLA measures whole sla searches: planning and recording on an
// 11-point axis until settled, and the first Next over the 100 lines of an
// 11x10x10 space.
func BenchmarkPlanSLA(b *testing.B) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	f := func(p justrunit.Point) float64 { return 10 + 4000/(p[0]+10) }
	s1 := space(b, "cpu=0..100 step 10")
	sr := mustSLA(b, "")
	b.Run("11/search", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := matrix(b, s1)
			for range 5 {
				st := justrunit.PlanState{Matrix: m, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 1, Free: 1, SLA: sla}
				pts, err := sr.Next(context.Background(), st)
				if err != nil {
					b.Fatal(err)
				}
				if len(pts) == 0 {
					break
				}
				record(b, m, f, pts...)
			}
		}
	})
	s3 := space(b, "cpu=0..100 step 10", "freq=1..10 step 1", "mem=1..10 step 1")
	m3 := matrix(b, s3)
	b.Run("11x10x10/free=4", func(b *testing.B) {
		st := justrunit.PlanState{Matrix: m3, TimeLeft: time.Hour, ExperimentLength: time.Minute, Slots: 4, Free: 4, SLA: sla}
		b.ReportAllocs()
		for b.Loop() {
			if pts, err := sr.Next(context.Background(), st); err != nil || len(pts) != 4 {
				b.Fatalf("Next = %v, %v", pts, err)
			}
		}
	})
}
