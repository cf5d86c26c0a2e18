package planner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/justrunit/justrunit"
)

// fakePlatform is a test double of the platform the plan is applied to
// (outside the unit under test). Like the local platform it refuses a
// migration or allocation that would put more CPU (or memory, where the
// host accounts it) on a host than it has, a migration to a powered-off or
// sandbox host, and powering off a host that still runs instances; and it
// checks after every call that no host is over its capacity.
type fakePlatform struct {
	mu     sync.Mutex
	hosts  map[string]*justrunit.Host
	insts  map[string]*justrunit.Instance
	usedC  map[string]float64 // per host, the sum of its instances' CPU
	usedM  map[string]int64
	calls  []string
	failAt int   // the call number (from 1) that fails with errInjected; 0 = none
	broken error // the first capacity violation seen
}

var errInjected = errors.New("injected failure")

var (
	_ justrunit.Platform    = (*fakePlatform)(nil)
	_ justrunit.Migrator    = (*fakePlatform)(nil)
	_ justrunit.PowerSwitch = (*fakePlatform)(nil)
)

func newFake(in Input) *fakePlatform {
	f := &fakePlatform{hosts: map[string]*justrunit.Host{}, insts: map[string]*justrunit.Instance{},
		usedC: map[string]float64{}, usedM: map[string]int64{}}
	for _, h := range in.Hosts {
		h := h
		f.hosts[h.Name] = &h
	}
	for _, d := range in.Instances {
		f.insts[d.ID] = &justrunit.Instance{ID: d.ID, Host: d.Host, Alloc: d.Current, State: "running"}
		f.usedC[d.Host] += d.Current.CPU
		f.usedM[d.Host] += d.Current.MemoryMiB
	}
	return f
}

func (f *fakePlatform) Name() string                         { return "fake" }
func (f *fakePlatform) Capabilities() []justrunit.Capability { return nil }
func (f *fakePlatform) Hosts(context.Context) ([]justrunit.Host, error) {
	return nil, justrunit.ErrNotImplemented
}
func (f *fakePlatform) Instances(context.Context) ([]justrunit.Instance, error) {
	return nil, justrunit.ErrNotImplemented
}
func (f *fakePlatform) Clone(context.Context, string, string, justrunit.CloneOptions) (*justrunit.Clone, error) {
	return nil, justrunit.ErrUnsupported
}
func (f *fakePlatform) Usage(context.Context, string) (justrunit.Usage, error) {
	return justrunit.Usage{}, justrunit.ErrUnsupported
}
func (f *fakePlatform) Destroy(context.Context, string) error { return justrunit.ErrUnsupported }

// call records a call and tells whether it is the one to fail.
func (f *fakePlatform) call(format string, args ...any) error {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	if len(f.calls) == f.failAt {
		return errInjected
	}
	return nil
}

// room reports whether host h can take cpu and mem besides what its
// instances other than skip have.
func (f *fakePlatform) room(h *justrunit.Host, cpu float64, mem int64, skip string) error {
	usedC, usedM := f.usedC[h.Name], f.usedM[h.Name]
	if x, ok := f.insts[skip]; ok && x.Host == h.Name {
		usedC -= x.Alloc.CPU
		usedM -= x.Alloc.MemoryMiB
	}
	if usedC+cpu > h.Cores*100+1e-6 {
		return justrunit.Invalid("cpu", cpu, "host %s has %g%% of %g%% left", h.Name, h.Cores*100-usedC, h.Cores*100)
	}
	if h.MemoryMiB > 0 && usedM+mem > h.MemoryMiB {
		return justrunit.Invalid("mem", mem, "host %s has %d of %d MiB left", h.Name, h.MemoryMiB-usedM, h.MemoryMiB)
	}
	return nil
}

