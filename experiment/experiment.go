// Package experiment is JustRunIt's experimenter: it clones the target
// instance onto a sandbox host (one clone per parallel slot; with a
// hostclass parameter, onto a sandbox host of each class), attaches each
// clone to the in-proxy that copies the live traffic to it and to the
// out-proxy that answers its next-tier calls, and for every point the study
// asks for sets the clone's allocation, waits out the warm-up, measures a
// window and returns the observation. Close detaches and destroys
// everything it made, also after errors.
//
// A Runner implements justrunit.Runner, so the study engine drives it.
package experiment

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// Feed is the in-proxy in front of the target: it copies every on-line
// request to the attached clones at its arrival time and measures each
// clone's responses. *httpproxy.InProxy implements it.
type Feed interface {
	// AddCloneDial attaches the clone called name at target, reached
	// through dial when not nil (a clone inside a network of its own).
	// where says where dial reaches it.
	AddCloneDial(ctx context.Context, name string, target *url.URL, dial func(context.Context) (net.Conn, error), where string) error
	RemoveClone(name string) (httpproxy.CloneStats, error)
	// CloneStats returns the clone's window so far, and ends it when reset.
	CloneStats(name string, reset bool) (httpproxy.CloneStats, error)
}

// Replay is the out-proxy behind the target: it answers the clones' calls
// to the next tier from the record of the on-line exchanges.
// *httpproxy.OutProxy implements it.
type Replay interface {
	// ServeClone starts answering the calls of the clone called name on a
	// new loopback listener and returns its address (host:port).
	ServeClone(ctx context.Context, name string) (string, error)
	// ServeCloneOn starts answering the clone's calls on ln, opened inside
	// the clone's network by the platform (see
	// justrunit.CloneOptions.Answer); it owns ln once it returns nil.
	ServeCloneOn(name string, ln net.Listener) error
	// Attach says the clone gets copies of the live traffic from now on:
	// it is answered from the on-line calls made from now.
	Attach(name string) error
	// StopClone stops answering the clone's calls.
	StopClone(name string) error
	// ReplayStats returns the clone's match statistics so far, and ends
	// its window when reset.
	ReplayStats(name string, reset bool) (httpproxy.ReplayStats, error)
}

// Config is what a Runner needs.
type Config struct {
	Platform justrunit.Platform
	// Target is the on-line instance to clone.
	Target justrunit.Instance
	// Sandbox is the sandbox host the clones run on, unless Space has a
	// hostclass parameter.
	Sandbox justrunit.Host
	// Classes are the sandbox hosts of a Space with a hostclass
	// parameter, one for each of its labels: n clones (slots) run on each,
	// and every experiment on a clone of its point's class. Required with
	// a hostclass parameter, ignored without.
	Classes map[string]ClassHost
	// Space is the study's space; points map to allocations through the
	// parameters named cpu, freq and mem, and to sandbox hosts through
	// one named hostclass (see Classes).
	Space justrunit.Space
	// Feed is the target's in-proxy; required.
	Feed Feed
	// Replay is the target's out-proxy, and NextTier the address the
	// target calls it on (the clone calls the same address inside its
	// namespace and is steered to Replay). Both empty when the target has
	// no next tier.
	Replay   Replay
	NextTier string
	// Window is the experiment's warm-up and measurement window.
	Window measure.WindowConfig
	// Logger is optional.
	Logger *slog.Logger
}

// ClassHost is the sandbox host of one host class.
type ClassHost struct {
	Host justrunit.Host
	// FreqGHz is the class's CPU frequency (0: unknown, the host's own),
	// set on its clones where the space has no freq parameter, emulated
	// where the platform says so (as "justrunit manager upgrade" does).
	FreqGHz float64
}

// Runner runs experiments on clones of one instance. Open it, use it from
// the study engine, Close it.
type Runner struct {
	cfg    Config
	log    *slog.Logger
	class  int                   // the index of Space's hostclass parameter; −1 without
	free   map[string]chan *slot // the idle clones of each class ("" without hostclass)
	mu     sync.Mutex
	slots  []*slot
	closed bool // Close was called: Run refuses
}

// slot is one clone and its attachments.
type slot struct {
	name  string
	host  ClassHost // where it runs
	clone *justrunit.Clone
	fed   bool // attached to the Feed
	reply bool // served by the Replay
}

var _ justrunit.Runner = (*Runner)(nil)

