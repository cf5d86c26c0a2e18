package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
)

// verifyOptions are the flags of "study verify".
type verifyOptions struct {
	at          []string
	warmUp      time.Duration
	window      time.Duration
	asJSON      bool
	paired      bool
	sitePath    string
	trafficWait time.Duration
}

// verifyCallMargin is added to each point's warm-up and window to bound a
// call to the daemon (setting and restoring the allocation, the answer).
const verifyCallMargin = time.Minute

func newStudyVerifyCmd(g *globals) *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify ID [--at POINT]...",
		Short: "Check a study's answers on the on-line instance: set it to points, measure, compare",
		Long: `Check how far a study's matrix is from the real thing (the fidelity check): set the
on-line target instance to a point of the study's space, measure it through its
in-proxy under the same live load for a warm-up and a window, restore its
allocation, and compare with the study's cell at that point — for each point in
turn and every metric of the study. It prints the predicted value with its
provenance (X measured on a clone, I/T interpolated, V re-measured by the
checker), the on-line value, the relative error and whether it is within the
study's check threshold, and records an event per point (see "study show").

The prediction was measured minutes or days earlier, under other requests, on a
machine whose speed moves; a miss can be that drift rather than the sandbox's
error. --paired tells them apart: it also clones the target into the sandbox,
sets the clone to the same point and measures it over the same live requests as
the on-line window (both for the whole window, no early stop). The SANDBOX
column is that clone's value, and its error is the sandbox's own; the
difference between PREDICTED and SANDBOX is drift since the study. It needs a
free sandbox host.

This changes the on-line instance's allocation on purpose, one point at a time;
pick points the service can afford. Without --at it measures three points: a
quarter, half and three quarters along every parameter of the space (on
cpu=20..100 step 10: cpu=40, 60 and 80); for a study with an SLA the least
measured allocation meeting it replaces the nearest of those, since a decision
rests on it.

Without --site the daemon ("justrunit serve --site") measures, on the site it
keeps up; it refuses while one of its studies runs. With --site it runs in this
process: it brings the site up, waits for live traffic at the target's in-proxy,
verifies and stops the site again; it reads the study from, and records the
verifications in, the store in --data-dir.`,
		Example: `  justrunit study verify s-20261125-130501-ab12
  justrunit study verify s-20261125-130501-ab12 --at cpu=40 --at cpu=60 --warm-up 4s --window 8s
  justrunit study verify s-20261125-130501-ab12 --at cpu=40,freq=1.8 --json
  justrunit study verify s-20261125-130501-ab12 --at cpu=60 --paired
  justrunit study verify s-20261125-130501-ab12 --site examples/auction/site.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.at, "at", nil, "a point to verify, NAME=VALUE[,NAME=VALUE...]; repeat for more (default: three spread over the space)")
	f.DurationVar(&o.warmUp, "warm-up", 0, "warm-up before each measurement (default the study's)")
	f.DurationVar(&o.window, "window", 0, "measurement window at each point (default the study's)")
	f.BoolVar(&o.asJSON, "json", false, "print the verifications as JSON")
	f.BoolVar(&o.paired, "paired", false, "also measure a clone at each point over the same live requests (tells drift since the study from the sandbox's error)")
	f.StringVar(&o.sitePath, "site", "", "site file: verify in this process (without it, in the daemon)")
	f.DurationVar(&o.trafficWait, "wait-traffic", 2*time.Minute, "with --site, how long to wait for live traffic at the target's in-proxy")
	return cmd
}

// spec turns the flags into what to verify on st, as the API's request
// would (api.VerifyRequest.Spec); errors name the flag.
func (o *verifyOptions) spec(cmd *cobra.Command, st *justrunit.Study, m *justrunit.Matrix) (api.VerifySpec, error) {
	q := api.VerifyRequest{Points: o.at, Paired: o.paired}
	if cmd.Flags().Changed("warm-up") {
		q.WarmUp = o.warmUp.String()
	}
	if cmd.Flags().Changed("window") {
		q.Window = o.window.String()
	}
	spec, err := q.Spec(st, m)
	if fe := (*justrunit.FieldError)(nil); errors.As(err, &fe) {
		flag := map[string]string{"warm_up": "--warm-up", "window": "--window"}[fe.Field]
		if strings.HasPrefix(fe.Field, "points[") {
			flag = "--at"
		}
		if flag != "" {
			return spec, &justrunit.FieldError{Field: flag, Value: fe.Value, Msg: fe.Msg}
		}
	}
	return spec, err
}

func runVerify(cmd *cobra.Command, g *globals, id string, o *verifyOptions) error {
	ctx := cmd.Context()
	var rd api.Reader
	var c *api.Client
	var store justrunit.Store
	if o.sitePath == "" {
		var err error
		if c, err = api.Discover(ctx, api.DiscoverOptions{DataDir: g.dataDir}); err != nil {
			if errors.Is(err, api.ErrNoDaemon) {
				return fmt.Errorf("study verify: no --site and no daemon to verify in (%w); start \"justrunit serve --site SITE.yaml\" or give --site", err)
			}
			return err
		}
		rd = c
	} else {
		s, err := openStore(ctx, g)
		if err != nil {
			return err
		}
		defer s.Close()
		rd, store = s, s
	}
	st, err := rd.Study(ctx, id)
	if err != nil {
		return fmt.Errorf("study %s: %w (see \"justrunit study list\")", id, err)
	}
	m, err := rd.Matrix(ctx, id)
	if err != nil && !isNotFound(err) {
		return err
	}
	if err := api.CheckVerifiable(st, m); err != nil {
		return err
	}
	spec, err := o.spec(cmd, st, m)
	if err != nil {
		return err
	}
	w := cmd.ErrOrStderr()
	spec.Progress = func(p justrunit.Point) {
		paired := ""
		if spec.Paired {
			paired = ", paired with a clone"
		}
		fmt.Fprintf(w, "Verifying %s on the on-line %s (%v warm-up + %v window%s)...\n", st.Space.Format(p), st.Target, spec.WarmUp, spec.Window, paired)
	}
	var vs []api.Verification
	if c != nil {
		vs, err = verifyOnDaemon(ctx, c, st, spec)
	} else {
		vs, err = verifyInProcess(cmd, g, store, st, m, spec, o)
	}
	if errors.Is(err, justrunit.ErrNotRestored) {
		defer fmt.Fprint(w, notRestoredWarning(st, spec, o.sitePath))
	}
	out := cmd.OutOrStdout()
	if o.asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(orEmptyList(vs)); jerr != nil {
			return errors.Join(err, jerr)
		}
		return err
	}
	if len(vs) > 0 {
		if rerr := renderVerifications(out, vs); rerr != nil {
			return errors.Join(err, rerr)
		}
		fmt.Fprintln(out, verifySummary(st, vs))
	}
	return err
}

// notRestoredWarning is what "study verify" prints, after the points it
// measured and before the error, when the on-line target could not be set
// back to its allocation (justrunit.ErrNotRestored): the error says where
// it is left and what it should have; this says that it matters and how to
// set it back. With --site the site was this command's and is stopped.
func notRestoredWarning(st *justrunit.Study, spec api.VerifySpec, sitePath string) string {
	bar := strings.Repeat("!", 72)
	if sitePath != "" {
		return fmt.Sprintf("%s\nWARNING: the on-line %s was NOT set back to its allocation after a check: it ran at\nthe check's (see the error below) until this command stopped the site of %s.\n%s\n",
			bar, st.Target, sitePath, bar)
	}
	point := "POINT"
	if len(spec.Points) > 0 {
		point = st.Space.Format(spec.Points[0])
	}
	return fmt.Sprintf(`%s
