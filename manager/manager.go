// Package manager is JustRunIt's management entity, automated: it watches
// every service's SLA (package monitor), and when one is violated it runs a
// study of the service's bottleneck tier to find the least CPU allocation
// that meets the SLA at the new load, has the checker verify any
// interpolated value the decision rests on, plans the placement of every
// instance with the new requirement (package planner: as few powered hosts
// as possible, then as few migrations), and applies the plan through the
// platform — the paper's server consolidation/expansion case.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/manager/monitor"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

// Action kinds the manager reports (besides the monitor's).
const (
	EventStudy = "manager.study"
	// EventStudyDone: Data["matrix"] is a copy of the study's matrix as
	// the study left it (the decision's checks change the study's own).
	EventStudyDone = "manager.study_done"
	EventDecision  = "manager.decision"
	// EventBudget says what the studied tier's value must meet: the SLA
	// less the other tiers' time and the headroom.
	EventBudget   = "manager.budget"
	EventCheck    = "manager.check"
	EventPlan     = "manager.plan"
	EventApplied  = "manager.applied"
	EventNoAction = "manager.no_action"
)

// Event is one thing the manager saw or did, for the timeline.
type Event struct {
	Time    time.Time      `json:"time"`
	Kind    string         `json:"kind"`
	Service string         `json:"service,omitempty"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

// Config configures a Manager.
type Config struct {
	Site *siterun.Site
	// Store keeps the manager's studies and events; optional.
	Store justrunit.Store
	// Owner identifies this process in the store (as
	// sqlite.OwnerID gives) on the studies it runs. Another justrunit
	// process that opens the store marks a running study whose owner is
	// empty or gone as interrupted, so set it whenever Store is set.
	Owner string
	// Interval is the monitor's interval (the paper's minute).
	Interval time.Duration
	// WarmUp, Window and Experiments size each study: it may run
	// Experiments experiments of WarmUp+Window (the paper: 3 of 1 minute).
	WarmUp, Window time.Duration
	Experiments    int
	// Step is the CPU step of the study's space, in percent (default 10).
	Step float64
	// CheckThreshold is the checker's relative error threshold (default 0.1).
	CheckThreshold float64
	// Headroom is the fraction of the SLA the decision keeps free: it
	// picks the least allocation whose predicted value is within
	// SLA × (1 − Headroom), so that a prediction a little off the on-line
	// instance (the sandbox is quieter than a shared host, and near its
	// knee a service's response time is steep) still meets the SLA;
	// where none is, it falls back as choose says. 0 takes
	// DefaultHeadroom; negative means none.
	Headroom float64
	// Reconsider is how many intervals a service may stay over its SLA
	// after a response before the manager responds again (a study from
	// the allocation it has now); after a response that applied nothing
	// the wait doubles, up to 16 times. 0 takes DefaultReconsider,
	// negative never.
	Reconsider int
	// DryRun shows plans without applying them.
	DryRun bool
	// OnSample and OnEvent receive the timeline; optional.
	OnSample func(monitor.Sample)
	OnEvent  func(Event)
	Logger   *slog.Logger
}

// DefaultHeadroom is the decision's default headroom under the SLA: a
// prediction is trusted to within the checker's threshold, and a service's
// response time is steep near the least share that meets its SLA.
const DefaultHeadroom = 0.1

// DefaultReconsider is Config.Reconsider's default.
const DefaultReconsider = 3

// Manager runs the loop. Create it with New, then Run.
type Manager struct {
	cfg Config
	log *slog.Logger
	mon *monitor.Monitor

	mu      sync.Mutex
	pending []string                    // services in violation awaiting a response
	recent  map[string][]tick           // each service's latest intervals
	tier    map[string]tierWatch        // each watched service's bottleneck tier (set by New)
	metric  map[string]justrunit.Metric // each watched service's SLA metric (set by New)
	unwatch []func()
	idle    map[string]int // responses in a row that applied nothing, per service
	applied atomic.Int64   // responses that applied a plan
	// applying counts the plans being applied now (see Applying).
	applying atomic.Int32
	wake     chan struct{}
}

// Applying reports whether the manager is applying a plan now. A plan's
// steps act on the on-line instances and, once started, it runs to its
// end whatever stops the manager: one stopping the process should wait
// for it.
func (m *Manager) Applying() bool { return m.applying.Load() > 0 }

// New checks cfg and prepares the monitor from the site: every service
// with an SLA is watched at the in-proxy of its front-most instance that
// has one.
func New(cfg Config) (_ *Manager, err error) {
	// Each bad figure is refused here rather than at the first response
	// to a violation, which is when the manager would first use it.
	switch {
	case cfg.Interval <= 0:
		return nil, justrunit.Invalid("interval", cfg.Interval, "must be > 0")
	case cfg.WarmUp < 0:
		return nil, justrunit.Invalid("warm_up", cfg.WarmUp, "must be ≥ 0")
	case cfg.Experiments < 0:
		return nil, justrunit.Invalid("experiments", cfg.Experiments, "must be ≥ 1 (0 takes 3)")
	case !(cfg.Step >= 0 && cfg.Step <= 100):
		return nil, justrunit.Invalid("step", cfg.Step, "must be a CPU step in percent, in (0, 100] (0 takes 10)")
	case !(cfg.CheckThreshold >= 0) || math.IsInf(cfg.CheckThreshold, 0):
		return nil, justrunit.Invalid("check_threshold", cfg.CheckThreshold, "must be > 0, a relative error (0 takes 0.1)")
	case math.IsNaN(cfg.Headroom):
		return nil, justrunit.Invalid("headroom", cfg.Headroom, "must be a fraction of the SLA below 1")
	}
	if cfg.Site == nil {
		return nil, justrunit.Invalid("site", nil, "required")
	}
	if cfg.Experiments == 0 {
		cfg.Experiments = 3
	}
	if cfg.Step == 0 {
		cfg.Step = 10
	}
	if cfg.CheckThreshold == 0 {
		cfg.CheckThreshold = 0.1
	}
	switch {
	case cfg.Headroom == 0:
		cfg.Headroom = DefaultHeadroom
	case cfg.Headroom < 0:
		cfg.Headroom = 0
	case cfg.Headroom >= 1:
		return nil, justrunit.Invalid("headroom", cfg.Headroom, "must be below 1 (a fraction of the SLA)")
	}
	if cfg.Window <= 0 {
		return nil, justrunit.Invalid("window", cfg.Window, "must be > 0")
	}
	switch {
	case cfg.Reconsider == 0:
		cfg.Reconsider = DefaultReconsider
	case cfg.Reconsider < 0:
		cfg.Reconsider = 0
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1), tier: map[string]tierWatch{}, metric: map[string]justrunit.Metric{}, recent: map[string][]tick{}, idle: map[string]int{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	mon := &monitor.Monitor{Interval: cfg.Interval, Logger: m.log, OnSample: m.onSample, OnChange: m.onChange, Again: cfg.Reconsider}
	defer func() {
		if err != nil {
			m.stopWatching() // nothing left recording in the in-proxies
		}
	}()
	for _, svc := range cfg.Site.File.Services {
		if svc.SLA == "" {
			continue
		}
		sla, err := justrunit.ParseSLA(svc.SLA)
		if err != nil {
			return nil, err
		}
		front := frontInstance(svc)
		if front == "" {
			return nil, justrunit.Invalid("services."+svc.Name, nil, "has an SLA but no in_proxy to measure it at")
		}
		// The monitor and the budget read windows of their own, so that
		// they end nobody else's (a fidelity check's, say).
		p, _ := cfg.Site.InProxy(front)
		rec, stop := p.Watch()
		m.unwatch = append(m.unwatch, stop)
		mon.Services = append(mon.Services, monitor.Service{Name: svc.Name, SLA: sla, Window: rec})
		m.metric[svc.Name] = sla.Metric
		// A violation the manager could not study would be found only
		// when it happens: refuse the site now.
		target, err := m.bottleneck(svc.Name)
		if err != nil {
			return nil, err
		}
		if err := cfg.Site.CheckWarmUp(target, cfg.WarmUp); err != nil {
			return nil, fmt.Errorf("services.%s: the manager's studies of %s: %w", svc.Name, target, err)
		}
		if target != front {
			if tp, ok := cfg.Site.InProxy(target); ok {
				rec, stop := tp.Watch()
				m.unwatch = append(m.unwatch, stop)
				m.tier[svc.Name] = tierWatch{rec: rec, metric: sla.Metric}
			}
		}
	}
	if err := mon.Validate(); err != nil {
		return nil, err
	}
	m.mon = mon
	return m, nil
}

// frontInstance is the first instance, front tier first, with an in-proxy.
func frontInstance(svc site.Service) string {
	for _, t := range svc.Tiers {
		for _, in := range t.Instances {
			if in.InProxy != nil {
				return in.ID
			}
		}
	}
	return ""
}

// Monitor returns the manager's SLA monitor.
func (m *Manager) Monitor() *monitor.Monitor { return m.mon }

// Close ends the manager's watches of the in-proxies, which New starts.
// Run does it when it returns; Close is for a manager that is made and
// never run. It is safe to call more than once.
func (m *Manager) Close() { m.stopWatching() }

// stopWatching ends the manager's watches of the in-proxies.
func (m *Manager) stopWatching() {
	m.mu.Lock()
	unwatch := m.unwatch
	m.unwatch = nil
	m.mu.Unlock()
	for _, stop := range unwatch {
		stop()
	}
}

// maxRecent is how many intervals per service the manager keeps to tell
// the time a service's other tiers take.
const maxRecent = 64

// tierWatch is the manager's window on a service's bottleneck tier: its
// on-line response times and the service's SLA metric.
type tierWatch struct {
	rec    *measure.Recorder
	metric justrunit.Metric
}

// tick is one monitoring interval of a service: the SLA metric at its front
// (the monitor's sample) and at its bottleneck tier's in-proxy.
type tick struct {
	front     monitor.Sample
	tier      float64
	tierCount int64
}

// onSample keeps the monitor's sample with the bottleneck tier's on-line
// value over the same interval, read from the tier's in-proxy.
func (m *Manager) onSample(smp monitor.Sample) {
	t := tick{front: smp}
	if w, ok := m.tier[smp.Service]; ok {
		sum := w.rec.Reset()
		t.tier, t.tierCount = monitor.Value(sum, w.metric), sum.Count
	}
	m.mu.Lock()
	r := append(m.recent[smp.Service], t)
	if len(r) > maxRecent {
		r = slices.Clone(r[len(r)-maxRecent:])
	}
	m.recent[smp.Service] = r
	m.mu.Unlock()
	if m.cfg.OnSample != nil {
		m.cfg.OnSample(smp)
	}
}

// othersTime is the part of service's SLA metric its tiers other than the
// bottleneck take: the median of front − bottleneck tier over the recent
// intervals within the SLA (over an overloaded interval the difference
// holds queueing in front of the slow tier, not the other tiers' work), or
// the least difference when no interval was within it. ok is false when
// no interval measured both.
func (m *Manager) othersTime(service string) (others float64, n int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var within, all []float64
	for _, t := range m.recent[service] {
		if t.front.Requests < monitor.MinRequests || t.tierCount < monitor.MinRequests {
			continue
		}
		d := max(0, t.front.Value-t.tier)
		all = append(all, d)
		if !t.front.Over {
			within = append(within, d)
		}
	}
	switch {
	case len(within) > 0:
		slices.Sort(within)
		return within[len(within)/2], len(within), true
	case len(all) > 0:
		return slices.Min(all), len(all), true
	}
	return 0, 0, false
}

// slaFigure writes a value of an SLA's metric with format and its unit:
// milliseconds for a response time, none for the error rate (a fraction).
func slaFigure(metric justrunit.Metric, v float64, format string) string {
	if metric == justrunit.ErrorRate {
		return fmt.Sprintf("%.3g", v)
	}
	return fmt.Sprintf(format+" ms", v)
}

func (m *Manager) onChange(c monitor.Change) {
	last := c.Samples[len(c.Samples)-1]
	m.emit(Event{Kind: c.Kind, Service: c.Service, Message: fmt.Sprintf("%s: %s against an SLA of %s", c.Kind, slaFigure(m.metric[c.Service], last.Value, "%.1f"), slaFigure(m.metric[c.Service], last.SLA, "%g")),
		Data: map[string]any{"value": last.Value, "sla": last.SLA, "interval": last.Interval}})
	if c.Kind == monitor.EventCleared {
		m.mu.Lock()
		delete(m.idle, c.Service) // a new violation starts without back-off
		// Back within its SLA: a response waiting for its turn would add
		// CPU it no longer needs (the study's space starts above what it
		// has).
		m.pending = slices.DeleteFunc(m.pending, func(s string) bool { return s == c.Service })
		m.mu.Unlock()
		return
	}
	if c.Kind != monitor.EventViolated && c.Kind != monitor.EventStillViolated {
		return
	}
	m.mu.Lock()
	if !slices.Contains(m.pending, c.Service) {
		m.pending = append(m.pending, c.Service)
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run monitors the site and responds to violations until ctx ends (or
// the monitor fails). A response that fails is reported and the loop goes
// on. A manager runs once.
func (m *Manager) Run(ctx context.Context) error {
	defer m.stopWatching()
	for _, w := range m.tier {
		w.rec.Reset() // from the first tick on, as the monitor does its windows
	}
	monErr := make(chan error, 1)
	go func() { monErr <- m.mon.Run(ctx) }()
	for {
		select {
		case err := <-monErr:
			return err
		case <-m.wake:
		}
		for {
			svc, ok := m.next()
			if !ok {
				break
			}
			applied := m.applied.Load()
			err := m.Respond(ctx, svc)
			// What the response did is judged from now: intervals over
			// the SLA while it ran do not count towards another one. A
			// response that changed nothing waits twice as long as the
			// one before it (up to 16 times Reconsider) before another.
			m.mu.Lock()
			m.pending = slices.DeleteFunc(m.pending, func(s string) bool { return s == svc })
			if m.applied.Load() > applied {
				m.idle[svc] = 0
			} else {
				m.idle[svc] = min(m.idle[svc]+1, 4)
			}
			wait := m.cfg.Reconsider << m.idle[svc]
			m.mu.Unlock()
			m.mon.RearmAfter(svc, wait)
			if err != nil {
				if ctx.Err() != nil {
					return <-monErr
				}
				m.emit(Event{Kind: EventNoAction, Service: svc, Message: "response failed: " + err.Error()})
				m.log.Warn("response to an SLA violation failed", "service", svc, "err", err)
			}
		}
	}
}

// next takes the first pending service that is still in violation; ok is
// false when none is. Services that are not (their violation cleared
// while they waited) are dropped: a response would only add CPU to a
// service within its SLA.
func (m *Manager) next() (svc string, ok bool) {
	for {
		m.mu.Lock()
		if len(m.pending) == 0 {
			m.mu.Unlock()
			return "", false
		}
		svc = m.pending[0]
		m.pending = m.pending[1:]
		m.mu.Unlock()
		// Not under m.mu: the monitor holds its own lock while it calls
		// onChange, which takes m.mu.
		if m.mon.Violated(svc) {
			return svc, true
		}
		m.log.Info("service back within its SLA before its response: none", "service", svc)
	}
}

// Respond runs the paper's response to service's violation: study the
// bottleneck tier, decide the least allocation that meets the SLA, verify
// what the decision used, plan and apply.
func (m *Manager) Respond(ctx context.Context, service string) error {
	target, err := m.bottleneck(service)
	if err != nil {
		return err
	}
	svc := m.service(service)
	sla, _ := justrunit.ParseSLA(svc.SLA)
	insts, err := m.cfg.Site.Platform.Instances(ctx)
	if err != nil {
		return err
	}
	hosts, err := m.cfg.Site.Platform.Hosts(ctx)
	if err != nil {
		return err
	}
	cur := instance(insts, target)
	if cur == nil {
		return fmt.Errorf("instance %s: %w", target, justrunit.ErrNotFound)
	}
	r, err := studyRange(hosts, insts, cur, m.cfg.Step)
	if err != nil {
		return err
	}
	cpu, err := justrunit.ParseParameter(fmt.Sprintf("cpu=%g..%g step %g", r.from, r.to, m.cfg.Step))
	if err != nil {
		return err
	}
	st := &justrunit.Study{
		Name: "sla violation of " + service, Target: target, Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{sla.Metric, justrunit.Throughput}, SLA: &sla,
		WarmUp: justrunit.Duration(m.cfg.WarmUp), Window: justrunit.Duration(m.cfg.Window),
		// Room for the experiments: the clone is made before the bound
		// starts, and the engine does not charge it the bookkeeping
		// between experiments (study.Grace).
		TimeBound: justrunit.Duration(time.Duration(m.cfg.Experiments) * (m.cfg.WarmUp + m.cfg.Window)),
		Slots:     1, Strategy: "adaptive", Interpolator: "linear", CheckThreshold: m.cfg.CheckThreshold,
	}
	if !slices.Contains(st.Metrics, justrunit.RTMean) {
		st.Metrics = append(st.Metrics, justrunit.RTMean)
	}
	data := map[string]any{"from": r.from, "to": r.to, "online_max": r.online}
	if r.sandbox != "" {
		data["sandbox"], data["sandbox_free"] = r.sandbox, r.sandboxFree
	}
	m.emit(Event{Kind: EventStudy, Service: service, Message: fmt.Sprintf("studying %s over cpu %g..%g%% (%d experiments of %v)%s",
		target, r.from, r.to, m.cfg.Experiments, m.cfg.WarmUp+m.cfg.Window, r.note), Data: data})
	x, err := m.cfg.Site.PrepareStudy(ctx, st, m.studyOptions(r.sandbox))
	if err != nil {
		return err
	}
	defer x.Close(context.WithoutCancel(ctx))
	mat, err := x.Engine.Run(ctx, st)
	if err != nil {
		return fmt.Errorf("study %s: %w", target, err)
	}
	goal, budget := m.goal(service, target, sla)
	var table strings.Builder
	mat.Render(&table)
	m.emit(Event{Kind: EventStudyDone, Service: service, Message: fmt.Sprintf("study of %s: %d experiments\n%s", target, st.Experiments, strings.TrimRight(table.String(), "\n")),
		Data: map[string]any{"matrix": mat.Clone()}}) // as the study left it: decide changes mat
	m.emit(Event{Kind: EventBudget, Service: service, Message: budget, Data: map[string]any{"goal": goal.Max, "sla": sla.Max, "headroom": m.cfg.Headroom}})
	want, err := m.decide(ctx, x, st, mat, service, goal)
	if err != nil {
		return err
	}
	if want <= r.have {
		msg := fmt.Sprintf("%s keeps %g%%: no larger allocation needed", target, cur.Alloc.CPU)
		if cur.Alloc.CPU == 0 {
			msg = fmt.Sprintf("%s keeps no limit: %g%% is within host %s's %g%%", target, want, cur.Host, r.have)
		}
		m.emit(Event{Kind: EventNoAction, Service: service, Message: msg})
		return nil
	}
	// Plan from the site as it is now, not as it was before the study:
	// a plan applied meanwhile (through the daemon) moved things.
	if insts, err = m.cfg.Site.Platform.Instances(ctx); err != nil {
		return err
	}
	if hosts, err = m.cfg.Site.Platform.Hosts(ctx); err != nil {
		return err
	}
	in := planner.FromSite(hosts, insts, map[string]float64{target: want})
	plan, err := planner.Heuristic(in)
	if err != nil {
		return fmt.Errorf("place %s with %g%%: %w", target, want, err) // err says "plan: ..."
	}
	m.emit(Event{Kind: EventPlan, Service: service, Message: plan.String(), Data: map[string]any{"plan": plan}})
	if m.cfg.DryRun {
		return nil
	}
	// A plan cut between its steps leaves the site as no plan meant it:
	// once started, it runs to its end even when the manager is stopped.
	// Counted as applying before the last look at ctx: a stop that comes
	// after that look finds the plan counted, and waits for it (Applying).
	m.applying.Add(1)
	defer m.applying.Add(-1)
	if err := ctx.Err(); err != nil {
		return err // stopped: no plan starts
	}
	if done, err := m.cfg.Site.ApplyPlan(context.WithoutCancel(ctx), plan, planner.State(hosts, insts)); err != nil {
		return fmt.Errorf("apply the plan (%d of %d steps done): %w", len(done), len(plan.Steps), err)
	}
	m.applied.Add(1)
	m.emit(Event{Kind: EventApplied, Service: service, Message: fmt.Sprintf("%s now has %g%% of a core", target, want), Data: map[string]any{"cpu": want, "steps": plan.Steps}})
	return nil
}

// studyOptions are the options of the manager's studies: its store and
// owner, on sandbox host sandbox (empty: the first powered-on one).
func (m *Manager) studyOptions(sandbox string) siterun.StudyOptions {
	return siterun.StudyOptions{Store: m.cfg.Store, Owner: m.cfg.Owner, Sandbox: sandbox}
}

// cpuRange is the cpu range of a study of a violating instance, and what
// bounds it.
type cpuRange struct {
	// have is what the instance has now: its allocation, or its host's
	// capacity when it is unlimited.
	have float64
	// from and to are the range studied, in steps above have.
	from, to float64
	// online is the most CPU an on-line host offers.
	online float64
	// sandbox names the sandbox host the clone runs on ("" when the site
	// has no powered one: preparing the study says so), sandboxFree the
	// CPU its running instances leave free (NaN without one).
	sandbox     string
	sandboxFree float64
	// note says, for the study's event, when the sandbox bounds to.
	note string
}

// studyRange is the cpu range a study of cur explores: from one step
// above what cur has to the most an on-line host offers, and no more than
// the sandbox host the clone runs on (the first powered-on one, as
// siterun.PrepareStudy takes it) has free, so that the experimenter can
// place the clone at the top of the range.
//
// An unlimited instance (cpu 0) counts as having its host's whole
// capacity: it has no quota, and a limit within its host would only cap it
// (the planner counts an unlimited instance as taking no share, so a limit
// reserves nothing it cannot take already). Only a larger host gives it
// more; the study starts above its host's capacity, and where no on-line
// host is larger the manager has nothing to offer it.
func studyRange(hosts []justrunit.Host, insts []justrunit.Instance, cur *justrunit.Instance, step float64) (cpuRange, error) {
	var r cpuRange
	r.have = cur.Alloc.CPU
	if r.have == 0 {
		i := slices.IndexFunc(hosts, func(h justrunit.Host) bool { return h.Name == cur.Host })
		if i < 0 {
			return r, fmt.Errorf("host %s of unlimited instance %s: %w", cur.Host, cur.ID, justrunit.ErrNotFound)
		}
		r.have = hosts[i].Cores * 100
	}
	for _, h := range hosts {
		if !h.Sandbox {
			r.online = max(r.online, h.Cores*100)
		}
	}
	r.from = math.Floor(r.have/step+1e-9)*step + step
	if r.from > r.online+1e-9 {
		if cur.Alloc.CPU == 0 {
			return r, fmt.Errorf("%s is unlimited on host %s (%g%%), and no on-line host offers more (the largest has %g%%): more CPU needs a larger host in the site", cur.ID, cur.Host, r.have, r.online)
		}
		return r, fmt.Errorf("%s already has %g%%; no host offers more than %g%%", cur.ID, cur.Alloc.CPU, r.online)
	}
	r.to = r.online
	r.sandboxFree = math.NaN()
	if i := slices.IndexFunc(hosts, func(h justrunit.Host) bool { return h.Sandbox && h.On }); i >= 0 {
		sb := hosts[i]
		r.sandbox = sb.Name
		used := 0.0
		for _, in := range insts {
			if in.Host == sb.Name && in.State == "running" {
				used += in.Alloc.CPU // unlimited counts as nothing, as the experimenter counts it
			}
		}
		r.sandboxFree = max(0, sb.Cores*100-used)
		if r.sandboxFree < r.from-1e-9 {
			return r, fmt.Errorf("a study of %s from %g%% needs that much CPU for its clone, and sandbox host %s has %.4g%% of %g%% free: give the sandbox more cores or remove the clones it runs", cur.ID, r.from, sb.Name, r.sandboxFree, sb.Cores*100)
		}
		if r.sandboxFree < r.to {
			// The top on the range's grid, within the sandbox's room.
			r.to = r.from + math.Floor((r.sandboxFree-r.from)/step+1e-9)*step
			r.note = fmt.Sprintf(", up to the %.4g%% sandbox host %s has free rather than the %g%% an on-line host offers", r.sandboxFree, sb.Name, r.online)
		}
	}
	return r, nil
}

// goal is what the studied tier's own value must meet for the service to
// meet sla at its front: the SLA less the time the other tiers take (see
// othersTime), less the headroom. It also says how it was made.
func (m *Manager) goal(service, target string, sla justrunit.SLA) (justrunit.SLA, string) {
	goal := sla
	others, n, ok := m.othersTime(service)
	how := "the other tiers' time is not known (no in-proxy figures of both): the whole SLA"
	if ok {
		how = fmt.Sprintf("the other tiers take %s of %s (front less %s, over %d interval(s))", figure(sla.Metric, others), sla.Metric, target, n)
	}
	goal.Max = (sla.Max - others) * (1 - m.cfg.Headroom)
	return goal, fmt.Sprintf("budget of %s: %s; %s less that and %.0f%% headroom is %s<=%s", target, how, sla, 100*m.cfg.Headroom, goal.Metric, figure(goal.Metric, goal.Max))
}

// decide picks an allocation from the study's matrix (see choose), and has
// the checker re-measure, in one round, the interpolated cells the choice
// rests on, which the decision uses (T):
//   - the cell it goes by, when that was interpolated;
//   - when the choice is the least allocation within a bound (the goal, or
//     the goal without its headroom), the cell of the next smaller
//     allocation on the study's grid, when that was interpolated: "the
//     least" rests on it missing the bound, and an interpolation that
//     overstated the response time just below the chosen point would have
//     the manager add CPU on an unchecked guess.
//
// Only the row immediately below is checked, not every row below: a
// tier's response time does not fall as its CPU share shrinks, so when the
// row just below misses the bound, the rows under it miss it too; and each
// check is an experiment of a warm-up and a window, tens of seconds more
// of the service over its SLA. When the row below is found to meet the
// bound, the decision made again takes it (or one below it), and checks
// the row below that in its turn.
//
// A best-effort choice (the allocation predicted best, when none is within
// a bound) checks no neighbour: it rests on no row below missing a bound,
// and with response time not falling as the share shrinks, the row below
// is no better than the chosen one. If the chosen value (measured, or
// checked) misses the goal without its headroom, the row below misses it
// too, and a check of it could not change the decision; if the check
// finds the chosen value within, the decision made again is a least one,
// which checks its row below.
//
// When the check finds the chosen value off by more than the threshold, or
// the row below within the bound, the decision is made again with the
// measured values, and if a point cannot be measured at all (the checker
// marks it unmeasurable) without it. Each round measures at least one more
// point, so the decision settles within the matrix's rows.
func (m *Manager) decide(ctx context.Context, x *siterun.Study, st *justrunit.Study, mat *justrunit.Matrix, service string, goal justrunit.SLA) (float64, error) {
	online := m.tierNow(service)
	metric := st.SLA.Metric
	for range len(mat.Rows) {
		i, bound, why := choose(mat, metric, goal, m.cfg.Headroom, online, m.cfg.CheckThreshold)
		if i < 0 {
			return 0, fmt.Errorf("no allocation of %s meets %s<=%s (the SLA %s less the other tiers' time and %.0f%% headroom), nor is any predicted more than %.0f%% better than its %s on-line now (%s)",
				st.Target, goal.Metric, figure(goal.Metric, goal.Max), st.SLA, 100*m.cfg.Headroom, 100*m.cfg.CheckThreshold, metric, formatOnline(metric, online))
		}
		p := mat.Rows[i].Point
		cells, err := x.Engine.Use(ctx, st, mat, p, metric)
		if err != nil {
			return 0, err
		}
		within := fmt.Sprintf("%s<=%s", metric, figure(metric, bound))
		var q justrunit.Point // the row below whose interpolated cell the choice rests on
		var under justrunit.Cell
		if b := below(mat, metric, i, bound); b >= 0 {
			q = mat.Rows[b].Point
			uc, err := x.Engine.Use(ctx, st, mat, q, metric)
			if err != nil {
				return 0, err
			}
			under = uc[0]
		}
		v := figure(metric, cells[0].Value)
		msg := fmt.Sprintf("%s needs %s: %s %s (%s)", st.Target, st.Space.Format(p), metric, v, cells[0].Prov)
		if why != "" {
			msg = fmt.Sprintf("%s takes %s: %s %s (%s); %s", st.Target, st.Space.Format(p), metric, v, cells[0].Prov, why)
		}
		data := map[string]any{"target": st.Target, "cpu": p[0], "prov": cells[0].Prov.String(), "fallback": why}
		if q != nil {
			msg += fmt.Sprintf("; %s below it was interpolated as missing %s (%s %s, %s): the checker re-measures it",
				st.Space.Format(q), within, metric, figure(metric, under.Value), under.Prov)
			data["below"] = q[0]
		}
		m.emit(Event{Kind: EventDecision, Service: service, Message: msg, Data: data})
		if cells[0].Prov != justrunit.Used && q == nil {
			return p[0], nil
		}
		res, err := x.Engine.Check(ctx, st, mat, nil)
		if err != nil {
			return 0, fmt.Errorf("check: %w", err)
		}
		j, _, _ := choose(mat, metric, goal, m.cfg.Headroom, online, m.cfg.CheckThreshold)
		again, then := j != i, "deciding again"
		var found []string
		data = map[string]any{"results": res}
		if k := slices.IndexFunc(res, func(r justrunit.CheckResult) bool { return r.Point.Equal(p) }); k >= 0 {
			r := res[k]
			at := st.Space.Format(p)
			switch {
			case r.Reason != "":
				// Unmeasurable: the point's cells are empty now;
				// saturated: its measured value stands, and meets no SLA
				// on a response time (see choose).
				found = append(found, fmt.Sprintf("could not confirm the interpolated value of %s (%s)", at, r.Reason))
				again, then = true, "deciding again without it"
				if !r.Unmeasurable() {
					then = "deciding again with the measured value, which meets no SLA on a response time"
				}
			case !r.Passed:
				found = append(found, fmt.Sprintf("found the interpolated value of %s off by more than the threshold (measured %s)", at, figure(metric, r.Measured)))
				again, then = true, "deciding again with the measured value"
			default:
				found = append(found, fmt.Sprintf("confirmed the interpolated value of %s (measured %s)", at, figure(metric, r.Measured)))
			}
		}
		if k := slices.IndexFunc(res, func(r justrunit.CheckResult) bool { return q != nil && r.Point.Equal(q) }); k >= 0 {
			r := res[k]
			at := st.Space.Format(q)
			meets := r.Reason == "" && r.Measured <= bound
			switch {
			case r.Reason != "":
				// Unmeasurable or saturated there: no candidate.
				found = append(found, fmt.Sprintf("found that %s misses %s (%s)", at, within, r.Reason))
			case meets:
				found = append(found, fmt.Sprintf("found %s meets %s (measured %s)", at, within, figure(metric, r.Measured)))
			default:
				found = append(found, fmt.Sprintf("confirmed that %s misses %s (measured %s)", at, within, figure(metric, r.Measured)))
			}
			data["below"], data["below_meets"] = q[0], meets
		}
		msg = "the checker " + strings.Join(found, " and ")
		if again {
			msg += ": " + then
		}
		m.emit(Event{Kind: EventCheck, Service: service, Message: msg, Data: data})
		if !again {
			return p[0], nil
		}
		// Decide again: the V cells carry the measured values now (or a
		// point is unmeasurable, its cells empty), and Check filled the
		// interpolation around them again from them.
	}
	return 0, errors.New("decision did not settle")
}

// below returns the row under row i of mat whose interpolated value of
// metric a choice of row i within bound rests on: the next smaller
// allocation, when its cell is interpolated (I, or T) and usable. It
// returns -1 when there is none: i is the first row, bound is NaN (a
// best-effort choice rests on no bound), or the row below was measured
// (its value stands) or has no value (unmeasurable, or not filled: no
// candidate either way).
func below(mat *justrunit.Matrix, metric justrunit.Metric, i int, bound float64) int {
	if i <= 0 || math.IsNaN(bound) {
		return -1
	}
	col := mat.MetricIndex(metric)
	r := mat.Rows[i-1]
	if p := r.Cells[col].Prov; (p != justrunit.Interpolated && p != justrunit.Used) || !usable(r, col, metric) {
		return -1
	}
	return i - 1
}

// usable reports whether row r's value in column col (of metric) is a
// candidate for a decision: it has one, and it is not the response time of
// a saturated clone, which understates what the tier would see there.
func usable(r justrunit.Row, col int, metric justrunit.Metric) bool {
	return r.Cells[col].Prov != justrunit.Empty && !r.Observation.Understates(metric)
}

// choose returns the row of mat a decision takes, the bound its value of
// metric is within (NaN for a best effort), and why when it is not the
// plain case:
//   - the least allocation whose value of metric meets goal (the SLA less
//     the other tiers' time, less the headroom);
//   - failing that, the least that meets the goal without its headroom
//     (goal.Max / (1 − headroom));
//   - failing that, a best effort: the allocation predicted best, when it
//     is better than online, the tier's on-line value now (NaN when not
//     known), by more than threshold (the relative error a prediction is
//     trusted to; a tier that more CPU does not help is left as it is). A
//     service far over its SLA is then helped as far as the study says it
//     can be, rather than left as it is, and the manager responds again
//     from there if it stays over.
//
// It returns -1 when none of these holds. Empty cells are never taken.
func choose(mat *justrunit.Matrix, metric justrunit.Metric, goal justrunit.SLA, headroom, online, threshold float64) (int, float64, string) {
	col := mat.MetricIndex(metric)
	least := func(bound float64) int {
		return slices.IndexFunc(mat.Rows, func(r justrunit.Row) bool {
			return usable(r, col, metric) && r.Cells[col].Value <= bound
		})
	}
	if i := least(goal.Max); i >= 0 {
		return i, goal.Max, ""
	}
	bare := goal.Max
	if headroom > 0 && headroom < 1 {
		bare = goal.Max / (1 - headroom)
		if i := least(bare); i >= 0 {
			return i, bare, fmt.Sprintf("none meets %s<=%s with the %.0f%% headroom; this is the least that meets it without", goal.Metric, figure(goal.Metric, goal.Max), 100*headroom)
		}
	}
	best := -1
	for i, r := range mat.Rows {
		if c := r.Cells[col]; usable(r, col, metric) && !math.IsNaN(c.Value) && (best < 0 || c.Value < mat.Rows[best].Cells[col].Value) {
			best = i
		}
	}
	if best < 0 || !(mat.Rows[best].Cells[col].Value < online*(1-threshold)) {
		return -1, math.NaN(), ""
	}
	return best, math.NaN(), fmt.Sprintf("best effort: none is predicted to meet %s<=%s, and this is predicted best (the tier has %s on-line now)", goal.Metric, figure(goal.Metric, bare), figure(goal.Metric, online))
}

// tierNow is the on-line value of the SLA metric at the service's
// bottleneck tier over the latest interval that had enough requests; NaN
// when none had.
func (m *Manager) tierNow(service string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range slices.Backward(m.recent[service]) {
		if t.tierCount >= monitor.MinRequests {
			return t.tier
		}
	}
	return math.NaN()
}

func formatOnline(metric justrunit.Metric, v float64) string {
	if math.IsNaN(v) {
		return "not known"
	}
	return figure(metric, v)
}

// figure writes a value of metric in a message: an error rate (a fraction)
// with three significant digits, a time or a rate with one decimal.
func figure(metric justrunit.Metric, v float64) string {
	if metric == justrunit.ErrorRate {
		return fmt.Sprintf("%.3g", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func (m *Manager) service(name string) *site.Service {
	for i := range m.cfg.Site.File.Services {
		if m.cfg.Site.File.Services[i].Name == name {
			return &m.cfg.Site.File.Services[i]
		}
	}
	return nil
}

// bottleneck returns the instance of the service's bottleneck tier to
// study: the configured tier, else the first tier after the front one
// whose instance has an in-proxy.
func (m *Manager) bottleneck(service string) (string, error) {
	svc := m.service(service)
	if svc == nil {
		return "", fmt.Errorf("service %s: %w", service, justrunit.ErrNotFound)
	}
	in, err := svc.BottleneckInstance()
	if err != nil {
		return "", err
	}
	return in.ID, nil
}

func instance(insts []justrunit.Instance, id string) *justrunit.Instance {
	for i := range insts {
		if insts[i].ID == id {
			return &insts[i]
		}
	}
	return nil
}

func (m *Manager) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	m.log.Info(e.Message, "kind", e.Kind, "service", e.Service)
	if m.cfg.Store != nil {
		ev := &justrunit.Event{Time: e.Time, Kind: e.Kind, Level: "info", Message: e.Message, Data: map[string]any{"service": e.Service}}
		if err := m.cfg.Store.AddEvent(context.Background(), ev); err != nil {
			m.log.Warn("store manager event", "err", err)
		}
	}
	if m.cfg.OnEvent != nil {
		m.cfg.OnEvent(e)
	}
}
