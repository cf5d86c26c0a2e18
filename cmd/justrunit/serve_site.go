package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/checker"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/store/sqlite"
	"github.com/justrunit/justrunit/study"
)

func init() { startSite = startSiteRuntime }

// startSiteRuntime launches the site file's instances and proxies for the
// daemon and gives it their experimenter and hosts; with manage > 0 it also
// runs the manager at that interval and serves its samples and plans.
func startSiteRuntime(ctx context.Context, g *globals, path string, store justrunit.Store, set *metrics.Set, manage time.Duration) (*daemonSite, error) {
	f, err := site.Load(path)
	if err != nil {
		return nil, err
	}
	s, err := siterun.Up(ctx, f, siterun.Options{StateDir: filepath.Join(g.dataDir, "platform", f.Platform), Logger: g.logger, Metrics: set})
	if err != nil {
		return nil, err
	}
	ver := newSiteVerifier(s, store, g.logger)
	ds := &daemonSite{
		View: &siteView{Platform: s.Platform, siteVerifier: ver},
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			// A study waits for a verification of the on-line instance
			// to end: its clone would copy an instance set to another
			// allocation on purpose.
			if err := ver.studyStarted(ctx, st.ID); err != nil {
				return nil, nil, err
			}
			x, err := s.PrepareStudy(ctx, st, siterun.StudyOptions{})
			if err != nil {
				ver.studyEnded(st.ID)
				return nil, nil, err
			}
			return x.Engine.Runner, closerFunc(func() error {
				defer ver.studyEnded(st.ID)
				return x.Close(context.Background())
			}), nil
		},
		Check: func(ctx context.Context, st *justrunit.Study) error {
			if err := checkTarget(f, st.Target); err != nil {
				return err
			}
			return s.CheckStudy(ctx, st)
		},
		Close: func() error { return s.Close(context.Background()) },
	}
	if manage <= 0 {
		return ds, nil
	}
	// The manager acts on the on-line instances on its own (allocations,
	// migrations); a fidelity check that sets one to another allocation
	// would fight it, and its restore would undo what the manager did.
	ver.managed = true
	tl := &manager.Timeline{}
	// With the daemon's store: its events feed the dashboard, and its
	// studies are listed and recovered like the daemon's own.
	mgr, err := manager.New(manager.Config{Site: s, Store: store, Owner: sqlite.OwnerID(), Interval: manage, WarmUp: manage / 4, Window: manage / 2,
		Logger: g.logger, OnSample: tl.AddSample, OnEvent: tl.AddEvent})
	if err != nil {
		s.Close(context.Background())
		return nil, err
	}
	// Shutdown stops it with the daemon's studies, within the bound, and
	// its studies are stored interrupted, as the daemon's are.
	mctx, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Run(mctx); err != nil && mctx.Err() == nil {
			g.logger.Error("manager stopped", "err", err)
		}
	}()
	slas := map[string]justrunit.SLA{}
	for _, svc := range mgr.Monitor().Services {
		slas[svc.Name] = svc.SLA
	}
	ds.View = &managedView{Platform: s.Platform, siteVerifier: ver, tl: tl, interval: manage, slas: slas}
	ds.Planner = &sitePlanner{site: s}
	ds.Stop = func(ctx context.Context) error {
		stop(errManagerShutdown)
		return waitManager(ctx, done, mgr.Applying, g.logger)
	}
	ds.Close = func() error {
		stop(errManagerShutdown)
		<-done
		return s.Close(context.Background())
	}
	return ds, nil
}

// errManagerShutdown is the cause the manager's context is cancelled with
// when the daemon stops: its study then is stored interrupted.
var errManagerShutdown = fmt.Errorf("%w: the daemon shut down while the manager ran", study.ErrInterrupted)

// waitManager waits for a stopped manager to end (done closed) until ctx
// ends, and past that while it applies a plan (applying): a plan's steps
// act on the on-line instances, and one cut in the middle (the process
// exiting during a migration between hosts) would leave an on-line
// instance paused or its address reaching nothing.
func waitManager(ctx context.Context, done <-chan struct{}, applying func() bool, log *slog.Logger) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	if !applying() {
		return fmt.Errorf("the manager is still stopping: %w", ctx.Err())
	}
	log.Warn("shutdown: the manager is applying a plan to the on-line instances; waiting for it to end past the shutdown timeout")
	<-done
	return nil
}

