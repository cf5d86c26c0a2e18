package siterun

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/study"
)

// StudyOptions configure RunStudy.
type StudyOptions struct {
	// Store keeps the study; optional.
	Store justrunit.Store
	// Owner identifies this process in the store (sqlite.OwnerID).
	Owner string
	// Progress receives the engine's progress reports; optional.
	Progress func(study.Progress)
	// RelCI and MinSamples tune the stopping rule of each window; zero
	// values take DefaultRelCI and the study's MinSamples, else
	// DefaultMinSamples.
	RelCI      float64
	MinSamples int64
	// Sandbox names the sandbox host the clones run on; empty: the first
	// powered-on one. A study over hostclass names none (it runs on a
	// sandbox host of each class).
	Sandbox string
}

// Defaults of the measurement window's stopping rule.
const (
	DefaultRelCI      = 0.05
	DefaultMinSamples = 100
)

// Study is a prepared study: clones made and attached, an engine ready to
// run and check. Close it to remove the clones.
type Study struct {
	// Engine runs the study (Run) and the checker (Use, Check) on the
	// prepared clones.
	Engine    *study.Engine
	site      *Site
	runner    *experiment.Runner
	sandboxes []string // the sandbox hosts it holds
	release   func()   // gives them back
	forget    func()   // ends its export of the match rate; nil without
}

// Close detaches and destroys the study's clones, and gives the sandbox
// host back to the site's other studies. What it cannot remove stays on
// the sandbox host, and the error says so: the next study there removes it
// first (see leave).
func (x *Study) Close(ctx context.Context) error {
	if x.forget != nil {
		x.forget()
		x.forget = nil
	}
	return x.site.closeRunner(ctx, x.runner, x.sandboxes, x.release)
}

// CheckWarmUp fails when a study of instance id with warm-up warmUp would
// measure before its clone gets any traffic: the warm-up must be at least
// the instance's in-proxy clone lag. An unknown instance passes (the
// study's other checks name it).
func (s *Site) CheckWarmUp(id string, warmUp time.Duration) error {
	if in, _, _, err := s.File.Instance(id); err == nil && warmUp < in.Lag() {
		return justrunit.Invalid("warm_up", justrunit.Duration(warmUp), "must be at least the in-proxy's clone lag (%v): the first copies reach a clone that long after it is attached", in.Lag())
	}
	return nil
}

// PrepareStudy clones the target of st into the sandbox (one clone per
// slot; with a hostclass parameter, per slot and class), attaches the clones to the target's proxies, and returns an engine
// with the study's strategy and interpolator over them.
func (s *Site) PrepareStudy(ctx context.Context, st *justrunit.Study, opts StudyOptions) (*Study, error) {
	if err := s.checkStudy(st); err != nil {
		return nil, err
	}
	// A clone starts from its original's allocation: not from one a
	// check left it at.
	if left, want, owed, err := s.owed(ctx, st.Target); err != nil {
		return nil, err
	} else if owed {
		return nil, fmt.Errorf("study of %s: %w: a fidelity check left the on-line instance at %s, and it should have %s, so its clones would start from the wrong one: check it again (a check sets it back first), set it back by hand, or restart the site",
			st.Target, justrunit.ErrNotRestored, left, want)
	}
	in, err := interp.New(st.Interpolator)
	if err != nil {
		return nil, err
	}
	strat, err := driver.New(st.Strategy, driver.Options{Interpolator: in})
	if err != nil {
		return nil, err
	}
	cfg, release, err := s.claimExperiment(ctx, st.Target, st.Space, opts.Sandbox)
	if err != nil {
		return nil, err
	}
	cfg.Window = StudyWindow(st, time.Duration(st.WarmUp), time.Duration(st.Window))
	cfg.Window.RelCI = orFloat(opts.RelCI, DefaultRelCI)
	cfg.Window.MinSamples = orInt(opts.MinSamples, cfg.Window.MinSamples)
	runner, err := s.openRunner(ctx, cfg, st.Slots, release)
	if err != nil {
		return nil, fmt.Errorf("prepare the experiments: %w", err)
	}
	x := &Study{site: s, runner: runner, sandboxes: sandboxNames(cfg), release: release}
	var r justrunit.Runner = runner
	if _, ok := s.OutProxy(st.Target); ok && s.metrics != nil {
		var rate prometheus.Gauge
		rate, x.forget = s.matchRate(st.Target)
		r = &matchRateRunner{Runner: runner, rate: rate}
	}
	x.Engine = &study.Engine{Runner: r, Strategy: strat, Interpolator: in, Store: opts.Store, Logger: s.log,
		Progress: opts.Progress, Owner: opts.Owner}
	return x, nil
}

