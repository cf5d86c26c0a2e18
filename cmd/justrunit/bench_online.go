package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/examples/auction/auction"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/siterun"
)

func init() { addBenchCommand(newBenchOnlineCmd) }

// benchOnlineReport is what "bench online --json" prints.
type benchOnlineReport struct {
	Rate    float64            `json:"rate"`
	Arrival string             `json:"arrival"`
	Work    float64            `json:"work"`
	CPU     float64            `json:"cpu"`
	WindowS float64            `json:"window_s"`
	Cycles  []benchOnlineCycle `json:"cycles"`
	// P95RatioMedian and MeanRatioMedian are the medians over the cycles
	// of the on-line app tier's p95 and mean with an experiment running
	// over those of the window next to it without one.
	P95RatioMedian  float64 `json:"p95_ratio_median"`
	MeanRatioMedian float64 `json:"mean_ratio_median"`
	// ProcWaitUsMedian is the median over the cycles of Proc's waits
	// (none, fed); ProcSched says whether the kernel kept the counts, and Note
	// why not where it did not.
	ProcWaitUsMedian [2]float64 `json:"proc_wait_us_per_response_median"`
	ProcSched        bool       `json:"proc_sched"`
	Note             string     `json:"note,omitempty"`
	Leftovers        int        `json:"leftovers"`
}

// benchOnlineCycle is one pair of windows: without an experiment (none)
// and with one (fed), in that order in even cycles and the other way
// round in odd ones.
type benchOnlineCycle struct {
	NoneP95Ms  float64 `json:"none_p95_ms"`
	FedP95Ms   float64 `json:"fed_p95_ms"`
	NoneMeanMs float64 `json:"none_mean_ms"`
	FedMeanMs  float64 `json:"fed_mean_ms"`
	P95Ratio   float64 `json:"p95_ratio"`
	MeanRatio  float64 `json:"mean_ratio"`
	// Samples are the responses in each window, and WindowsS how long
	// each lasted: none, fed.
	Samples  [2]int64   `json:"samples"`
	WindowsS [2]float64 `json:"windows_s"`
	// Proc is what JustRunIt's own process spent per on-line response in
	// each window (none, fed), summed over its threads: CPU time, time
	// runnable but waiting for a CPU, and the times a thread was put on a
	// CPU. The process carries the on-line requests through its proxies,
	// so its waits are the on-line path's too (with its work for the
	// clone's). Zero where the kernel keeps no scheduler statistics.
	Proc [2]procPerResponse `json:"proc_per_response"`
}

// benchOnlineOptions are "bench online"'s flags.
type benchOnlineOptions struct {
	site   demoStudyOptions // rate, arrival, calibrate, settle
	cycles int
	cpu    float64
	window time.Duration
}