// checkTarget refuses, before anything is stored or cloned, a study whose
// target the site cannot study: not one of its instances, or one without an
// in-proxy (no proxy sees its live traffic, so a clone would get none).
func checkTarget(f *site.Site, target string) error {
	in, _, _, err := f.Instance(target)
	if err != nil {
		return justrunit.Invalid("target", target, "no such instance on the daemon's site; its instances are %s", strings.Join(f.InstanceIDs(), ", "))
	}
	if in.InProxy == nil {
		return justrunit.Invalid("target", target, "has no in_proxy in the daemon's site file: no proxy sees its live traffic, so it cannot be studied; give it one")
	}
	return nil
}

// siteView is the site as the daemon shows it: hosts and instances from
// the platform, and the fidelity check on the on-line instances.
type siteView struct {
	justrunit.Platform
	*siteVerifier
}

// managedView is the site as the daemon shows it when the manager runs:
// hosts and instances from the platform, the fidelity check, and the
// monitor's samples.
type managedView struct {
	justrunit.Platform
	*siteVerifier
	tl       *manager.Timeline
	interval time.Duration
	slas     map[string]justrunit.SLA
}

var (
	_ api.Verifier       = (*siteView)(nil)
	_ api.Verifier       = (*managedView)(nil)
	_ api.ServiceSampler = (*managedView)(nil)
)

// ServiceSamples returns the monitor's samples that started at or after since.
func (v *managedView) ServiceSamples(ctx context.Context, since time.Time) ([]api.ServiceSample, error) {
	var out []api.ServiceSample
	for _, s := range v.tl.SamplesSince(since) {
		sla := v.slas[s.Service]
		out = append(out, api.ServiceSample{Service: s.Service, Start: s.Start, Interval: justrunit.Duration(v.interval),
			RTMean: finite(s.MeanMs), Requests: s.Requests, Value: finite(s.Value), SLA: &sla})
	}
	return out, nil
}

// finite is v, or 0 when JSON cannot carry it (an interval without
// responses; its request count says so).
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// sitePlanner makes dry-run placement plans of the site as it runs now and
// applies them on request.
type sitePlanner struct {
	site  *siterun.Site
	mu    sync.Mutex
	seq   int
	plans []*planEntry
}

type planEntry struct {
	rec  api.PlanRecord
	plan planner.Plan
	from string // the site's planner.State when the plan was made
}

var _ api.Planner = (*sitePlanner)(nil)