// audit records the first host over its capacity among those named.
func (f *fakePlatform) audit(hosts ...string) {
	for _, name := range hosts {
		if h, ok := f.hosts[name]; ok && f.broken == nil {
			if err := f.room(h, 0, 0, ""); err != nil {
				f.broken = fmt.Errorf("after %q: %w", f.calls[len(f.calls)-1], err)
			}
		}
	}
}

func (f *fakePlatform) SetAllocation(_ context.Context, id string, a justrunit.Allocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("set %s %s", id, a); err != nil {
		return err
	}
	x, ok := f.insts[id]
	if !ok {
		return justrunit.ErrNotFound
	}
	h := f.hosts[x.Host]
	if !h.On {
		return justrunit.Invalid("host", h.Name, "is powered off")
	}
	if err := f.room(h, a.CPU, a.MemoryMiB, id); err != nil {
		return err
	}
	f.usedC[h.Name] += a.CPU - x.Alloc.CPU
	f.usedM[h.Name] += a.MemoryMiB - x.Alloc.MemoryMiB
	x.Alloc = a
	f.audit(h.Name)
	return nil
}

func (f *fakePlatform) Migrate(_ context.Context, id, host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("migrate %s %s", id, host); err != nil {
		return err
	}
	x, ok := f.insts[id]
	h, hok := f.hosts[host]
	switch {
	case !ok:
		return justrunit.ErrNotFound
	case !hok:
		return justrunit.Invalid("host", host, "unknown")
	case !h.On:
		return justrunit.Invalid("host", host, "is powered off")
	case h.Sandbox:
		return justrunit.Invalid("host", host, "is a sandbox host")
	}
	if err := f.room(h, x.Alloc.CPU, x.Alloc.MemoryMiB, id); err != nil {
		return err
	}
	from := x.Host
	f.usedC[from] -= x.Alloc.CPU
	f.usedM[from] -= x.Alloc.MemoryMiB
	f.usedC[host] += x.Alloc.CPU
	f.usedM[host] += x.Alloc.MemoryMiB
	x.Host = host
	f.audit(from, host)
	return nil
}

func (f *fakePlatform) SetPower(_ context.Context, host string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("power %s %v", host, on); err != nil {
		return err
	}
	h, ok := f.hosts[host]
	if !ok {
		return justrunit.ErrNotFound
	}
	if h.Sandbox {
		return justrunit.Invalid("host", host, "the sandbox is not the planner's")
	}
	if !on && (f.usedC[host] != 0 || f.usedM[host] != 0 || f.runs(host)) {
		return justrunit.Invalid("host", host, "still runs instances")
	}
	h.On = on
	return nil
}

// runs reports whether any instance is on host. Power-offs are few, so a
// scan is fine.
func (f *fakePlatform) runs(host string) bool {
	for _, x := range f.insts {
		if x.Host == host {
			return true
		}
	}
	return false
}

// checkSteps applies pl to a fake platform holding in's site and checks
// that every step was accepted, no host was ever over its capacity, and the
// site ends as planned.
func checkSteps(t *testing.T, in Input, pl Plan) {
	t.Helper()
	f := newFake(in)
	done, err := Apply(context.Background(), pl, f)
	if err != nil {
		t.Fatalf("Apply: %v (after %d of %d steps)", err, len(done), len(pl.Steps))
	}
	if len(done) != len(pl.Steps) {
		t.Fatalf("Apply ran %d of %d steps", len(done), len(pl.Steps))
	}
	if f.broken != nil {
		t.Fatalf("capacity exceeded mid-way: %v", f.broken)
	}
	for _, d := range in.Instances {
		x := f.insts[d.ID]
		if x.Host != pl.Placement[d.ID] || x.Alloc != d.Target() {
			t.Errorf("%s ends on %s with %s, want %s with %s", d.ID, x.Host, x.Alloc, pl.Placement[d.ID], d.Target())
		}
	}
	for _, h := range pl.Hosts {
		if f.hosts[h.Name].On != h.On {
			t.Errorf("host %s: on = %v, want %v", h.Name, f.hosts[h.Name].On, h.On)
		}
	}
	for _, h := range in.Hosts {
		if h.Sandbox && f.hosts[h.Name].On != h.On {
			t.Errorf("sandbox host %s changed power", h.Name)
		}
	}
}

