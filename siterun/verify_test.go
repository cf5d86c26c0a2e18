package siterun

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/measure"
)

// shortWindow is a check's window in these tests.
var shortWindow = measure.WindowConfig{Max: 300 * time.Millisecond, Min: 300 * time.Millisecond, MinSamples: 10}

// TestVerifyRestoresAfterPartialChange checks that the on-line allocation
// is restored when the change failed after the platform applied part of
// it, and when the check's context ends during its window.
func TestVerifyRestoresAfterPartialChange(t *testing.T) {
	s, p := memSite(t, 0)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	orig := p.alloc("app0")

	p.mu.Lock()
	p.partial = map[string]bool{"app0": true}
	p.mu.Unlock()
	if _, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: shortWindow}); !errors.Is(err, errPartial) || errors.Is(err, justrunit.ErrNotRestored) {
		t.Fatalf("Verify with a change that failed half-way = %v, want the platform's error, restored", err)
	}
	if a := p.alloc("app0"); a != orig {
		t.Errorf("after a change that failed half-way app0 is at %s, want %s restored", a, orig)
	}

	cctx, stop := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, stop)
	win := shortWindow
	win.Max, win.Min = 10*time.Second, 10*time.Second
	if _, err := s.Verify(cctx, st, m, justrunit.Point{50}, VerifyOptions{Window: win}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify cancelled in its window = %v, want context.Canceled", err)
	}
	if a := p.alloc("app0"); a != orig {
		t.Errorf("after a cancelled check app0 is at %s, want %s restored", a, orig)
	}
}

// TestVerifyOneAtATime runs two checks of the same instance and a plan
// at once: each check changes the allocation and restores what it found
// before another change, and the plan's allocation is what stays.
func TestVerifyOneAtATime(t *testing.T) {
	s, p := memSite(t, 0)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hosts, _ := p.Hosts(ctx)
	insts, _ := p.Instances(ctx)
	from := planner.State(hosts, insts)
	plan := planner.Plan{Steps: []planner.Step{{Kind: planner.SetAllocation, Instance: "app0", Alloc: &justrunit.Allocation{CPU: 60}}}}

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, cpu := range []float64{50, 100} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Verify(ctx, st, m, justrunit.Point{cpu}, VerifyOptions{Window: shortWindow})
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, errs[2] = s.ApplyPlan(ctx, plan, from)
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	changes := p.changes()
	for i := 0; i < len(changes); i++ {
		c := changes[i]
		if c.before.CPU == 80 && c.after.CPU == 60 { // the plan's
			continue
		}
		if i+1 == len(changes) || changes[i+1].after != c.before {
			t.Fatalf("changes %+v: the check's change %d is not followed by its restore of %s", changes, i, c.before)
		}
		i++
	}
	if a := p.alloc("app0"); a.CPU != 60 {
		t.Errorf("app0 at %s after two checks and a plan to cpu=60, want the plan's (changes %+v)", a, changes)
	}
}

// TestVerifyRefusesBeforeTouching checks that what would make the
// comparison fail is found before the on-line instance is changed.
func TestVerifyRefusesBeforeTouching(t *testing.T) {
	s, p := memSite(t, 0)
	st, _ := cpuStudy(t)
	other, _ := justrunit.ParseParameter("cpu=50,80,100")
	for _, c := range []struct {
		name string
		m    func(*testing.T) *justrunit.Matrix
		want string
	}{
		{"AnotherSpace", func(t *testing.T) *justrunit.Matrix {
			m, _ := justrunit.NewMatrix(justrunit.Space{Params: []justrunit.Parameter{other}}, st.Metrics)
			return m
		}, "another space"},
		{"UnknownMetric", func(t *testing.T) *justrunit.Matrix {
			_, m := cpuStudy(t)
			m.Metrics = append(m.Metrics, "rt_p42")
			for i := range m.Rows {
				m.Rows[i].Cells = append(m.Rows[i].Cells, justrunit.Cell{Value: 1, Prov: justrunit.Measured})
			}
			return m
		}, "rt_p42"},
		{"Empty", func(t *testing.T) *justrunit.Matrix {
			m, _ := justrunit.NewMatrix(st.Space, st.Metrics)
			return m
		}, "neither measured nor interpolated"},
		{"Unmeasurable", func(t *testing.T) *justrunit.Matrix {
			m, _ := justrunit.NewMatrix(st.Space, st.Metrics)
			if err := m.MarkUnmeasurable(justrunit.Point{50}, "3 successful responses in the full window"); err != nil {
				t.Fatal(err)
			}
			return m
		}, "unmeasurable: 3 successful"},
	} {
		t.Run(c.name, func(t *testing.T) {
			win := shortWindow
			win.Max, win.Min = 10*time.Second, 10*time.Second
			start := time.Now()
			_, err := s.Verify(context.Background(), st, c.m(t), justrunit.Point{50}, VerifyOptions{Window: win})
			if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Verify = %v, want an invalid saying %q", err, c.want)
			}
			if n := len(p.changes()); n != 0 || time.Since(start) > 5*time.Second {
				t.Errorf("Verify changed the on-line instance %d times and took %v before refusing", n, time.Since(start))
			}
		})
	}
}

