package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/testserver"
	"github.com/justrunit/justrunit/platform/local"
)

func init() {
	addBenchCommand(newBenchCloneCmd)
	addBenchCommand(newBenchTestServerCmd)
}

// cloneBenchRun is one clone measured.
type cloneBenchRun struct {
	CloneS     float64 `json:"clone_s"`
	PauseMS    float64 `json:"pause_ms"`
	ProbeMaxMS float64 `json:"original_max_rt_ms"`
	Probes     int     `json:"original_probes"`
	Errors     int     `json:"original_errors"`

	took time.Duration // CloneS as a duration
}

// cloneBenchReport is what "justrunit bench clone" prints.
type cloneBenchReport struct {
	Platform string `json:"platform"`
	Cgroup   string `json:"cgroup"`
	Mode     string `json:"mode"`
	Storage  string `json:"storage"`
	Snapshot string `json:"snapshot"`
	StateMiB int    `json:"state_mib"`
	// Medians over the runs.
	CloneS  float64 `json:"clone_s"`
	PauseMS float64 `json:"pause_ms"`
	// SteadyRTMS is the original's median response time to the probe when
	// nothing is being cloned; OriginalMaxRTMS the worst seen while cloning.
	SteadyRTMS      float64         `json:"original_steady_rt_ms"`
	OriginalMaxRTMS float64         `json:"original_max_rt_ms"`
	OriginalErrors  int             `json:"original_errors"`
	Leftovers       int             `json:"leftovers"`
	Runs            []cloneBenchRun `json:"runs"`
	Targets         map[string]bool `json:"targets"`
	// Cold is the same measurement with cold clones, made in the same run
	// where clones are live, so the two modes compare (nil otherwise).
	Cold *cloneBenchReport `json:"cold,omitempty"`
	// LiveVsCold are the live figures over the cold ones (with Cold).
	LiveVsCold map[string]float64 `json:"live_vs_cold,omitempty"`
	// ColdError says why the cold runs failed, when they did; the live
	// figures are reported all the same, and the command fails after.
	ColdError string `json:"cold_error,omitempty"`
}

