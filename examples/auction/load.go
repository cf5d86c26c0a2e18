package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/justrunit/justrunit/examples/auction/loadgen"
)

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("load", stderr)
	target := fs.String("target", "http://"+defaultWebAddr, "base URL of the web tier (or the app tier)")
	rate := fs.Float64("rate", 50, "requests per second")
	steps := fs.String("steps", "", `stepped rate, e.g. "60s@100,60s@150" (overrides --rate; the run lasts their total unless --duration is given)`)
	duration := fs.Duration("duration", 60*time.Second, "how long to send requests; 0 runs until interrupted")
	mix := fs.String("mix", loadgen.RUBiS.Name, "request mix: rubis (7% bids, 2% sells) or browse (read-only)")
	arrival := fs.String("arrival", string(loadgen.Poisson), "arrival process: poisson or uniform")
	seed := fs.Uint64("seed", 1, "seed of the arrival times and the request choices")
	maxOut := fs.Int("max-outstanding", loadgen.DefaultMaxOutstanding, "most requests in flight; requests due beyond it are dropped")
	timeout := fs.Duration("timeout", loadgen.DefaultTimeout, "timeout of one request")
	interval := fs.Duration("interval", loadgen.DefaultInterval, "reporting interval")
	items := fs.Int("items", loadgen.DefaultItems, "items the data tier was seeded with (ids used in requests)")
	users := fs.Int("users", loadgen.DefaultUsers, "users the data tier was seeded with")
	asJSON := fs.Bool("json", false, `print JSON lines: {"type":"interval",...} per interval, then {"type":"summary",...}`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := loadgen.MixByName(*mix)
	if err != nil {
		return fmt.Errorf("--mix: %w", err)
	}
	cfg := loadgen.Config{
		Target: *target, Rate: *rate, Duration: *duration, Mix: m, Arrival: loadgen.Arrival(*arrival),
		Seed: *seed, MaxOutstanding: *maxOut, Timeout: *timeout, Interval: *interval, Items: *items, Users: *users,
	}
	if *steps != "" {
		if cfg.Steps, err = loadgen.ParseSteps(*steps); err != nil {
			return fmt.Errorf("--steps: %w", err)
		}
		durationSet := false
		fs.Visit(func(f *flag.Flag) { durationSet = durationSet || f.Name == "duration" })
		if !durationSet {
			cfg.Duration = 0
		}
	}
	enc := json.NewEncoder(stdout)
	if *asJSON {
		cfg.OnInterval = func(iv loadgen.Interval) {
			enc.Encode(struct {
				Type string `json:"type"`
				loadgen.Interval
			}{"interval", iv})
		}
	} else {
		fmt.Fprintf(stdout, "%8s %8s %8s %8s %7s %7s %7s %9s %9s %9s\n",
			"time_s", "rate", "sent", "tput/s", "errors", "drops", "rejects", "mean_ms", "p95_ms", "max_ms")
		cfg.OnInterval = func(iv loadgen.Interval) {
			fmt.Fprintf(stdout, "%8.1f %8.1f %8d %8.1f %7d %7d %7d %9.2f %9.2f %9.2f\n",
				iv.EndS, iv.Rate, iv.Sent, iv.Throughput, iv.Errors, iv.Dropped, iv.Rejected, iv.MeanMS, iv.P95MS, iv.MaxMS)
		}
	}
	g, err := loadgen.New(cfg)
	if err != nil {
		return err
	}
	s, err := g.Run(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		s.Intervals = nil // already printed, one line each
		return enc.Encode(struct {
			Type string `json:"type"`
			loadgen.Summary
		}{"summary", s})
	}
	printSummary(stdout, s)
	return nil
}

func printSummary(w io.Writer, s loadgen.Summary) {
	note := ""
	if s.Interrupted {
		note = " (interrupted)"
	}
	fmt.Fprintf(w, "\nsummary%s: %s, mix %s, %s arrivals, seed %d, %.1f s (%.1f s with the drain)\n",
		note, s.Target, s.Mix, s.Arrival, s.Seed, s.DurationS, s.ElapsedS)
	fmt.Fprintf(w, "  offered %.1f req/s, throughput %.1f req/s\n", s.OfferedRate, s.Throughput)
	fmt.Fprintf(w, "  scheduled %d, sent %d, dropped %d, completed %d (rejected bids %d), errors %d, aborted %d\n",
		s.Scheduled, s.Sent, s.Dropped, s.Completed, s.Rejected, s.Errors, s.Aborted)
	fmt.Fprintf(w, "  response time ms: mean %.2f, p50 %.2f, p95 %.2f, p99 %.2f, max %.2f (%d samples)\n",
		s.MeanMS, s.P50MS, s.P95MS, s.P99MS, s.MaxMS, s.Samples)
	fmt.Fprintf(w, "  %-7s %8s %8s %7s %9s %9s\n", "type", "sent", "done", "errors", "mean_ms", "p95_ms")
	for _, k := range loadgen.Kinds {
		if ks, ok := s.ByKind[k]; ok {
			fmt.Fprintf(w, "  %-7s %8d %8d %7d %9.2f %9.2f\n", k, ks.Sent, ks.Completed, ks.Errors, ks.MeanMS, ks.P95MS)
		}
	}
	if len(s.ErrorKinds) > 0 {
		keys := make([]string, 0, len(s.ErrorKinds))
		for k := range s.ErrorKinds {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprint(w, "  errors by kind:")
		for _, k := range keys {
			fmt.Fprintf(w, " %s=%d", k, s.ErrorKinds[k])
		}
		fmt.Fprintln(w)
	}
}