func (sp *sitePlanner) Plan(ctx context.Context) (api.PlanRecord, error) {
	hosts, err := sp.site.Platform.Hosts(ctx)
	if err != nil {
		return api.PlanRecord{}, err
	}
	insts, err := sp.site.Platform.Instances(ctx)
	if err != nil {
		return api.PlanRecord{}, err
	}
	plan, err := planner.Heuristic(planner.FromSite(hosts, insts, nil))
	if err != nil {
		return api.PlanRecord{}, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.seq++
	e := &planEntry{plan: plan, from: planner.State(hosts, insts), rec: api.PlanRecord{ID: fmt.Sprintf("p%d", sp.seq), Created: time.Now(), Summary: plan.Summary(), Plan: plan, State: api.PlanPlanned}}
	sp.plans = append(sp.plans, e)
	return e.rec, nil
}

func (sp *sitePlanner) Plans(ctx context.Context) ([]api.PlanRecord, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var out []api.PlanRecord
	for _, e := range slices.Backward(sp.plans) {
		out = append(out, e.rec)
	}
	return out, nil
}

func (sp *sitePlanner) Apply(ctx context.Context, id string) (api.PlanRecord, error) {
	sp.mu.Lock()
	i := slices.IndexFunc(sp.plans, func(e *planEntry) bool { return e.rec.ID == id })
	if i < 0 {
		sp.mu.Unlock()
		return api.PlanRecord{}, fmt.Errorf("plan %s: %w", id, justrunit.ErrNotFound)
	}
	e := sp.plans[i]
	if e.rec.State != api.PlanPlanned {
		sp.mu.Unlock()
		return e.rec, fmt.Errorf("plan %s is %s already: %w; make a new one", id, e.rec.State, justrunit.ErrExists)
	}
	e.rec.State = api.PlanApplying // claimed: a second apply is refused
	sp.mu.Unlock()
	done, err := sp.site.ApplyPlan(ctx, e.plan, e.from)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err != nil {
		e.rec.State = api.PlanFailed
		e.rec.Error = fmt.Sprintf("%d of %d steps done: %v", len(done), len(e.plan.Steps), err)
		// The plan exists and was valid when made: a step the platform
		// refuses now conflicts with the site as it has become.
		return e.rec, &api.Error{Status: http.StatusConflict, Code: api.CodeConflict,
			Message: fmt.Sprintf("plan %s: %s; make a new plan", id, e.rec.Error)}
	}
	e.rec.State, e.rec.Applied = api.PlanApplied, time.Now()
	return e.rec, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

var _ api.SiteView = justrunit.Platform(nil)

// siteVerifier is the fidelity check over a running site (api.Verifier):
// it sets a study's on-line target to each point and measures it
// (siterun.Site.Verify), one verification at a time and never while one of
// the daemon's studies uses the site, and records an event per point.
type siteVerifier struct {
	store justrunit.Store
	// measure measures the on-line target at one point: siterun.Site.Verify.
	measure func(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, opts siterun.VerifyOptions) (siterun.Verification, error)
	// target returns nil when instance id can be measured on-line, else an
	// error wrapping ErrNotFound (not on the site) or ErrUnsupported (no
	// in-proxy).
	target func(id string) error
	// hostClass returns the class of instance id's host (for a study over
	// hostclass: siterun.OnClass); nil: the points are measured as given.
	hostClass func(ctx context.Context, id string) (string, error)
	log       *slog.Logger
	now       func() time.Time
	// managed is set when the daemon runs the manager: verifications are
	// refused (set before the daemon serves, read-only after).
	managed bool

	mu        sync.Mutex
	verifying string          // the study being verified; "" when none
	idle      chan struct{}   // closed when that verification ends
	studies   map[string]bool // the daemon's studies using the site
}

var _ api.Verifier = (*siteVerifier)(nil)

func newSiteVerifier(s *siterun.Site, store justrunit.Store, log *slog.Logger) *siteVerifier {
	return &siteVerifier{store: store, measure: s.Verify, hostClass: s.HostClass, log: orDefaultLogger(log), now: time.Now, studies: map[string]bool{},
		target: func(id string) error {
			if _, _, _, err := s.File.Instance(id); err != nil {
				return fmt.Errorf("study target: %w", err)
			}
			if _, ok := s.InProxy(id); !ok {
				return fmt.Errorf("study target %s: %w: it has no in_proxy in the site file, so its on-line response time cannot be measured", id, justrunit.ErrUnsupported)
			}
			return nil
		}}
}

func orDefaultLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// Verify implements api.Verifier.
func (v *siteVerifier) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, spec api.VerifySpec) ([]api.Verification, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := v.target(st.Target); err != nil {
		return nil, err
	}
	if err := v.begin(st.ID); err != nil {
		return nil, err
	}
	defer v.end()
	if err := v.checkIdle(ctx, st); err != nil {
		return nil, err
	}
	if v.hostClass != nil && st.Space.Param("hostclass") >= 0 {
		class, err := v.hostClass(ctx, st.Target)
		if err != nil {
			return nil, err
		}
		if spec.Points, err = siterun.OnClass(st.Space, spec.Points, class, spec.Defaulted); err != nil {
			return nil, err
		}
	}
	win := siterun.StudyWindow(st, spec.WarmUp, spec.Window)
	var out []api.Verification
	for i, p := range spec.Points {
		if spec.Progress != nil {
			spec.Progress(p)
		}
		res, err := v.measure(ctx, st, m, p, siterun.VerifyOptions{Window: win, Paired: spec.Paired})
		if err != nil {
			if len(res.Metrics) > 0 {
				// Measured, then failed (a restore after the window):
				// the measurement stands.
				out = append(out, verifications(st, res, v.now())...)
			}
			err = fmt.Errorf("verify %s on the on-line %s (%d of %d points done): %w", st.Space.Format(p), st.Target, i, len(spec.Points), err)
			v.record(ctx, &justrunit.Event{StudyID: st.ID, Kind: justrunit.EventVerifyFailed, Level: "error", Message: err.Error(),
				Data: map[string]any{"point": st.Space.Format(p)}})
			return out, err
		}
		vs := verifications(st, res, v.now())
		v.record(ctx, verifyEvent(st, vs))
		out = append(out, vs...)
	}
	return out, nil
}

// VerifyRefused says why this daemon verifies nothing (see api.Info), ""
// when it does.
func (v *siteVerifier) VerifyRefused() string {
	if v.managed {
		return "study verify: this daemon runs the manager (serve --manage), which acts on the on-line instances a check would set"
	}
	return ""
}

// begin claims the site for verifying study id.
func (v *siteVerifier) begin(id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.managed {
		return fmt.Errorf("verify study %s: %w: this daemon runs the manager (serve --manage), which acts on the on-line instances; verify with a daemon without --manage, or with \"study verify --site\" while no manager runs", id, api.ErrConflict)
	}
	if v.verifying != "" {
		return fmt.Errorf("verify study %s: %w: the on-line instance is being verified for study %s; try again when that has finished", id, api.ErrConflict, v.verifying)
	}
	if len(v.studies) > 0 {
		ids := slices.Sorted(maps.Keys(v.studies))
		return fmt.Errorf("verify study %s: %w: study %s is running on this site; verify once it has finished (or cancel it)", id, api.ErrConflict, strings.Join(ids, ", "))
	}
	v.verifying, v.idle = id, make(chan struct{})
	return nil
}

func (v *siteVerifier) end() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.verifying = ""
	close(v.idle)
}