// TestApplyRandom applies heuristic and exact plans of many random sites
// (grown and shrunk requirements) to the fake platform.
func TestApplyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for c := range 300 {
		in := smallSite(r, 6, 12)
		pl, err := Heuristic(in)
		if errors.Is(err, ErrNoFit) {
			continue
		}
		if err != nil {
			t.Fatalf("case %d: %v", c, err)
		}
		checkSteps(t, in, pl)
		if pl, err = Exact(in, Limit{Nodes: 1_000_000}); err != nil {
			t.Fatalf("case %d: Exact: %v", c, err)
		}
		checkSteps(t, in, pl)
	}
	for c := range 20 {
		in := randomSite(r, siteSpec{
			hosts: 60, instances: 200,
			classes: []class{{name: "big", cores: 8, memoryMiB: 16384, idle: 150, share: 0.3}, {name: "std", cores: 4, memoryMiB: 8192, idle: 90, share: 0.7}},
			cpuLo:   10, cpuHi: 200, memLo: 128, memHi: 2048, change: 0.5, spareOn: 0.5,
		})
		pl, err := Heuristic(in)
		if err != nil {
			t.Fatalf("medium case %d: %v", c, err)
		}
		checkPlan(t, in, pl)
		checkSteps(t, in, pl)
	}
}