// Open clones the target n times onto the sandbox host (n times onto the
// host of each class, with a hostclass parameter) and attaches the clones
// to the proxies. On error everything made so far is torn down; what
// cannot be is kept by the Runner returned with the error (nil when
// nothing is left), whose Close tries again.
func Open(ctx context.Context, cfg Config, n int) (*Runner, error) {
	switch {
	case cfg.Platform == nil:
		return nil, justrunit.Invalid("platform", nil, "required")
	case cfg.Feed == nil:
		return nil, justrunit.Invalid("in_proxy", nil, "the target %s has no in-proxy: it cannot be fed live traffic", cfg.Target.ID)
	case (cfg.Replay == nil) != (cfg.NextTier == ""):
		return nil, justrunit.Invalid("out_proxy", cfg.NextTier, "give both the out-proxy and the next-tier address, or neither")
	case n < 1:
		return nil, justrunit.Invalid("slots", n, "must be ≥ 1")
	}
	if err := cfg.Window.Validate(); err != nil {
		return nil, err
	}
	if err := checkParams(cfg); err != nil {
		return nil, err
	}
	class, classes, err := hostsOf(cfg)
	if err != nil {
		return nil, err
	}
	for _, label := range slices.Sorted(maps.Keys(classes)) {
		if err := checkRoom(ctx, cfg, classes[label].Host, n); err != nil {
			return nil, err
		}
	}
	r := &Runner{cfg: cfg, log: cfg.Logger, class: class, free: map[string]chan *slot{}}
	if r.log == nil {
		r.log = slog.Default()
	}
	for _, label := range slices.Sorted(maps.Keys(classes)) {
		r.free[label] = make(chan *slot, n)
		for range n {
			s, err := r.open(ctx, classes[label])
			if s != nil {
				r.slots = append(r.slots, s)
			}
			if err != nil {
				if cerr := r.Close(context.WithoutCancel(ctx)); cerr != nil {
					return r, errors.Join(err, cerr)
				}
				return nil, err
			}
			r.free[label] <- s
		}
	}
	return r, nil
}

// hostsOf returns the index of cfg's hostclass parameter (−1 without) and
// the sandbox hosts the clones run on, by class label ("" without).
func hostsOf(cfg Config) (int, map[string]ClassHost, error) {
	k := cfg.Space.Param("hostclass")
	if k < 0 {
		if !cfg.Sandbox.Sandbox {
			return -1, nil, justrunit.Invalid("sandbox", cfg.Sandbox.Name, "not a sandbox host: clones run on sandbox hosts only")
		}
		return -1, map[string]ClassHost{"": {Host: cfg.Sandbox}}, nil
	}
	field := fmt.Sprintf("parameters[%d]", k)
	p := cfg.Space.Params[k]
	if !p.Categorical() {
		return 0, nil, justrunit.Invalid(field, p.Name, "a host class is a label (hostclass=std,fast), not a number")
	}
	freq := cfg.Space.Param("freq") >= 0
	out := map[string]ClassHost{}
	for _, label := range p.Labels {
		ch, ok := cfg.Classes[label]
		switch {
		case !ok:
			return 0, nil, justrunit.Invalid(field, label, "no sandbox host of class %s to run its experiments on", label)
		case !ch.Host.Sandbox:
			return 0, nil, justrunit.Invalid(field, label, "host %s is not a sandbox host: clones run on sandbox hosts only", ch.Host.Name)
		case ch.Host.Class != label:
			return 0, nil, justrunit.Invalid(field, label, "host %s is of class %s, not %s", ch.Host.Name, ch.Host.Class, label)
		case ch.FreqGHz > 0 && !freq && !can(cfg.Platform, "freq"):
			return 0, nil, justrunit.Invalid(field, label, "class %s runs at %g GHz, and the %s platform cannot set a clone's frequency", label, ch.FreqGHz, cfg.Platform.Name())
		}
		out[label] = ch
	}
	return k, out, nil
}

// can reports whether platform p can set parameter name.
func can(p justrunit.Platform, name string) bool {
	return slices.ContainsFunc(p.Capabilities(), func(c justrunit.Capability) bool { return c.Param == name })
}

// checkParams refuses a space with a parameter the runner cannot set on a
// clone: it sets cpu, freq and mem (Allocation.WithPoint), where the
// platform can. Any other parameter would be measured at the clone's one
// setting under every one of its values.
func checkParams(cfg Config) error {
	for i, p := range cfg.Space.Params {
		field := fmt.Sprintf("parameters[%d]", i)
		switch {
		case p.Name == "hostclass": // a sandbox host of each class (hostsOf)
		case p.Name != "cpu" && p.Name != "freq" && p.Name != "mem":
			return justrunit.Invalid(field, p.Name, "unknown parameter; the experimenter sets cpu, freq and mem, and runs each hostclass on a sandbox host of that class")
		case !can(cfg.Platform, p.Name):
			return justrunit.Invalid(field, p.Name, "the %s platform cannot set it", cfg.Platform.Name())
		}
	}
	return nil
}

