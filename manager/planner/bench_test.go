package planner

import (
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkHeuristic plans the acceptance sites (10,000 instances, 2,000
// hosts) and reports, besides time and allocations, the plan time in
// seconds, hosts used over the lower bound, and migrations.
func BenchmarkHeuristic(b *testing.B) {
	for si, site := range largeSites {
		in := randomSite(rand.New(rand.NewPCG(uint64(si), 42)), site.spec)
		b.Run(site.name, func(b *testing.B) {
			b.ReportAllocs()
			var pl Plan
			var err error
			start := time.Now()
			for b.Loop() {
				if pl, err = Heuristic(in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "plan_s")
			b.ReportMetric(float64(pl.HostsUsed)/float64(pl.LowerBound), "hosts/lb")
			b.ReportMetric(float64(pl.HostsUsed), "hosts_used")
			b.ReportMetric(float64(pl.LowerBound), "lower_bound")
			b.ReportMetric(float64(len(pl.Moves)), "migrations")
		})
	}
}

// BenchmarkExact plans a small site exactly (8 instances, 5 hosts).
func BenchmarkExact(b *testing.B) {
	in := smallSite(rand.New(rand.NewPCG(11, 12)), 5, 10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exact(in, Limit{}); err != nil {
			b.Fatal(err)
		}
	}
}
