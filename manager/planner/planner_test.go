package planner

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

func TestValidation(t *testing.T) {
	sandbox := host("sb", 4, true)
	sandbox.Sandbox = true
	tests := []struct {
		name  string
		in    Input
		field string // "" for ErrNoFit
		msg   string
	}{
		{"host without name", Input{Hosts: []justrunit.Host{host("", 4, true)}}, "hosts[0].name", "empty"},
		{"duplicate host", Input{Hosts: []justrunit.Host{host("a", 4, true), host("a", 2, true)}}, "hosts[1].name", "another host"},
		{"host without cores", Input{Hosts: []justrunit.Host{host("a", 0, true)}}, "hosts[0].cores", "> 0"},
		{"no on-line host", Input{Hosts: []justrunit.Host{sandbox}, Instances: []Demand{inst("x", "sb", 10)}}, "hosts", "no on-line"},
		{"instance without id", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("", "a", 10)}}, "instances[0].id", "empty"},
		{"duplicate instance", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("x", "a", 10), inst("x", "a", 10)}}, "instances[1].id", "another instance"},
		{"unknown host", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("x", "b", 10)}}, "instances[0].host", "no such host"},
		{"no host", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("x", "", 10)}}, "instances[0].host", "empty"},
		{"on the sandbox", Input{Hosts: []justrunit.Host{host("a", 4, true), sandbox}, Instances: []Demand{inst("x", "sb", 10)}}, "instances[0].host", "sandbox"},
		{"negative cpu", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("x", "a", -10)}}, "instances[0].cpu", "> 0"},
		{"unlimited from a limit", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{grown("x", "a", 50, 0)}}, "instances[0].cpu", "x: 0 (unlimited) leaves an instance where and as it is, but it has 50% now"},
		{"unlimited with new memory", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{{ID: "x", Host: "a", MemoryMiB: 512, Current: justrunit.Allocation{MemoryMiB: 256}}}}, "instances[0].memory_mib", "stays as it is, with 256 MiB"},
		{"unlimited on the sandbox", Input{Hosts: []justrunit.Host{host("a", 4, true), sandbox}, Instances: []Demand{inst("x", "sb", 0)}}, "instances[0].host", "sandbox"},
		{"NaN cpu", Input{Hosts: []justrunit.Host{host("a", 4, true)}, Instances: []Demand{inst("x", "a", math.NaN())}}, "instances[0].cpu", "> 0"},
		{"larger than every host", Input{
			Hosts:     []justrunit.Host{host("a", 4, true), host("b", 2, true), sandbox},
			Instances: []Demand{inst("small", "a", 100), inst("huge-db", "b", 450)},
		}, "instances[1].cpu", "huge-db: larger than every on-line host (the largest has 400%)"},
		{"sandbox capacity does not count", Input{
			Hosts:     []justrunit.Host{host("a", 1, true), func() justrunit.Host { h := host("sb", 8, true); h.Sandbox = true; return h }()},
			Instances: []Demand{inst("x", "a", 150)},
		}, "instances[0].cpu", "x: larger than every"},
		{"total over capacity", Input{
			Hosts:     []justrunit.Host{host("a", 1, true), host("b", 1, true)},
			Instances: []Demand{inst("x", "a", 90), inst("y", "a", 90), inst("z", "b", 90)},
		}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, solve := range []func(Input) (Plan, error){Heuristic, func(in Input) (Plan, error) { return Exact(in, Limit{}) }} {
				_, err := solve(tt.in)
				if tt.field == "" {
					if !errors.Is(err, ErrNoFit) {
						t.Fatalf("err = %v, want ErrNoFit", err)
					}
					continue
				}
				var fe *justrunit.FieldError
				if !errors.As(err, &fe) || !errors.Is(err, justrunit.ErrInvalid) {
					t.Fatalf("err = %v, want a FieldError", err)
				}
				if fe.Field != tt.field || !strings.Contains(fe.Error(), tt.msg) {
					t.Errorf("err = %q (field %q), want field %q and %q", fe.Error(), fe.Field, tt.field, tt.msg)
				}
			}
		})
	}
}

