package siterun

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/checker"
	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/measure"
)

// Verification compares what a study predicted at one point with what the
// on-line instance does at that point under the same live load.
type Verification struct {
	Point justrunit.Point `json:"point"`
	// Measured is the on-line instance's observation at Point.
	Measured justrunit.Observation `json:"measured"`
	// Metrics, Predicted and RelError are parallel: the study's cell for
	// each metric and |measured − predicted| / measured.
	Metrics   []justrunit.Metric `json:"metrics"`
	Predicted []justrunit.Cell   `json:"predicted"`
	RelError  []float64          `json:"rel_error"`
	// Sandbox is a paired check's clone observation at Point: a clone in
	// the sandbox measured over the same live requests as Measured (nil
	// unless VerifyOptions.Paired). SandboxRelError is parallel to Metrics:
	// |measured − sandbox| / measured.
	Sandbox         *justrunit.Observation `json:"sandbox,omitempty"`
	SandboxRelError []float64              `json:"sandbox_rel_error,omitempty"`
}

// VerifyOptions say how Verify measures.
type VerifyOptions struct {
	// Window measures the on-line instance, warm-up included.
	Window measure.WindowConfig
	// Paired also clones the target into the sandbox, sets the clone to the
	// point and measures it over the same live requests as the on-line
	// instance: both windows run for Window.Max (no early stop), the
	// clone's starting the in-proxy's clone lag after the on-line one's,
	// since its copies arrive that much later. The study's prediction was
	// measured minutes earlier, under other requests on a machine whose
	// speed moves; the paired figure tells that drift (prediction vs
	// sandbox now) from the sandbox's own error (sandbox now vs on-line).
	Paired bool
	// Sandbox names the sandbox host of the paired clone; empty: the first
	// powered-on one.
	Sandbox string
}

// restoreTimeout bounds the restore of the on-line instance's allocation
// after a check, which runs even when the check's context has ended.
const restoreTimeout = time.Minute

// A restore that fails is tried restoreAttempts times in all, waiting
// restoreBackoff after the first failure and twice as long after each
// next one (3 s in all), within restoreTimeout: a platform's SetAllocation
// can fail for a moment (a busy cgroup file, a QMP command timing out),
// and an on-line instance left at a check's point stays there for good.
const (
	restoreAttempts = 5
	restoreBackoff  = 200 * time.Millisecond
)

// pairPoll is how often a paired check reads its clone's state from the
// platform during the windows: a clone that stops running ends the on-line
// window then, not at its end. The platforms answer Instances from memory.
const pairPoll = time.Second

