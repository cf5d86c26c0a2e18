package planner

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

// solvers are the two solvers, by name, for tests that hold for both.
var solvers = []struct {
	name  string
	solve func(Input) (Plan, error)
}{
	{"heuristic", Heuristic},
	{"exact", func(in Input) (Plan, error) { return Exact(in, Limit{Nodes: 1_000_000}) }},
}

// unlimited is an instance on h with no CPU allocation (cpu 0), required
// to stay so.
func unlimited(id, h string) Demand { return inst(id, h, 0) }

// checkPinned checks that every unlimited instance of in stays where it is
// in pl, that no step touches it, and that its host stays powered.
func checkPinned(t *testing.T, in Input, pl Plan) {
	t.Helper()
	for _, d := range in.Instances {
		if d.CPU != 0 {
			continue
		}
		if got := pl.Placement[d.ID]; got != d.Host {
			t.Errorf("unlimited %s placed on %q, want where it runs, %s", d.ID, got, d.Host)
		}
		for _, s := range pl.Steps {
			if s.Instance == d.ID {
				t.Errorf("unlimited %s has a step: %s", d.ID, s)
			}
		}
		if slices.Contains(pl.PowerOff, d.Host) {
			t.Errorf("the plan powers off %s, which runs unlimited %s", d.Host, d.ID)
		}
	}
}

// TestPinnedAuction plans the auction example's site, whose web and data
// tiers run unlimited (no allocation) beside the app tier, when the
// manager asks for more CPU for the app tier: within the host's capacity
// the app tier grows where it is; beyond it, it moves to a larger host and
// the unlimited tiers stay.
func TestPinnedAuction(t *testing.T) {
	sb := host("sandbox", 1, true)
	sb.Sandbox = true
	hosts := []justrunit.Host{host("pm1", 1, true), host("pm2", 2, false), sb}
	insts := []justrunit.Instance{
		{ID: "web0", Host: "pm1"},
		{ID: "app0", Host: "pm1", Alloc: justrunit.Allocation{CPU: 80}},
		{ID: "data0", Host: "pm1"},
		{ID: "app0-clone0", Host: "sandbox", Origin: "app0", Alloc: justrunit.Allocation{CPU: 100}},
	}
	for _, tt := range []struct {
		want  float64
		hosts int
		moves int
		steps []string
	}{
		{95, 1, 0, []string{"set allocation of app0 on pm1 to cpu=95% (was cpu=80%)"}},
		{150, 2, 1, []string{"power on pm2", "migrate app0 pm1 → pm2", "set allocation of app0 on pm2 to cpu=150% (was cpu=80%)"}},
	} {
		in := FromSite(hosts, insts, map[string]float64{"app0": tt.want})
		for _, sv := range solvers {
			t.Run(fmt.Sprintf("%s/%g", sv.name, tt.want), func(t *testing.T) {
				pl, err := sv.solve(in)
				if err != nil {
					t.Fatal(err)
				}
				checkPlan(t, in, pl)
				checkSteps(t, in, pl)
				checkPinned(t, in, pl)
				if pl.Cost.Hosts != tt.hosts || pl.Cost.Moves != tt.moves {
					t.Errorf("cost %v, want %d hosts and %d migrations", pl.Cost, tt.hosts, tt.moves)
				}
				if got := stepStrings(pl); !slices.Equal(got, tt.steps) {
					t.Errorf("steps\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.steps, "\n"))
				}
				if h := pl.Hosts[0]; h.Name != "pm1" || h.Instances != 3-tt.moves || !h.On {
					t.Errorf("pm1 after the plan: %+v, want on with %d instances", h, 3-tt.moves)
				}
			})
		}
	}
}

// TestPinnedConsolidates: a host that runs an unlimited instance is used
// whatever the plan, so the others' instances go there and their hosts are
// powered off — never the other way round.
func TestPinnedConsolidates(t *testing.T) {
	for _, tt := range []struct {
		name    string
		in      Input
		moves   []string
		offHost string
	}{
		{"onto the unlimited instance's host", Input{
			Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true)},
			Instances: []Demand{unlimited("u", "a"), inst("x", "b", 60), inst("y", "b", 60)},
		}, []string{"x", "y"}, "b"},
		{"the larger host is not taken", Input{
			Hosts:     []justrunit.Host{host("big", 4, true), host("a", 2, true)},
			Instances: []Demand{inst("x", "big", 60), inst("y", "big", 60), unlimited("u", "a")},
		}, []string{"x", "y"}, "big"},
		{"the unlimited instance's host keeps its own", Input{
			Hosts:     []justrunit.Host{host("a", 2, true), host("b", 2, true)},
			Instances: []Demand{inst("z", "a", 50), unlimited("u", "b"), inst("x", "b", 60), inst("y", "b", 60)},
		}, []string{"z"}, "a"},
	} {
		for _, sv := range solvers {
			t.Run(sv.name+"/"+tt.name, func(t *testing.T) {
				pl, err := sv.solve(tt.in)
				if err != nil {
					t.Fatal(err)
				}
				checkPlan(t, tt.in, pl)
				checkSteps(t, tt.in, pl)
				checkPinned(t, tt.in, pl)
				var moved []string
				for _, m := range pl.Moves {
					moved = append(moved, m.ID)
				}
				if pl.Cost.Hosts != 1 || !slices.Equal(moved, tt.moves) || !slices.Equal(pl.PowerOff, []string{tt.offHost}) {
					t.Errorf("cost %v, moves %v, power off %v; want 1 host, moves %v, power off %s\n%s", pl.Cost, moved, pl.PowerOff, tt.moves, tt.offHost, pl)
				}
				if pl.LowerBound != 1 {
					t.Errorf("lower bound %d, want 1", pl.LowerBound)
				}
			})
		}
	}
}

