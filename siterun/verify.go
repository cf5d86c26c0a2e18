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

// Verify sets the on-line target of the study to point p, measures it
// through its in-proxy for one window (warm-up included), compares with
// the matrix, and restores the target's allocation — also on error. It
// changes the on-line system on purpose: it is the fidelity check that
// tells how far the sandbox's answers are from the real thing. A paired
// check (opts.Paired) makes its clone before it touches the on-line
// instance and removes it before it returns.
func (s *Site) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, opts VerifyOptions) (v Verification, err error) {
	if _, err := st.Space.IndexOf(p); err != nil {
		return v, err
	}
	feed, ok := s.InProxy(st.Target)
	if !ok {
		return v, justrunit.Invalid("target", st.Target, "has no in_proxy: its on-line response time cannot be measured")
	}
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return v, err
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == st.Target })
	if i < 0 {
		return v, fmt.Errorf("instance %s: %w on the platform", st.Target, justrunit.ErrNotFound)
	}
	orig := insts[i].Alloc
	alloc, err := orig.WithPoint(st.Space, p)
	if err != nil {
		return v, err
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return v, err
	}
	h := slices.IndexFunc(hosts, func(x justrunit.Host) bool { return x.Name == insts[i].Host })
	if h < 0 {
		return v, fmt.Errorf("host %s of %s: %w", insts[i].Host, st.Target, justrunit.ErrNotFound)
	}
	class := hostClassOf(st.Space, p)
	if class != "" && class != hosts[h].Class {
		return v, justrunit.Invalid("point", st.Space.Format(p), "the on-line %s runs on host %s, of class %s: a check sets its allocation, not its hardware; check a point of class %s, or migrate it to a host of class %s first",
			st.Target, hosts[h].Name, hosts[h].Class, hosts[h].Class, class)
	}
	if f := s.File.Classes[class].FreqGHz; class != "" && f > 0 && st.Space.Param("freq") < 0 {
		alloc.Freq = f // as the study's clones of that class ran (experiment.ClassHost)
	}
	win := opts.Window
	var pair *pairedClone
	if opts.Paired {
		win.Min = win.Max
		if pair, err = s.openPair(ctx, st, class, opts.Sandbox, win); err != nil {
			return v, fmt.Errorf("paired check: %w", err)
		}
		defer func() {
			if cerr := s.closeRunner(context.WithoutCancel(ctx), pair.runner, pair.sandboxes, pair.release); cerr != nil {
				err = errors.Join(err, fmt.Errorf("remove the paired check's clone: %w", cerr))
			}
		}()
	}
	if err := s.Platform.SetAllocation(ctx, st.Target, alloc); err != nil {
		return v, fmt.Errorf("set %s on the on-line %s: %w", alloc, st.Target, err)
	}
	defer func() {
		if rerr := s.Platform.SetAllocation(context.WithoutCancel(ctx), st.Target, orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore %s on %s: %w", orig, st.Target, rerr))
		}
	}()
	meter := &measure.ModelMeter{
		Model: hosts[h].Power, HostCores: hosts[h].Cores, Name: "host class " + hosts[h].Class,
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
	var sandbox *justrunit.Observation
	if pair != nil {
		pctx, cancel := context.WithCancel(ctx)
		pair.start(pctx, p)
		// Before the clone is removed; cancels it when the on-line
		// window failed.
		defer func() { cancel(); pair.wait() }()
	}
	res, err := measure.MeasureWindow(ctx, win, rec, meter, nil)
	if err != nil {
		return v, fmt.Errorf("measure the on-line %s at %s: %w", st.Target, alloc, err)
	}
	if pair != nil {
		obs, perr := pair.wait()
		if perr != nil {
			return v, fmt.Errorf("measure the paired clone at %s: %w", alloc, perr)
		}
		sandbox = &obs
	}
	v = Verification{Point: p, Measured: res.Observation(p), Metrics: m.Metrics, Sandbox: sandbox}
	v.Measured.Source = "on-line " + st.Target
	for _, mt := range m.Metrics {
		c, err := m.Cell(p, mt)
		if err != nil {
			return v, err
		}
		got, err := v.Measured.Value(mt)
		if err != nil {
			return v, err
		}
		v.Predicted = append(v.Predicted, c)
		v.RelError = append(v.RelError, checker.RelError(got, c.Value))
		if v.Sandbox != nil {
			sb, err := v.Sandbox.Value(mt)
			if err != nil {
				return v, err
			}
			v.SandboxRelError = append(v.SandboxRelError, checker.RelError(got, sb))
		}
	}
	return v, nil
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

// pairedClone is a paired check's clone: made and attached before the
// on-line instance is touched, measured alongside it.
type pairedClone struct {
	runner    *experiment.Runner
	sandboxes []string // the sandbox host it runs on
	release   func()   // gives it back
	lag       time.Duration
	classAt   int // the index of the hostclass parameter, whose one value is 0; −1 without
	done      chan struct{}
	obs       justrunit.Observation
	err       error
}

// openPair clones st's target into the sandbox (a sandbox host of class
// when st varies the host class) for a paired check whose windows are win.
func (s *Site) openPair(ctx context.Context, st *justrunit.Study, class, sandbox string, win measure.WindowConfig) (*pairedClone, error) {
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
	r, err := experiment.Open(ctx, cfg, 1)
	if err != nil {
		release()
		return nil, fmt.Errorf("clone %s: %w", st.Target, err)
	}
	return &pairedClone{runner: r, sandboxes: sandboxNames(cfg), release: release, lag: in.Lag(), classAt: classAt, done: make(chan struct{})}, nil
}

// start measures the clone at p, the clone lag from now, so that its
// window covers the copies of the requests in the on-line window starting
// now.
func (c *pairedClone) start(ctx context.Context, at justrunit.Point) {
	p := at
	if c.classAt >= 0 {
		p = slices.Clone(at)
		p[c.classAt] = 0
	}
	go func() {
		defer close(c.done)
		select {
		case <-time.After(c.lag):
		case <-ctx.Done():
			c.err = context.Cause(ctx)
			return
		}
		c.obs, c.err = c.runner.Run(ctx, p)
		c.obs.Point = at
	}()
}

// wait returns the clone's observation once it is measured.
func (c *pairedClone) wait() (justrunit.Observation, error) {
	<-c.done
	return c.obs, c.err
}