WARNING: the on-line %s is NOT at its allocation: the check could not set it back, and it
serves live traffic at the allocation the error below names until it is set back. Either
  - check it again once the platform can set it: "justrunit study verify %s --at %s"
    (the daemon sets it back before it checks, and refuses the check if it cannot), or
  - restart the daemon ("justrunit serve --site SITE.yaml"): it launches %s again with
    the site file's allocation.
%s
`, bar, st.Target, st.ID, point, st.Target, bar)
}

// verifyOnDaemon asks the daemon to verify one point per call, so that each
// call is bounded by its own measurement and progress shows between them.
func verifyOnDaemon(ctx context.Context, c *api.Client, st *justrunit.Study, spec api.VerifySpec) ([]api.Verification, error) {
	var out []api.Verification
	for _, p := range spec.Points {
		spec.Progress(p)
		cctx, cancel := context.WithTimeout(ctx, spec.WarmUp+spec.Window+verifyCallMargin)
		got, err := c.Verify(cctx, st.ID, api.VerifyRequest{Points: []string{st.Space.Format(p)}, WarmUp: spec.WarmUp.String(), Window: spec.Window.String(), Paired: spec.Paired})
		cancel()
		out = append(out, got...) // on an error, what the point measured, if anything
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// verifyInProcess brings the site up, verifies and stops it again.
func verifyInProcess(cmd *cobra.Command, g *globals, store justrunit.Store, st *justrunit.Study, m *justrunit.Matrix, spec api.VerifySpec, o *verifyOptions) ([]api.Verification, error) {
	s, stop, err := upSite(cmd, g, o.sitePath, "study "+st.ID, st.Target, o.trafficWait)
	if err != nil {
		return nil, err
	}
	defer stop()
	return newSiteVerifier(s, store, g.logger).Verify(cmd.Context(), st, m, spec)
}

// renderVerifications writes a table: a line per point and metric.
func renderVerifications(w io.Writer, vs []api.Verification) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	paired := slices.ContainsFunc(vs, func(v api.Verification) bool { return v.Sandbox != nil })
	header := "POINT\tMETRIC\tPREDICTED (PROV)\tON-LINE\tERROR\tWITHIN THRESHOLD\tSAMPLES (WINDOW)"
	if paired {
		header += "\tSANDBOX (ERROR)"
	}
	fmt.Fprintln(tw, header)
	for _, v := range vs {
		pred := "none (.)"
		switch {
		case v.Provenance == justrunit.Empty:
		case v.Uncertainty > 0:
			pred = fmt.Sprintf("%s±%s (%s)", formatNum(v.Predicted), formatNum(v.Uncertainty), v.Provenance)
		default:
			pred = fmt.Sprintf("%s (%s)", formatNum(v.Predicted), v.Provenance)
		}
		within := "yes"
		if !v.Within {
			within = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%.1f%%\t%s (%g%%)\t%d (%v)", v.Label, v.Metric, v.Metric.Unit(), pred, formatNum(v.Measured),
			100*v.RelError, within, 100*v.Threshold, v.Samples, time.Duration(v.Window).Round(100*time.Millisecond))
		switch {
		case v.Sandbox != nil:
			fmt.Fprintf(tw, "\t%s (%.1f%%)", formatNum(*v.Sandbox), 100**v.SandboxRelError)
		case paired:
			fmt.Fprint(tw, "\t-")
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// verifySummary is one line: how many values were within the threshold
// and the largest error.
func verifySummary(st *justrunit.Study, vs []api.Verification) string {
	within, worst := 0, 0
	points := map[string]bool{}
	for i, v := range vs {
		points[v.Label] = true
		if v.Within {
			within++
		}
		if v.RelError > vs[worst].RelError {
			worst = i
		}
	}
	s := fmt.Sprintf("%d point(s) on the on-line %s: %d of %d values within the study's %g%% check threshold",
		len(points), st.Target, within, len(vs), 100*st.CheckThreshold)
	if w := vs[worst]; w.RelError > 0 {
		s += fmt.Sprintf("; largest error %.1f%% (%s at %s)", 100*w.RelError, w.Metric, w.Label)
	}
	return s + "."
}

// formatNum shows a value with four significant digits, without exponents
// for values people read (response times, throughput).
func formatNum(v float64) string {
	if a := math.Abs(v); a >= 1000 && a < 1e9 {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.4g", v), ".")
}

func orEmptyList[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}

// eventVerifications returns the verifications recorded in events of kind
// justrunit.EventVerifyDone, oldest first.
func eventVerifications(evs []justrunit.Event) []api.Verification {
	var out []api.Verification
	for _, ev := range evs {
		if ev.Kind != justrunit.EventVerifyDone || ev.Data["verifications"] == nil {
			continue
		}
		b, err := json.Marshal(ev.Data["verifications"])
		if err != nil {
			continue
		}
		var vs []api.Verification
		if json.Unmarshal(b, &vs) == nil {
			out = append(out, vs...)
		}
	}
	return out
}