// TestPinnedOnly: a site of unlimited instances alone keeps their hosts
// and powers off the empty ones.
func TestPinnedOnly(t *testing.T) {
	in := Input{
		Hosts:     []justrunit.Host{host("a", 1, true), host("b", 1, true), host("c", 1, true)},
		Instances: []Demand{unlimited("u", "a"), unlimited("v", "c")},
	}
	for _, sv := range solvers {
		pl, err := sv.solve(in)
		if err != nil {
			t.Fatalf("%s: %v", sv.name, err)
		}
		checkPlan(t, in, pl)
		checkSteps(t, in, pl)
		checkPinned(t, in, pl)
		if got := stepStrings(pl); pl.Cost.Hosts != 2 || pl.LowerBound != 2 || !slices.Equal(got, []string{"power off b"}) {
			t.Errorf("%s: cost %v, lower bound %d, steps %v; want 2 hosts, bound 2, [power off b]", sv.name, pl.Cost, pl.LowerBound, got)
		}
	}
}

// TestPinnedMemory: an unlimited instance takes no CPU but keeps its
// memory, so a host whose memory it fills takes no instance that needs
// memory.
func TestPinnedMemory(t *testing.T) {
	a := host("a", 2, true)
	a.MemoryMiB = 1024
	u := unlimited("u", "a")
	u.MemoryMiB, u.Current.MemoryMiB = 768, 768
	x := inst("x", "b", 50)
	x.MemoryMiB, x.Current.MemoryMiB = 512, 512
	in := Input{Hosts: []justrunit.Host{a, host("b", 2, true)}, Instances: []Demand{u, x}}
	for _, sv := range solvers {
		pl, err := sv.solve(in)
		if err != nil {
			t.Fatalf("%s: %v", sv.name, err)
		}
		checkPlan(t, in, pl)
		checkSteps(t, in, pl)
		checkPinned(t, in, pl)
		if pl.Placement["x"] != "b" || pl.Cost.Hosts != 2 || pl.Hosts[0].Memory != 768 {
			t.Errorf("%s: x on %s, cost %v, memory on a %d; want x kept on b, 2 hosts, 768 MiB on a", sv.name, pl.Placement["x"], pl.Cost, pl.Hosts[0].Memory)
		}
	}
	// Without the unlimited instance's memory, x moves next to it.
	u.MemoryMiB, u.Current.MemoryMiB = 256, 256
	in.Instances[0] = u
	pl, err := Exact(in, Limit{})
	if err != nil {
		t.Fatal(err)
	}
	if pl.Placement["x"] != "a" || pl.Cost.Hosts != 1 {
		t.Errorf("with 256 MiB taken: x on %s, cost %v; want x on a, 1 host", pl.Placement["x"], pl.Cost)
	}
}

// TestPinnedRandom adds unlimited instances to many random small sites:
// Exact matches brute force over every placement of the others, the
// heuristic's plans are valid and within a host of it, no unlimited
// instance moves and every plan applies.
func TestPinnedRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	var cases, sameHosts int
	for c := range 400 {
		in := smallSite(r, 5, 7)
		for j := range 1 + r.IntN(3) {
			k := r.IntN(len(in.Hosts))
			in.Hosts[k].On = true
			in.Instances = append(in.Instances, unlimited(fmt.Sprintf("u%d", j), in.Hosts[k].Name))
		}
		r.Shuffle(len(in.Instances), func(i, j int) { in.Instances[i], in.Instances[j] = in.Instances[j], in.Instances[i] })
		bf, ok := bruteForce(t, in)
		ex, err := Exact(in, Limit{Nodes: 1_000_000})
		if !ok {
			if !errors.Is(err, ErrNoFit) {
				t.Errorf("case %d: no placement exists, Exact err = %v", c, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("case %d: Exact: %v", c, err)
		}
		if !sameCost(ex.Cost, bf) {
			t.Errorf("case %d: Exact cost = %v, brute force %v\n%+v", c, ex.Cost, bf, in)
		}
		h, err := Heuristic(in)
		if err != nil {
			t.Fatalf("case %d: Heuristic failed where Exact found %v: %v\n%+v", c, ex.Cost, err, in)
		}
		for _, pl := range []Plan{ex, h} {
			checkPlan(t, in, pl)
			checkSteps(t, in, pl)
			checkPinned(t, in, pl)
		}
		cases++
		if h.Cost.Hosts == ex.Cost.Hosts {
			sameHosts++
		}
		if h.Cost.Less(ex.Cost) || h.Cost.Hosts > ex.Cost.Hosts+1 {
			t.Errorf("case %d: Heuristic %v, Exact %v\n%+v", c, h.Cost, ex.Cost, in)
		}
	}
	t.Logf("%d random small sites with unlimited instances: Exact matched brute force; heuristic optimal host count on %d (%.1f%%)", cases, sameHosts, pct(sameHosts, cases))
	if cases < 200 || pct(sameHosts, cases) < 95 {
		t.Errorf("%d cases, heuristic optimal host count on %.1f%%; want ≥ 200 cases and ≥ 95%%", cases, pct(sameHosts, cases))
	}
}
