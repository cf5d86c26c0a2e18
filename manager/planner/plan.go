package planner

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/justrunit/justrunit"
)

// Plan is a placement of every instance and the steps that reach it.
type Plan struct {
	// Solver is "heuristic" or "exact".
	Solver string `json:"solver"`
	// Optimal is true when Exact proved the plan optimal for Cost.
	Optimal bool `json:"optimal"`
	// Cost is the plan's value of the objective.
	Cost Cost `json:"cost"`
	// HostsUsed is the number of on-line hosts powered after the plan
	// (Cost.Hosts).
	HostsUsed int `json:"hosts_used"`
	// LowerBound is the fewest hosts whose capacities could hold the total
	// demand (ceil(total / capacity) on a site of equal hosts), counting
	// the hosts of unlimited instances, which every plan keeps; no plan
	// uses fewer.
	LowerBound int `json:"lower_bound"`
	// Placement maps every instance to its host after the plan (an
	// unlimited one to the host it runs on).
	Placement map[string]string `json:"placement"`
	// Moves are the instances that end on another host, by ID.
	Moves []Move `json:"moves"`
	// Allocations are the instances whose allocation changes, by ID.
	Allocations []Resize `json:"allocations"`
	// PowerOn and PowerOff name the hosts the plan powers on and off.
	PowerOn  []string `json:"power_on"`
	PowerOff []string `json:"power_off"`
	// Hosts describe every on-line host before and after the plan, in
	// input order.
	Hosts []HostLoad `json:"hosts"`
	// Steps reach the placement from the current one in a safe order:
	// power on, shrink allocations, migrate and grow as room appears (an
	// instance may stop on a third host to break a cycle), power off.
	Steps []Step `json:"steps"`
}

// Move is one instance that changes host.
type Move struct {
	ID   string  `json:"id"`
	From string  `json:"from"`
	To   string  `json:"to"`
	CPU  float64 `json:"cpu"`
}

// Resize is one instance whose allocation changes.
type Resize struct {
	ID string `json:"id"`
	// Host is where the instance runs after the plan.
	Host string               `json:"host"`
	From justrunit.Allocation `json:"from"`
	To   justrunit.Allocation `json:"to"`
}

// HostLoad is one on-line host in a plan.
type HostLoad struct {
	Name  string `json:"name"`
	Class string `json:"class,omitempty"`
	// Capacity is the host's CPU in percent of one core; MemoryMiB its
	// memory, 0 when not accounted.
	Capacity  float64 `json:"capacity"`
	MemoryMiB int64   `json:"memory_mib,omitempty"`
	// CPU and Memory are the required allocations placed on it.
	CPU    float64 `json:"cpu"`
	Memory int64   `json:"memory,omitempty"`
	// Instances is how many instances it runs after the plan.
	Instances int `json:"instances"`
	// WasOn and On are the power state before and after the plan.
	WasOn bool `json:"was_on"`
	On    bool `json:"on"`
}

// StepKind names what a step does.
type StepKind string

// Step kinds, in the order a plan normally uses them.
const (
	PowerOn       StepKind = "power-on"
	SetAllocation StepKind = "set-allocation"
	Migrate       StepKind = "migrate"
	PowerOff      StepKind = "power-off"
)

// Step is one action of a plan, executed through the platform.
type Step struct {
	Kind StepKind `json:"kind"`
	// Instance is the instance a set-allocation or migrate step acts on.
	Instance string `json:"instance,omitempty"`
	// Host is the host powered on or off, the instance's destination for
	// a migration, or where it runs for a set-allocation.
	Host string `json:"host"`
	// From is the host a migration leaves.
	From string `json:"from,omitempty"`
	// Alloc is the allocation a set-allocation step sets, Was the one it
	// replaces.
	Alloc *justrunit.Allocation `json:"allocation,omitempty"`
	Was   *justrunit.Allocation `json:"was,omitempty"`
	// Staging marks a migration to a third host that breaks a cycle of
	// moves (a later step takes the instance on to its destination), and
	// the powering on and off of a host used only for that.
	Staging bool `json:"staging,omitempty"`
}

// String describes the step in a line, e.g. "migrate web-1 h1 → h3".
func (s Step) String() string {
	switch s.Kind {
	case PowerOn, PowerOff:
		m := "power on " + s.Host
		if s.Kind == PowerOff {
			m = "power off " + s.Host
		}
		if s.Staging {
			m += " (staging)"
		}
		return m
	case Migrate:
		m := fmt.Sprintf("migrate %s %s → %s", s.Instance, s.From, s.Host)
		if s.Staging {
			m += " (staging)"
		}
		return m
	case SetAllocation:
		if s.Alloc == nil {
			return "set allocation of " + s.Instance
		}
		m := fmt.Sprintf("set allocation of %s on %s to %s", s.Instance, s.Host, s.Alloc)
		if s.Was != nil {
			m += fmt.Sprintf(" (was %s)", s.Was)
		}
		return m
	}
	return string(s.Kind)
}

