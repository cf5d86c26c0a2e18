package planner

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Limit bounds Exact's search.
type Limit struct {
	// Nodes is the most search nodes (partial placements) to visit;
	// 0 means DefaultNodes.
	Nodes int64
	// Time is the most time to search; 0 means DefaultTime. Tests that
	// must be deterministic bound Nodes and leave Time generous.
	Time time.Duration
}

// Default limits of Exact: a few seconds of search on one core.
const (
	DefaultNodes = 20_000_000
	DefaultTime  = 10 * time.Second
)

// Exact plans a small site optimally by branch and bound: the plan of least
// Cost among the placements whose steps can be ordered safely (a placement
// that only an unsafe order reaches is no plan). Instances are
// placed largest first; each goes to its current host first, then to used
// hosts (the hosts of unlimited instances are used from the start), then
// to unused ones, skipping an unused host when an earlier one
// that nobody runs on now is identical (capacity, memory, power state, idle
// power), and identical instances take hosts in increasing order. A branch
// is cut when its bound (hosts used so far plus the fewest of the largest
// unused hosts that could take the remaining demand beyond the used hosts'
// room; migrations, power-ons and idle power so far) is no better than the
// best plan, which starts as Heuristic's.
//
// When the search ends within limit the plan is optimal for Cost and
// Plan.Optimal is true. When it stops at the limit Exact returns the best
// plan found (valid, not proven optimal) together with an error wrapping
// ErrTooLarge; ErrNoFit means no placement exists (or none was found
// before the limit).
func Exact(in Input, limit Limit) (Plan, error) {
	p, err := newProblem(in)
	if err != nil {
		return Plan{}, fmt.Errorf("plan: %w", err)
	}
	if limit.Nodes <= 0 {
		limit.Nodes = DefaultNodes
	}
	if limit.Time <= 0 {
		limit.Time = DefaultTime
	}
	b := newSearch(p, limit)
	for _, a := range p.candidates() {
		if _, err := p.order(a); err == nil {
			b.best, b.bestCost = slices.Clone(a), p.cost(a)
			break
		}
	}
	b.search(0)
	switch {
	case b.best == nil && b.stopped:
		return Plan{}, fmt.Errorf("plan %d instances on %d hosts exactly: no placement found after %d nodes: %w", p.n(), p.m(), b.nodes, ErrTooLarge)
	case b.best == nil:
		return Plan{}, fmt.Errorf("plan %d instances on %d hosts exactly: no placement that can be reached safely: %w", p.n(), p.m(), ErrNoFit)
	}
	plan, err := p.plan(b.best, "exact", !b.stopped)
	if err != nil {
		return plan, err
	}
	if b.stopped {
		return plan, fmt.Errorf("plan %d instances on %d hosts exactly: stopped after %d nodes, %v: %w", p.n(), p.m(), b.nodes, time.Since(b.start).Round(time.Millisecond), ErrTooLarge)
	}
	return plan, nil
}

// search is the state of one branch and bound.
type search struct {
	p       *problem
	limit   Limit
	start   time.Time
	nodes   int64
	stopped bool

	items    []int32   // placement order
	same     []bool    // items[d] is identical to items[d-1]
	remC     []float64 // demand of items[d:]
	remM     []float64
	byCap    []int32 // hosts, largest first, for the bound
	twinPrev []int32 // previous identical host nobody runs on now, or -1
	order    []int32 // hosts in heuristic opening order

	assign   []int32
	lc, lm   []float64
	cnt      []int32
	used     int
	freeC    float64 // room left on used hosts
	freeM    float64
	infMem   int // used hosts that do not account memory
	moves    int
	powerOns int
	idle     float64

	best     []int32
	bestCost Cost
}

func newSearch(p *problem, limit Limit) *search {
	b := &search{
		p: p, limit: limit, start: time.Now(),
		items:  p.sortedItems(),
		assign: make([]int32, p.n()),
		lc:     make([]float64, p.m()),
		lm:     make([]float64, p.m()),
		cnt:    make([]int32, p.m()),
		order:  p.hostOrder(),
	}
	n := p.n()
	b.same = make([]bool, n)
	b.remC = make([]float64, n+1)
	b.remM = make([]float64, n+1)
	for d := n - 1; d >= 0; d-- {
		i := b.items[d]
		b.remC[d] = b.remC[d+1] + p.cpu[i]
		b.remM[d] = b.remM[d+1] + p.imem[i]
		if d > 0 {
			j := b.items[d-1]
			b.same[d] = p.cpu[i] == p.cpu[j] && p.imem[i] == p.imem[j] && p.home[i] == p.home[j]
		}
	}
	b.byCap = make([]int32, p.m())
	for k := range b.byCap {
		b.byCap[k] = int32(k)
	}
	slices.SortStableFunc(b.byCap, func(x, y int32) int { return cmpDesc(p.cap[x], p.cap[y]) })
	b.twinPrev = make([]int32, p.m())
	type key struct {
		c, m, idle float64
		on         bool
	}
	last := map[key]int32{}
	for k := range p.cap {
		b.twinPrev[k] = -1
		if p.homes[k] > 0 || p.anchor[k] > 0 {
			continue
		}
		kk := key{p.cap[k], p.mem[k], p.idle[k], p.on[k]}
		if prev, ok := last[kk]; ok {
			b.twinPrev[k] = prev
		}
		last[kk] = int32(k)
	}
	// The hosts of pinned instances are used from the start: their room
	// is free to the items, and they cost what they cost whatever the
	// plan. cnt counts the pinned instances, so try never opens or closes
	// such a host.
	for k, a := range p.anchor {
		if a == 0 {
			continue
		}
		b.cnt[k] = a
		b.openHost(int32(k))
	}
	return b
}

