package local

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
)

// bookedOn is the CPU share booked on host, as checkRoom counts it.
func bookedOn(p *Platform, host string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.booked(host, "")
}

// capacityOf is host's capacity in percent of a core.
func capacityOf(p *Platform, host string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.host(host).Cores * 100
}

// checkRoomError checks that err refuses a CPU share for want of room on
// host, with room percent left.
func checkRoomError(t *testing.T, what string, err error, host string, room, capPct float64) {
	t.Helper()
	msg := fmt.Sprintf("host %s has %g%% of %g%% left", host, room, capPct)
	if !isField(err, "cpu") || !strings.Contains(err.Error(), msg) {
		t.Errorf("%s = %v, want a FieldError on cpu saying %q", what, err, msg)
	}
}

// quotaShare reads the CPU share (percent of a core) that instance id's
// cgroup is limited to; 0 is unlimited.
func quotaShare(t *testing.T, p *Platform, id string) float64 {
	t.Helper()
	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	var q, per string
	if p.cg == cgroup.V2 {
		q, per, _ = strings.Cut(read(filepath.Join(cgroup.Root, p.cgPath(id), "cpu.max")), " ")
	} else {
		dir := filepath.Join(cgroup.Root, "cpu", p.cgPath(id))
		q, per = read(filepath.Join(dir, "cpu.cfs_quota_us")), read(filepath.Join(dir, "cpu.cfs_period_us"))
	}
	if q == "max" || q == "-1" {
		return 0
	}
	qv, err1 := strconv.ParseFloat(q, 64)
	pv, err2 := strconv.ParseFloat(per, 64)
	if err := errors.Join(err1, err2); err != nil || pv == 0 {
		t.Fatalf("CPU limit of %s: quota %q period %q: %v", id, q, per, err)
	}
	return qv * 100 / pv
}

// setHook installs testHookApplying for the rest of the test.
func setHook(t *testing.T, f func(id string)) {
	t.Helper()
	testHookApplying = f
	t.Cleanup(func() { testHookApplying = nil })
}

// waitFor receives from c within a bound, or fails the test.
func waitFor[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: not after 20s", what)
		panic("unreachable")
	}
}