func newBenchOnlineCmd(g *globals) *cobra.Command {
	var out string
	var asJSON bool
	o := benchOnlineOptions{site: demoStudyOptions{wins: demoStudyWindows{Online: minDemoStudyWindow}}}
	cmd := &cobra.Command{
		Use:   "online",
		Short: "Measure what an experiment costs the on-line tier it copies",
		Long: `Start the study demo's auction site on the local platform under its load, then
alternate two kinds of window, --cycles times each, in the order none, fed, fed,
none, none, fed...: with nothing else running (none), and with one experiment
of the app tier at --cpu running, as a study runs it (fed: a clone made on the
sandbox, fed copies of the live requests through the in-proxy, its next-tier
calls answered by the out-proxy, measured for --window after a 4 s warm-up, and
torn down). A none window lasts as long as the last fed one before it (the
first, as long as a warm-up and --window). It
prints, per cycle, the on-line app tier's p95 and mean in each window as its
in-proxy measured them, and the medians of their ratios (fed over none):
p95_ratio_median and mean_ratio_median, the cost of an experiment on the
on-line path, measured in pairs of neighbouring windows so that the drift of the
on-line response time over minutes cancels out. Needs root and the Go toolchain.`,
		Example: `  sudo go run ./cmd/justrunit bench online --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validateBenchOnline(o); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return errors.New("bench online: needs root (cgroups and network namespaces); run it as root")
			}
			rep, err := runBenchOnline(cmd, g, out, o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printBenchOnline(cmd.OutOrStdout(), rep)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "justrunit-bench-online", "directory for the benchmark's files")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().IntVar(&o.cycles, "cycles", 4, "pairs of windows (one without an experiment, one with)")
	cmd.Flags().Float64Var(&o.cpu, "cpu", 40, "the experiment's CPU share for the app tier's clone (percent of a core)")
	cmd.Flags().DurationVar(&o.window, "window", 30*time.Second, "the experiment's measurement window (after a 4 s warm-up)")
	cmd.Flags().Float64Var(&o.site.rate, "rate", 40, "requests per second offered to the auction")
	cmd.Flags().StringVar(&o.site.arrival, "arrival", string(loadgen.Uniform), "the load's arrival process: uniform (evenly spaced) or poisson")
	cmd.Flags().BoolVar(&o.site.calibrate, "calibrate", true, "scale the app tier's work to this machine's speed, as the study demo does")
	cmd.Flags().DurationVar(&o.site.wins.Settle, "settle", auction.DefaultAuctionLength, "how long the site runs under load before the first window")
	return cmd
}

// validateBenchOnline checks "bench online"'s flags; errors name the flag.
func validateBenchOnline(o benchOnlineOptions) error {
	if o.cycles < 1 {
		return justrunit.Invalid("--cycles", o.cycles, "must be ≥ 1")
	}
	if !(o.cpu > 0 && o.cpu <= 100) {
		return justrunit.Invalid("--cpu", o.cpu, "must be in (0, 100]: the demo's sandbox host has one core")
	}
	o.site.wins.Experiment = o.window
	return validateDemoStudy(o.site)
}

// runBenchOnline runs the benchmark; the caller checked its flags.
func runBenchOnline(cmd *cobra.Command, g *globals, outDir string, o benchOnlineOptions) (*benchOnlineReport, error) {
	return onStudySite(cmd, g, outDir, o.site, func(ctx context.Context, d *studySite) (*benchOnlineReport, error) {
		return benchOnlineOn(ctx, cmd.ErrOrStderr(), d, o)
	})
}

// benchOnlineOn runs the benchmark on d, the study demo's site, and
// closes it.
func benchOnlineOn(ctx context.Context, w io.Writer, d *studySite, o benchOnlineOptions) (*benchOnlineReport, error) {
	fmt.Fprintf(w, "Site up under load; letting it settle for %v...\n", o.site.wins.Settle)
	d.window(ctx, o.site.wins.Settle)

	cpu := justrunit.Parameter{Name: "cpu", Unit: justrunit.DefaultUnits["cpu"], Values: []float64{o.cpu}}
	st := &justrunit.Study{Name: "bench online", Target: "auction0-app", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTP95, justrunit.RTMean}, WarmUp: justrunit.Duration(4 * time.Second), Window: justrunit.Duration(o.window),
		TimeBound: justrunit.Duration(2*(4*time.Second+o.window) + time.Minute), Slots: 1, Strategy: "grid", Interpolator: "linear", CheckThreshold: 0.15}
	// A fed window is one experiment, from the clone's start to its
	// teardown, as a study runs it; a none window lasts as long as the
	// last fed one, and until one has run as an experiment's warm-up and
	// window.
	length := 4*time.Second + o.window
	fed := func() (measure.Summary, time.Duration, error) {
		d.feed.ResetOnline()
		t0 := time.Now()
		one := *st // each its own study
		_, err := d.RunStudy(ctx, &one, siterun.StudyOptions{})
		return d.feed.ResetOnline(), time.Since(t0), err
	}
	rep := &benchOnlineReport{Rate: o.site.rate, Arrival: o.site.arrival, Work: d.work, CPU: o.cpu, WindowS: o.window.Seconds()}
	var proc procCounts
	start := time.Now()
	for i := range o.cycles {
		var c benchOnlineCycle
		for k := range 2 {
			withExperiment := (k == 1) != (i%2 == 1)
			left := time.Duration(2*(o.cycles-i)-k) * length
			s0, j := proc.read(), 0
			if withExperiment {
				j = 1
				fmt.Fprintf(w, "Cycle %d/%d: an experiment of the app tier at cpu=%g%% (about %v left)...\n", i+1, o.cycles, o.cpu, left.Round(time.Second))
				sum, took, err := fed()
				if err != nil {
					return nil, fmt.Errorf("bench online: cycle %d: the experiment: %w", i+1, err)
				}
				length = took
				c.FedP95Ms, c.FedMeanMs = sum.RT.P95, sum.RT.Mean
				c.Samples[1], c.WindowsS[1] = sum.Count, took.Seconds()
			} else {
				fmt.Fprintf(w, "Cycle %d/%d: nothing else running, %v (about %v left)...\n", i+1, o.cycles, length.Round(time.Second), left.Round(time.Second))
				sum := d.window(ctx, length)
				c.NoneP95Ms, c.NoneMeanMs = sum.RT.P95, sum.RT.Mean
				c.Samples[0], c.WindowsS[0] = sum.Count, length.Seconds()
			}
			if ds := proc.read().Sub(s0); proc.ok() {
				c.Proc[j] = perResponse(ds, c.Samples[j])
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if c.NoneP95Ms > 0 && c.NoneMeanMs > 0 {
			c.P95Ratio, c.MeanRatio = c.FedP95Ms/c.NoneP95Ms, c.FedMeanMs/c.NoneMeanMs
		}
		rep.Cycles = append(rep.Cycles, c)
		fmt.Fprintf(w, "Cycle %d/%d: on-line p95 %.2f ms with the experiment, %.2f without (%.2fx); mean %.2f, %.2f ms (%.2fx); %v elapsed\n",
			i+1, o.cycles, c.FedP95Ms, c.NoneP95Ms, c.P95Ratio, c.FedMeanMs, c.NoneMeanMs, c.MeanRatio, time.Since(start).Round(time.Second))
		if proc.ok() {
			fmt.Fprintf(w, "Cycle %d/%d: JustRunIt's process per on-line response: CPU %.0f µs with the experiment, %.0f without; waiting for a CPU %.0f µs, %.0f; on a CPU %.0f times, %.0f\n",
				i+1, o.cycles, c.Proc[1].CPUUs, c.Proc[0].CPUUs, c.Proc[1].WaitUs, c.Proc[0].WaitUs, c.Proc[1].Runs, c.Proc[0].Runs)
		}
	}
	var p95s, means, waitsNone, waitsFed []float64
	for _, c := range rep.Cycles {
		p95s, means = append(p95s, c.P95Ratio), append(means, c.MeanRatio)
		waitsNone, waitsFed = append(waitsNone, c.Proc[0].WaitUs), append(waitsFed, c.Proc[1].WaitUs)
	}
	rep.P95RatioMedian, rep.MeanRatioMedian = median(p95s), median(means)
	rep.ProcSched, rep.Note = proc.ok(), proc.note
	if rep.ProcSched {
		rep.ProcWaitUsMedian = [2]float64{median(waitsNone), median(waitsFed)}
	}
	var err error
	if rep.Leftovers, err = d.closeCounting(ctx); err != nil {
		return nil, err
	}
	return rep, nil
}

// median returns the median of xs (the mean of the middle two for an
// even count); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func printBenchOnline(w io.Writer, rep *benchOnlineReport) {
	fmt.Fprintf(w, "on-line app tier, %g requests/s (%s), an experiment at cpu=%g%% with a %g s window:\n", rep.Rate, rep.Arrival, rep.CPU, rep.WindowS)
	fmt.Fprintln(w, "CYCLE  P95 NONE  P95 FED  RATIO  MEAN NONE  MEAN FED  RATIO  WAIT NONE  WAIT FED")
	for i, c := range rep.Cycles {
		fmt.Fprintf(w, "%-5d  %8.2f  %7.2f  %5.2f  %9.2f  %8.2f  %5.2f  %9.0f  %8.0f\n", i+1, c.NoneP95Ms, c.FedP95Ms, c.P95Ratio, c.NoneMeanMs, c.FedMeanMs, c.MeanRatio, c.Proc[0].WaitUs, c.Proc[1].WaitUs)
	}
	fmt.Fprintf(w, "median ratio: p95 %.2fx, mean %.2fx; leftovers %d\n", rep.P95RatioMedian, rep.MeanRatioMedian, rep.Leftovers)
	if rep.ProcSched {
		fmt.Fprintf(w, "WAIT: µs JustRunIt's process waited for a CPU per on-line response (median %.0f without an experiment, %.0f with)\n", rep.ProcWaitUsMedian[0], rep.ProcWaitUsMedian[1])
	} else {
		fmt.Fprintln(w, rep.Note)
	}
}