// checkRoom checks, before anything is cloned, that sandbox host h can
// take n clones at the most CPU and memory the study may give each (see
// need), besides what the host's other instances hold.
func checkRoom(ctx context.Context, cfg Config, h justrunit.Host, n int) error {
	cpu, mem := need(cfg)
	if (cpu <= 0 || h.Cores <= 0) && (mem <= 0 || h.MemoryMiB <= 0) {
		return nil
	}
	insts, err := cfg.Platform.Instances(ctx)
	if err != nil {
		return fmt.Errorf("sandbox host %s: list its instances: %w", h.Name, err)
	}
	var usedCPU, usedMem float64
	for _, in := range insts {
		if in.Host == h.Name && in.State == "running" {
			usedCPU += in.Alloc.CPU
			usedMem += float64(in.Alloc.MemoryMiB)
		}
	}
	return fits(h, n, cpu, mem, usedCPU, usedMem)
}

// need is the most CPU and memory a study may give each clone: the
// target's allocation (what a clone starts with) or the top of the space's
// cpu and mem ranges, whichever is more. Unlimited allocations (0) count
// as nothing, as the platforms count them.
func need(cfg Config) (cpu, mem float64) {
	cpu, mem = cfg.Target.Alloc.CPU, float64(cfg.Target.Alloc.MemoryMiB)
	for _, p := range cfg.Space.Params {
		if p.Categorical() || len(p.Values) == 0 {
			continue
		}
		switch p.Name {
		case "cpu":
			cpu = max(cpu, slices.Max(p.Values))
		case "mem":
			mem = max(mem, slices.Max(p.Values))
		}
	}
	return cpu, mem
}

// fits refuses n clones of cpu and mem each on host h, where usedCPU and
// usedMem are held already.
func fits(h justrunit.Host, n int, cpu, mem, usedCPU, usedMem float64) error {
	if capCPU := h.Cores * 100; cpu > 0 && capCPU > 0 && float64(n)*cpu+usedCPU > capCPU+1e-9 {
		return justrunit.Invalid("slots", n, "%d clones at up to %g%% CPU each need %g%%, and sandbox host %s has %g%% of %g%% free; lower slots or the top of the cpu range",
			n, cpu, float64(n)*cpu, h.Name, max(capCPU-usedCPU, 0), capCPU)
	}
	if capMem := float64(h.MemoryMiB); mem > 0 && capMem > 0 && float64(n)*mem+usedMem > capMem {
		return justrunit.Invalid("slots", n, "%d clones at up to %g MiB each need %g MiB, and sandbox host %s has %g of %g MiB free; lower slots or the top of the mem range",
			n, mem, float64(n)*mem, h.Name, max(capMem-usedMem, 0), capMem)
	}
	return nil
}

