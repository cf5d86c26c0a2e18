package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit/proxy/proxybench"
)

func init() { addBenchCommand(newBenchProxyCmd) }

func newBenchProxyCmd(g *globals) *cobra.Command {
	opts := proxybench.DefaultOptions()
	var asJSON, inProcess bool
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Measure the in-proxy against direct and against nginx's mirror",
		Long: `Measure, on loopback and in one run, the on-line path through the in-proxy:
direct; through the in-proxy with no clone, a healthy clone, a 10x slower clone
and a hung clone (accepts, never answers); and through Debian's nginx
(proxy_pass alone, and with "mirror" to the healthy and to the hung clone),
which the benchmark starts with a generated configuration in a temporary
directory. The on-line server answers after 1 ms with a 1 KiB body.

Each case runs an open loop at a fixed rate (latency from each request's
intended send time, so stalls are not hidden) and a closed loop at
saturation (throughput). Every path is started first and the cases are then
measured in interleaved rounds (--rounds): each case's figures are medians over
the rounds, and each ratio is the median of the rounds' ratios, so that load
from elsewhere on the machine hits every case alike. The default run (5 rounds)
takes about four and a half minutes.

The in-proxy runs as "justrunit proxy in", in its own process like nginx. The
healthy and slow clones run in their own process at nice 9 (--clone-nice): the
local platform gives a clone 1/8 of the CPU weight of an on-line instance, and
nice 9 is the nearest step to that. "--clone-class idle" runs them in the idle
scheduling class (SCHED_IDLE) instead, as the local platform runs a clone with
a site's "clone_class: idle": an on-line task that wakes takes the CPU from a
clone at once (a plain process in that class also has its far lower weight).
The benchmark's own process (load
generator, on-line server) runs with GOGC=800 unless GOGC is set: its garbage
collection otherwise adds about ±30% noise to every p99.

--json prints one JSON object; among its fields:
  healthy.p99_ratio                    in-proxy with healthy clone / direct, open-loop p99
  healthy.throughput_vs_nginx_mirror   in-proxy with healthy clone / nginx mirror, saturation req/s
  hung.p99_ratio, hung.throughput_ratio  hung-clone case / healthy-clone case
  hung.lost                            on-line requests lost with the hung clone
  nginx.{proxy,mirror,mirror_hung}.{p99_ms,rps}   nginx's raw figures (null without nginx)
  targets                              which of the targets this run met`,
		Example: `  justrunit bench proxy
  justrunit bench proxy --json --open 3s --closed 3s
  justrunit bench proxy --nginx -    # skip nginx`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var progress io.Writer = cmd.ErrOrStderr()
			if !inProcess {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("bench proxy: finding this program to run the in-proxy: %w", err)
				}
				opts.InProxyCommand = []string{exe, "proxy", "in"}
				opts.UpstreamCommand = []string{exe, "bench", "upstream"}
			}
			if opts.Settle == 0 {
				opts.Settle = -1 // --settle 0: no wait (0 is the library's default)
			}
			rep, err := proxybench.Run(cmd.Context(), opts, progress)
			if err != nil {
				return fmt.Errorf("bench proxy: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return printProxyReport(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.IntVar(&opts.Rate, "rate", opts.Rate, "open-loop rate, requests per second")
	f.DurationVar(&opts.Open, "open", opts.Open, "length of each open-loop run")
	f.DurationVar(&opts.Closed, "closed", opts.Closed, "length of each closed-loop (saturation) run")
	f.IntVar(&opts.Rounds, "rounds", opts.Rounds, "rounds; the cases are interleaved and each figure is the median over the rounds")
	f.DurationVar(&opts.Warmup, "warmup", opts.Warmup, "unmeasured warm-up before each case")
	f.DurationVar(&opts.Settle, "settle", opts.Settle, "longest wait before each case for the machine's CPUs to be quiet (under 10% busy); a negative value does not wait")
	f.IntVar(&opts.Connections, "connections", opts.Connections, "closed-loop clients (one keep-alive connection each)")
	f.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "per-request timeout; a request that takes longer is lost")
	f.BoolVar(&inProcess, "in-process", false, "run the in-proxy and the clones in the benchmark's process instead of each in its own")
	f.StringVar(&opts.CloneClass, "clone-class", opts.CloneClass, `scheduling class of the clones' process: "normal" (at --clone-nice, as the local platform runs a clone by default) or "idle" (as it does with clone_class: idle)`)
	f.IntVar(&opts.CloneNice, "clone-nice", opts.CloneNice, `nice value of the clones' process with --clone-class normal (the local platform gives a clone 1/8 of an on-line instance's CPU weight)`)
	f.StringVar(&opts.Nginx, "nginx", "", `nginx binary (default: found in PATH or /usr/sbin); "-" skips nginx`)
	return cmd
}

func printProxyReport(w io.Writer, r *proxybench.Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\topen p50 ms\topen p99 ms\topen lost\tclosed req/s\tclosed lost\tclone sent\tclone dropped\t\n")
	for _, c := range r.Cases {
		sent, dropped := "-", "-"
		if c.Clone != nil {
			sent, dropped = fmt.Sprint(c.Clone.Sent), fmt.Sprint(c.Clone.Dropped)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%d\t%.0f\t%d\t%s\t%s\t\n", c.Name, c.Open.P50, c.Open.P99, c.Open.Lost, c.Closed.RPS, c.Closed.Lost, sent, dropped)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	f := func(p *float64) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.3f", *p)
	}
	fmt.Fprintf(w, "\n%d rounds of: %d req/s open loop for %gs, %d connections closed loop for %gs; %d CPUs; medians over the rounds (ratios: median of per-round ratios)\n",
		r.Settings.Rounds, r.Settings.Rate, r.Settings.OpenS, r.Settings.Connections, r.Settings.ClosedS, r.Settings.CPUs)
	fmt.Fprintf(w, "in-proxy, no clone:      p99 %s x direct, throughput %s x direct, lost %d\n", f(r.NoClone.P99Ratio), f(r.NoClone.ThroughputRatio), r.NoClone.Lost)
	fmt.Fprintf(w, "in-proxy, healthy clone: p99 %s x direct (target ≤ 1.15), throughput %s x nginx mirror (target ≥ 1, aim 2), lost %d\n",
		f(r.Healthy.P99Ratio), f(r.Healthy.ThroughputVsNginxMirror), r.Healthy.Lost)
	fmt.Fprintf(w, "in-proxy, slow clone:    p99 %s x healthy (target ≤ 1.05), throughput %s x healthy (target ≥ 0.95), lost %d\n",
		f(r.Slow.P99Ratio), f(r.Slow.ThroughputRatio), r.Slow.Lost)
	fmt.Fprintf(w, "in-proxy, hung clone:    p99 %s x healthy (target ≤ 1.05), throughput %s x healthy (target ≥ 0.95), lost %d\n",
		f(r.Hung.P99Ratio), f(r.Hung.ThroughputRatio), r.Hung.Lost)
	if r.Nginx.Version != "" {
		fmt.Fprintf(w, "nginx %s: proxy_pass p99 %s x direct, with mirror to the healthy clone %s x direct\n", r.Nginx.Version, f(r.Nginx.Proxy.P99Ratio), f(r.Nginx.Mirror.P99Ratio))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}
