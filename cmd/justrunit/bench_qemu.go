package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/platform/qemu"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

func init() { addBenchCommand(newBenchQemuCmd) }

// qemuBenchRun is one live clone measured.
type qemuBenchRun struct {
	CloneS         float64 `json:"clone_s"`
	PauseMS        float64 `json:"pause_ms"`
	QEMUDowntimeMS float64 `json:"qemu_downtime_ms"`
	MigrationMS    float64 `json:"migration_ms"`
	TransferredMiB float64 `json:"transferred_mib"`
}

// qemuBenchSize is the result for one guest memory size (medians over runs).
type qemuBenchSize struct {
	MemMiB         int            `json:"mem_mib"`
	FilledMiB      int            `json:"filled_mib"`
	BootS          float64        `json:"boot_s"`
	CloneS         float64        `json:"clone_s"`
	PauseMS        float64        `json:"pause_ms"`
	QEMUDowntimeMS float64        `json:"qemu_downtime_ms"`
	MigrationMS    float64        `json:"migration_ms"`
	TransferredMiB float64        `json:"transferred_mib"`
	Runs           []qemuBenchRun `json:"runs"`
}

// qemuBenchReport is what "justrunit bench qemu" prints.
type qemuBenchReport struct {
	Platform    string          `json:"platform"`
	Accel       string          `json:"accel"`
	CloneMethod string          `json:"clone_method"`
	Image       string          `json:"image"`
	FillPct     int             `json:"fill_pct"`
	Sizes       []qemuBenchSize `json:"sizes"`
	Targets     map[string]bool `json:"targets"`
}

