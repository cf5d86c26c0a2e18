package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/store/sqlite"
	"github.com/justrunit/justrunit/study"
)

func init() { addCommand(newStudyCmd) }

func newStudyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "study",
		Short: "Plan, run and inspect studies",
		Long: `A study runs experiments on a clone of one instance at some points of a parameter
space within a time bound, interpolates the rest and stores the matrix.`,
	}
	cmd.AddCommand(newStudyValidateCmd(g), newStudyRunCmd(g), newStudyVerifyCmd(g), newStudyListCmd(g), newStudyShowCmd(g), newStudyExportCmd(g))
	return cmd
}

func newStudyValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE.yaml",
		Short: "Check a study file and show what it would run",
		Example: `  justrunit study validate study.yaml
  # study.yaml:
  #   target: app0            # an instance id of the site
  #   parameters: ["cpu=20..100 step 10"]
  #   sla: rt_p95<=50
  #   time_bound: 5m
  #   warm_up: 5s
  #   window: 20s
  #   strategy: sla`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, yf, err := loadStudyFile(args[0])
			if err != nil {
				return err
			}
			st, err := f.study(yf)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "target:      %s\n", st.Target)
			for _, p := range st.Space.Params {
				vals := make([]string, len(p.Values))
				for i, v := range p.Values {
					vals[i] = p.Format(v)
				}
				fmt.Fprintf(w, "parameter:   %s = %s %s\n", p.Name, strings.Join(vals, ","), p.Unit)
			}
			fmt.Fprintf(w, "points:      %d\n", st.Space.Size())
			fmt.Fprintf(w, "experiment:  %v warm-up + %v window of at least %d responses\n", st.WarmUp, st.Window, siterun.MinSamples(st))
			// The engine's own figures: what the bound holds, and how far
			// past it the experiments' overhead may run the study.
			room := "more where windows end early"
			if n := study.Budget(st); n >= st.Space.Size() {
				room = fmt.Sprintf("as many as the space's %d points: the bound does not limit the study", st.Space.Size())
			}
			fmt.Fprintf(w, "time bound:  %v, %d slot(s): room for %d experiments of %v (%s)\n",
				st.TimeBound, st.Slots, study.Budget(st), st.ExperimentLength(), room)
			fmt.Fprintf(w, "             what they take beyond warm-up + window may run the study up to %v past its bound\n", study.Grace(st))
			if st.SLA != nil {
				fmt.Fprintf(w, "sla:         %s\n", st.SLA)
			}
			fmt.Fprintf(w, "strategy:    %s, interpolator %s, check threshold %g\n", api.StrategyFor(st), orDefault(st.Interpolator, api.DefaultInterpolator), st.CheckThreshold)
			return nil
		},
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func newStudyRunCmd(g *globals) *cobra.Command {
	var sitePath, studyPath string
	var trafficWait time.Duration
	cmd := &cobra.Command{
		Use:   "run --site SITE.yaml --study STUDY.yaml",
		Short: "Run a study on an instance of a site",
		Long: `Run a study: clone the target instance into the sandbox, feed the clone a copy
of the live traffic through the instance's in-proxy, answer its next-tier calls
from the out-proxy's record, measure it at the points the strategy picks within
the time bound, interpolate the rest, and store the matrix.

Without --site the study runs in the daemon ("justrunit serve --site"), which
keeps the site up; this command posts it, follows it and prints the matrix
(Ctrl-C cancels it). With --site it runs in this process: it brings the site up
(instances and proxies), waits for live traffic to reach the target's in-proxy,
runs the study, and stops the site again. Point your clients (or a load
generator) at the site's front tier once it says it is up.`,
		Example: `  justrunit study run --study study.yaml      # in the running daemon
  justrunit study run --site examples/auction/site.yaml --study examples/auction/study.yaml
  # in another terminal, once the site is up:
  go run ./examples/auction load --target http://127.0.0.1:8080 --rate 60 --duration 0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStudy(cmd, g, sitePath, studyPath, trafficWait)
		},
	}
	cmd.Flags().StringVar(&sitePath, "site", "", "site file: run in this process (without it, run in the daemon)")
	cmd.Flags().StringVar(&studyPath, "study", "", "study file (required)")
	cmd.Flags().DurationVar(&trafficWait, "wait-traffic", 2*time.Minute, "how long to wait for live traffic at the target's in-proxy")
	cmd.MarkFlagRequired("study")
	return cmd
}

func runStudy(cmd *cobra.Command, g *globals, sitePath, studyPath string, trafficWait time.Duration) error {
	ctx := cmd.Context()
	f, yf, err := loadStudyFile(studyPath)
	if err != nil {
		return err
	}
	st, err := f.study(yf)
	if err != nil {
		return err
	}
	if sitePath == "" {
		c, err := api.Discover(ctx, api.DiscoverOptions{DataDir: g.dataDir})
		if err != nil {
			return fmt.Errorf("study run: no --site and no daemon to run the study in (%w); start \"justrunit serve --site SITE.yaml\" or give --site", err)
		}
		return runStudyOnDaemon(cmd, c, f)
	}
	store, err := openStore(ctx, g)
	if err != nil {
		return err
	}
	defer store.Close()
	s, stop, err := upSite(cmd, g, sitePath, studyPath, st.Target, trafficWait)
	if err != nil {
		return err
	}
	defer stop()
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "Studying %s over %d points (%s strategy, time bound %v)...\n", st.Target, st.Space.Size(), api.StrategyFor(st), st.TimeBound)
	m, err := s.RunStudy(ctx, st, siterun.StudyOptions{Store: store, Owner: sqlite.OwnerID(), Progress: func(p study.Progress) { printProgress(w, p) }})
	if m != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "\nStudy %s: %s\n", st.ID, st.State)
		if rerr := m.Render(cmd.OutOrStdout()); rerr != nil {
			return rerr
		}
		if st.SLA != nil {
			if p, ok, lerr := driver.LeastPassing(m, *st.SLA, ""); lerr == nil && ok {
				fmt.Fprintf(cmd.OutOrStdout(), "Least measured allocation meeting %s: %s\n", st.SLA, st.Space.Format(p))
			} else if lerr == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "No measured allocation meets %s.\n", st.SLA)
			}
		}
	}
	return err
}

// upSite brings the site in sitePath up in this process for work on its
// instance target (named by ref, e.g. the study file) and waits for live
// traffic to pass the target's in-proxy. Call stop when done: it stops the
// site again.
func upSite(cmd *cobra.Command, g *globals, sitePath, ref, target string, trafficWait time.Duration) (s *siterun.Site, stop func(), err error) {
	ctx := cmd.Context()
	sf, err := site.Load(sitePath)
	if err != nil {
		return nil, nil, err
	}
	in, _, _, err := sf.Instance(target)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: target: %w", ref, err)
	}
	if in.InProxy == nil {
		return nil, nil, fmt.Errorf("%s: target %s has no in_proxy in %s: no proxy sees its live traffic", ref, target, sitePath)
	}
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "Bringing site %s up...\n", sitePath)
	stateDir := platformStateDir(g, sf.Platform)
	setCleanupHint(gcCommand(g, sf.Platform, stateDir))
	s, err = siterun.Up(ctx, sf, siterun.Options{StateDir: stateDir, Logger: g.logger})
	if err != nil {
		return nil, nil, err
	}
	stop = func() {
		fmt.Fprintln(w, "Stopping the site...")
		if cerr := s.Close(context.WithoutCancel(ctx)); cerr != nil {
			fmt.Fprintln(w, "error stopping the site:", cerr)
		}
	}
	fmt.Fprintf(w, "Site up. Waiting for live traffic at %s (the in-proxy of %s)...\n", in.InProxy.Listen, target)
	feed, _ := s.InProxy(target)
	if err := waitTraffic(ctx, func() int64 { return feed.Stats().Online.Count }, trafficWait); err != nil {
		stop()
		return nil, nil, err
	}
	return s, stop, nil
}

// runStudyOnDaemon posts the study to the daemon, follows it until it ends
// (cancelling it on Ctrl-C) and prints its matrix.
func runStudyOnDaemon(cmd *cobra.Command, c *api.Client, f *studyFile) error {
	ctx := cmd.Context()
	req := api.StudyRequest{Name: f.Name, Target: f.Target, Parameters: f.Parameters, SLA: f.SLA, TimeBound: f.TimeBound,
		WarmUp: f.WarmUp, Window: f.Window, Slots: f.Slots, Strategy: f.Strategy, Interpolator: f.Interpolator, CheckThreshold: f.CheckThreshold,
		MinSamples: f.MinSamples}
	for _, m := range f.Metrics {
		req.Metrics = append(req.Metrics, justrunit.Metric(m))
	}
	// The post runs to its answer even when Ctrl-C comes meanwhile: the
	// daemon may have stored the study, and only its ID lets it be
	// cancelled.
	st, err := c.CreateStudy(context.WithoutCancel(ctx), req)
	if err != nil {
		return err
	}
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "Study %s posted to the daemon.\n", st.ID)
	id, last := st.ID, ""
	poll := time.NewTicker(daemonPollInterval)
	defer poll.Stop()
	var failingSince time.Time // the first of the polls failing in a row
	for {
		select {
		case <-ctx.Done():
			return cancelOnDaemon(ctx, w, c, id)
		case <-poll.C:
		}
		cur, err := c.Study(ctx, id)
		if ctx.Err() != nil { // Ctrl-C during the poll
			return cancelOnDaemon(ctx, w, c, id)
		}
		if err != nil {
			// The study runs on in the daemon whatever happens to a
			// poll: a daemon busy or restarting, or a network hiccup,
			// must not end the command while it does.
			switch {
			case isNotFound(err): // the study is gone: nothing to follow
				return err
			case !pollRetryable(err):
				return lostStudy(id, err)
			case failingSince.IsZero():
				failingSince = time.Now()
				fmt.Fprintf(w, "Cannot read study %s from the daemon (%v); trying again for up to %v...\n", id, err, daemonPollGiveUp)
			case time.Since(failingSince) >= daemonPollGiveUp:
				return lostStudy(id, fmt.Errorf("reads failing for %v, the last: %w", time.Since(failingSince).Round(time.Second), err))
			}
			continue
		}
		if !failingSince.IsZero() {
			fmt.Fprintf(w, "Study %s read again.\n", id)
			failingSince = time.Time{}
		}
		st = cur
		if line := fmt.Sprintf("%s: %d experiments", st.State, st.Experiments); line != last {
			fmt.Fprintln(w, line)
			last = line
		}
		if st.State != justrunit.StudyPending && st.State != justrunit.StudyRunning {
			break
		}
	}
	e, err := loadExport(ctx, c, st.ID)
	if err != nil {
		return err
	}
	if err := e.render(cmd.OutOrStdout()); err != nil {
		return err
	}
	if st.State != justrunit.StudyDone {
		return fmt.Errorf("study %s %s: %s", st.ID, st.State, st.Error)
	}
	return nil
}

// daemonPollInterval is how often "study run" reads its study from the
// daemon, and daemonPollGiveUp how long the reads may fail in a row before
// it stops following the study (variables, for tests).
var (
	daemonPollInterval = time.Second
	daemonPollGiveUp   = 30 * time.Second
)

// pollRetryable reports whether a failed read of a study from the daemon
// may succeed if tried again: not when the study is gone, the daemon
// refuses the token or the call.
func pollRetryable(err error) bool {
	return !isNotFound(err) && !errors.Is(err, api.ErrUnauthorized) && !errors.Is(err, api.ErrForbidden) &&
		!errors.Is(err, justrunit.ErrInvalid)
}

// lostStudy is the error of "study run" when it cannot follow study id on
// the daemon any more: the study may run on, and it says how to follow and
// cancel it.
func lostStudy(id string, err error) error {
	return fmt.Errorf("study %s: lost track of it on the daemon: %w; it may still be running there: "+
		"follow it with \"justrunit study show %s\", cancel it with POST %s/studies/%s/cancel", id, err, id, api.Prefix, id)
}

// cancelStudyTimeout bounds the call that cancels a study on Ctrl-C.
const cancelStudyTimeout = 10 * time.Second

// cancelOnDaemon cancels study id after ctx (the command's) ended, with a
// context of its own, and returns ctx's error joined with the cancel's.
func cancelOnDaemon(ctx context.Context, w io.Writer, c *api.Client, id string) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelStudyTimeout)
	defer cancel()
	err := c.CancelStudy(cctx, id)
	switch {
	case errors.Is(err, api.ErrConflict): // it ended meanwhile
		fmt.Fprintf(w, "Study %s had already ended: %v\n", id, err)
	case err != nil:
		return errors.Join(ctx.Err(), fmt.Errorf("cancel study %s: %w; cancel it with POST %s/studies/%s/cancel", id, err, api.Prefix, id))
	default:
		fmt.Fprintf(w, "Study %s cancelled.\n", id)
	}
	return ctx.Err()
}

// waitTraffic waits until count grows, i.e. live requests pass the proxy.
func waitTraffic(ctx context.Context, count func() int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := count()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("no live traffic reached the target's in-proxy in %v: point the clients at it, or raise --wait-traffic", timeout)
			}
			return ctx.Err()
		case <-t.C:
			if count() > start {
				return nil
			}
		}
	}
}

func printProgress(w io.Writer, p study.Progress) {
	var b strings.Builder
	fmt.Fprintf(&b, "[%d/%d done]", p.Done, max(p.Planned, p.Done))
	for _, pt := range p.Running {
		fmt.Fprintf(&b, " measuring %s;", p.Study.Space.Format(pt))
	}
	if p.TimeLeft > 0 || p.GraceLeft <= 0 {
		fmt.Fprintf(&b, " %v of %v left", p.TimeLeft.Round(time.Second), p.Study.TimeBound)
	} else {
		fmt.Fprintf(&b, " past the %v bound: the last experiments end within %v", p.Study.TimeBound, p.GraceLeft.Round(time.Second))
	}
	if o := p.Last; o != nil {
		offered := ""
		if o.Offered > 0 {
			offered = fmt.Sprintf(" of %.1f offered", o.Offered)
		}
		if o.Saturated {
			offered += " (saturated)"
		}
		fmt.Fprintf(&b, "; last %s: p95 %.1f ms, mean %.1f ms, %.1f req/s%s, match rate %.2f, %d samples (%s)",
			p.Study.Space.Format(o.Point), o.RT.P95, o.RT.Mean, o.Throughput, offered, o.MatchRate, o.Samples, o.Stop)
	}
	fmt.Fprintln(w, b.String())
}

// openStore opens the study store in the data directory and marks studies
// whose process died as interrupted, so they are not shown as running.
func openStore(ctx context.Context, g *globals) (*sqlite.Store, error) {
	s, err := sqlite.Open(ctx, filepath.Join(g.dataDir, "justrunit.db"))
	if err != nil {
		return nil, err
	}
	if _, err := s.RecoverInterrupted(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func newStudyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List stored studies, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, closeR, err := openReader(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer closeR()
			studies, err := s.Studies(cmd.Context())
			if err != nil {
				return err
			}
			if len(studies) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "No studies.")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTARGET\tSTATE\tPOINTS\tEXPERIMENTS\tSTRATEGY\tCREATED")
			for _, st := range studies {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", st.ID, st.Target, st.State, st.Space.Size(), st.Experiments,
					st.Strategy, st.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func newStudyShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a study: its settings, matrix (X/I/T/V) and checks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, closeR, err := openReader(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer closeR()
			e, err := loadExport(cmd.Context(), s, args[0])
			if err != nil {
				return err
			}
			return e.render(cmd.OutOrStdout())
		},
	}
}

func newStudyExportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export ID",
		Short: "Write a study with its matrix, observations, checks and events as JSON",
		Long: `Write a study as one JSON document: the study, its matrix, every observation,
check result and event. "justrunit matrix show FILE" renders the file's matrix.`,
		Example: `  justrunit study export s-20261125-130501-ab12 -o study.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, closeR, err := openReader(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer closeR()
			e, err := loadExport(cmd.Context(), s, args[0])
			if err != nil {
				return err
			}
			var w io.Writer = cmd.OutOrStdout()
			if out != "" && out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(e)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "-", "file to write, - for standard output")
	return cmd
}

// studyExport is the JSON document "study export" writes.
type studyExport struct {
	Study        *justrunit.Study        `json:"study"`
	Matrix       *justrunit.Matrix       `json:"matrix,omitempty"`
	Observations []justrunit.Observation `json:"observations"`
	Checks       []justrunit.CheckResult `json:"checks"`
	Events       []justrunit.Event       `json:"events"`
}

// loadExport reads a study and everything recorded about it, in one read
// of the store where the reader offers it (api.LoadExport): a study that
// runs meanwhile is seen at one moment, its matrix agreeing with its
// observations.
func loadExport(ctx context.Context, s api.Reader, id string) (*studyExport, error) {
	e, err := api.LoadExport(ctx, s, id)
	if isNotFound(err) {
		// In words of its own: the store's and the daemon's errors name
		// the study too, and wrapping them would name it twice.
		return nil, fmt.Errorf("study %s: %w (see \"justrunit study list\")", id, justrunit.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return (*studyExport)(e), nil
}

func (e *studyExport) render(w io.Writer) error {
	st := e.Study
	fmt.Fprintf(w, "Study %s on %s: %s", st.ID, st.Target, st.State)
	if st.Error != "" {
		fmt.Fprintf(w, " (%s)", st.Error)
	}
	fmt.Fprintf(w, "\n  strategy %s, interpolator %s, time bound %v, experiment %v+%v, %d slot(s), %d experiments\n",
		st.Strategy, st.Interpolator, st.TimeBound, st.WarmUp, st.Window, st.Slots, st.Experiments)
	if st.MinSamples > 0 {
		fmt.Fprintf(w, "  windows of at least %d responses\n", st.MinSamples)
	}
	if st.SLA != nil {
		fmt.Fprintf(w, "  sla %s\n", st.SLA)
	}
	fmt.Fprintln(w)
	if e.Matrix == nil {
		fmt.Fprintln(w, "No matrix yet.")
	} else if err := e.Matrix.Render(w); err != nil {
		return err
	}
	if len(e.Checks) > 0 {
		fmt.Fprintln(w, "\nChecks:")
		for _, c := range e.Checks {
			verdict := "passed"
			if !c.Passed {
				verdict = "FAILED"
			}
			if c.Reason != "" {
				fmt.Fprintf(w, "  %s %s: predicted %.3g, %s: %s\n", e.Study.Space.Format(c.Point), c.Metric, c.Predicted, verdict, c.Reason)
				continue
			}
			fmt.Fprintf(w, "  %s %s: predicted %.3g, measured %.3g, error %.1f%% (threshold %.1f%%) %s\n",
				e.Study.Space.Format(c.Point), c.Metric, c.Predicted, c.Measured, 100*c.RelError, 100*c.Threshold, verdict)
		}
	}
	if vs := eventVerifications(e.Events); len(vs) > 0 {
		fmt.Fprintln(w, "\nOn-line verifications (study verify):")
		if err := renderVerifications(w, vs); err != nil {
			return err
		}
		fmt.Fprintln(w, verifySummary(st, vs))
	}
	return nil
}