// TestPairedVerifyCloneFails checks that a paired check whose clone fails
// at once stops the on-line window, restores the on-line instance, removes
// the clone and gives the sandbox back, without running the window out.
func TestPairedVerifyCloneFails(t *testing.T) {
	lag := 100 * time.Millisecond
	s, p := memSite(t, lag)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	refused := errors.New("clone refused its allocation")
	p.mu.Lock()
	p.cloneSetErr = refused
	p.mu.Unlock()
	win := measure.WindowConfig{WarmUp: lag, Max: 10 * time.Second, MinSamples: 10}
	start := time.Now()
	_, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: win, Paired: true})
	took := time.Since(start)
	if !errors.Is(err, refused) || !strings.Contains(err.Error(), "paired clone") {
		t.Fatalf("paired Verify with a failing clone = %v, want the clone's error", err)
	}
	if took > 5*time.Second {
		t.Errorf("paired Verify took %v with a clone that failed at once; the on-line window is %v", took, win.Max)
	}
	if a := p.alloc("app0"); a.CPU != 80 {
		t.Errorf("app0 at %s after the check, want cpu=80 restored", a)
	}
	if left := p.clonesLeft(); len(left) != 0 {
		t.Errorf("clones left: %v", left)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	release, err := s.claimSandbox(short, "sb")
	if err != nil {
		t.Fatalf("sandbox after the check: %v", err)
	}
	release()
}

// TestPairedVerifyRestoresFirst checks that a paired check restores the
// on-line instance when its own window ends, before the clone's, which
// ends the clone lag later.
func TestPairedVerifyRestoresFirst(t *testing.T) {
	lag := 300 * time.Millisecond
	s, p := memSite(t, lag)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	win := measure.WindowConfig{WarmUp: lag, Max: 400 * time.Millisecond, MinSamples: 10}
	v, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: win, Paired: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.Sandbox == nil || len(v.SandboxRelError) != len(v.Metrics) || len(v.RelError) != len(v.Metrics) {
		t.Fatalf("paired verification %+v: want the clone's observation and errors", v)
	}
	ev := p.events()
	restore := slices.Index(ev, "set app0 80")
	clone := slices.IndexFunc(ev, func(e string) bool { return strings.HasPrefix(e, "set app0-c") })
	var cloneStop int // the clone's meter read at the end of its window
	for i, e := range ev {
		if strings.HasPrefix(e, "usage app0-c") {
			cloneStop = i
		}
	}
	if restore < 0 || clone < 0 || restore > cloneStop {
		t.Errorf("events %v: want app0 restored (set app0 80) before the clone's window ends (its last usage)", ev)
	}
	if a := p.alloc("app0"); a.CPU != 80 {
		t.Errorf("app0 at %s after the check, want cpu=80", a)
	}
}

// flakyPlatform is a memPlatform whose SetAllocation of app0 back to
// cpu=80 (a check's restore) fails failRestores times with errFlaky, and
// which records the allocations its clones are made with and set to.
type flakyPlatform struct {
	*memPlatform
	fmu          sync.Mutex
	failRestores int
	restores     int // attempts to restore app0
	cloneAllocs  []justrunit.Allocation
}

var errFlaky = errors.New("cgroup write: device or resource busy")

func (p *flakyPlatform) Clone(ctx context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	p.fmu.Lock()
	p.cloneAllocs = append(p.cloneAllocs, opts.Alloc)
	p.fmu.Unlock()
	return p.memPlatform.Clone(ctx, id, host, opts)
}

func (p *flakyPlatform) SetAllocation(ctx context.Context, id string, a justrunit.Allocation) error {
	p.fmu.Lock()
	if id == "app0" && a.CPU == 80 {
		p.restores++
		if p.failRestores > 0 {
			p.failRestores--
			p.fmu.Unlock()
			return errFlaky
		}
	}
	if strings.HasPrefix(id, "app0-c") {
		p.cloneAllocs = append(p.cloneAllocs, a)
	}
	p.fmu.Unlock()
	return p.memPlatform.SetAllocation(ctx, id, a)
}

// flakySite is memSite on a flakyPlatform.
func flakySite(t *testing.T, lag time.Duration) (*Site, *flakyPlatform) {
	s, p := memSite(t, lag)
	fp := &flakyPlatform{memPlatform: p}
	s.Platform = fp
	return s, fp
}