func newBenchQemuCmd(g *globals) *cobra.Command {
	var (
		asJSON  bool
		mems    []int
		runs    int
		fillPct int
		image   string
		accel   string
		method  string
	)
	cmd := &cobra.Command{
		Use:   "qemu",
		Short: "Measure guest boot, live clone time and the source's pause on the qemu platform",
		Long: `For each guest memory size (--mem), boot a guest running the guest test server
on an on-line host, make it write to --fill-pct of its memory (so the migration
carries real pages, not zero pages), then clone it live onto the sandbox --runs
times, destroying each clone, and print (medians over the runs):

  boot_s            launch to the service answering
  clone_s           the Clone call: destination start, migration, disk snapshot,
                    both sides resumed, clone answering on its endpoint
  pause_ms          how long the source was stopped as the platform measured it
                    (QEMU's downtime + the disk snapshot + the final cont)
  qemu_downtime_ms  the switch-over downtime QEMU reported
  migration_ms      QEMU's total migration time; transferred_mib its RAM bytes
  targets           clone_s ≤ 2 and pause_ms ≤ 100 for 256 MiB met or not

accel says whether guests ran under KVM or TCG (see the qemu package doc: TCG is
chosen where /dev/kvm cannot run a stock kernel); clone_method whether the source
kept running while its memory was copied (pre-copy, the default under KVM) or
was paused for the whole copy (stop-and-copy, the default under TCG, where
QEMU before 9.0 loses guest writes during pre-copy; --clone-method pre-copy
measures it anyway, but its clones may crash). The platform runs with a
temporary state directory. Needs root, QEMU and a guest image with
/bin/guestserver (built automatically with the go tool when run from the
repository, or give --image DIR from "justrunit image build --test-server").`,
		Example: `  justrunit bench qemu
  justrunit bench qemu --json --mem 256 --runs 5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runs < 1 {
				return justrunit.Invalid("--runs", runs, "must be ≥ 1")
			}
			if fillPct < 0 || fillPct > 80 {
				return justrunit.Invalid("--fill-pct", fillPct, "want 0 to 80")
			}
			for _, m := range mems {
				if m < 128 || m > 16384 {
					return justrunit.Invalid("--mem", m, "want 128 to 16384 MiB")
				}
			}
			if err := qemu.Requirements(); err != nil {
				return fmt.Errorf("bench qemu: %w", err)
			}
			img, err := benchQemuImage(cmd.Context(), g, image)
			if err != nil {
				return fmt.Errorf("bench qemu: %w", err)
			}
			rep, err := benchQemu(cmd.Context(), g, img, accel, method, mems, runs, fillPct, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("bench qemu: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "platform qemu, accel %s, clone method %s, memory filled %d%%, %d runs per size\n", rep.Accel, rep.CloneMethod, rep.FillPct, runs)
			fmt.Fprintf(w, "%8s %8s %8s %9s %17s %13s %16s\n", "mem_mib", "boot_s", "clone_s", "pause_ms", "qemu_downtime_ms", "migration_ms", "transferred_mib")
			for _, s := range rep.Sizes {
				fmt.Fprintf(w, "%8d %8.2f %8.3f %9.1f %17.1f %13.0f %16.1f\n", s.MemMiB, s.BootS, s.CloneS, s.PauseMS, s.QEMUDowntimeMS, s.MigrationMS, s.TransferredMiB)
			}
			keys := make([]string, 0, len(rep.Targets))
			for k := range rep.Targets {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(w, "target %s: %v\n", k, rep.Targets[k])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.IntSliceVar(&mems, "mem", []int{256, 1024}, "guest memory sizes in MiB")
	f.IntVar(&runs, "runs", 3, "clones per size (medians are reported)")
	f.IntVar(&fillPct, "fill-pct", 50, "percent of guest memory the service writes to before cloning")
	f.StringVar(&image, "image", "", "guest image directory with /bin/guestserver (default: build one)")
	f.StringVar(&accel, "accel", "auto", "kvm, tcg or auto")
	f.StringVar(&method, "clone-method", "auto", "pre-copy, stop-and-copy or auto")
	return cmd
}

// benchQemuImage finds or builds an image that has the guest test server.
func benchQemuImage(ctx context.Context, g *globals, dir string) (string, error) {
	if dir != "" {
		im, err := guest.Load(dir)
		if err != nil {
			return "", err
		}
		if !slices.Contains(im.Services, "guestserver") {
			return "", justrunit.Invalid("--image", dir, "has no guestserver (build with --test-server)")
		}
		return im.Dir, nil
	}
	out := filepath.Join(platformStateDir(g, "qemu"), "images")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(out, "guestserver")
	if err := guest.GoBuild(ctx, ".", guestServerPkg, bin); err != nil {
		return "", fmt.Errorf("build the guest test server (run from the repository, or give --image): %w", err)
	}
	im, err := buildImage(ctx, guest.Config{CacheDir: out, Services: map[string]string{"guestserver": bin}})
	if err != nil {
		return "", err
	}
	return im.Dir, nil
}

func benchQemu(ctx context.Context, g *globals, img, accel, method string, mems []int, runs, fillPct int, progress io.Writer) (*qemuBenchReport, error) {
	rep := &qemuBenchReport{Platform: "qemu", Image: img, FillPct: fillPct, Targets: map[string]bool{}}
	for _, mem := range mems {
		s, p, err := benchQemuSize(ctx, g, img, accel, method, mem, runs, fillPct, progress)
		if err != nil {
			return nil, fmt.Errorf("%d MiB: %w", mem, err)
		}
		rep.Accel, rep.CloneMethod = p.Accel(), p.CloneMethod()
		rep.Sizes = append(rep.Sizes, s)
		if mem == 256 {
			rep.Targets["clone_s ≤ 2 (256 MiB)"] = s.CloneS <= 2
			rep.Targets["pause_ms ≤ 100 (256 MiB)"] = s.PauseMS <= 100
		}
	}
	return rep, nil
}

func benchQemuSize(ctx context.Context, g *globals, img, accel, method string, mem, runs, fillPct int, progress io.Writer) (res qemuBenchSize, p *qemu.Platform, err error) {
	tmp, err := os.MkdirTemp("", "jri-bench-qemu-")
	if err != nil {
		return res, nil, err
	}
	defer os.RemoveAll(tmp)
	p, err = qemu.New(qemu.Options{Logger: g.logger, StateDir: tmp, Image: img, MemoryMiB: mem, Accel: accel, CloneMethod: method, KillWithParent: true})
	if err != nil {
		return res, nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		is, _ := p.Instances(cctx)
		for _, in := range is {
			_ = p.Destroy(cctx, in.ID)
		}
		if cerr := p.Close(); err == nil {
			err = cerr
		}
	}()
	res.MemMiB = mem
	t0 := time.Now()
	in, err := p.Launch(ctx, justrunit.InstanceSpec{ID: fmt.Sprintf("bench-%d", mem), Host: "pm1", Addr: "10.0.2.15:8080",
		Command: []string{"/bin/guestserver", "-addr", ":8080"}})
	if err != nil {
		return res, nil, err
	}
	res.BootS = time.Since(t0).Seconds()
	fmt.Fprintf(progress, "%d MiB: booted in %.2f s (%s)\n", mem, res.BootS, p.Accel())
	res.FilledMiB = mem * fillPct / 100
	hc := &http.Client{Timeout: 5 * time.Minute}
	resp, err := hc.Post(fmt.Sprintf("http://%s/fill?mib=%d", in.Addr, res.FilledMiB), "text/plain", nil)
	if err != nil {
		return res, nil, fmt.Errorf("fill guest memory: %w", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return res, nil, fmt.Errorf("fill guest memory: %s %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var clones, pauses, downs, migs, sent []float64
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		cl, err := p.Clone(ctx, in.ID, "sandbox", justrunit.CloneOptions{})
		if err != nil {
			return res, nil, err
		}
		r := qemuBenchRun{CloneS: time.Since(t0).Seconds(), PauseMS: qbMillis(cl.Pause)}
		if st, err := p.LastMigration(cl.ID); err == nil {
			r.QEMUDowntimeMS, r.MigrationMS, r.TransferredMiB = qbMillis(st.Downtime), qbMillis(st.Total), float64(st.Transferred)/(1<<20)
		}
		if err := p.Destroy(ctx, cl.ID); err != nil {
			return res, nil, err
		}
		fmt.Fprintf(progress, "%d MiB: clone %d: %.3f s, pause %.1f ms, QEMU downtime %.0f ms\n", mem, i+1, r.CloneS, r.PauseMS, r.QEMUDowntimeMS)
		res.Runs = append(res.Runs, r)
		clones, pauses, downs = append(clones, r.CloneS), append(pauses, r.PauseMS), append(downs, r.QEMUDowntimeMS)
		migs, sent = append(migs, r.MigrationMS), append(sent, r.TransferredMiB)
	}
	res.CloneS, res.PauseMS, res.QEMUDowntimeMS = qbMedian(clones), qbMedian(pauses), qbMedian(downs)
	res.MigrationMS, res.TransferredMiB = qbMedian(migs), qbMedian(sent)
	return res, p, nil
}

func qbMillis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func qbMedian(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	return s[len(s)/2]
}

// qemuCloneBenchReport is "justrunit bench clone --platform qemu": the keys
// of the local platform's report plus the guest's memory, QEMU's own
// downtime measure and the accelerator.
type qemuCloneBenchReport struct {
	*cloneBenchReport
	MemMiB         int     `json:"mem_mib"`
	QEMUDowntimeMS float64 `json:"qemu_downtime_ms"`
	Accel          string  `json:"accel"`
	CloneMethod    string  `json:"clone_method"`
}

// benchCloneQemu is "bench clone" on the qemu platform: a guest of memMiB
// running the guest test server (half its memory written to) is cloned
// live runs times while a prober keeps requesting the original. The
// state_mib key is the memory written; storage and snapshot name the
// qcow2 overlay mechanism.
func benchCloneQemu(ctx context.Context, g *globals, runs, memMiB int, progress io.Writer) (rep *qemuCloneBenchReport, err error) {
	if err := qemu.Requirements(); err != nil {
		return nil, err
	}
	img, err := benchQemuImage(ctx, g, "")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "jri-bench-clone-qemu-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	p, err := qemu.New(qemu.Options{Logger: g.logger, StateDir: tmp, Image: img, MemoryMiB: memMiB, KillWithParent: true})
	if err != nil {
		return nil, err
	}
	rep = &qemuCloneBenchReport{cloneBenchReport: &cloneBenchReport{Platform: "qemu", Cgroup: p.CgroupVersion(),
		Mode: justrunit.CloneLive, Storage: "qcow2 overlay on a frozen backing image", Snapshot: "blockdev-snapshot-sync at pre-switchover",
		StateMiB: memMiB / 2}, MemMiB: memMiB, Accel: p.Accel(), CloneMethod: p.CloneMethod()}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		is, _ := p.Instances(cctx)
		for _, in := range is {
			_ = p.Destroy(cctx, in.ID)
		}
		cerr := p.Close()
		if ents, _ := os.ReadDir(filepath.Join(tmp, "vms")); rep != nil {
			for _, e := range ents {
				if e.Name() != qemu.LockFile {
					rep.Leftovers++
				}
			}
		}
		if err == nil {
			err = cerr
		}
	}()
	in, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "bench-origin", Host: "pm1", Addr: "10.0.2.15:8080",
		Command: []string{"/bin/guestserver", "-addr", ":8080"}})
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	base := "http://" + in.Addr
	resp, err := hc.Post(fmt.Sprintf("%s/fill?mib=%d", base, rep.StateMiB), "text/plain", nil)
	if err != nil {
		return nil, fmt.Errorf("fill guest memory: %w", err)
	}
	resp.Body.Close()
	probe := base + "/work?n=1"
	var steady []time.Duration
	for i := 0; i < 30; i++ {
		t0 := time.Now()
		if err := cbGet(hc, probe); err != nil {
			return nil, err
		}
		steady = append(steady, time.Since(t0))
	}
	rep.SteadyRTMS = cbMillis(cbMedian(steady))

	var clones, pauses, downs []time.Duration
	for i := 0; i < runs; i++ {
		r, c, err := cloneProbed(ctx, hc, probe, func() (*justrunit.Clone, error) {
			return p.Clone(ctx, in.ID, "sandbox", justrunit.CloneOptions{})
		})
		if err != nil {
			return nil, err
		}
		st, _ := p.LastMigration(c.ID)
		rep.Runs = append(rep.Runs, r)
		rep.OriginalMaxRTMS = max(rep.OriginalMaxRTMS, r.ProbeMaxMS)
		rep.OriginalErrors += r.Errors
		clones, pauses, downs = append(clones, r.took), append(pauses, c.Pause), append(downs, st.Downtime)
		if err := p.Destroy(ctx, c.ID); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "run %d: clone %.3fs, pause %.1fms (QEMU downtime %.0fms), original worst %.1fms\n",
			i+1, r.CloneS, r.PauseMS, cbMillis(st.Downtime), r.ProbeMaxMS)
	}
	rep.CloneS = cbMedian(clones).Seconds()
	rep.PauseMS = cbMillis(cbMedian(pauses))
	rep.QEMUDowntimeMS = cbMillis(cbMedian(downs))
	// The targets for a 256 MiB guest.
	rep.Targets = map[string]bool{"clone_s": rep.CloneS <= 2, "pause_ms": rep.PauseMS <= 100}
	return rep, nil
}

// printCloneQemu prints benchCloneQemu's report as text.
func printCloneQemu(w io.Writer, rep *qemuCloneBenchReport) {
	fmt.Fprintf(w, "platform qemu (accel %s, %s, cgroup %s), mode %s, storage %s (snapshot by %s), guest %d MiB (%d MiB written), %d runs\n",
		rep.Accel, rep.CloneMethod, rep.Cgroup, rep.Mode, rep.Storage, rep.Snapshot, rep.MemMiB, rep.StateMiB, len(rep.Runs))
	fmt.Fprintf(w, "clone_s   %.3f  (target ≤ 2: %v)\n", rep.CloneS, rep.Targets["clone_s"])
	fmt.Fprintf(w, "pause_ms  %.1f  (target ≤ 100: %v); QEMU's downtime %.1f ms\n", rep.PauseMS, rep.Targets["pause_ms"], rep.QEMUDowntimeMS)
	fmt.Fprintf(w, "original  steady %.2f ms, worst during clone %.2f ms (%.1fx), %d errors\n",
		rep.SteadyRTMS, rep.OriginalMaxRTMS, rep.OriginalMaxRTMS/max(rep.SteadyRTMS, 0.001), rep.OriginalErrors)
	fmt.Fprintf(w, "leftovers %d\n", rep.Leftovers)
}