// openHost counts host h as used: its room becomes free to the items and
// its idle power and any power-on join the cost. cnt is the caller's.
func (b *search) openHost(h int32) {
	p := b.p
	b.used++
	b.freeC += p.cap[h]
	if math.IsInf(p.mem[h], 1) {
		b.infMem++
	} else {
		b.freeM += p.mem[h]
	}
	b.idle += p.idle[h]
	if !p.on[h] {
		b.powerOns++
	}
}

// closeHost undoes openHost on host h, which no item is on any more.
func (b *search) closeHost(h int32) {
	p := b.p
	b.used--
	b.freeC -= p.cap[h]
	if math.IsInf(p.mem[h], 1) {
		b.infMem--
	} else {
		b.freeM -= p.mem[h]
	}
	b.idle -= p.idle[h]
	if !p.on[h] {
		b.powerOns--
	}
	// Reset exactly so rounding does not accumulate on empty hosts.
	b.lc[h], b.lm[h] = 0, 0
}

// extraHosts is the fewest unused hosts, largest first, whose capacity
// covers needC and needM.
func (b *search) extraHosts(needC, needM float64) int {
	const tol = 1e-6 // far above rounding, far below any real demand
	if needC <= tol && needM <= tol {
		return 0
	}
	p := b.p
	extra, gotC := 0, 0.0
	for _, k := range b.byCap {
		if needC <= gotC+tol {
			break
		}
		if b.cnt[k] == 0 {
			gotC += p.cap[k]
			extra++
		}
	}
	if needC > gotC+tol {
		return math.MaxInt32
	}
	if needM > tol {
		// Memory: the largest unused memories, separately; the bound is
		// the larger of the two counts.
		var mems []float64
		for k := range p.mem {
			if b.cnt[k] == 0 {
				mems = append(mems, p.mem[k])
			}
		}
		slices.SortFunc(mems, cmpDesc)
		got, em := 0.0, 0
		for _, v := range mems {
			if needM <= got+tol {
				break
			}
			got += v
			em++
		}
		if needM > got+tol {
			return math.MaxInt32
		}
		extra = max(extra, em)
	}
	return extra
}

func (b *search) search(d int) {
	if b.stopped {
		return
	}
	b.nodes++
	if b.nodes > b.limit.Nodes || b.nodes&4095 == 0 && time.Since(b.start) > b.limit.Time {
		b.stopped = true
		return
	}
	p := b.p
	needM := b.remM[d] - b.freeM
	if b.infMem > 0 || !p.memAccounted {
		needM = 0
	}
	extra := b.extraHosts(b.remC[d]-b.freeC, needM)
	if extra == math.MaxInt32 {
		return
	}
	bound := Cost{Hosts: b.used + extra, Moves: b.moves, PowerOns: b.powerOns, IdleWatts: b.idle}
	if b.best != nil && !bound.Less(b.bestCost) {
		return
	}
	if d == p.n() {
		// Only a placement the steps can reach safely is a plan.
		if _, err := p.order(b.assign); err == nil {
			b.best, b.bestCost = slices.Clone(b.assign), bound
		}
		return
	}
	i := b.items[d]
	minHost := int32(-1)
	if b.same[d] {
		minHost = b.assign[b.items[d-1]]
	}
	home := p.home[i]
	if home >= minHost {
		b.try(d, i, home)
	}
	for _, h := range b.order {
		if h == home || h < minHost || b.cnt[h] == 0 {
			continue
		}
		b.try(d, i, h)
	}
	for _, h := range b.order {
		if h == home || h < minHost || b.cnt[h] > 0 {
			continue
		}
		if t := b.twinPrev[h]; t >= 0 && b.cnt[t] == 0 {
			continue
		}
		b.try(d, i, h)
	}
}

// try places item i (at depth d) on host h when it fits and searches on.
func (b *search) try(d int, i, h int32) {
	p := b.p
	if b.stopped || b.lc[h]+p.cpu[i] > p.cap[h]+eps || b.lm[h]+p.imem[i] > p.mem[h]+eps {
		return
	}
	opened := b.cnt[h] == 0
	if opened {
		b.openHost(h)
	}
	moved := h != p.home[i]
	if moved {
		b.moves++
	}
	b.assign[i] = h
	b.cnt[h]++
	b.lc[h] += p.cpu[i]
	b.lm[h] += p.imem[i]
	b.freeC -= p.cpu[i]
	if !math.IsInf(p.mem[h], 1) {
		b.freeM -= p.imem[i]
	}

	b.search(d + 1)

	if !math.IsInf(p.mem[h], 1) {
		b.freeM += p.imem[i]
	}
	b.freeC += p.cpu[i]
	b.lm[h] -= p.imem[i]
	b.lc[h] -= p.cpu[i]
	b.cnt[h]--
	if moved {
		b.moves--
	}
	if opened {
		b.closeHost(h)
	}
}
