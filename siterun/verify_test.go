package siterun

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
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
	if _, err := s.Verify(ctx, st, m, justrunit.Point{50}, VerifyOptions{Window: shortWindow}); !errors.Is(err, errPartial) {
		t.Fatalf("Verify with a change that failed half-way = %v, want the platform's error", err)
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