// waitBooked waits until the change run in the background reaches
// testHookApplying (entered), or fails the test if it returns first (done).
func waitBooked(t *testing.T, entered <-chan string, done <-chan error, what string) string {
	t.Helper()
	select {
	case id := <-entered:
		return id
	case err := <-done:
		t.Fatalf("%s returned before its change was booked: %v", what, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: not booked after 20s", what)
	}
	panic("unreachable")
}

// TestConcurrentGrowsDoNotOvercommit: two instances on one host each grow
// to a share that fits alone but not together; exactly one grow succeeds,
// the other is refused naming the host and its room, and neither the
// booked total nor the cgroups' quotas ever exceed the host's capacity.
// A migration onto the host races the same way.
func TestConcurrentGrowsDoNotOvercommit(t *testing.T) {
	p := newPlatform(t)
	ctx := context.Background()
	capPct := capacityOf(p, "pm1")
	small, grow := capPct/10, capPct*6/10
	ids := []string{"grow-a", "grow-b"}
	for _, id := range ids {
		launchServer(t, p, serverOpts{id: id, host: "pm1", alloc: justrunit.Allocation{CPU: small}})
	}
	// A third instance on pm2 that fits on pm1 beside the two small ones
	// but not beside a grown one.
	moverCPU := capPct * 35 / 100
	if capacityOf(p, "pm2") < moverCPU {
		t.Skipf("pm2 (%g%%) too small for %g%%", capacityOf(p, "pm2"), moverCPU)
	}
	launchServer(t, p, serverOpts{id: "mover", host: "pm2", alloc: justrunit.Allocation{CPU: moverCPU}})

	t.Run("grow held while another grows", func(t *testing.T) {
		entered, release := make(chan string, 4), make(chan struct{})
		setHook(t, func(id string) {
			entered <- id
			if id == "grow-a" {
				<-release
			}
		})
		done := make(chan error, 1)
		go func() { done <- p.SetAllocation(ctx, "grow-a", justrunit.Allocation{CPU: grow}) }()
		if id := waitBooked(t, entered, done, "SetAllocation(grow-a)"); id != "grow-a" {
			t.Fatalf("hook saw %s, want grow-a", id)
		}
		// grow-a is booked and not yet applied.
		if got, want := bookedOn(p, "pm1"), grow+small; got != want {
			t.Errorf("booked on pm1 while grow-a applies = %g, want %g", got, want)
		}
		err := p.SetAllocation(ctx, "grow-b", justrunit.Allocation{CPU: grow})
		checkRoomError(t, "SetAllocation(grow-b) while grow-a applies", err, "pm1", capPct-grow, capPct)
		err = p.Migrate(ctx, "mover", "pm1")
		checkRoomError(t, "Migrate(mover, pm1) while grow-a applies", err, "pm1", capPct-grow-small, capPct)
		close(release)
		if err := waitFor(t, done, "SetAllocation(grow-a)"); err != nil {
			t.Fatalf("SetAllocation(grow-a) error: %v", err)
		}
		select {
		case id := <-entered:
			t.Errorf("refused change of %s reached its cgroup", id)
		default:
		}
		if got := quotaShare(t, p, "grow-a"); got != grow {
			t.Errorf("grow-a's cgroup share = %g%%, want %g%%", got, grow)
		}
		if got := quotaShare(t, p, "grow-b"); got != small {
			t.Errorf("grow-b's cgroup share = %g%%, want %g%% (its grow was refused)", got, small)
		}
		testHookApplying = nil
		if err := p.SetAllocation(ctx, "grow-a", justrunit.Allocation{CPU: small}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("migration held while another grows", func(t *testing.T) {
		entered, release := make(chan string, 4), make(chan struct{})
		setHook(t, func(id string) {
			entered <- id
			if id == "mover" {
				<-release
			}
		})
		done := make(chan error, 1)
		go func() { done <- p.Migrate(ctx, "mover", "pm1") }()
		waitBooked(t, entered, done, "Migrate(mover, pm1)")
		if got, want := bookedOn(p, "pm1"), 2*small+moverCPU; got != want {
			t.Errorf("booked on pm1 while mover migrates there = %g, want %g", got, want)
		}
		if got := bookedOn(p, "pm2"); got != moverCPU {
			t.Errorf("booked on pm2 while mover leaves it = %g, want %g (until the move lands)", got, moverCPU)
		}
		if err := p.SetPower(ctx, "pm1", false); !isField(err, "host") {
			t.Errorf("SetPower(pm1 off) while mover migrates there = %v, want a FieldError on host", err)
		}
		err := p.SetAllocation(ctx, "grow-b", justrunit.Allocation{CPU: grow})
		checkRoomError(t, "SetAllocation(grow-b) while mover migrates to pm1", err, "pm1", capPct-small-moverCPU, capPct)
		close(release)
		if err := waitFor(t, done, "Migrate(mover)"); err != nil {
			t.Fatalf("Migrate(mover, pm1) error: %v", err)
		}
		testHookApplying = nil
		if err := p.Migrate(ctx, "mover", "pm2"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("free race", func(t *testing.T) {
		// Every change is checked at the moment it is booked, the most a
		// host holds.
		var mu sync.Mutex
		maxBooked := 0.0
		setHook(t, func(string) {
			b := bookedOn(p, "pm1")
			mu.Lock()
			maxBooked = max(maxBooked, b)
			mu.Unlock()
		})
		for round := range 20 {
			start := make(chan struct{})
			errs := make([]error, len(ids))
			var wg sync.WaitGroup
			for i, id := range ids {
				wg.Go(func() {
					<-start
					errs[i] = p.SetAllocation(ctx, id, justrunit.Allocation{CPU: grow})
				})
			}
			close(start)
			wg.Wait()
			var won []string
			for i, err := range errs {
				if err == nil {
					won = append(won, ids[i])
				} else {
					checkRoomError(t, fmt.Sprintf("round %d: SetAllocation(%s)", round, ids[i]), err, "pm1", capPct-grow, capPct)
				}
			}
			if len(won) != 1 {
				t.Fatalf("round %d: %d grows succeeded (%v), want exactly 1; errors %v", round, len(won), won, errs)
			}
			if sum := quotaShare(t, p, ids[0]) + quotaShare(t, p, ids[1]); sum > capPct+1e-9 {
				t.Fatalf("round %d: the cgroups' shares add up to %g%%, above pm1's %g%%", round, sum, capPct)
			}
			if b := bookedOn(p, "pm1"); b != grow+small {
				t.Fatalf("round %d: booked on pm1 = %g, want %g", round, b, grow+small)
			}
			if err := p.SetAllocation(ctx, won[0], justrunit.Allocation{CPU: small}); err != nil {
				t.Fatal(err)
			}
		}
		if maxBooked > capPct+1e-9 {
			t.Errorf("booked on pm1 reached %g%%, above its capacity %g%%", maxBooked, capPct)
		}
	})
}

// TestCloneAndGrowDoNotOvercommit: a clone being made and a grow of
// another clone on the same sandbox host book from the same figure, so
// either one refuses the other when both do not fit.
func TestCloneAndGrowDoNotOvercommit(t *testing.T) {
	p := newPlatform(t, coldClones)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	capPct := capacityOf(p, "sandbox")
	small, grow := capPct/10, capPct*6/10
	launchServer(t, p, serverOpts{id: "orig", host: "pm1"})
	c1, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: small}})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}

	// A grow being applied refuses a clone that would not fit beside it.
	entered, release := make(chan string, 4), make(chan struct{})
	setHook(t, func(id string) {
		entered <- id
		<-release
	})
	done := make(chan error, 1)
	go func() { done <- p.SetAllocation(ctx, c1.ID, justrunit.Allocation{CPU: grow}) }()
	waitBooked(t, entered, done, "SetAllocation("+c1.ID+")")
	_, err = p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: grow}})
	checkRoomError(t, "Clone(cpu="+fmt.Sprint(grow)+") while a grow applies", err, "sandbox", capPct-grow, capPct)
	close(release)
	if err := waitFor(t, done, "SetAllocation("+c1.ID+")"); err != nil {
		t.Fatalf("SetAllocation(%s) error: %v", c1.ID, err)
	}
	testHookApplying = nil
	if err := p.SetAllocation(ctx, c1.ID, justrunit.Allocation{CPU: small}); err != nil {
		t.Fatal(err)
	}

	// A clone being made refuses a grow that would not fit beside it.
	var hookErr error
	testHookCloneStarted = func(in *inst) {
		testHookCloneStarted = nil
		hookErr = p.SetAllocation(ctx, c1.ID, justrunit.Allocation{CPU: grow})
	}
	t.Cleanup(func() { testHookCloneStarted = nil })
	c2, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: grow}})
	if err != nil {
		t.Fatalf("Clone(cpu=%g) error: %v", grow, err)
	}
	checkRoomError(t, "SetAllocation("+c1.ID+") while a clone is made", hookErr, "sandbox", capPct-grow, capPct)
	if b := bookedOn(p, "sandbox"); b != small+grow {
		t.Errorf("booked on sandbox = %g, want %g", b, small+grow)
	}
	for _, id := range []string{c2.ID, c1.ID} {
		if err := p.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy(%s) error: %v", id, err)
		}
	}
}