// Check refuses, without making or reading anything on the platform, a
// study of cfg's target over cfg's space on n slots that the runner could
// never run: a parameter it cannot set, a host class without a sandbox
// host, or more clones than an empty sandbox host holds. Open checks the
// same, and the room against what the hosts hold at the time.
func Check(cfg Config, n int) error {
	if n < 1 {
		return justrunit.Invalid("slots", n, "must be ≥ 1")
	}
	if err := checkParams(cfg); err != nil {
		return err
	}
	_, classes, err := hostsOf(cfg)
	if err != nil {
		return err
	}
	cpu, mem := need(cfg)
	for _, label := range slices.Sorted(maps.Keys(classes)) {
		if err := fits(classes[label].Host, n, cpu, mem, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// cloneSeq numbers the clones of this process's runners, so that two
// runners of one target (a study and a paired check, on different sandbox
// hosts) never give the proxies the same clone name.
var cloneSeq atomic.Int64

// open makes a clone on the host of h.
func (r *Runner) open(ctx context.Context, h ClassHost) (*slot, error) {
	name := fmt.Sprintf("%s-clone%d", r.cfg.Target.ID, cloneSeq.Add(1)-1)
	// Where the platform can, the proxies reach the clone inside its own
	// network, as they reach the target: its traffic then costs it what
	// the target's costs the target (see justrunit.CloneOptions.InNetwork).
	nr, ok := r.cfg.Platform.(justrunit.NetworkReacher)
	opts := justrunit.CloneOptions{Alloc: r.cfg.Target.Alloc, InNetwork: ok && nr.ReachesIntoClones()}
	s := &slot{name: name, host: h}
	switch {
	case r.cfg.Replay == nil:
	case opts.InNetwork:
		opts.Answer = map[string]func(net.Listener) error{r.cfg.NextTier: func(ln net.Listener) error {
			if err := r.cfg.Replay.ServeCloneOn(name, ln); err != nil {
				return fmt.Errorf("out-proxy for %s: %w", name, err)
			}
			s.reply = true
			return nil
		}}
	default:
		addr, err := r.cfg.Replay.ServeClone(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("out-proxy for %s: %w", name, err)
		}
		s.reply = true
		opts.Redirect = map[string]string{r.cfg.NextTier: addr}
	}
	start := time.Now()
	c, err := r.cfg.Platform.Clone(ctx, r.cfg.Target.ID, h.Host.Name, opts)
	if err != nil {
		return s, fmt.Errorf("clone %s: %w", r.cfg.Target.ID, err)
	}
	s.clone = c
	where := c.Endpoint
	u := &url.URL{Scheme: "http", Host: c.Endpoint}
	if c.Dial != nil {
		where, u.Host = c.Network, internalHost(r.cfg.Target.Addr)
	}
	r.log.Info("clone made", "clone", c.ID, "host", h.Host.Name, "mode", c.Mode, "pause", c.Pause, "took", time.Since(start).Round(time.Millisecond), "endpoint", where)
	// The out-proxy answers the clone from the on-line calls made from
	// the moment it gets copies: not those made while it was cloned.
	if s.reply {
		if err := r.cfg.Replay.Attach(name); err != nil {
			return s, fmt.Errorf("out-proxy for %s: %w", name, err)
		}
	}
	if err := r.cfg.Feed.AddCloneDial(ctx, name, u, c.Dial, c.Network); err != nil {
		return s, fmt.Errorf("attach %s to the in-proxy: %w", name, err)
	}
	s.fed = true
	return s, nil
}

// internalHost is the host:port a clone reached through its own dial is
// named by: its instance's address, a wildcard or missing host read as
// 127.0.0.1.
func internalHost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Run sets a free clone (of p's host class) to point p, measures it under
// the copied live traffic and returns the observation.
func (r *Runner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	alloc, err := r.cfg.Target.Alloc.WithPoint(r.cfg.Space, p)
	if err != nil {
		return justrunit.Observation{}, err
	}
	label := ""
	if r.class >= 0 {
		label = r.cfg.Space.Params[r.class].Label(p[r.class])
	}
	free, ok := r.free[label]
	if !ok {
		return justrunit.Observation{}, justrunit.Invalid("point", r.cfg.Space.Format(p), "no clone of host class %q", label)
	}
	var s *slot
	select {
	case s = <-free:
	case <-ctx.Done():
		return justrunit.Observation{}, ctx.Err()
	}
	defer func() { free <- s }()
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return justrunit.Observation{}, errors.New("the runner is closed: its clones are removed")
	}
	if s.host.FreqGHz > 0 && r.cfg.Space.Param("freq") < 0 {
		alloc.Freq = s.host.FreqGHz
	}
	if err := r.cfg.Platform.SetAllocation(ctx, s.clone.ID, alloc); err != nil {
		return justrunit.Observation{}, fmt.Errorf("set allocation %s on %s: %w", alloc, s.clone.ID, err)
	}
	win := &cloneWindow{feed: r.cfg.Feed, replay: r.cfg.Replay, name: s.name}
	meter := &measure.ModelMeter{
		Model:     s.host.Host.Power,
		HostCores: s.host.Host.Cores,
		CPUSource: "cgroup CPU time of the clone",
		Name:      "host class " + s.host.Host.Class,
		CPUTime: func() (time.Duration, error) {
			u, err := r.cfg.Platform.Usage(ctx, s.clone.ID)
			return u.CPUTime, err
		},
	}
	res, err := measure.MeasureWindow(ctx, r.cfg.Window, win, meter, nil)
	// A clone that died is the failure to report, whatever the window saw.
	if aerr := r.alive(ctx, s.clone.ID); aerr != nil {
		return justrunit.Observation{}, aerr
	}
	if err != nil {
		return justrunit.Observation{}, fmt.Errorf("measure %s at %s: %w", s.clone.ID, alloc, err)
	}
	obs := res.Observation(p)
	obs.Dropped = win.last.Dropped
	obs.Offered = win.last.Offered()
	got, sent := win.last.Response.Count+win.last.Response.Errors, win.last.Sent+win.last.Dropped
	if obs.Saturated = justrunit.IsSaturated(got, sent); obs.Saturated {
		r.log.Warn("clone saturated: its response times understate what its clients would see", "clone", s.clone.ID, "point", p,
			"answered", got, "sent", sent)
	}
	obs.MatchRate = 1
	if r.cfg.Replay != nil {
		if win.replayErr != nil {
			return justrunit.Observation{}, fmt.Errorf("out-proxy statistics of %s: %w", s.name, win.replayErr)
		}
		rs := win.lastReplay
		rs.Apply(&obs)
		r.log.Info("experiment replay", "clone", s.clone.ID, "point", p, "matched", rs.Matched, "unmatched", rs.Unmatched,
			"reused", rs.Reused, "stood_in", rs.StoodIn, "passed_through", rs.PassedThrough, "waited", rs.Waited, "wait_mean_ms", rs.WaitMs,
			"next_tier_mean_ms", rs.NextTier.Mean, "next_tier_p95_ms", rs.NextTier.P95)
	}
	obs.Clone = s.clone.Mode
	obs.Source = r.cfg.Platform.Name() + " clone " + s.clone.ID
	return obs, nil
}

// ErrCloneDied means a clone stopped running during an experiment.
var ErrCloneDied = errors.New("clone stopped running")

// alive checks that the clone is still running on the platform.
func (r *Runner) alive(ctx context.Context, id string) error {
	insts, err := r.cfg.Platform.Instances(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	for _, in := range insts {
		if in.ID == id {
			if in.State != "running" {
				return fmt.Errorf("clone %s: %w (state %s)", id, ErrCloneDied, in.State)
			}
			return nil
		}
	}
	return fmt.Errorf("clone %s: %w (gone from the platform)", id, ErrCloneDied)
}

// Close detaches every clone from the proxies and destroys it. What it
// cannot remove (a clone whose Destroy failed, an attachment a proxy would
// not drop) it keeps, and says so in its error: a later Close tries again
// with what is left only. It is safe to call more than once.
func (r *Runner) Close(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	var errs []error
	var left []*slot
	for _, s := range r.slots {
		if err := r.remove(ctx, s); err != nil {
			errs = append(errs, err)
			left = append(left, s)
		}
	}
	r.slots = left
	return errors.Join(errs...)
}

// remove detaches s from the proxies and destroys its clone; the steps
// that succeeded are not done again on a retry.
func (r *Runner) remove(ctx context.Context, s *slot) error {
	var errs []error
	if s.fed {
		if _, err := r.cfg.Feed.RemoveClone(s.name); err != nil && !errors.Is(err, justrunit.ErrNotFound) {
			errs = append(errs, fmt.Errorf("detach %s from the in-proxy: %w", s.name, err))
		} else {
			s.fed = false
		}
	}
	if s.reply {
		if err := r.cfg.Replay.StopClone(s.name); err != nil && !errors.Is(err, justrunit.ErrNotFound) {
			errs = append(errs, fmt.Errorf("stop the out-proxy for %s: %w", s.name, err))
		} else {
			s.reply = false
		}
	}
	if s.clone != nil {
		if err := r.cfg.Platform.Destroy(ctx, s.clone.ID); err != nil {
			errs = append(errs, fmt.Errorf("destroy %s on sandbox host %s: %w", s.clone.ID, s.host.Host.Name, err))
		} else {
			s.clone = nil
		}
	}
	return errors.Join(errs...)
}

// cloneWindow reads one clone's window from the Feed, keeping the last
// ended window's counters (dropped copies) for the observation. With a
// Replay, it ends the out-proxy's window of the clone at the same moments,
// so the match statistics cover the measured window, warm-up excluded.
type cloneWindow struct {
	feed   Feed
	replay Replay // nil without a next tier
	name   string
	last   httpproxy.CloneStats

	lastReplay httpproxy.ReplayStats
	replayErr  error // the last Reset's
}

func (w *cloneWindow) Snapshot() measure.Summary {
	s, _ := w.feed.CloneStats(w.name, false)
	return s.Response
}

func (w *cloneWindow) Reset() measure.Summary {
	s, _ := w.feed.CloneStats(w.name, true)
	w.last = s
	if w.replay != nil {
		w.lastReplay, w.replayErr = w.replay.ReplayStats(w.name, true)
	}
	return s.Response
}