// TestVerifyRetriesRestore checks that a restore of the on-line allocation
// that fails a few times is tried again until it holds.
func TestVerifyRetriesRestore(t *testing.T) {
	s, p := flakySite(t, 0)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.fmu.Lock()
	p.failRestores = 2
	p.fmu.Unlock()
	if _, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: shortWindow}); err != nil {
		t.Fatalf("Verify with a restore that fails twice = %v, want it retried", err)
	}
	if a := p.alloc("app0"); a.CPU != 80 {
		t.Errorf("app0 at %s after the check, want cpu=80 restored", a)
	}
}

// TestVerifyRestoreFails checks that a restore that keeps failing ends in
// a bounded time with an error that names the instance, where it is left
// and what it should have, joined with the measurement's error.
func TestVerifyRestoreFails(t *testing.T) {
	s, p := flakySite(t, 0)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.fmu.Lock()
	p.failRestores = 1 << 30
	p.fmu.Unlock()

	start := time.Now()
	v, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: shortWindow})
	if !errors.Is(err, errFlaky) || !errors.Is(err, justrunit.ErrNotRestored) {
		t.Fatalf("Verify with a restore that always fails = %v, want the platform's error and ErrNotRestored", err)
	}
	if !v.Point.Equal(justrunit.Point{50}) || len(v.RelError) != len(m.Metrics) {
		t.Errorf("Verify with a restore that failed after the window = %+v, want the point's measurement with the error", v)
	}
	for _, want := range []string{"app0", "left at cpu=50%", "should have cpu=80%"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Verify = %q, want it to say %q", err, want)
		}
	}
	p.fmu.Lock()
	tries := p.restores
	p.fmu.Unlock()
	if tries < 2 {
		t.Errorf("the restore was tried %d times, want it retried", tries)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Verify took %v with a failing restore", took)
	}

	// The measurement's error comes with the restore's.
	if err := p.memPlatform.SetAllocation(ctx, "app0", justrunit.Allocation{CPU: 80}); err != nil { // by hand
		t.Fatal(err)
	}
	p.fmu.Lock()
	p.failRestores, p.restores = 1<<30, 0
	p.fmu.Unlock()
	p.mu.Lock()
	p.partial = map[string]bool{"app0": true}
	p.mu.Unlock()
	_, err = s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: shortWindow})
	if !errors.Is(err, errPartial) || !errors.Is(err, errFlaky) || !errors.Is(err, justrunit.ErrNotRestored) || !strings.Contains(err.Error(), "should have cpu=80%") {
		t.Errorf("Verify with a failed change and restore = %v, want both errors and ErrNotRestored", err)
	}
}

// TestVerifySetsBackFirst checks that a check of an instance an earlier
// check could not restore sets it back to its allocation before it reads
// what to restore (else it would restore the earlier check's point for
// good), refuses when it cannot, and that a plan's allocation replaces
// the one owed.
func TestVerifySetsBackFirst(t *testing.T) {
	s, p := flakySite(t, 0)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failRestores := func(n int) {
		p.fmu.Lock()
		p.failRestores = n
		p.fmu.Unlock()
	}
	check := func(cpu float64) error {
		_, err := s.Verify(ctx, st, m, justrunit.Point{cpu}, VerifyOptions{Window: shortWindow})
		return err
	}

	failRestores(1 << 30)
	if err := check(50); !errors.Is(err, justrunit.ErrNotRestored) {
		t.Fatalf("Verify with a restore that always fails = %v, want ErrNotRestored", err)
	}
	// It still cannot be set back: the next check changes nothing.
	n := len(p.changes())
	if err := check(100); !errors.Is(err, justrunit.ErrNotRestored) || !strings.Contains(err.Error(), "did not start") {
		t.Fatalf("Verify of an instance still left at a check's allocation = %v, want ErrNotRestored saying the check did not start", err)
	}
	if got := p.changes()[n:]; len(got) != 0 {
		t.Errorf("a refused check changed the on-line instance: %+v", got)
	}
	// Nor does a study clone it from there.
	study := *st
	if x, err := s.PrepareStudy(ctx, &study, StudyOptions{}); !errors.Is(err, justrunit.ErrNotRestored) || !strings.Contains(err.Error(), "clones would start from the wrong one") {
		if x != nil {
			x.Close(ctx)
		}
		t.Fatalf("PrepareStudy of an instance left at a check's allocation = %v, want ErrNotRestored", err)
	}
	// Now it can: set back, checked, restored to what it should have.
	failRestores(0)
	n = len(p.changes())
	if err := check(100); err != nil {
		t.Fatalf("Verify once the platform can set the instance back = %v", err)
	}
	want := []allocChange{{"app0", justrunit.Allocation{CPU: 50}, justrunit.Allocation{CPU: 80}},
		{"app0", justrunit.Allocation{CPU: 80}, justrunit.Allocation{CPU: 100}},
		{"app0", justrunit.Allocation{CPU: 100}, justrunit.Allocation{CPU: 80}}}
	if got := p.changes()[n:]; !slices.Equal(got, want) {
		t.Errorf("changes = %+v, want app0 set back to cpu=80 before the check, and restored to it: %+v", got, want)
	}

	// A plan's allocation replaces the one owed.
	failRestores(1 << 30)
	if err := check(50); !errors.Is(err, justrunit.ErrNotRestored) {
		t.Fatalf("Verify with a restore that always fails = %v, want ErrNotRestored", err)
	}
	hosts, _ := p.Hosts(ctx)
	insts, _ := p.Instances(ctx)
	plan := planner.Plan{Steps: []planner.Step{{Kind: planner.SetAllocation, Instance: "app0", Alloc: &justrunit.Allocation{CPU: 60}}}}
	if _, err := s.ApplyPlan(ctx, plan, planner.State(hosts, insts)); err != nil {
		t.Fatal(err)
	}
	if err := check(100); err != nil {
		t.Fatalf("Verify after a plan set the instance = %v", err)
	}
	if a := p.alloc("app0"); a.CPU != 60 {
		t.Errorf("app0 at %s after a plan to cpu=60 and a check, want the plan's", a)
	}
}