// Verify sets the on-line target of the study to point p, measures it
// through its in-proxy for one window (warm-up included), compares with
// the matrix, and restores the target's allocation — also on error. It
// changes the on-line system on purpose: it is the fidelity check that
// tells how far the sandbox's answers are from the real thing. Checks and
// plans (ApplyPlan) of the site change the on-line instances one at a
// time. A point where the matrix predicts nothing (an unmeasurable point,
// or one not interpolated) is refused before anything is touched. A paired
// check (opts.Paired) makes its clone before it touches the on-line
// instance, from the allocation it has then, and removes it before it
// returns; when the clone fails or stops running, the on-line window is
// cut short, or if it was over, Verify returns its measurement with the
// clone's error. When the allocation cannot be restored, the error wraps
// justrunit.ErrNotRestored and names the allocation the instance is left
// at and the one it should have; if the point was measured by then, v
// holds the measurement. The next check of the instance sets it back
// first, and refuses, changing nothing, when it cannot.
func (s *Site) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, opts VerifyOptions) (v Verification, err error) {
	if _, err := st.Space.IndexOf(p); err != nil {
		return v, err
	}
	feed, ok := s.InProxy(st.Target)
	if !ok {
		return v, justrunit.Invalid("target", st.Target, "has no in_proxy: its on-line response time cannot be measured")
	}
	// What makes the comparison fail is found before the on-line instance
	// spends a window at the point.
	cells, err := predictions(st, m, p)
	if err != nil {
		return v, err
	}
	if _, err := s.onlineAt(ctx, st, p); err != nil {
		return v, err
	}
	win := opts.Window
	var pair *pairedClone
	if opts.Paired {
		win.Min = win.Max
		if pair, err = s.claimPair(ctx, st, hostClassOf(st.Space, p), opts.Sandbox, win); err != nil {
			return v, fmt.Errorf("paired check: %w", err)
		}
		// Registered before unlock's, so it runs after it: removing the
		// clone holds up no plan.
		defer func() {
			if cerr := pair.close(context.WithoutCancel(ctx)); cerr != nil {
				err = errors.Join(err, fmt.Errorf("remove the paired check's clone: %w", cerr))
			}
		}()
	}
	// After the pair's sandbox host is claimed: see lockOnline.
	unlock, err := s.lockOnline(ctx)
	if err != nil {
		return v, err
	}
	defer unlock()
	if err := s.setBack(ctx, st.Target); err != nil {
		return v, err
	}
	at, err := s.onlineAt(ctx, st, p) // again, now that no plan can move it
	if err != nil {
		return v, err
	}
	alloc := at.alloc
	if pair != nil {
		// Under the lock: the clone starts from the allocation the on-line
		// instance has now and goes back to (read before the wait, a plan
		// could have changed it since), and no plan moves or changes the
		// instance while it is being cloned. A plan waits the cloning out
		// as it waits out the window.
		if err := pair.open(ctx, at.inst); err != nil {
			return v, fmt.Errorf("paired check: %w", err)
		}
	}
	// Set up before the change: a platform may apply part of it before
	// failing (qemu sets the CPU, then balloons the memory), and restoring
	// an unchanged allocation is harmless. Called again, it does nothing.
	restored := false
	restore := func() error {
		if restored {
			return nil
		}
		restored = true
		return s.restore(context.WithoutCancel(ctx), st.Target, at.orig, alloc)
	}
	defer func() { err = errors.Join(err, restore()) }()
	if err := s.Platform.SetAllocation(ctx, st.Target, alloc); err != nil {
		return v, fmt.Errorf("set %s on the on-line %s: %w", alloc, st.Target, err)
	}
	meter := &measure.ModelMeter{
		Model: at.host.Power, HostCores: at.host.Cores, Name: "host class " + at.host.Class,
		CPUSource: "cgroup CPU time of the on-line instance",
		CPUTime: func() (time.Duration, error) {
			u, err := s.Platform.Usage(ctx, st.Target)
			return u.CPUTime, err
		},
	}
	// A window of its own: whoever else reads the on-line instance's
	// response times (the manager's monitor, say) keeps its windows.
	rec, unwatch := feed.Watch()
	defer unwatch()
	octx := ctx
	if pair != nil {
		// The clone's failure ends the on-line window: its figure would
		// be discarded.
		var cancelOnline context.CancelCauseFunc
		octx, cancelOnline = context.WithCancelCause(ctx)
		defer cancelOnline(nil)
		pctx, cancel := context.WithCancel(ctx)
		pair.start(pctx, p, cancelOnline)
		// Before the clone is removed; cancels it when the on-line
		// window failed.
		defer func() { cancel(); pair.wait() }()
	}
	res, err := measure.MeasureWindow(octx, win, rec, meter, nil)
	// The on-line instance goes back as soon as its window is over, not
	// after the clone's, which ends the clone lag later; then other
	// checks and plans may change it.
	rerr := restore()
	unlock()
	if err != nil {
		if pair != nil && ctx.Err() == nil && errors.Is(err, context.Canceled) { // the clone failed: cancelOnline
			_, perr := pair.wait()
			return v, errors.Join(fmt.Errorf("measure the paired clone at %s: %w", alloc, perr), rerr)
		}
		return v, errors.Join(fmt.Errorf("measure the on-line %s at %s: %w", st.Target, alloc, err), rerr)
	}
	v = Verification{Point: p, Measured: res.Observation(p), Metrics: m.Metrics, Predicted: cells}
	v.Measured.Source = "on-line " + st.Target
	for i, mt := range m.Metrics {
		got, _ := v.Measured.Value(mt) // predictions checked mt
		v.RelError = append(v.RelError, checker.RelError(got, cells[i].Value))
	}
	if rerr != nil {
		return v, rerr
	}
	if pair != nil {
		obs, perr := pair.wait()
		if perr != nil {
			return v, fmt.Errorf("measure the paired clone at %s: %w", alloc, perr)
		}
		v.Sandbox = &obs
		for _, mt := range m.Metrics {
			got, _ := v.Measured.Value(mt)
			sb, _ := obs.Value(mt)
			v.SandboxRelError = append(v.SandboxRelError, checker.RelError(got, sb))
		}
	}
	return v, nil
}