// TestExactKnownOptimum runs hand-made cases whose optimum is known, and
// checks each against brute force over every assignment too.
func TestExactKnownOptimum(t *testing.T) {
	cheap := host("cheap", 2, false)
	cheap.Power.IdleWatts = 60
	big := host("big", 8, false)
	big.Class = "big"
	sandbox := host("sb", 16, true)
	sandbox.Sandbox = true
	memHost := func(name string, on bool) justrunit.Host {
		h := host(name, 4, on)
		h.MemoryMiB = 1024
		return h
	}
	memInst := func(id, h string, cpu float64, mem int64) Demand {
		d := inst(id, h, cpu)
		d.MemoryMiB, d.Current.MemoryMiB = mem, mem
		return d
	}
	tests := []struct {
		name  string
		in    Input
		want  Cost
		steps []string // the plan's steps, when checked
	}{
		{
			name: "already optimal: nothing moves",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true), host("c", 2, false)},
				Instances: []Demand{inst("x", "a", 120), inst("y", "a", 80), inst("z", "b", 150), inst("w", "b", 30)},
			},
			want: Cost{Hosts: 2, IdleWatts: 200},
		},
		{
			name: "consolidate three half-empty hosts onto two",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true), host("c", 2, true)},
				Instances: []Demand{inst("x", "a", 60), inst("x2", "a", 40), inst("y", "b", 100), inst("z", "c", 100), inst("w", "c", 60)},
			},
			want:  Cost{Hosts: 2, Moves: 1, IdleWatts: 200},
			steps: []string{"migrate y b → a", "power off b"},
		},
		{
			name: "expansion (the paper's case): a tier grows, power on a host, migrate to make room",
			in: Input{
				Hosts: []justrunit.Host{host("h1", 2, true), host("h2", 2, true), host("h3", 2, false)},
				Instances: []Demand{
					grown("app0", "h1", 40, 60), inst("web0", "h1", 80), inst("db0", "h1", 70),
					inst("app1", "h2", 80), inst("web1", "h2", 70), inst("db1", "h2", 50),
				},
			},
			want: Cost{Hosts: 3, Moves: 1, PowerOns: 1, IdleWatts: 300},
		},
		{
			name: "fewest hosts first: power on one big host rather than keep two small ones",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true), big},
				Instances: []Demand{inst("x", "a", 150), inst("y", "b", 150), inst("z", "b", 40)},
			},
			want: Cost{Hosts: 1, Moves: 3, PowerOns: 1, IdleWatts: 100},
		},
		{
			name: "migrations before power: keep the powered host even if an off one idles lower",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 2, true), cheap},
				Instances: []Demand{inst("x", "a", 100)},
			},
			want: Cost{Hosts: 1, IdleWatts: 100},
		},
		{
			name: "ties on hosts and moves: the lower idle power wins",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 2, true), host("off", 2, false), cheap},
				Instances: []Demand{inst("x", "a", 150), inst("y", "a", 150)},
			},
			want: Cost{Hosts: 2, Moves: 1, PowerOns: 1, IdleWatts: 160},
		},
		{
			name: "memory binds before CPU",
			in: Input{
				Hosts: []justrunit.Host{memHost("a", true), memHost("b", true), memHost("c", false)},
				Instances: []Demand{
					memInst("x", "a", 50, 600), memInst("y", "a", 50, 300),
					memInst("z", "b", 50, 600), memInst("w", "b", 50, 500),
				},
			},
			want: Cost{Hosts: 3, Moves: 1, PowerOns: 1, IdleWatts: 300},
		},
		{
			name: "sandbox hosts are neither used nor powered off",
			in: Input{
				Hosts:     []justrunit.Host{host("a", 1, true), host("b", 1, true), sandbox},
				Instances: []Demand{inst("x", "a", 40), inst("x2", "a", 10), inst("y", "b", 40)},
			},
			want:  Cost{Hosts: 1, Moves: 1, IdleWatts: 100},
			steps: []string{"migrate y b → a", "power off b"},
		},
		{
			name: "bin packing where first-fit decreasing needs one more host",
			// 3 hosts of 100: {60,40} {50,50} {30,30,40}... FFD on
			// 60,50,50,40,40,30,30 puts 60+40, 50+50, 40+30+30: fine;
			// this set makes FFD fail: 44,24,24,22,21,17,8,8,6,6 on 60s.
			in: Input{
				Hosts: []justrunit.Host{host("a", 0.6, true), host("b", 0.6, true), host("c", 0.6, true), host("d", 0.6, false)},
				Instances: []Demand{
					inst("i1", "a", 44), inst("i2", "a", 8), inst("i3", "a", 8),
					inst("i4", "b", 24), inst("i5", "b", 24), inst("i6", "b", 6), inst("i7", "b", 6),
					inst("i8", "c", 22), inst("i9", "c", 21), inst("i10", "c", 17),
				},
			},
			want: Cost{Hosts: 3, IdleWatts: 300},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bf, ok := bruteForce(t, tt.in)
			if !ok {
				t.Fatal("brute force found no placement")
			}
			if !sameCost(bf, tt.want) {
				t.Fatalf("brute force optimum = %v, want %v (the case is wrong)", bf, tt.want)
			}
			pl, err := Exact(tt.in, Limit{Nodes: 1_000_000})
			if err != nil {
				t.Fatalf("Exact: %v", err)
			}
			checkPlan(t, tt.in, pl)
			if !pl.Optimal || !sameCost(pl.Cost, tt.want) {
				t.Errorf("Exact cost = %v (optimal %v), want %v\n%s", pl.Cost, pl.Optimal, tt.want, pl)
			}
			if tt.steps != nil {
				var got []string
				for _, s := range pl.Steps {
					got = append(got, s.String())
				}
				if strings.Join(got, "\n") != strings.Join(tt.steps, "\n") {
					t.Errorf("steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.steps, "\n"))
				}
			}
		})
	}
}

