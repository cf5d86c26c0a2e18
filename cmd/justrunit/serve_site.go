package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

func init() { startSite = startSiteRuntime }

// startSiteRuntime launches the site file's instances and proxies for the
// daemon and gives it their experimenter and hosts; with manage > 0 it also
// runs the manager at that interval and serves its samples and plans.
func startSiteRuntime(ctx context.Context, g *globals, path string, set *metrics.Set, manage time.Duration) (*daemonSite, error) {
	f, err := site.Load(path)
	if err != nil {
		return nil, err
	}
	s, err := siterun.Up(ctx, f, siterun.Options{StateDir: filepath.Join(g.dataDir, "platform", f.Platform), Logger: g.logger, Metrics: set})
	if err != nil {
		return nil, err
	}
	ds := &daemonSite{
		View: s.Platform, // Hosts and Instances
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			x, err := s.PrepareStudy(ctx, st, siterun.StudyOptions{})
			if err != nil {
				return nil, nil, err
			}
			return x.Engine.Runner, closerFunc(func() error { return x.Close(context.Background()) }), nil
		},
		Close: func() error { return s.Close(context.Background()) },
	}
	if manage <= 0 {
		return ds, nil
	}
	tl := &manager.Timeline{}
	mgr, err := manager.New(manager.Config{Site: s, Interval: manage, WarmUp: manage / 4, Window: manage / 2,
		Logger: g.logger, OnSample: tl.AddSample, OnEvent: tl.AddEvent})
	if err != nil {
		s.Close(context.Background())
		return nil, err
	}
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
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
	ds.View = &managedView{Platform: s.Platform, tl: tl, interval: manage, slas: slas}
	ds.Planner = &sitePlanner{p: s.Platform}
	ds.Close = func() error {
		stop()
		<-done
		return s.Close(context.Background())
	}
	return ds, nil
}

// managedView is the site as the daemon shows it when the manager runs:
// hosts and instances from the platform, and the monitor's samples.
type managedView struct {
	justrunit.Platform
	tl       *manager.Timeline
	interval time.Duration
	slas     map[string]justrunit.SLA
}

var _ api.ServiceSampler = (*managedView)(nil)

// ServiceSamples returns the monitor's samples that started at or after since.
func (v *managedView) ServiceSamples(ctx context.Context, since time.Time) ([]api.ServiceSample, error) {
	var out []api.ServiceSample
	for _, s := range v.tl.SamplesSince(since) {
		sla := v.slas[s.Service]
		out = append(out, api.ServiceSample{Service: s.Service, Start: s.Start, Interval: justrunit.Duration(v.interval),
			RTMean: s.MeanMs, Requests: s.Requests, SLA: &sla})
	}
	return out, nil
}

// sitePlanner makes dry-run placement plans of the site as it runs now and
// applies them on request.
type sitePlanner struct {
	p     justrunit.Platform
	mu    sync.Mutex
	seq   int
	plans []*planEntry
}

type planEntry struct {
	rec  api.PlanRecord
	plan planner.Plan
}

var _ api.Planner = (*sitePlanner)(nil)

func (sp *sitePlanner) Plan(ctx context.Context) (api.PlanRecord, error) {
	hosts, err := sp.p.Hosts(ctx)
	if err != nil {
		return api.PlanRecord{}, err
	}
	insts, err := sp.p.Instances(ctx)
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
	e := &planEntry{plan: plan, rec: api.PlanRecord{ID: fmt.Sprintf("p%d", sp.seq), Created: time.Now(), Summary: plan.Summary(), Plan: plan}}
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
	if !e.rec.Applied.IsZero() || e.rec.Error != "" {
		sp.mu.Unlock()
		return e.rec, fmt.Errorf("plan %s was applied already: %w; make a new one", id, justrunit.ErrExists)
	}
	e.rec.Applied = time.Now() // claimed: a second apply is refused
	sp.mu.Unlock()
	done, err := planner.Apply(ctx, e.plan, sp.p)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err != nil {
		e.rec.Error = fmt.Sprintf("%d of %d steps done: %v", len(done), len(e.plan.Steps), err)
		return e.rec, err
	}
	return e.rec, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

var _ api.SiteView = justrunit.Platform(nil)
