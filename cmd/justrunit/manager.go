package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/manager/monitor"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

func init() { addCommand(newManagerCmd) }

func newManagerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the automated manager on a site",
	}
	var sitePath, svgPath string
	var interval, warmUp, window time.Duration
	var experiments int
	var dryRun bool
	run := &cobra.Command{
		Use:   "run --site SITE.yaml",
		Short: "Watch every service's SLA and respond to violations by experiment",
		Long: `Bring the site up and run the manager until interrupted: every interval it reads
each service's response time at its front in-proxy and compares it with the
service's SLA; on a violation it studies the service's bottleneck tier on a
clone, picks the least CPU share that meets the SLA (the checker verifies any
interpolated value it used), plans the placement of every instance (as few
powered hosts as possible, then as few migrations) and applies it through the
platform. With --timeline it writes the timeline as SVG on exit.`,
		Example: `  justrunit manager run --site site.yaml --interval 1m --timeline timeline.svg`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sf, err := site.Load(sitePath)
			if err != nil {
				return err
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			defer store.Close()
			s, err := siterun.Up(ctx, sf, siterun.Options{StateDir: filepath.Join(g.dataDir, "platform", sf.Platform), Logger: g.logger})
			if err != nil {
				return err
			}
			defer s.Close(context.WithoutCancel(ctx))
			w := cmd.ErrOrStderr()
			tl := &manager.Timeline{}
			mgr, err := manager.New(manager.Config{
				Site: s, Store: store, Interval: interval, WarmUp: warmUp, Window: window, Experiments: experiments,
				DryRun: dryRun, Logger: g.logger,
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
	f.IntVar(&experiments, "experiments", 3, "experiments per study (sets its time bound)")
	f.BoolVar(&dryRun, "dry-run", false, "show plans without applying them")
	f.StringVar(&svgPath, "timeline", "", "write the timeline as SVG to this file on exit")
	run.MarkFlagRequired("site")
	cmd.AddCommand(run)
	return cmd
}