func sameCost(a, b Cost) bool {
	return a.Hosts == b.Hosts && a.Moves == b.Moves && a.PowerOns == b.PowerOns && math.Abs(a.IdleWatts-b.IdleWatts) < 1e-6
}

// smallSite draws a random small site: 2 to maxHosts hosts of 1–3 cores
// (some off, idle power varying, some accounting memory) and up to maxInst
// instances placed where their current allocation fits, with a required
// allocation that may differ.
func smallSite(r *rand.Rand, maxHosts, maxInst int) Input {
	var in Input
	m := 2 + r.IntN(maxHosts-1)
	for k := range m {
		h := host(string(rune('a'+k)), float64(1+r.IntN(3)), r.IntN(3) > 0)
		h.Power.IdleWatts = float64(50 + 10*r.IntN(4))
		if r.IntN(4) == 0 {
			h.MemoryMiB = 1024 * int64(1+r.IntN(2))
		}
		in.Hosts = append(in.Hosts, h)
	}
	useC := make([]float64, m)
	useM := make([]int64, m)
	n := 3 + r.IntN(maxInst-2)
	for i := range n {
		d := grown(string(rune('p'+i)), "", float64(10*(1+r.IntN(10))), float64(10*(1+r.IntN(10))))
		if r.IntN(3) == 0 {
			d.MemoryMiB = 128 * int64(1+r.IntN(6))
			d.Current.MemoryMiB = d.MemoryMiB
		}
		start := r.IntN(m)
		for j := range m {
			k := (start + j) % m
			h := in.Hosts[k]
			if useC[k]+d.Current.CPU <= h.Cores*100 && (h.MemoryMiB == 0 || useM[k]+d.MemoryMiB <= h.MemoryMiB) {
				useC[k] += d.Current.CPU
				useM[k] += d.MemoryMiB
				d.Host = h.Name
				in.Hosts[k].On = true
				in.Instances = append(in.Instances, d)
				break
			}
		}
	}
	return in
}