// signalHandler is a slog handler that closes waiting when a record's
// message starts with prefix.
type signalHandler struct {
	prefix  string
	once    sync.Once
	waiting chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.once.Do(func() { close(h.waiting) })
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

// TestPairedVerifyClonesUnderLock checks that a paired check's clone
// starts from the on-line allocation as it is once the check holds the
// on-line instances, not as it was before it waited for them.
func TestPairedVerifyClonesUnderLock(t *testing.T) {
	lag := 50 * time.Millisecond
	s, p := flakySite(t, lag)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := &signalHandler{prefix: "on-line instances being changed", waiting: make(chan struct{})}
	s.log = slog.New(h)

	unlock, err := s.lockOnline(ctx) // a plan, say
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		win := measure.WindowConfig{WarmUp: lag, Max: 300 * time.Millisecond, MinSamples: 10}
		_, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: win, Paired: true})
		done <- err
	}()
	select {
	case <-h.waiting:
	case err := <-done:
		t.Fatalf("Verify = %v before the plan ended", err)
	case <-ctx.Done():
		t.Fatal("Verify did not wait for the plan")
	}
	// The plan gives app0 a memory limit.
	if err := p.memPlatform.SetAllocation(ctx, "app0", justrunit.Allocation{CPU: 80, MemoryMiB: 256}); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	p.fmu.Lock()
	allocs := slices.Clone(p.cloneAllocs)
	p.fmu.Unlock()
	if len(allocs) == 0 {
		t.Fatal("no clone made")
	}
	for _, a := range allocs {
		if a.MemoryMiB != 256 {
			t.Errorf("the paired clone was given %s (all: %v), want mem=256MiB as app0 has when the check starts", a, allocs)
		}
	}
	if a := p.alloc("app0"); a != (justrunit.Allocation{CPU: 80, MemoryMiB: 256}) {
		t.Errorf("app0 at %s after the check, want cpu=80%% mem=256MiB", a)
	}
}

// TestPairedVerifyCloneDies checks that a paired clone that stops running
// in the middle of the window ends the on-line window early, with an error
// saying the clone died, and that the on-line instance is restored.
func TestPairedVerifyCloneDies(t *testing.T) {
	lag := 50 * time.Millisecond
	s, p := flakySite(t, lag)
	st, m := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	win := measure.WindowConfig{WarmUp: lag, Max: 8 * time.Second, MinSamples: 10}

	// The clone dies once the check sets it to the point.
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p.fmu.Lock()
			set := len(p.cloneAllocs) > 1 // Clone's, then the point's
			p.fmu.Unlock()
			if !set {
				continue
			}
			time.Sleep(200 * time.Millisecond)
			p.mu.Lock()
			for i := range p.insts {
				if p.insts[i].Origin != "" {
					p.insts[i].State = "exited"
				}
			}
			p.mu.Unlock()
			return
		}
	}()
	start := time.Now()
	_, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: win, Paired: true})
	took := time.Since(start)
	if !errors.Is(err, experiment.ErrCloneDied) || !strings.Contains(err.Error(), "paired clone") {
		t.Errorf("paired Verify with a clone that died = %v, want the clone's death", err)
	}
	if took > win.Max/2 {
		t.Errorf("paired Verify took %v with a clone that died after 200ms; the on-line window is %v", took, win.Max)
	}
	if a := p.alloc("app0"); a.CPU != 80 {
		t.Errorf("app0 at %s after the check, want cpu=80 restored", a)
	}
	if left := p.clonesLeft(); len(left) != 0 {
		t.Errorf("clones left: %v", left)
	}
}