// checkIdle refuses when a study on one of the site's instances is running
// in the store (another process's).
func (v *siteVerifier) checkIdle(ctx context.Context, st *justrunit.Study) error {
	if v.store == nil {
		return nil
	}
	all, err := v.store.Studies(ctx)
	if err != nil {
		return err
	}
	for _, x := range all {
		if x.ID != st.ID && x.State == justrunit.StudyRunning && v.target(x.Target) == nil {
			return fmt.Errorf("verify study %s: %w: study %s on %s is running (owner %s); verify once it has finished", st.ID, api.ErrConflict, x.ID, x.Target, orDefault(x.Owner, "unknown"))
		}
	}
	return nil
}

// studyStarted registers a study of the daemon's runner as using the site,
// waiting for a verification under way to end first.
func (v *siteVerifier) studyStarted(ctx context.Context, id string) error {
	for {
		v.mu.Lock()
		if v.verifying == "" {
			v.studies[id] = true
			v.mu.Unlock()
			return nil
		}
		idle := v.idle
		v.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

func (v *siteVerifier) studyEnded(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.studies, id)
}

// record stores an event, also when ctx has ended (the measurement was
// cancelled: that is worth recording too).
func (v *siteVerifier) record(ctx context.Context, ev *justrunit.Event) {
	if v.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := v.store.AddEvent(ctx, ev); err != nil {
		v.log.Warn("store event", "kind", ev.Kind, "study", ev.StudyID, "err", err)
	}
}

// verifications turns the site's comparison at one point into one
// api.Verification per metric.
func verifications(st *justrunit.Study, r siterun.Verification, now time.Time) []api.Verification {
	label := st.Space.Format(r.Point)
	out := make([]api.Verification, 0, len(r.Metrics))
	for k, mt := range r.Metrics {
		got, _ := r.Measured.Value(mt) // mt is one of the matrix's metrics
		c := r.Predicted[k]
		out = append(out, api.Verification{
			StudyID: st.ID, Point: r.Point, Label: label, Metric: mt,
			Predicted: c.Value, Provenance: c.Prov, Uncertainty: c.Uncertainty,
			Measured: got, RelError: r.RelError[k], Threshold: st.CheckThreshold,
			Within: c.Prov != justrunit.Empty && checker.Passes(got, c.Value, st.CheckThreshold),
			Window: r.Measured.Window, Samples: r.Measured.Samples, Source: r.Measured.Source, Time: now,
		})
		if r.Sandbox != nil {
			sb, _ := r.Sandbox.Value(mt)
			out[k].Sandbox, out[k].SandboxRelError = &sb, &r.SandboxRelError[k]
		}
	}
	return out
}

// verifyEvent is the event recorded for one point's verifications: level
// warn when a metric missed the threshold.
func verifyEvent(st *justrunit.Study, vs []api.Verification) *justrunit.Event {
	ev := &justrunit.Event{StudyID: st.ID, Kind: justrunit.EventVerifyDone, Level: "info"}
	if len(vs) == 0 {
		ev.Message = "on-line verification measured no metric"
		return ev
	}
	var b strings.Builder
	outside := 0
	for i, x := range vs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %.3g on-line vs %.3g %s (%.1f%%)", x.Metric, x.Measured, x.Predicted, x.Provenance, 100*x.RelError)
		if x.Sandbox != nil {
			fmt.Fprintf(&b, ", %.3g on a clone over the same requests (%.1f%%)", *x.Sandbox, 100**x.SandboxRelError)
		}
		if !x.Within {
			outside++
		}
	}
	verdict := fmt.Sprintf("all within the %g%% check threshold", 100*st.CheckThreshold)
	if outside > 0 {
		ev.Level = "warn"
		verdict = fmt.Sprintf("%d of %d outside the %g%% check threshold", outside, len(vs), 100*st.CheckThreshold)
	}
	ev.Message = fmt.Sprintf("on-line %s at %s (%d samples over %v): %s; %s", st.Target, vs[0].Label, vs[0].Samples, time.Duration(vs[0].Window).Round(100*time.Millisecond), b.String(), verdict)
	ev.Data = map[string]any{"point": vs[0].Label, "verifications": vs}
	return ev
}
