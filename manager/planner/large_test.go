package planner

import (
	"math/rand/v2"
	"testing"
	"time"
)

// largeSites are the acceptance sites: 10,000 instances on 2,000 hosts.
var largeSites = []struct {
	name string
	spec siteSpec
}{
	{"equal hosts", siteSpec{
		hosts: 2000, instances: 10000,
		classes: []class{{name: "std", cores: 8, idle: 100, share: 1}},
		cpuLo:   10, cpuHi: 250, change: 0.3, spareOn: 0.3,
	}},
	{"two classes", siteSpec{
		hosts: 2000, instances: 10000,
		classes: []class{{name: "big", cores: 16, idle: 160, share: 0.25}, {name: "std", cores: 8, idle: 100, share: 0.75}},
		cpuLo:   10, cpuHi: 300, change: 0.3, spareOn: 0.3,
	}},
	{"memory accounted", siteSpec{
		hosts: 2000, instances: 10000,
		classes: []class{{name: "std", cores: 8, memoryMiB: 32768, idle: 100, share: 1}},
		cpuLo:   10, cpuHi: 250, memLo: 256, memHi: 4096, change: 0.3, spareOn: 0.3,
	}},
}

// TestHeuristicLarge is the acceptance test: on random sites of 10,000
// instances and 2,000 hosts the heuristic uses at most 2% more hosts than
// the lower bound ceil(total demand / capacity), in at most 1 s.
func TestHeuristicLarge(t *testing.T) {
	for si, site := range largeSites {
		t.Run(site.name, func(t *testing.T) {
			in := randomSite(rand.New(rand.NewPCG(uint64(si), 42)), site.spec)
			start := time.Now()
			pl, err := Heuristic(in)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, in, pl)
			ratio := float64(pl.HostsUsed) / float64(pl.LowerBound)
			t.Logf("%d instances, %d hosts (%d used now): %d hosts used, lower bound %d, ratio %.4f, %d migrations, %d power-on, %d power-off, %d steps, in %v",
				len(in.Instances), len(in.Hosts), usedHosts(in), pl.HostsUsed, pl.LowerBound, ratio,
				len(pl.Moves), len(pl.PowerOn), len(pl.PowerOff), len(pl.Steps), took.Round(time.Millisecond))
			if ratio > 1.02 {
				t.Errorf("hosts used / lower bound = %d/%d = %.4f, want ≤ 1.02", pl.HostsUsed, pl.LowerBound, ratio)
			}
			if limit := timeFactor * time.Second; took > limit {
				t.Errorf("Heuristic took %v, want ≤ %v", took, limit)
			}
			checkSteps(t, in, pl)
		})
	}
}

// TestHeuristicDeterministic: the same site gives the same plan.
func TestHeuristicDeterministic(t *testing.T) {
	in := randomSite(rand.New(rand.NewPCG(1, 42)), largeSites[1].spec)
	a, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		b, err := Heuristic(in)
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != b.String() || len(a.Steps) != len(b.Steps) {
			t.Fatal("two runs on the same site gave different plans")
		}
		for i := range a.Steps {
			if a.Steps[i].String() != b.Steps[i].String() {
				t.Fatalf("step %d: %s, then %s", i+1, a.Steps[i], b.Steps[i])
			}
		}
	}
}

// TestLargeNothingToMove: a large site already packed on as few hosts as a
// first-fit decreasing packing needs, spare hosts off, gets a plan with no
// step at all.
func TestLargeNothingToMove(t *testing.T) {
	in := randomSite(rand.New(rand.NewPCG(2, 42)), siteSpec{
		hosts: 2000, instances: 10000,
		classes: []class{{name: "std", cores: 8, idle: 100, share: 1}},
		cpuLo:   10, cpuHi: 250,
	})
	p, err := newProblem(in)
	if err != nil {
		t.Fatal(err)
	}
	s := p.ffd(p.hostOrder(), p.sortedItems())
	for i, h := range s.assign {
		in.Instances[i].Host = in.Hosts[h].Name
	}
	for k := range in.Hosts {
		in.Hosts[k].On = len(s.members[k]) > 0
	}
	pl, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("packed site: %d hosts used, lower bound %d, %d migrations, %d steps", pl.HostsUsed, pl.LowerBound, len(pl.Moves), len(pl.Steps))
	if len(pl.Steps) != 0 || pl.HostsUsed != s.used {
		t.Errorf("plan has %d steps and %d hosts, want none and %d hosts:\n%s", len(pl.Steps), pl.HostsUsed, s.used, pl.Summary())
	}
}