// TestChangeWhileStarting: SetAllocation and Migrate refuse an instance
// whose Launch, or a clone whose Clone, is under way, naming it and saying
// it is still starting, as Clone refuses such an original; the allocation
// the clone was asked with is the one it gets, and once whole it changes.
func TestChangeWhileStarting(t *testing.T) {
	p := newPlatform(t, coldClones)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	changes := func(id, host string) []error {
		return []error{
			p.SetAllocation(ctx, id, justrunit.Allocation{CPU: 30}),
			p.Migrate(ctx, id, host),
		}
	}
	check := func(id string, errs []error) {
		t.Helper()
		for i, err := range errs {
			op := []string{"SetAllocation", "Migrate"}[i]
			if err == nil || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "still starting") {
				t.Errorf("%s(%s) while it starts = %v, want an error naming it, saying it is still starting", op, id, err)
			}
		}
	}

	var launchErrs []error
	testHookStarting = func(in *inst) {
		if in.ID == "young" {
			launchErrs = changes(in.ID, "pm2")
		}
	}
	t.Cleanup(func() { testHookStarting = nil })
	launchServer(t, p, serverOpts{id: "young", host: "pm1"})
	testHookStarting = nil
	check("young", launchErrs)

	// A clone's cgroup and process exist while it is waited for.
	var cid string
	var cloneErrs []error
	testHookCloneStarted = func(in *inst) {
		cid, cloneErrs = in.ID, changes(in.ID, "sandbox")
	}
	t.Cleanup(func() { testHookCloneStarted = nil })
	asked := justrunit.Allocation{CPU: 20}
	cl, err := p.Clone(ctx, "young", "sandbox", justrunit.CloneOptions{Alloc: asked})
	testHookCloneStarted = nil
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	check(cid, cloneErrs)
	if cl.Alloc != asked {
		t.Errorf("clone's allocation = %v, want %v, the one it was asked with", cl.Alloc, asked)
	}
	if got := quotaShare(t, p, cl.ID); math.Abs(got-asked.CPU) > 0.5 {
		t.Errorf("clone's CPU quota = %g%%, want %g%%", got, asked.CPU)
	}
	if err := p.SetAllocation(ctx, cl.ID, justrunit.Allocation{CPU: 30}); err != nil {
		t.Errorf("SetAllocation(%s) once whole = %v, want nil", cl.ID, err)
	}
	if err := p.Migrate(ctx, "young", "pm2"); err != nil {
		t.Errorf("Migrate(young, pm2) once whole = %v, want nil", err)
	}
}
