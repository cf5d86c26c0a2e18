package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/manager/monitor"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/store/sqlite"
)

func init() { addCommand(newManagerCmd) }

func newManagerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the automated manager on a site",
	}
	var sitePath, svgPath string
	var interval, warmUp, window time.Duration
	var experiments, reconsider int
	var headroom float64
	var dryRun bool
	run := &cobra.Command{
		Use:   "run --site SITE.yaml",
		Short: "Watch every service's SLA and respond to violations by experiment",
		Long: `Bring the site up and run the manager until interrupted: every interval it reads
each service's response time at its front in-proxy and compares it with the
service's SLA; on a violation it studies the service's bottleneck tier on a
clone, picks the least CPU share that meets the SLA less the time the service's other
tiers take and a headroom (the checker verifies any interpolated value it
used), plans the placement of every instance (as few
powered hosts as possible, then as few migrations) and applies it through the
platform. A service still over its SLA --reconsider intervals after a response
gets another one. With --timeline it writes the timeline as SVG on exit.`,
		Example: `  justrunit manager run --site site.yaml --interval 1m --timeline timeline.svg`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			// Everything is checked before the site comes up: a bad flag
			// must not surface at the first violation, hours later.
			if err := validateManagerRun(interval, warmUp, window, experiments, headroom, svgPath); err != nil {
				return err
			}
			sf, err := site.Load(sitePath)
			if err != nil {
				return err
			}
			if err := checkManagerWarmUp(sf, warmUp); err != nil {
				return err
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			defer store.Close()
			stateDir := platformStateDir(g, sf.Platform)
			setCleanupHint(gcCommand(g, sf.Platform, stateDir))
			s, err := siterun.Up(ctx, sf, siterun.Options{StateDir: stateDir, Logger: g.logger})
			if err != nil {
				return err
			}
			defer s.Close(context.WithoutCancel(ctx))
			w := cmd.ErrOrStderr()
			tl := &manager.Timeline{}
			mgr, err := manager.New(manager.Config{
				Site: s, Store: store, Owner: sqlite.OwnerID(), Interval: interval, WarmUp: warmUp, Window: window, Experiments: experiments,
				DryRun: dryRun, Logger: g.logger, Headroom: headroom, Reconsider: reconsider,
				OnSample: func(smp monitor.Sample) {
					tl.AddSample(smp)
					fmt.Fprintf(w, "interval %d  %s: %.1f (SLA %g) over %d requests, violated=%v\n", smp.Interval, smp.Service, smp.Value, smp.SLA, smp.Requests, smp.Violated)
				},
				OnEvent: func(e manager.Event) {
					tl.AddEvent(e)
					fmt.Fprintf(w, "[%s] %s\n", e.Kind, strings.ReplaceAll(e.Message, "\n", "\n  "))
				},
			})
			if err != nil {
				return err
			}
			defer mgr.Close()
			fmt.Fprintf(w, "Site up; managing %d service(s), interval %v. Ctrl-C stops.\n", len(mgr.Monitor().Services), interval)
			err = mgr.Run(ctx)
			if svgPath != "" {
				f, ferr := os.Create(svgPath)
				if ferr != nil {
					return errors.Join(err, ferr)
				}
				defer f.Close()
				err = errors.Join(err, tl.SVG(f, "JustRunIt manager: response time per interval"))
			}
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	f := run.Flags()
	f.StringVar(&sitePath, "site", "", "site file (required)")
	f.DurationVar(&interval, "interval", time.Minute, "monitoring interval")
	f.DurationVar(&warmUp, "warm-up", 15*time.Second, "warm-up of each experiment")
	f.DurationVar(&window, "window", 45*time.Second, "measurement window of each experiment")
	f.IntVar(&experiments, "experiments", defaultManagerExperiments, fmt.Sprintf("experiments per study (sets its time bound); 0 takes the default %d", defaultManagerExperiments))
	f.BoolVar(&dryRun, "dry-run", false, "show plans without applying them")
	f.Float64Var(&headroom, "headroom", manager.DefaultHeadroom,
		fmt.Sprintf("fraction of the SLA the decision keeps free, below 1; 0 takes the default %g, negative: none", manager.DefaultHeadroom))
	f.IntVar(&reconsider, "reconsider", manager.DefaultReconsider,
		fmt.Sprintf("intervals over the SLA after a response before responding again; 0 takes the default %d, negative: never", manager.DefaultReconsider))
	f.StringVar(&svgPath, "timeline", "", "write the timeline as SVG to this file on exit")
	run.MarkFlagRequired("site")
	cmd.AddCommand(run, newUpgradeCmd(g))
	return cmd
}

// defaultManagerExperiments is what manager.New takes for 0 experiments.
const defaultManagerExperiments = 3

// validateManagerRun checks "manager run"'s flags; errors name the flag.
func validateManagerRun(interval, warmUp, window time.Duration, experiments int, headroom float64, svgPath string) error {
	switch {
	case interval <= 0:
		return justrunit.Invalid("--interval", interval, "must be > 0, e.g. 1m")
	case warmUp < 0:
		return justrunit.Invalid("--warm-up", warmUp, "must not be negative")
	case window <= 0:
		return justrunit.Invalid("--window", window, "must be > 0, e.g. 45s")
	case experiments < 0:
		return justrunit.Invalid("--experiments", experiments, "must not be negative (0 takes the default %d)", defaultManagerExperiments)
	case math.IsNaN(headroom) || headroom >= 1:
		return justrunit.Invalid("--headroom", headroom, "must be below 1 (a fraction of the SLA; negative: none)")
	}
	if svgPath != "" {
		if fi, err := os.Stat(filepath.Dir(svgPath)); err != nil || !fi.IsDir() {
			return justrunit.Invalid("--timeline", svgPath, "its directory does not exist")
		}
	}
	return nil
}

// checkManagerWarmUp checks --warm-up against the in-proxy clone lag of
// each instance the manager would study (the bottleneck tier's first
// instance with an in-proxy, of each service with an SLA, as the manager
// picks it), before the site comes up, and refuses a service with an SLA
// and no tier to study; manager.New checks the same on the running site.
func checkManagerWarmUp(sf *site.Site, warmUp time.Duration) error {
	for i := range sf.Services {
		svc := &sf.Services[i]
		if svc.SLA == "" {
			continue
		}
		in, err := svc.BottleneckInstance()
		if err != nil {
			return err
		}
		if lag := in.Lag(); warmUp < lag {
			return justrunit.Invalid("--warm-up", warmUp, "must be at least the clone lag (%v) of the in-proxy of %s, which the manager studies for service %s: the first copies reach a clone that long after it is attached",
				lag, in.ID, svc.Name)
		}
	}
	return nil
}

func newUpgradeCmd(g *globals) *cobra.Command {
	var sitePath, target, slaFlag string
	var warmUp, window, trafficWait time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "upgrade --site SITE.yaml --target ID",
		Short: "Compare hardware classes for an instance by experiment",
		Long: `Bring the site up, wait for live traffic at the target's in-proxy, then run the
same experiment — the target at its current allocation under a copy of the live
load — on a clone on every powered sandbox host, each of its own class (the
class's freq_ghz is set on the clone; on the local platform it is emulated by
scaling CPU bandwidth, and the report says so). Prints throughput, response time
and energy per request side by side, with a recommendation: the class with the
least energy per request that meets the SLA.`,
		Example: `  justrunit manager upgrade --site site.yaml --target app0 --sla rt_p95<=50`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			switch {
			case warmUp < 0:
				return justrunit.Invalid("--warm-up", warmUp, "must not be negative")
			case window <= 0:
				return justrunit.Invalid("--window", window, "must be > 0, e.g. 30s")
			case trafficWait <= 0:
				return justrunit.Invalid("--wait-traffic", trafficWait, "must be > 0, e.g. 2m")
			}
			var sla *justrunit.SLA
			if slaFlag != "" {
				v, err := justrunit.ParseSLA(slaFlag)
				if err != nil {
					return err
				}
				sla = &v
			}
			sf, err := site.Load(sitePath)
			if err != nil {
				return err
			}
			if _, _, _, err := sf.Instance(target); err != nil {
				return justrunit.Invalid("--target", target, "no such instance in %s", sitePath)
			}
			stateDir := platformStateDir(g, sf.Platform)
			setCleanupHint(gcCommand(g, sf.Platform, stateDir))
			s, err := siterun.Up(ctx, sf, siterun.Options{StateDir: stateDir, Logger: g.logger})
			if err != nil {
				return err
			}
			defer s.Close(context.WithoutCancel(ctx))
			feed, ok := s.InProxy(target)
			if !ok {
				return justrunit.Invalid("--target", target, "has no in_proxy in the site: its live traffic cannot be copied")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Site up. Waiting for live traffic at the in-proxy of %s...\n", target)
			if err := waitTraffic(ctx, func() int64 { return feed.Stats().Online.Count }, trafficWait); err != nil {
				return err
			}
			rep, err := manager.EvaluateUpgrade(ctx, s, target, sla, warmUp, window)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.Render(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&sitePath, "site", "", "site file (required)")
	f.StringVar(&target, "target", "", "instance to evaluate (required)")
	f.StringVar(&slaFlag, "sla", "", "SLA the recommendation must meet, e.g. rt_p95<=50")
	f.DurationVar(&warmUp, "warm-up", 10*time.Second, "warm-up of each experiment")
	f.DurationVar(&window, "window", 30*time.Second, "measurement window of each experiment")
	f.DurationVar(&trafficWait, "wait-traffic", 2*time.Minute, "how long to wait for live traffic")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.MarkFlagRequired("site")
	cmd.MarkFlagRequired("target")
	return cmd
}