// plan turns an assignment into a Plan with ordered steps.
func (p *problem) plan(assign []int32, solver string, optimal bool) (Plan, error) {
	in := p.in
	pl := Plan{
		Solver:     solver,
		Optimal:    optimal,
		Cost:       p.cost(assign),
		LowerBound: p.lb,
		Placement:  make(map[string]string, p.n()+len(p.pinned)),
	}
	pl.HostsUsed = pl.Cost.Hosts
	name := func(h int32) string { return in.Hosts[p.host[h]].Name }
	count := make([]int, p.m())
	loadC := make([]float64, p.m())
	loadM := make([]int64, p.m())
	for j, d := range p.pinned {
		h := p.pinHome[j]
		pl.Placement[d.ID] = name(h)
		count[h]++
		loadM[h] += d.Current.MemoryMiB
	}
	for i, h := range assign {
		d := in.Instances[i]
		pl.Placement[d.ID] = name(h)
		count[h]++
		loadC[h] += d.CPU
		loadM[h] += d.MemoryMiB
		if h != p.home[i] {
			pl.Moves = append(pl.Moves, Move{ID: d.ID, From: d.Host, To: name(h), CPU: d.CPU})
		}
		if t := d.Target(); t != d.Current {
			pl.Allocations = append(pl.Allocations, Resize{ID: d.ID, Host: name(h), From: d.Current, To: t})
		}
	}
	sortByID(pl.Moves, func(m Move) string { return m.ID })
	sortByID(pl.Allocations, func(r Resize) string { return r.ID })
	for k := range p.cap {
		h := in.Hosts[p.host[k]]
		on := count[k] > 0
		switch {
		case on && !h.On:
			pl.PowerOn = append(pl.PowerOn, h.Name)
		case !on && h.On:
			pl.PowerOff = append(pl.PowerOff, h.Name)
		}
		pl.Hosts = append(pl.Hosts, HostLoad{
			Name: h.Name, Class: h.Class, Capacity: p.cap[k], MemoryMiB: h.MemoryMiB,
			CPU: loadC[k], Memory: loadM[k], Instances: count[k], WasOn: h.On, On: on,
		})
	}
	steps, err := p.order(assign)
	if err != nil {
		return pl, fmt.Errorf("plan: %w", err)
	}
	pl.Steps = steps
	return pl, nil
}

func sortByID[T any](s []T, id func(T) string) {
	slices.SortStableFunc(s, func(a, b T) int { return strings.Compare(id(a), id(b)) })
}