// checkStudy fills st's defaults (metrics, interpolator, strategy) and
// checks what needs no platform: the study itself, its strategy, and the
// target's warm-up on this site.
func (s *Site) checkStudy(st *justrunit.Study) error {
	st.FillMetrics()
	if err := st.Validate(); err != nil {
		return err
	}
	if st.Interpolator == "" {
		st.Interpolator = "linear"
	}
	st.Strategy = driver.NameFor(st)
	if err := driver.CheckStudy(st); err != nil {
		return err
	}
	return s.CheckWarmUp(st.Target, time.Duration(st.WarmUp))
}

// CheckStudy refuses, before anything is stored or cloned, a study this
// site could never run: what PrepareStudy refuses before it claims a
// sandbox host (the study, its strategy, the target's warm-up; a target
// that is not an instance of the site or has no in_proxy), a parameter the
// experimenter cannot set on this platform, a host class without a
// powered-on sandbox host, or more slots than an empty sandbox host holds
// (experiment.Check). It fills st's defaults as PrepareStudy does, and
// only reads the platform.
func (s *Site) CheckStudy(ctx context.Context, st *justrunit.Study) error {
	if err := s.checkStudy(st); err != nil {
		return err
	}
	cfg, err := s.ExperimentConfig(ctx, st.Target, st.Space, "")
	if err != nil {
		return err
	}
	return experiment.Check(cfg, st.Slots)
}

// matchRate returns the gauge of the out-proxy match rate of studies of
// instance id, and forget, which a study calls once when it ends: the
// gauge's series goes when the last study of id ends, so that it does not
// read a finished study's last value.
func (s *Site) matchRate(id string) (g prometheus.Gauge, forget func()) {
	_, svc, _, _ := s.File.Instance(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rates == nil {
		s.rates = map[string]int{}
	}
	s.rates[id]++
	return s.metrics.OutProxyMatchRate.WithLabelValues(svc.Name, id), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.rates[id]--; s.rates[id] == 0 {
			delete(s.rates, id)
			s.metrics.OutProxyMatchRate.DeleteLabelValues(svc.Name, id)
		}
	}
}

// RunStudy prepares st, runs it and removes its clones, also on error or
// cancellation; it returns the matrix.
func (s *Site) RunStudy(ctx context.Context, st *justrunit.Study, opts StudyOptions) (m *justrunit.Matrix, err error) {
	x, err := s.PrepareStudy(ctx, st, opts)
	if err != nil {
		return nil, err
	}
	// Deferred: a panic in the engine must not leave the clones running
	// and the sandbox host claimed.
	defer func() {
		if cerr := x.Close(context.WithoutCancel(ctx)); cerr != nil {
			err = errors.Join(err, fmt.Errorf("remove the clones: %w", cerr))
		}
	}()
	return x.Engine.Run(ctx, st)
}

// Window is the measurement window of a study's experiments with warm-up
// and window: after the warm-up it measures for at most window, and stops
// early — after a third of it, at least a second — once the p95's
// confidence interval is within DefaultRelCI with DefaultMinSamples
// responses. The fidelity check measures the on-line instance the same way
// so that both sides of its comparison are measured alike.
func Window(warmUp, window time.Duration) measure.WindowConfig {
	return measure.WindowConfig{
		WarmUp:     warmUp,
		Min:        min(window, max(window/3, time.Second)),
		Max:        window,
		RelCI:      DefaultRelCI,
		MinSamples: DefaultMinSamples,
	}
}

func orFloat(v, d float64) float64 {
	if v == 0 {
		return d
	}
	return v
}

// StudyWindow is Window for study st's measurements, on a clone or on the
// on-line instance: with the study's MinSamples when it sets one.
func StudyWindow(st *justrunit.Study, warmUp, window time.Duration) measure.WindowConfig {
	w := Window(warmUp, window)
	w.MinSamples = MinSamples(st)
	return w
}

// MinSamples is the fewest successful responses a window of study st
// needs: the study's own, else DefaultMinSamples.
func MinSamples(st *justrunit.Study) int64 { return orInt(st.MinSamples, DefaultMinSamples) }

func orInt(v, d int64) int64 {
	if v == 0 {
		return d
	}
	return v
}

// matchRateRunner exports each experiment's out-proxy match rate.
type matchRateRunner struct {
	justrunit.Runner
	rate prometheus.Gauge
}

func (r *matchRateRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	o, err := r.Runner.Run(ctx, p)
	if err == nil {
		r.rate.Set(o.MatchRate)
	}
	return o, err
}