// predictions returns m's cell at p for each of its metrics. It refuses a
// matrix over another space than st's, and a point where a cell is empty
// (unmeasurable, or neither measured nor interpolated): there is nothing to
// compare with, and at a point where the clone measured nothing, the
// on-line instance would likely be as starved.
func predictions(st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point) ([]justrunit.Cell, error) {
	if !sameSpace(st.Space, m.Space) {
		return nil, justrunit.Invalid("matrix", nil, "over another space than the study's")
	}
	var cells []justrunit.Cell
	var empty []string
	for _, mt := range m.Metrics {
		if _, err := (&justrunit.Observation{}).Value(mt); err != nil {
			return nil, err
		}
		c, err := m.Cell(p, mt)
		if err != nil {
			return nil, err
		}
		if c.Prov == justrunit.Empty {
			empty = append(empty, string(mt))
		}
		cells = append(cells, c)
	}
	if len(empty) > 0 {
		why := "neither measured nor interpolated"
		if i, _ := m.Space.IndexOf(p); m.Rows[i].Unmeasurable != "" {
			why = "the study found it unmeasurable: " + m.Rows[i].Unmeasurable
		}
		return nil, justrunit.Invalid("point", m.Space.Format(p), "the study predicts no %s there (%s): nothing to compare the on-line instance with; check a point the study measured or interpolated",
			strings.Join(empty, ", "), why)
	}
	return cells, nil
}

// sameSpace reports whether spaces a and b have the same parameters and
// values.
func sameSpace(a, b justrunit.Space) bool {
	return slices.EqualFunc(a.Params, b.Params, func(x, y justrunit.Parameter) bool {
		return x.Name == y.Name && slices.Equal(x.Values, y.Values) && slices.Equal(x.Labels, y.Labels)
	})
}

// restore sets the on-line instance id back to allocation orig after a
// check that set it to alloc, trying again (restoreAttempts, restoreBackoff)
// within restoreTimeout. A restore that cannot be done wraps
// justrunit.ErrNotRestored and says where id is left and what it should
// have, and the site remembers it for the next check of id (setBack): the
// instance would otherwise stay at the check's point unnoticed, and the
// next check would take that for its own allocation.
func (s *Site) restore(ctx context.Context, id string, orig, alloc justrunit.Allocation) error {
	rctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	var err error
	tries, wait := 0, restoreBackoff
	for tries < restoreAttempts {
		tries++
		if err = s.Platform.SetAllocation(rctx, id, orig); err == nil {
			s.forgetUnrestored(id)
			return nil
		}
		// Another try cannot help an instance that is gone or an
		// allocation the platform refuses.
		if errors.Is(err, justrunit.ErrNotFound) || errors.Is(err, justrunit.ErrInvalid) || errors.Is(err, justrunit.ErrUnsupported) || rctx.Err() != nil {
			break
		}
		s.log.Warn("restore of the on-line allocation after a fidelity check failed; trying again", "instance", id, "allocation", orig, "attempt", tries, "err", err)
		if tries == restoreAttempts {
			break
		}
		select {
		case <-time.After(wait):
		case <-rctx.Done():
		}
		wait *= 2
	}
	// Read with a context of its own: the restore's may be spent.
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	defer lcancel()
	left := fmt.Sprintf("%s (the check's) or part of the way back", alloc)
	if insts, lerr := s.Platform.Instances(lctx); lerr != nil {
		left += fmt.Sprintf(" (the platform could not be read: %v)", lerr)
	} else if i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == id }); i >= 0 {
		left = insts[i].Alloc.String()
	}
	s.mu.Lock()
	if s.unrestored == nil {
		s.unrestored = map[string]justrunit.Allocation{}
	}
	s.unrestored[id] = orig
	s.mu.Unlock()
	s.log.Error("on-line allocation not restored after a fidelity check: set it back", "instance", id, "left_at", left, "should_have", orig, "err", err)
	attempts := "1 attempt"
	if tries > 1 {
		attempts = fmt.Sprintf("%d attempts", tries)
	}
	return fmt.Errorf("restore the on-line %s after the check (%s): %w; %w: it is left at %s and should have %s: set it back by hand, or check %s again (a check sets it back first), or restart the site (it launches %s with the site file's allocation)",
		id, attempts, err, justrunit.ErrNotRestored, left, orig, id, id)
}

