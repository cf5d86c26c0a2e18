// Package planner decides where a site's on-line instances should run: it
// packs every instance's required CPU allocation (and memory, where hosts
// account it) onto as few powered hosts as possible, then with as few
// migrations as possible, powering hosts on when more room is needed and off
// when they are left empty. This is the consolidation/expansion step of the
// paper's manager. An instance with no CPU allocation (unlimited) takes no
// share of its host, as the platforms count it: it stays where it is and
// keeps its host powered.
//
// Two solvers share one objective (see Cost): Heuristic, first-fit
// decreasing with migration-aware repair, for sites of any size, and Exact,
// branch and bound, for small sites and for tests that check optimality.
// Both return a Plan, which can be shown before it is applied (Plan.String,
// Plan.Render) and applied through a justrunit.Platform with Apply in an
// order that never exceeds a host's capacity mid-way.
//
// The package is pure logic; Apply is its only contact with a platform.
package planner

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/justrunit/justrunit"
)

// Errors the planner returns besides validation errors
// (justrunit.FieldError, which wraps justrunit.ErrInvalid).
var (
	// ErrNoFit means no placement of the instances on the on-line hosts
	// respects every capacity (or none was found, for Heuristic).
	ErrNoFit = errors.New("instances do not fit the on-line hosts")
	// ErrTooLarge means Exact hit its node or time limit before proving
	// its plan optimal; the plan it returns with this error is valid but
	// may not be optimal.
	ErrTooLarge = errors.New("too large for the exact solver within its limit")
	// ErrNoSafeOrder means the plan's final placement is valid but no order
	// of steps reaches it without exceeding a host's capacity mid-way, even
	// when staging an instance on a third host.
	ErrNoSafeOrder = errors.New("no safe order of steps")
)

// Input is what the planner packs: the site's hosts and its on-line
// instances with the allocation each one requires.
type Input struct {
	// Hosts are every host of the site. Sandbox hosts are never used for,
	// and never powered on or off by, a plan.
	Hosts []justrunit.Host `json:"hosts"`
	// Instances are the on-line instances to place. Clones are not listed:
	// they live in the sandbox.
	Instances []Demand `json:"instances"`
}

// Demand is one on-line instance, where it runs and what it requires.
type Demand struct {
	// ID is the instance's platform ID.
	ID string `json:"id"`
	// Host is the host it runs on now (an on-line host, powered or not);
	// staying there is not a migration.
	Host string `json:"host"`
	// CPU is the required CPU allocation in percent of one core (from a
	// study, or the current allocation); it must be ≥ 0. 0 is unlimited,
	// as on the platforms: the instance takes no share of its host, so
	// it cannot be packed; it stays where it is, as it is (its Current
	// CPU must be 0 too), takes only its memory there, and keeps its host
	// powered. The local platform counts such an instance the same way
	// when it checks a host's room.
	CPU float64 `json:"cpu"`
	// MemoryMiB is the required memory; 0 means not accounted (memory is
	// packed only on hosts with a MemoryMiB capacity).
	MemoryMiB int64 `json:"memory_mib,omitempty"`
	// Current is the allocation in force now. The plan sets Current with
	// CPU (and MemoryMiB, when > 0) replaced wherever that differs, and
	// orders its steps by it so that no host is ever over its capacity.
	// As on the platforms, a 0 (unlimited) CPU or memory counts as nothing.
	Current justrunit.Allocation `json:"current"`
}

// Target is the allocation the plan gives d: Current with CPU, and memory
// when d accounts it, replaced by the requirement.
func (d Demand) Target() justrunit.Allocation {
	a := d.Current
	a.CPU = d.CPU
	if d.MemoryMiB > 0 {
		a.MemoryMiB = d.MemoryMiB
	}
	return a
}

// FromSite builds an Input from a platform's hosts and instances. Clones
// (instances with an Origin) are left out. Each instance requires the CPU
// given in required under its ID, or else its current allocation, and its
// current memory limit. An instance with an unlimited (0) CPU allocation
// and nothing in required stays unlimited: pinned to its host, taking no
// share (see Demand.CPU).
func FromSite(hosts []justrunit.Host, instances []justrunit.Instance, required map[string]float64) Input {
	in := Input{Hosts: append([]justrunit.Host(nil), hosts...)}
	for _, x := range instances {
		if x.Origin != "" {
			continue
		}
		cpu, ok := required[x.ID]
		if !ok {
			cpu = x.Alloc.CPU
		}
		in.Instances = append(in.Instances, Demand{
			ID: x.ID, Host: x.Host, CPU: cpu, MemoryMiB: x.Alloc.MemoryMiB, Current: x.Alloc,
		})
	}
	return in
}