// TestExactMatchesBruteForce compares Exact with every assignment on many
// random small sites.
func TestExactMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	checked := 0
	for c := range 400 {
		in := smallSite(r, 4, 7)
		bf, ok := bruteForce(t, in)
		pl, err := Exact(in, Limit{Nodes: 1_000_000})
		if !ok {
			if !errors.Is(err, ErrNoFit) {
				t.Errorf("case %d: no placement exists, Exact err = %v", c, err)
			}
			continue
		}
		checked++
		if err != nil {
			t.Fatalf("case %d: Exact: %v", c, err)
		}
		checkPlan(t, in, pl)
		if !sameCost(pl.Cost, bf) {
			t.Errorf("case %d: Exact cost = %v, brute force %v\n%+v", c, pl.Cost, bf, in)
		}
	}
	t.Logf("%d random small sites with a placement: Exact matched brute force on all", checked)
}

// TestHeuristicVsExact measures the heuristic's gap to the optimum on many
// random small sites.
func TestHeuristicVsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var cases, sameHosts, sameCost, extraHosts, extraMoves, worseOther int
	for range 500 {
		in := smallSite(r, 6, 12)
		ex, err := Exact(in, Limit{Nodes: 2_000_000})
		if errors.Is(err, ErrNoFit) {
			continue
		}
		if err != nil {
			t.Fatalf("Exact: %v", err)
		}
		h, err := Heuristic(in)
		if err != nil {
			t.Fatalf("Heuristic failed where Exact found %v: %v\n%+v", ex.Cost, err, in)
		}
		checkPlan(t, in, h)
		cases++
		if h.Cost.Less(ex.Cost) {
			t.Fatalf("Heuristic %v beats Exact %v: Exact is not optimal\n%+v", h.Cost, ex.Cost, in)
		}
		switch {
		case h.Cost.Hosts > ex.Cost.Hosts:
			extraHosts += h.Cost.Hosts - ex.Cost.Hosts
			if h.Cost.Hosts > ex.Cost.Hosts+1 {
				t.Errorf("Heuristic uses %d hosts, optimum %d\n%+v", h.Cost.Hosts, ex.Cost.Hosts, in)
			}
		case h.Cost.Moves > ex.Cost.Moves:
			sameHosts++
			extraMoves += h.Cost.Moves - ex.Cost.Moves
		case ex.Cost.Less(h.Cost):
			sameHosts++
			worseOther++
		default:
			sameHosts++
			sameCost++
		}
	}
	t.Logf("heuristic vs exact on %d random small sites: optimal cost on %d (%.1f%%), optimal host count on %d (%.1f%%); "+
		"%d extra hosts in all, %d extra migrations where hosts were optimal, %d worse only in power-ons or idle power",
		cases, sameCost, pct(sameCost, cases), sameHosts, pct(sameHosts, cases), extraHosts, extraMoves, worseOther)
	if pct(sameHosts, cases) < 95 {
		t.Errorf("heuristic found the optimal host count on only %.1f%% of cases, want ≥ 95%%", pct(sameHosts, cases))
	}
}

func pct(a, b int) float64 { return 100 * float64(a) / float64(max(b, 1)) }