// setBack sets the on-line instance id back to the allocation a check
// could not restore (restore remembered it) before another check reads the
// allocation it is to restore: that check would otherwise take the
// allocation id was left at for its own and restore that for good. It does
// nothing when no check left id so, or id has that allocation again (set
// back by hand); when it cannot set it back, the check is refused before it
// changes anything. It runs under the on-line lock.
func (s *Site) setBack(ctx context.Context, id string) error {
	left, want, owed, err := s.owed(ctx, id)
	if err != nil || !owed {
		return err
	}
	s.log.Warn("setting the on-line allocation an earlier fidelity check left back before checking", "instance", id, "left_at", left, "should_have", want)
	if err := s.restore(ctx, id, want, left); err != nil {
		return fmt.Errorf("the on-line %s is still at the allocation an earlier check left it at, so this check did not start: %w", id, err)
	}
	return nil
}

// owed reports whether the on-line instance id is still at an allocation
// (left) that a check could not restore, and the one it should have
// (want); it forgets one that id has again (set back by hand) or that is
// owed to an instance no longer there.
func (s *Site) owed(ctx context.Context, id string) (left, want justrunit.Allocation, owed bool, err error) {
	s.mu.Lock()
	want, ok := s.unrestored[id]
	s.mu.Unlock()
	if !ok {
		return left, want, false, nil
	}
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return left, want, false, fmt.Errorf("read the on-line %s, which an earlier check left at another allocation: %w", id, err)
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == id })
	if i < 0 || insts[i].Alloc == want { // gone (onlineAt says so), or set back by hand
		s.forgetUnrestored(id)
		return left, want, false, nil
	}
	return insts[i].Alloc, want, true, nil
}

// forgetUnrestored forgets the allocation instance id should have been
// restored to (see setBack): it has it again, or a plan set another.
func (s *Site) forgetUnrestored(id string) {
	s.mu.Lock()
	delete(s.unrestored, id)
	s.mu.Unlock()
}

// onlineTarget is the on-line instance a check sets, as the platform runs
// it.
type onlineTarget struct {
	inst  justrunit.Instance   // as the platform reported it
	orig  justrunit.Allocation // what it has
	alloc justrunit.Allocation // what the check gives it
	host  justrunit.Host
}

// onlineAt reads st's target from the platform and the allocation a check
// at p gives it; it refuses a point of another host class than its host's.
func (s *Site) onlineAt(ctx context.Context, st *justrunit.Study, p justrunit.Point) (onlineTarget, error) {
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return onlineTarget{}, err
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == st.Target })
	if i < 0 {
		return onlineTarget{}, fmt.Errorf("instance %s: %w on the platform", st.Target, justrunit.ErrNotFound)
	}
	t := onlineTarget{inst: insts[i], orig: insts[i].Alloc}
	if t.alloc, err = t.orig.WithPoint(st.Space, p); err != nil {
		return onlineTarget{}, err
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return onlineTarget{}, err
	}
	h := slices.IndexFunc(hosts, func(x justrunit.Host) bool { return x.Name == insts[i].Host })
	if h < 0 {
		return onlineTarget{}, fmt.Errorf("host %s of %s: %w", insts[i].Host, st.Target, justrunit.ErrNotFound)
	}
	t.host = hosts[h]
	class := hostClassOf(st.Space, p)
	if class != "" && class != t.host.Class {
		return onlineTarget{}, justrunit.Invalid("point", st.Space.Format(p), "the on-line %s runs on host %s, of class %s: a check sets its allocation, not its hardware; check a point of class %s, or migrate it to a host of class %s first",
			st.Target, t.host.Name, t.host.Class, t.host.Class, class)
	}
	if f := s.File.Classes[class].FreqGHz; class != "" && f > 0 && st.Space.Param("freq") < 0 {
		t.alloc.Freq = f // as the study's clones of that class ran (experiment.ClassHost)
	}
	return t, nil
}