// order finds a sequence of steps from the current placement and
// allocations to assign that never puts more on a host than it holds, as
// the platform counts it (the sum of the CPU and memory allocations of the
// instances on it, unlimited counting as nothing). A step that would not
// make a host worse is always allowed, so a site that starts overloaded
// can still be planned.
func (p *problem) order(assign []int32) ([]Step, error) {
	in := p.in
	n, m := p.n(), p.m()
	name := func(h int32) string { return in.Hosts[p.host[h]].Name }
	var steps []Step

	// The platform's view: current allocations where instances are now.
	useC := make([]float64, m)
	useM := make([]float64, m)
	cur := make([]justrunit.Allocation, n)
	loc := make([]int32, n)
	for i, d := range in.Instances {
		cur[i] = d.Current
		loc[i] = p.home[i]
		useC[loc[i]] += d.Current.CPU
		useM[loc[i]] += float64(d.Current.MemoryMiB)
	}
	used := make([]bool, m)
	for k, a := range p.anchor {
		used[k] = a > 0 // runs an unlimited instance, which stays
	}
	for _, h := range assign {
		used[h] = true
	}
	powered := make([]bool, m)
	for k := range p.cap {
		powered[k] = p.on[k]
		if used[k] && !p.on[k] {
			steps = append(steps, Step{Kind: PowerOn, Host: name(int32(k))})
			powered[k] = true
		}
	}
	setAlloc := func(i int, a justrunit.Allocation) {
		was := cur[i]
		h := loc[i]
		useC[h] += a.CPU - was.CPU
		useM[h] += float64(a.MemoryMiB - was.MemoryMiB)
		cur[i] = a
		steps = append(steps, Step{Kind: SetAllocation, Instance: in.Instances[i].ID, Host: name(h), Alloc: &a, Was: &was})
	}
	// Shrink first, where instances are now: never needs room.
	target := make([]justrunit.Allocation, n)
	for i, d := range in.Instances {
		target[i] = d.Target()
		mid := d.Current
		mid.CPU = min(d.Current.CPU, target[i].CPU)
		mid.MemoryMiB = min(d.Current.MemoryMiB, target[i].MemoryMiB)
		if mid != d.Current {
			setAlloc(i, mid)
		}
	}
	fits := func(h int32, c, mem float64) bool {
		return (c <= 0 || useC[h]+c <= p.cap[h]+eps) && (mem <= 0 || useM[h]+mem <= p.mem[h]+eps)
	}

	// Tasks: 2i moves item i, 2i+1 grows it to its target where it ends.
	const none = -1
	pending := 0
	isPending := make([]bool, 2*n)
	for i := range n {
		if assign[i] != loc[i] {
			isPending[2*i] = true
			pending++
		}
		if target[i] != cur[i] {
			isPending[2*i+1] = true
			pending++
		}
	}
	waiting := make([][]int, m)
	queue := make([]int, 0, pending)
	for t := range isPending {
		if isPending[t] {
			queue = append(queue, t)
		}
	}
	wake := func(h int32) {
		queue = append(queue, waiting[h]...)
		waiting[h] = waiting[h][:0]
	}
	migrate := func(i int, to int32, staging bool) {
		from := loc[i]
		useC[from] -= cur[i].CPU
		useM[from] -= float64(cur[i].MemoryMiB)
		useC[to] += cur[i].CPU
		useM[to] += float64(cur[i].MemoryMiB)
		loc[i] = to
		steps = append(steps, Step{Kind: Migrate, Instance: in.Instances[i].ID, Host: name(to), From: name(from), Staging: staging})
		wake(from)
	}
	stagings := 0
	var cands []int
	for pending > 0 {
		for len(queue) > 0 {
			t := queue[0]
			queue = queue[1:]
			if !isPending[t] {
				continue
			}
			i := t / 2
			if t%2 == 1 {
				if isPending[2*i] {
					continue // grows where it ends, after its move
				}
				h := loc[i]
				dc := target[i].CPU - cur[i].CPU
				dm := float64(target[i].MemoryMiB - cur[i].MemoryMiB)
				if !fits(h, dc, dm) {
					waiting[h] = append(waiting[h], t)
					continue
				}
				setAlloc(i, target[i])
				isPending[t] = false
				pending--
				continue
			}
			to := assign[i]
			if !fits(to, cur[i].CPU, float64(cur[i].MemoryMiB)) {
				waiting[to] = append(waiting[to], t)
				continue
			}
			migrate(i, to, false)
			isPending[t] = false
			pending--
			if isPending[t+1] {
				queue = append(queue, t+1)
			}
		}
		if pending == 0 {
			break
		}
		// Every pending task waits for room that only another pending move
		// frees: a cycle. Stage an instance whose leaving lets a waiting
		// task go on, the smallest first, on the powered host with most
		// room, or else on a host powered on for the purpose.
		if stagings > n {
			return nil, fmt.Errorf("order steps: %d steps still wait after %d staging moves: %w", pending, stagings, ErrNoSafeOrder)
		}
		cands = cands[:0]
		for i := range n {
			if isPending[2*i] && len(waiting[loc[i]]) > 0 {
				cands = append(cands, i)
			}
		}
		slices.SortStableFunc(cands, func(a, b int) int { return cmp.Compare(cur[a].CPU, cur[b].CPU) })
		stage, to := none, int32(none)
		for _, i := range cands {
			room := math.Inf(-1)
			for k := range p.cap {
				k := int32(k)
				if !powered[k] || k == loc[i] || k == assign[i] || !fits(k, cur[i].CPU, float64(cur[i].MemoryMiB)) {
					continue
				}
				if r := p.cap[k] - useC[k]; r > room {
					to, room = k, r
				}
			}
			if to != none {
				stage = i
				break
			}
		}
		if stage == none {
			for _, i := range cands {
				for k := range p.cap {
					k := int32(k)
					if !powered[k] && fits(k, cur[i].CPU, float64(cur[i].MemoryMiB)) {
						stage, to = i, k
						break
					}
				}
				if stage != none {
					steps = append(steps, Step{Kind: PowerOn, Host: name(to), Staging: true})
					powered[to] = true
					break
				}
			}
		}
		if stage == none {
			return nil, fmt.Errorf("order steps: %d steps wait on each other and no host has room to stage an instance: %w", pending, ErrNoSafeOrder)
		}
		migrate(stage, to, true)
		stagings++
		queue = append(queue, 2*stage)
	}
	for k := range p.cap {
		if powered[k] && !used[k] {
			steps = append(steps, Step{Kind: PowerOff, Host: name(int32(k)), Staging: !p.on[k]})
		}
	}
	return steps, nil
}