// State describes what a plan is made from, for telling whether a site has
// changed since (see FromSite): each host's power state and each on-line
// instance's host and allocation, in a canonical order. Clones are left
// out, as FromSite leaves them.
func State(hosts []justrunit.Host, instances []justrunit.Instance) string {
	var parts []string
	for _, h := range hosts {
		parts = append(parts, fmt.Sprintf("host %s on=%t", h.Name, h.On))
	}
	for _, x := range instances {
		if x.Origin == "" {
			parts = append(parts, fmt.Sprintf("instance %s on %s: %s", x.ID, x.Host, x.Alloc))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, "\n")
}

// Cost is the planner's objective. Plans are compared lexicographically:
// fewer powered on-line hosts first (the paper's goal: the smallest set of
// active servers), then fewer migrations (each one disturbs an on-line
// instance), then fewer hosts to power on (each takes minutes), then less
// idle power of the powered hosts (energy, from the hosts' power models).
type Cost struct {
	// Hosts is the number of on-line hosts powered after the plan: those
	// holding at least one instance. Empty ones are powered off.
	Hosts int `json:"hosts"`
	// Moves is the number of instances that end on another host.
	Moves int `json:"moves"`
	// PowerOns is the number of hosts the plan powers on.
	PowerOns int `json:"power_ons"`
	// IdleWatts is the summed idle power of the powered hosts.
	IdleWatts float64 `json:"idle_watts"`
}

// Less reports whether c is a better plan than d.
func (c Cost) Less(d Cost) bool {
	switch {
	case c.Hosts != d.Hosts:
		return c.Hosts < d.Hosts
	case c.Moves != d.Moves:
		return c.Moves < d.Moves
	case c.PowerOns != d.PowerOns:
		return c.PowerOns < d.PowerOns
	}
	return c.IdleWatts < d.IdleWatts-wattsEps
}

// String describes the cost in words.
func (c Cost) String() string {
	return fmt.Sprintf("%d hosts, %d migrations, %d power-ons, %g W idle", c.Hosts, c.Moves, c.PowerOns, c.IdleWatts)
}

const (
	// eps absorbs rounding in sums of CPU percent and MiB; the local
	// platform uses the same tolerance when it checks room.
	eps      = 1e-9
	wattsEps = 1e-9
)

// problem is a validated Input in index form: on-line hosts 0..m-1 and
// items (instances) 0..n-1.
type problem struct {
	in    Input
	host  []int     // on-line host k → index in in.Hosts
	cap   []float64 // CPU capacity, percent
	mem   []float64 // memory capacity, MiB; +Inf when not accounted
	on    []bool
	idle  []float64
	homes []int32 // number of items whose current host is k

	// Pinned instances (unlimited CPU) are no items: they stay on their
	// host, which every plan keeps powered, and take none of its CPU; their
	// memory is taken off the host's mem.
	pinned  []Demand
	pinHome []int32 // on-line host of each pinned instance
	anchor  []int32 // number of pinned instances on host k
	anchors int     // hosts with a pinned instance

	cpu  []float64 // per item
	imem []float64
	home []int32 // current on-line host of each item

	memAccounted bool // some host accounts memory and some item needs memory
	totalCPU     float64
	totalMem     float64 // of items, counted only against hosts that account memory
	lb           int
}

func (p *problem) n() int { return len(p.cpu) }
func (p *problem) m() int { return len(p.cap) }

// newProblem validates in and indexes it.
func newProblem(in Input) (*problem, error) {
	// p.in holds the items (the instances that are packed), in input
	// order, so that item i is p.in.Instances[i].
	p := &problem{in: Input{Hosts: in.Hosts}}
	byName := make(map[string]int, len(in.Hosts))
	online := make(map[string]int32, len(in.Hosts))
	for i, h := range in.Hosts {
		field := fmt.Sprintf("hosts[%d]", i)
		if h.Name == "" {
			return nil, justrunit.Invalid(field+".name", nil, "is empty")
		}
		if _, dup := byName[h.Name]; dup {
			return nil, justrunit.Invalid(field+".name", h.Name, "names another host too")
		}
		byName[h.Name] = i
		if h.MemoryMiB < 0 {
			return nil, justrunit.Invalid(field+".memory_mib", h.MemoryMiB, "must be ≥ 0 (0 = not accounted)")
		}
		if h.Sandbox {
			continue
		}
		if !(h.Cores > 0) || math.IsInf(h.Cores, 0) {
			return nil, justrunit.Invalid(field+".cores", h.Cores, "host %s: must be a finite number > 0", h.Name)
		}
		if h.Power.IdleWatts < 0 || math.IsNaN(h.Power.IdleWatts) || math.IsInf(h.Power.IdleWatts, 0) {
			return nil, justrunit.Invalid(field+".power.idle_watts", h.Power.IdleWatts, "host %s: must be a finite number ≥ 0", h.Name)
		}
		online[h.Name] = int32(len(p.host))
		p.host = append(p.host, i)
		p.cap = append(p.cap, h.Cores*100)
		mem := math.Inf(1)
		if h.MemoryMiB > 0 {
			mem = float64(h.MemoryMiB)
		}
		p.mem = append(p.mem, mem)
		p.on = append(p.on, h.On)
		p.idle = append(p.idle, h.Power.IdleWatts)
	}
	p.homes = make([]int32, len(p.host))
	p.anchor = make([]int32, len(p.host))
	if len(in.Instances) > 0 && len(p.host) == 0 {
		return nil, justrunit.Invalid("hosts", len(in.Hosts), "no on-line (non-sandbox) host to place %d instances on", len(in.Instances))
	}
	maxCap, maxMem := 0.0, 0.0
	for k := range p.cap {
		maxCap = max(maxCap, p.cap[k])
		maxMem = max(maxMem, p.mem[k])
	}
	ids := make(map[string]bool, len(in.Instances))
	for i, d := range in.Instances {
		field := fmt.Sprintf("instances[%d]", i)
		if d.ID == "" {
			return nil, justrunit.Invalid(field+".id", nil, "is empty")
		}
		if ids[d.ID] {
			return nil, justrunit.Invalid(field+".id", d.ID, "names another instance too")
		}
		ids[d.ID] = true
		hi, known := byName[d.Host]
		switch {
		case d.Host == "":
			return nil, justrunit.Invalid(field+".host", nil, "instance %s: is empty; name the host it runs on", d.ID)
		case !known:
			return nil, justrunit.Invalid(field+".host", d.Host, "instance %s: no such host", d.ID)
		case in.Hosts[hi].Sandbox:
			return nil, justrunit.Invalid(field+".host", d.Host, "instance %s: is a sandbox host; on-line instances never run there", d.ID)
		}
		if !(d.CPU >= 0) || math.IsInf(d.CPU, 0) {
			return nil, justrunit.Invalid(field+".cpu", d.CPU, "instance %s: must be a finite CPU percent > 0 (the required allocation), or 0 to leave it unlimited where it is", d.ID)
		}
		if d.MemoryMiB < 0 {
			return nil, justrunit.Invalid(field+".memory_mib", d.MemoryMiB, "instance %s: must be ≥ 0 (0 = not accounted)", d.ID)
		}
		if d.CPU == 0 {
			// Unlimited: pinned where it is, as it is.
			if d.Current.CPU != 0 {
				return nil, justrunit.Invalid(field+".cpu", d.CPU, "instance %s: 0 (unlimited) leaves an instance where and as it is, but it has %g%% now; give the CPU it requires (> 0)", d.ID, d.Current.CPU)
			}
			if d.Target() != d.Current {
				return nil, justrunit.Invalid(field+".memory_mib", d.MemoryMiB, "instance %s: an unlimited (cpu 0) instance stays as it is, with %d MiB; require that or 0, or give it a CPU allocation", d.ID, d.Current.MemoryMiB)
			}
			h := online[d.Host]
			if p.anchor[h] == 0 {
				p.anchors++
			}
			p.anchor[h]++
			p.pinned = append(p.pinned, d)
			p.pinHome = append(p.pinHome, h)
			continue
		}
		if d.CPU > maxCap+eps {
			return nil, justrunit.Invalid(field+".cpu", d.CPU, "instance %s: larger than every on-line host (the largest has %g%%)", d.ID, maxCap)
		}
		if float64(d.MemoryMiB) > maxMem {
			return nil, justrunit.Invalid(field+".memory_mib", d.MemoryMiB, "instance %s: larger than every on-line host (the largest has %g MiB)", d.ID, maxMem)
		}
		fitsOne := false
		for k := range p.cap {
			if d.CPU <= p.cap[k]+eps && float64(d.MemoryMiB) <= p.mem[k] {
				fitsOne = true
				break
			}
		}
		if !fitsOne {
			return nil, justrunit.Invalid(field, d.ID, "instance %s: no on-line host has both %g%% CPU and %d MiB", d.ID, d.CPU, d.MemoryMiB)
		}
		h := online[d.Host]
		p.in.Instances = append(p.in.Instances, d)
		p.cpu = append(p.cpu, d.CPU)
		p.imem = append(p.imem, float64(d.MemoryMiB))
		p.home = append(p.home, h)
		p.homes[h]++
		p.totalCPU += d.CPU
		p.totalMem += float64(d.MemoryMiB)
	}
	// A pinned instance's memory stays where it is: the items have the
	// rest. (Where that is less than nothing, the host is overloaded as it
	// is; items that account no memory still fit it.)
	for j, d := range p.pinned {
		if k := p.pinHome[j]; !math.IsInf(p.mem[k], 1) {
			p.mem[k] = max(0, p.mem[k]-float64(d.Current.MemoryMiB))
		}
	}
	for k := range p.mem {
		if !math.IsInf(p.mem[k], 1) && p.totalMem > 0 {
			p.memAccounted = true
		}
	}
	lb, ok := p.lowerBound()
	if !ok {
		return nil, fmt.Errorf("plan: total demand %g%% CPU, %g MiB is more than all on-line hosts hold: %w", p.totalCPU, p.totalMem, ErrNoFit)
	}
	p.lb = lb
	return p, nil
}

// lowerBound is the fewest hosts whose capacities could hold the total
// demand: ceil(total / capacity) on a site of equal hosts, and in general
// the fewest of the largest hosts whose capacities add up to the total, in
// CPU and in memory. Hosts with a pinned instance are used whatever the
// plan: they count, and their room is taken off the total first. ok is
// false when even all hosts cannot hold it.
func (p *problem) lowerBound() (lb int, ok bool) {
	if p.n() == 0 {
		return p.anchors, true
	}
	need := func(caps []float64, total float64) (int, bool) {
		if total <= 0 {
			return 0, true
		}
		c := append([]float64(nil), caps...)
		sort.Sort(sort.Reverse(sort.Float64Slice(c)))
		sum := 0.0
		for k, v := range c {
			sum += v
			if sum >= total*(1-1e-12) {
				return k + 1, true
			}
		}
		return len(c), false
	}
	var freeC, freeM []float64
	needC, needM := p.totalCPU, p.totalMem
	for k := range p.cap {
		if p.anchor[k] > 0 {
			needC -= p.cap[k]
			needM -= p.mem[k]
			continue
		}
		freeC = append(freeC, p.cap[k])
		freeM = append(freeM, p.mem[k])
	}
	lc, okc := need(freeC, needC)
	lm, okm := need(freeM, needM)
	return max(p.anchors+max(lc, lm), 1), okc && okm
}

// cost evaluates an assignment of every item to an on-line host; the
// hosts of pinned instances are used too.
func (p *problem) cost(assign []int32) Cost {
	used := make([]bool, p.m())
	for k, a := range p.anchor {
		used[k] = a > 0
	}
	var c Cost
	for i, h := range assign {
		used[h] = true
		if h != p.home[i] {
			c.Moves++
		}
	}
	for k, u := range used {
		if u {
			c.Hosts++
			c.IdleWatts += p.idle[k]
			if !p.on[k] {
				c.PowerOns++
			}
		}
	}
	return c
}

// feasible reports whether assign respects every capacity.
func (p *problem) feasible(assign []int32) bool {
	if len(assign) != p.n() {
		return false
	}
	lc := make([]float64, p.m())
	lm := make([]float64, p.m())
	for i, h := range assign {
		if h < 0 || int(h) >= p.m() {
			return false
		}
		lc[h] += p.cpu[i]
		lm[h] += p.imem[i]
	}
	for k := range lc {
		if lc[k] > p.cap[k]+eps || lm[k] > p.mem[k]+eps {
			return false
		}
	}
	return true
}