// hostClassOf returns the host class of point p of space, "" when the
// space has no hostclass parameter (or p's value there is no label).
func hostClassOf(space justrunit.Space, p justrunit.Point) string {
	k := space.Param("hostclass")
	if k < 0 || k >= len(p) {
		return ""
	}
	return space.Params[k].Label(p[k])
}

// HostClass returns the class of the host instance id runs on.
func (s *Site) HostClass(ctx context.Context, id string) (string, error) {
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == id })
	if i < 0 {
		return "", fmt.Errorf("instance %s: %w on the platform", id, justrunit.ErrNotFound)
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return "", err
	}
	h := slices.IndexFunc(hosts, func(x justrunit.Host) bool { return x.Name == insts[i].Host })
	if h < 0 {
		return "", fmt.Errorf("host %s of %s: %w", insts[i].Host, id, justrunit.ErrNotFound)
	}
	return hosts[h].Class, nil
}

// OnClass fits the points of a fidelity check of a study over space to
// an on-line instance on a host of class: a check sets the instance's
// allocation, not its hardware. Without a hostclass parameter it returns
// pts. Otherwise chosen points (named by the user) of another class are
// refused, before any is measured; points chosen for the user
// (defaulted) are moved to class, without repeats.
func OnClass(space justrunit.Space, pts []justrunit.Point, class string, defaulted bool) ([]justrunit.Point, error) {
	k := space.Param("hostclass")
	if k < 0 {
		return pts, nil
	}
	at := slices.Index(space.Params[k].Labels, class)
	if at < 0 {
		return nil, justrunit.Invalid("points", nil, "the on-line instance runs on a host of class %s, which the study did not vary (%s): a check sets its allocation, not its hardware",
			class, strings.Join(space.Params[k].Labels, ","))
	}
	var out []justrunit.Point
	for i, p := range pts {
		if c := hostClassOf(space, p); c != class {
			if !defaulted {
				return nil, justrunit.Invalid(fmt.Sprintf("points[%d]", i), space.Format(p), "of class %s; the on-line instance runs on a host of class %s: a check sets its allocation, not its hardware",
					c, class)
			}
			p = slices.Clone(p)
			p[k] = space.Params[k].Values[at]
		}
		if !slices.ContainsFunc(out, func(q justrunit.Point) bool { return slices.Equal(q, p) }) {
			out = append(out, p)
		}
	}
	return out, nil
}

// pairedClone is a paired check's clone: its sandbox host claimed before
// the on-line lock is taken, made under it (before the on-line instance is
// touched), measured alongside it.
type pairedClone struct {
	s         *Site
	cfg       experiment.Config // its Target is set by open
	runner    *experiment.Runner
	sandboxes []string // the sandbox host it runs on
	release   func()   // gives it back
	lag       time.Duration
	classAt   int      // the index of the hostclass parameter, whose one value is 0; −1 without
	ids       []string // the clone's instance ids, watched while it is measured
	done      chan struct{}
	obs       justrunit.Observation
	err       error
}

// claimPair claims the sandbox host (one of class when st varies the host
// class) for a paired check of st's target whose windows are win. A
// sandbox host is claimed before the on-line lock (see lockOnline); the
// clone is made by open, under it.
func (s *Site) claimPair(ctx context.Context, st *justrunit.Study, class, sandbox string, win measure.WindowConfig) (*pairedClone, error) {
	in, _, _, err := s.File.Instance(st.Target)
	if err != nil {
		return nil, justrunit.Invalid("target", st.Target, "no such instance in the site")
	}
	if err := s.CheckWarmUp(st.Target, win.WarmUp); err != nil {
		return nil, err
	}
	// With a hostclass parameter, only the point's class: one clone, on
	// one host; the clone's space has that class alone (start maps the
	// point to it).
	space := st.Space
	classAt := space.Param("hostclass")
	if classAt >= 0 {
		space.Params = slices.Clone(space.Params)
		space.Params[classAt].Values, space.Params[classAt].Labels = []float64{0}, []string{class}
	}
	cfg, release, err := s.claimExperiment(ctx, st.Target, space, sandbox)
	if err != nil {
		return nil, err
	}
	cfg.Window = win
	return &pairedClone{s: s, cfg: cfg, sandboxes: sandboxNames(cfg), release: release, lag: in.Lag(), classAt: classAt, done: make(chan struct{})}, nil
}

