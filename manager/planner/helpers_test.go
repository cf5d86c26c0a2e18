package planner

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/justrunit/justrunit"
)

// host is a powered-or-not host of the "std" class with the given cores.
func host(name string, cores float64, on bool) justrunit.Host {
	return justrunit.Host{Name: name, Class: "std", Cores: cores, On: on,
		Power: justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}}
}

// inst is an instance on h requiring cpu, with that as its current
// allocation too.
func inst(id, h string, cpu float64) Demand {
	return Demand{ID: id, Host: h, CPU: cpu, Current: justrunit.Allocation{CPU: cpu}}
}

// grown is inst whose requirement rose (or fell) from cur to cpu.
func grown(id, h string, cur, cpu float64) Demand {
	d := inst(id, h, cpu)
	d.Current.CPU = cur
	return d
}

// class describes hosts of a random site.
type class struct {
	name      string
	cores     float64
	memoryMiB int64
	idle      float64
	share     float64 // fraction of the hosts
}

// siteSpec describes a random site.
type siteSpec struct {
	hosts, instances int
	classes          []class
	cpuLo, cpuHi     float64 // required CPU, uniform
	memLo, memHi     int64   // required memory, uniform; 0 = not accounted
	change           float64 // current = required × U(1-change, 1+change)
	spareOn          float64 // probability an empty host is on
}

// randomSite draws a site: hosts by class, instances placed on them by
// their current allocation (random host, else the next with room), so the
// current state respects every capacity while the required allocations may
// not.
func randomSite(r *rand.Rand, s siteSpec) Input {
	var in Input
	for k := range s.hosts {
		c := s.classes[len(s.classes)-1]
		x, acc := float64(k)/float64(s.hosts), 0.0
		for _, cl := range s.classes {
			acc += cl.share
			if x < acc {
				c = cl
				break
			}
		}
		in.Hosts = append(in.Hosts, justrunit.Host{
			Name: fmt.Sprintf("h%04d", k), Class: c.name, Cores: c.cores, MemoryMiB: c.memoryMiB,
			Power: justrunit.PowerModel{IdleWatts: c.idle, MaxWatts: 2 * c.idle},
		})
	}
	useC := make([]float64, s.hosts)
	useM := make([]int64, s.hosts)
	for i := range s.instances {
		cpu := math.Round(s.cpuLo + r.Float64()*(s.cpuHi-s.cpuLo))
		var mem int64
		if s.memHi > 0 {
			mem = s.memLo + r.Int64N(s.memHi-s.memLo+1)
		}
		cur := justrunit.Allocation{CPU: cpu, MemoryMiB: mem}
		if s.change > 0 {
			cur.CPU = max(1, math.Round(cpu*(1-s.change+2*s.change*r.Float64())))
		}
		start := r.IntN(s.hosts)
		h := -1
		for j := range s.hosts {
			k := (start + j) % s.hosts
			hs := in.Hosts[k]
			if useC[k]+cur.CPU <= hs.Cores*100 && useC[k]+cpu <= hs.Cores*100 &&
				(hs.MemoryMiB == 0 || useM[k]+mem <= hs.MemoryMiB) {
				h = k
				break
			}
		}
		if h < 0 {
			panic("randomSite: demand does not fit; lower cpuHi or add hosts")
		}
		useC[h] += cur.CPU
		useM[h] += mem
		in.Hosts[h].On = true
		in.Instances = append(in.Instances, Demand{
			ID: fmt.Sprintf("i%05d", i), Host: in.Hosts[h].Name, CPU: cpu, MemoryMiB: mem, Current: cur,
		})
	}
	for k := range in.Hosts {
		if !in.Hosts[k].On && r.Float64() < s.spareOn {
			in.Hosts[k].On = true
		}
	}
	return in
}

// bruteForce is the optimal cost over every assignment (m^n of them) that
// respects capacities and whose steps can be ordered safely.
func bruteForce(t *testing.T, in Input) (Cost, bool) {
	t.Helper()
	p, err := newProblem(in)
	if errors.Is(err, ErrNoFit) {
		return Cost{}, false
	}
	if err != nil {
		t.Fatalf("newProblem: %v", err)
	}
	assign := make([]int32, p.n())
	lc := make([]float64, p.m())
	lm := make([]float64, p.m())
	var best Cost
	found := false
	var rec func(i int)
	rec = func(i int) {
		if i == p.n() {
			if c := p.cost(assign); !found || c.Less(best) {
				if _, err := p.order(assign); err == nil {
					best, found = c, true
				}
			}
			return
		}
		for h := range p.m() {
			if lc[h]+p.cpu[i] > p.cap[h]+eps || lm[h]+p.imem[i] > p.mem[h]+eps {
				continue
			}
			lc[h] += p.cpu[i]
			lm[h] += p.imem[i]
			assign[i] = int32(h)
			rec(i + 1)
			lc[h] -= p.cpu[i]
			lm[h] -= p.imem[i]
		}
	}
	rec(0)
	return best, found
}

// checkPlan checks that pl places every instance of in within capacity,
// agrees with its own lists and that its steps are consistent.
func checkPlan(t *testing.T, in Input, pl Plan) {
	t.Helper()
	hosts := map[string]justrunit.Host{}
	for _, h := range in.Hosts {
		hosts[h.Name] = h
	}
	loadC := map[string]float64{}
	loadM := map[string]int64{}
	moves := 0
	for _, d := range in.Instances {
		h, ok := pl.Placement[d.ID]
		if !ok {
			t.Fatalf("instance %s not placed", d.ID)
		}
		if hosts[h].Sandbox {
			t.Fatalf("instance %s placed on sandbox host %s", d.ID, h)
		}
		loadC[h] += d.CPU
		loadM[h] += d.MemoryMiB
		if h != d.Host {
			moves++
		}
	}
	for name, c := range loadC {
		h := hosts[name]
		if c > h.Cores*100+1e-6 {
			t.Errorf("host %s: %g%% placed on %g%%", name, c, h.Cores*100)
		}
		if h.MemoryMiB > 0 && loadM[name] > h.MemoryMiB {
			t.Errorf("host %s: %d MiB placed on %d MiB", name, loadM[name], h.MemoryMiB)
		}
	}
	if len(loadC) != pl.HostsUsed || pl.Cost.Hosts != pl.HostsUsed {
		t.Errorf("HostsUsed = %d, Cost.Hosts = %d, hosts with instances = %d", pl.HostsUsed, pl.Cost.Hosts, len(loadC))
	}
	if moves != len(pl.Moves) || moves != pl.Cost.Moves {
		t.Errorf("moves: counted %d, Moves has %d, Cost.Moves = %d", moves, len(pl.Moves), pl.Cost.Moves)
	}
	if pl.HostsUsed < pl.LowerBound {
		t.Errorf("HostsUsed %d below LowerBound %d", pl.HostsUsed, pl.LowerBound)
	}
}