// TestOrderShrinkBeforeGrow: on a full host, the allocation that shrinks is
// set before the one that grows.
func TestOrderShrinkBeforeGrow(t *testing.T) {
	in := Input{
		Hosts:     []justrunit.Host{host("a", 2, true)},
		Instances: []Demand{grown("grows", "a", 50, 100), grown("shrinks", "a", 100, 50), inst("stays", "a", 50)},
	}
	pl, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	got := stepStrings(pl)
	want := []string{
		"set allocation of shrinks on a to cpu=50% (was cpu=100%)",
		"set allocation of grows on a to cpu=100% (was cpu=50%)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("steps\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	checkSteps(t, in, pl)
}

// TestOrderStaging: two full hosts swapping instances need a third host
// to stage one on; a powered one with room if any, else one powered on for
// the purpose and off again; with none, ErrNoSafeOrder.
func TestOrderStaging(t *testing.T) {
	site := func(third bool) Input {
		return Input{
			Hosts:     []justrunit.Host{host("a", 1, true), host("b", 1, true), host("c", 1, third)},
			Instances: []Demand{inst("x", "a", 70), inst("x2", "a", 30), inst("y", "b", 70), inst("y2", "b", 30)},
		}
	}
	// The swap x ↔ y is not optimal, so it is built by hand.
	swap := []int32{1, 0, 0, 1}
	for _, tt := range []struct {
		name string
		in   Input
		want []string
	}{
		{"powered third host", site(true), []string{
			"migrate x a → c (staging)", "migrate y b → a", "migrate x c → b", "power off c",
		}},
		{"third host powered on for staging", site(false), []string{
			"power on c (staging)", "migrate x a → c (staging)", "migrate y b → a", "migrate x c → b", "power off c (staging)",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newProblem(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			pl, err := p.plan(swap, "test", false)
			if err != nil {
				t.Fatal(err)
			}
			if got := stepStrings(pl); !slices.Equal(got, tt.want) {
				t.Errorf("steps\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			checkSteps(t, tt.in, pl)
		})
	}
	t.Run("no room anywhere", func(t *testing.T) {
		in := site(true)
		in.Hosts = in.Hosts[:2]
		p, err := newProblem(in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.plan(swap, "test", false); !errors.Is(err, ErrNoSafeOrder) {
			t.Errorf("err = %v, want ErrNoSafeOrder", err)
		}
	})
}

func stepStrings(pl Plan) []string {
	var s []string
	for _, st := range pl.Steps {
		s = append(s, st.String())
	}
	return s
}

// expansion is the paper's case: app0 grows, nothing has room, a host is
// powered on.
func expansion() Input {
	return Input{
		Hosts: []justrunit.Host{host("h1", 2, true), host("h2", 2, true), host("h3", 2, false)},
		Instances: []Demand{
			grown("app0", "h1", 40, 60), inst("web0", "h1", 80), inst("db0", "h1", 70),
			inst("app1", "h2", 80), inst("web1", "h2", 70), inst("db1", "h2", 50),
		},
	}
}

func TestApplyStopsAtFirstError(t *testing.T) {
	in := expansion()
	pl, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(pl.Steps) < 3 {
		t.Fatalf("want a plan of at least 3 steps, got\n%s", pl)
	}
	f := newFake(in)
	f.failAt = 2
	done, err := Apply(context.Background(), pl, f)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "step 2 of") {
		t.Errorf("err = %v, want the injected failure at step 2", err)
	}
	if len(done) != 1 || done[0] != pl.Steps[0] {
		t.Errorf("done = %v, want the first step only", done)
	}
	if len(f.calls) != 2 {
		t.Errorf("calls %v, want 2 (no step after the failure)", f.calls)
	}
}

func TestApplyUnsupported(t *testing.T) {
	in := expansion()
	pl, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	f := newFake(in)
	// Only the Platform methods: no Migrator, no PowerSwitch.
	done, err := Apply(context.Background(), pl, struct{ justrunit.Platform }{f})
	if !errors.Is(err, justrunit.ErrUnsupported) || len(done) != 0 || len(f.calls) != 0 {
		t.Errorf("Apply = %v, %v with calls %v; want ErrUnsupported before any call", done, err, f.calls)
	}
}

func TestApplyCancelled(t *testing.T) {
	in := expansion()
	pl, err := Heuristic(in)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := newFake(in)
	done, err := Apply(ctx, pl, f)
	if !errors.Is(err, context.Canceled) || len(done) != 0 || len(f.calls) != 0 {
		t.Errorf("Apply = %v, %v with calls %v; want context.Canceled before any call", done, err, f.calls)
	}
}

func TestRender(t *testing.T) {
	pl, err := Heuristic(expansion())
	if err != nil {
		t.Fatal(err)
	}
	out := pl.String()
	for _, want := range []string{
		"plan (heuristic): 3 hosts powered (lower bound 3), 1 migrations, 1 allocation changes, 1 power-on, 0 power-off",
		"h3    std    off→on",
		"power-on",
		"migrate",
		"set-allocation  app0",
		"cpu=60% (was cpu=40%)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("dry run of the paper's expansion:\n%s", out)
}

func TestFromSite(t *testing.T) {
	hosts := []justrunit.Host{host("a", 2, true), host("sb", 4, true)}
	hosts[1].Sandbox = true
	insts := []justrunit.Instance{
		{ID: "app", Host: "a", Alloc: justrunit.Allocation{CPU: 40, MemoryMiB: 256}},
		{ID: "web", Host: "a", Alloc: justrunit.Allocation{CPU: 30}},
		{ID: "app-clone", Host: "sb", Origin: "app", Alloc: justrunit.Allocation{CPU: 60}},
	}
	in := FromSite(hosts, insts, map[string]float64{"app": 60})
	want := []Demand{
		{ID: "app", Host: "a", CPU: 60, MemoryMiB: 256, Current: justrunit.Allocation{CPU: 40, MemoryMiB: 256}},
		{ID: "web", Host: "a", CPU: 30, Current: justrunit.Allocation{CPU: 30}},
	}
	if !slices.Equal(in.Instances, want) || len(in.Hosts) != 2 {
		t.Errorf("FromSite = %+v, want %+v", in.Instances, want)
	}
}