// TestNothingToMove: a placement that already respects every capacity on
// as few hosts as the lower bound gives a plan with no migrations and no
// steps, for both solvers.
func TestNothingToMove(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for c := range 50 {
		// Hosts filled by first-fit decreasing with their current
		// instances, so the placement is tight; spare hosts, some on.
		m := 3 + r.IntN(20)
		in := Input{}
		for k := range m {
			in.Hosts = append(in.Hosts, host(string(rune('A'+k)), 4, true))
		}
		var items []float64
		for range 5 * m {
			items = append(items, float64(20+r.IntN(200)))
		}
		cur := 0
		load := 0.0
		for i, cpu := range items {
			if load+cpu > 400 {
				cur++
				load = 0
			}
			if cur >= m {
				break
			}
			load += cpu
			in.Instances = append(in.Instances, inst(string(rune('a'+i%26))+string(rune('a'+i/26)), in.Hosts[cur].Name, cpu))
		}
		hp, err := Heuristic(in)
		if err != nil {
			t.Fatal(err)
		}
		checkPlan(t, in, hp)
		if hp.Cost.Moves != 0 && hp.HostsUsed >= usedHosts(in) {
			t.Errorf("case %d: heuristic moves %d instances without saving a host (%d hosts, %d now)\n%s", c, hp.Cost.Moves, hp.HostsUsed, usedHosts(in), hp)
		}
		if hp.HostsUsed == hp.LowerBound && usedHosts(in) == hp.LowerBound && len(hp.Moves) != 0 {
			t.Errorf("case %d: tight placement, heuristic moved %d", c, len(hp.Moves))
		}
		if len(in.Instances) <= 12 {
			ep, err := Exact(in, Limit{Nodes: 2_000_000})
			if err != nil {
				t.Fatal(err)
			}
			if ep.Cost.Hosts == usedHosts(in) && ep.Cost.Moves != 0 {
				t.Errorf("case %d: exact moves %d instances without saving a host", c, ep.Cost.Moves)
			}
		}
	}
	// And a site that needs nothing at all: no steps.
	in := Input{
		Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true), host("c", 2, false)},
		Instances: []Demand{inst("x", "a", 150), inst("y", "a", 50), inst("z", "b", 120)},
	}
	for name, solve := range map[string]func(Input) (Plan, error){"Heuristic": Heuristic, "Exact": func(in Input) (Plan, error) { return Exact(in, Limit{}) }} {
		pl, err := solve(in)
		if err != nil {
			t.Fatal(err)
		}
		if len(pl.Steps) != 0 || len(pl.Moves) != 0 {
			t.Errorf("%s: steps %v on a site that needs none", name, pl.Steps)
		}
	}
}

func usedHosts(in Input) int {
	used := map[string]bool{}
	for _, d := range in.Instances {
		used[d.Host] = true
	}
	return len(used)
}

// TestOverloadMovesOnlyTheExcess: when one host is overloaded by a grown
// requirement and a powered host has room, one instance moves, to the host
// it fits best, before the allocation grows; nothing is powered on.
func TestOverloadMovesOnlyTheExcess(t *testing.T) {
	in := Input{Hosts: []justrunit.Host{
		host("a", 4, true), host("b", 4, true), host("c", 4, true), host("d", 4, true), host("e", 4, true), host("f", 4, false),
	}}
	for h, cpus := range map[string][]float64{
		"a": {100, 80, 60, 30}, "b": {100, 100, 80, 40, 10}, "c": {120, 100, 60, 50, 10},
		"d": {90, 90, 90, 60, 20}, "e": {200, 100, 30, 10},
	} {
		for i, c := range cpus {
			in.Instances = append(in.Instances, inst(h+string(rune('0'+i)), h, c))
		}
	}
	in.Instances = append(in.Instances, grown("a-app", "a", 90, 150))
	sortByID(in.Instances, func(d Demand) string { return d.ID })
	want := []string{"migrate a3 a → d", "set allocation of a-app on a to cpu=150% (was cpu=90%)"}
	for name, solve := range map[string]func(Input) (Plan, error){
		"Heuristic": Heuristic,
		"Exact":     func(in Input) (Plan, error) { return Exact(in, Limit{Nodes: 5_000_000}) },
	} {
		pl, err := solve(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkPlan(t, in, pl)
		if pl.Cost != (Cost{Hosts: 5, Moves: 1, IdleWatts: 500}) {
			t.Errorf("%s: cost %v, want 5 hosts, 1 migration", name, pl.Cost)
		}
		if name == "Heuristic" {
			var got []string
			for _, s := range pl.Steps {
				got = append(got, s.String())
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s: steps\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
}

// TestExactLimit: a site too large for the limit gives the best plan found
// (valid, not proven optimal) with ErrTooLarge.
func TestExactLimit(t *testing.T) {
	in := randomSite(rand.New(rand.NewPCG(13, 14)), siteSpec{
		hosts: 30, instances: 120, classes: []class{{name: "std", cores: 4, idle: 100, share: 1}},
		cpuLo: 10, cpuHi: 150, change: 0.4, spareOn: 0.5,
	})
	pl, err := Exact(in, Limit{Nodes: 10_000})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if pl.Optimal || pl.Solver != "exact" {
		t.Errorf("plan optimal=%v solver=%q, want a non-optimal exact plan", pl.Optimal, pl.Solver)
	}
	checkPlan(t, in, pl)
	checkSteps(t, in, pl)
}