// open clones target, the on-line instance as read under the on-line
// lock, onto the claimed sandbox host. On error the host is given back
// (openRunner).
func (c *pairedClone) open(ctx context.Context, target justrunit.Instance) error {
	c.cfg.Target = target
	r, err := c.s.openRunner(ctx, c.cfg, 1, c.release)
	if err != nil {
		return fmt.Errorf("clone %s: %w", target.ID, err)
	}
	c.runner = r
	// The clone is the target's clone on the sandbox host: no one else
	// makes clones on a claimed host, and the claim removed what others
	// left there. Without the list, its death is found at the window's
	// end only (experiment.Runner.Run).
	insts, err := c.s.Platform.Instances(ctx)
	if err != nil {
		c.s.log.Warn("paired clone not watched: the platform's instances could not be read", "err", err)
		return nil
	}
	for _, in := range insts {
		if in.Origin == target.ID && slices.Contains(c.sandboxes, in.Host) {
			c.ids = append(c.ids, in.ID)
		}
	}
	return nil
}

// close removes the clone, if made, and gives the sandbox host back.
func (c *pairedClone) close(ctx context.Context) error {
	if c.runner == nil {
		c.release()
		return nil
	}
	return c.s.closeRunner(ctx, c.runner, c.sandboxes, c.release)
}

// start measures the clone at p, the clone lag from now, so that its
// window covers the copies of the requests in the on-line window starting
// now. failed gets the clone's error, if it fails, at once when the clone
// stops running (watch).
func (c *pairedClone) start(ctx context.Context, at justrunit.Point, failed func(error)) {
	p := at
	if c.classAt >= 0 {
		p = slices.Clone(at)
		p[c.classAt] = 0
	}
	rctx, stop := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		c.watch(rctx, func(err error) {
			failed(err)
			stop(err) // the clone's window too
		})
	}()
	go func() {
		defer close(c.done)
		defer func() { stop(nil); <-watched }()
		select {
		case <-time.After(c.lag):
		case <-rctx.Done():
			c.err = context.Cause(rctx)
			return
		}
		c.obs, c.err = c.runner.Run(rctx, p)
		c.obs.Point = at
		// The Runner reads the clone's state when its window ends; if it
		// ran again by then, the death watch saw is still the failure.
		if died := context.Cause(rctx); c.err != nil && errors.Is(died, experiment.ErrCloneDied) && !errors.Is(c.err, experiment.ErrCloneDied) {
			c.err = died
		}
		if c.err != nil {
			failed(c.err)
		}
	}()
}

// watch reads the clone's state every pairPoll until ctx ends, and calls
// died once if it stopped running. A failed read is left to the Runner's
// own check at the window's end.
func (c *pairedClone) watch(ctx context.Context, died func(error)) {
	if len(c.ids) == 0 {
		return
	}
	tick := time.NewTicker(pairPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		insts, err := c.s.Platform.Instances(ctx)
		if err != nil {
			continue
		}
		for _, id := range c.ids {
			i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == id })
			switch {
			case i < 0:
				died(fmt.Errorf("clone %s: %w (gone from the platform)", id, experiment.ErrCloneDied))
				return
			case insts[i].State != "running":
				died(fmt.Errorf("clone %s: %w (state %s)", id, experiment.ErrCloneDied, insts[i].State))
				return
			}
		}
	}
}

// wait returns the clone's observation once it is measured.
func (c *pairedClone) wait() (justrunit.Observation, error) {
	<-c.done
	return c.obs, c.err
}