func newBenchCloneCmd(g *globals) *cobra.Command {
	var (
		name     string
		asJSON   bool
		runs     int
		stateMiB int
	)
	cmd := &cobra.Command{
		Use:   "clone",
		Short: "Measure clone time and the original's pause",
		Long: `Launch the CPU-bound test server (this program, as "justrunit bench testserver")
with a state directory of --state-mib MiB on an on-line host, clone it onto the
sandbox --runs times while a prober keeps requesting the original, and print:

  mode       live (criu: the memory state carried over, where criu check passes) or cold (same command, snapshot of the state)
  clone_s    seconds from the clone request to the clone answering HTTP (median)
  pause_ms   how long the original was frozen for the snapshot (median)
  original_steady_rt_ms, original_max_rt_ms   the prober's view of the original,
             without a clone and worst during the clones
  leftovers  objects of the benchmark's platform scope left after teardown (must be 0)
  targets    clone_s ≤ 0.5 and pause_ms ≤ 100 met or not
  cold, live_vs_cold   where clones are live: the same runs with cold clones, and
             the live figures over the cold ones (cold_error instead, with
             the live figures, and a failed command, when the cold runs fail)

The platform runs with a temporary state directory, so a running daemon is not
disturbed. Needs root.`,
		Example: `  justrunit bench clone
  justrunit bench clone --platform local --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if name != "local" && name != "qemu" {
				return justrunit.Invalid("--platform", name, "want local or qemu")
			}
			if runs < 1 {
				return justrunit.Invalid("--runs", runs, "must be ≥ 1")
			}
			if stateMiB < 0 {
				return justrunit.Invalid("--state-mib", stateMiB, "must be ≥ 0")
			}
			if name == "qemu" {
				rep, err := benchCloneQemu(cmd.Context(), g, runs, 256, cmd.ErrOrStderr())
				if err != nil {
					return fmt.Errorf("bench clone: %w", err)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(rep)
				}
				printCloneQemu(cmd.OutOrStdout(), rep)
				return nil
			}
			rep, err := benchClone(cmd.Context(), g, runs, stateMiB, false, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("bench clone: %w", err)
			}
			var coldErr error // the live figures are printed first
			if rep.Mode == justrunit.CloneLive {
				fmt.Fprintln(cmd.ErrOrStderr(), "clones are live here; the same runs with cold clones, to compare:")
				cold, err := benchClone(cmd.Context(), g, runs, stateMiB, true, cmd.ErrOrStderr())
				if err != nil {
					coldErr = fmt.Errorf("bench clone (cold): %w", err)
					rep.ColdError = err.Error()
				} else {
					rep.Cold = cold
					rep.LiveVsCold = map[string]float64{}
					for k, v := range map[string][2]float64{"clone_s": {rep.CloneS, cold.CloneS}, "pause_ms": {rep.PauseMS, cold.PauseMS}} {
						if v[1] > 0 { // a ratio JSON can carry
							rep.LiveVsCold[k] = v[0] / v[1]
						}
					}
					rep.Leftovers += cold.Leftovers
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
				return coldErr
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "platform %s (cgroup %s), mode %s, storage %s (snapshot by %s), state %d MiB, %d runs\n",
				rep.Platform, rep.Cgroup, rep.Mode, rep.Storage, rep.Snapshot, rep.StateMiB, len(rep.Runs))
			fmt.Fprintf(w, "clone_s   %.3f  (target ≤ 0.5: %v)\n", rep.CloneS, rep.Targets["clone_s"])
			fmt.Fprintf(w, "pause_ms  %.1f  (target ≤ 100: %v)\n", rep.PauseMS, rep.Targets["pause_ms"])
			fmt.Fprintf(w, "original  steady %.2f ms, worst during clone %.2f ms (%.1fx), %d errors\n",
				rep.SteadyRTMS, rep.OriginalMaxRTMS, rep.OriginalMaxRTMS/max(rep.SteadyRTMS, 0.001), rep.OriginalErrors)
			if c := rep.Cold; c != nil {
				fmt.Fprintf(w, "cold      clone_s %.3f, pause_ms %.1f, original worst %.2f ms: live/cold clone_s %.2fx, pause_ms %.2fx\n",
					c.CloneS, c.PauseMS, c.OriginalMaxRTMS, rep.LiveVsCold["clone_s"], rep.LiveVsCold["pause_ms"])
			}
			fmt.Fprintf(w, "leftovers %d\n", rep.Leftovers)
			return coldErr
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "platform", "local", "platform to clone on")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.IntVar(&runs, "runs", 5, "clones to make (medians are reported)")
	f.IntVar(&stateMiB, "state-mib", 10, "size of the original's state directory in MiB")
	return cmd
}

// newBenchTestServerCmd is the hidden server "bench clone" launches.
func newBenchTestServerCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "testserver",
		Short:              "Run the CPU-bound test server (used by bench clone)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := testserver.Main(args); code != 0 {
				return fmt.Errorf("testserver exited with %d", code)
			}
			return nil
		},
	}
}

// benchClone measures runs clones of the test server on a platform of its
// own, live where criu works unless cold is set.
func benchClone(ctx context.Context, g *globals, runs, stateMiB int, cold bool, progress io.Writer) (rep *cloneBenchReport, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "justrunit-bench-clone-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	stateDir, appState := filepath.Join(tmp, "platform"), filepath.Join(tmp, "state")
	if err := os.Mkdir(appState, 0o755); err != nil {
		return nil, err
	}
	if err := cbWriteRandom(filepath.Join(appState, "data"), stateMiB<<20); err != nil {
		return nil, err
	}
	p, err := local.New(local.Config{Logger: g.logger, StateDir: stateDir, ColdClones: cold})
	if err != nil {
		return nil, err
	}
	rep = &cloneBenchReport{Platform: "local", Cgroup: p.CgroupVersion(), StateMiB: stateMiB}
	defer func() {
		cerr := p.Close()
		l, lerr := local.Leftovers(p.Scope(), stateDir)
		if rep != nil {
			rep.Leftovers = l.Total()
		}
		if err == nil {
			err = errors.Join(cerr, lerr)
		}
	}()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := p.Launch(ctx, justrunit.InstanceSpec{
		ID: "bench-origin", Host: "pm1", Addr: addr, StateDir: appState,
		Command: []string{exe, "bench", "testserver", "-addr", addr, "-state", appState, "-work", "2000"},
	}); err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	base := "http://" + addr
	if err := cbPoll(ctx, hc, base+"/health", 10*time.Second); err != nil {
		return nil, fmt.Errorf("test server: %w", err)
	}
	var steady []time.Duration
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		if err := cbGet(hc, base+"/work"); err != nil {
			return nil, err
		}
		steady = append(steady, time.Since(t0))
	}
	rep.SteadyRTMS = cbMillis(cbMedian(steady))

	var clones, pauses []time.Duration
	for i := 0; i < runs; i++ {
		r, c, err := benchOneClone(ctx, p, hc, base)
		if err != nil {
			return nil, err
		}
		rep.Runs = append(rep.Runs, r)
		rep.Mode = c.Mode
		info, _ := p.Info(c.ID)
		rep.Storage, rep.Snapshot = info.Storage, info.Snapshot
		clones = append(clones, r.took)
		pauses = append(pauses, c.Pause)
		rep.OriginalMaxRTMS = max(rep.OriginalMaxRTMS, r.ProbeMaxMS)
		rep.OriginalErrors += r.Errors
		if err := p.Destroy(ctx, c.ID); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "run %d: clone %.3fs, pause %.1fms, original worst %.1fms\n", i+1, r.CloneS, r.PauseMS, r.ProbeMaxMS)
	}
	rep.CloneS = cbMedian(clones).Seconds()
	rep.PauseMS = cbMillis(cbMedian(pauses))
	rep.Targets = map[string]bool{"clone_s": rep.CloneS <= 0.5, "pause_ms": rep.PauseMS <= 100}
	return rep, nil
}

// benchOneClone clones while probing the original, and measures until the
// clone answers HTTP.
func benchOneClone(ctx context.Context, p *local.Platform, hc *http.Client, base string) (cloneBenchRun, *justrunit.Clone, error) {
	return cloneProbed(ctx, hc, base+"/work", func() (*justrunit.Clone, error) {
		return p.Clone(ctx, "bench-origin", "sandbox", justrunit.CloneOptions{})
	})
}

// cloneProbed runs clone while a prober sends GET probe to the original
// back to back, then waits until the clone answers GET /health. The run
// records the time to a clone that answers, the pause the platform
// reported, and the original's worst response time and errors meanwhile.
func cloneProbed(ctx context.Context, hc *http.Client, probe string, clone func() (*justrunit.Clone, error)) (cloneBenchRun, *justrunit.Clone, error) {
	var r cloneBenchRun
	var mu sync.Mutex
	var worst time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			err := cbGet(hc, probe)
			d := time.Since(t0)
			mu.Lock()
			r.Probes++
			if err != nil {
				r.Errors++
			}
			worst = max(worst, d)
			mu.Unlock()
		}
	}()
	t0 := time.Now()
	c, err := clone()
	if err == nil {
		err = cbPoll(ctx, hc, "http://"+c.Endpoint+"/health", 10*time.Second)
	}
	took := time.Since(t0)
	time.Sleep(20 * time.Millisecond) // a last probe or two after the clone is up
	close(stop)
	wg.Wait()
	if err != nil {
		return r, nil, err
	}
	r.took, r.CloneS = took, took.Seconds()
	r.PauseMS = cbMillis(c.Pause)
	r.ProbeMaxMS = cbMillis(worst)
	return r, c, nil
}

func cbGet(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func cbPoll(ctx context.Context, hc *http.Client, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cbGet(hc, url)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering after %v: %w", url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func cbWriteRandom(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, int64(n)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cbMedian(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	return s[len(s)/2]
}

func cbMillis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
