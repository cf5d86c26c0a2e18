package experiment

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// fakePlatform is a platform double that keeps instances in memory.
type fakePlatform struct {
	mu     sync.Mutex
	hosts  []justrunit.Host
	insts  []justrunit.Instance
	clones int
	noFreq bool                            // the platform cannot set freq
	set    map[string]justrunit.Allocation // the last SetAllocation of each instance
	// maxClones, when not 0, fails the clones after so many.
	maxClones int
	// failDestroy fails the Destroy of these ids; destroys counts the
	// calls by id.
	failDestroy map[string]error
	destroys    map[string]int
}

func (p *fakePlatform) Name() string { return "fake" }
func (p *fakePlatform) Capabilities() []justrunit.Capability {
	if p.noFreq {
		return []justrunit.Capability{{Param: "cpu"}, {Param: "mem"}}
	}
	return []justrunit.Capability{{Param: "cpu"}, {Param: "freq"}, {Param: "mem"}}
}
func (p *fakePlatform) Hosts(context.Context) ([]justrunit.Host, error) {
	return p.hosts, nil
}

func (p *fakePlatform) Instances(context.Context) ([]justrunit.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]justrunit.Instance(nil), p.insts...), nil
}

func (p *fakePlatform) Clone(_ context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.maxClones > 0 && p.clones == p.maxClones {
		return nil, errNoRoom
	}
	p.clones++
	in := justrunit.Instance{ID: fmt.Sprintf("%s-c%d", id, p.clones), Host: host, State: "running", Alloc: opts.Alloc}
	p.insts = append(p.insts, in)
	return &justrunit.Clone{Instance: in, Mode: "cold", Endpoint: "127.0.0.1:1"}, nil
}

func (p *fakePlatform) SetAllocation(_ context.Context, id string, a justrunit.Allocation) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.set == nil {
		p.set = map[string]justrunit.Allocation{}
	}
	p.set[id] = a
	return nil
}
func (p *fakePlatform) Usage(context.Context, string) (justrunit.Usage, error) {
	return justrunit.Usage{}, nil
}

func (p *fakePlatform) Destroy(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.destroys == nil {
		p.destroys = map[string]int{}
	}
	p.destroys[id]++
	if err := p.failDestroy[id]; err != nil {
		return err
	}
	for i, in := range p.insts {
		if in.ID == id {
			p.insts = append(p.insts[:i], p.insts[i+1:]...)
			return nil
		}
	}
	return justrunit.ErrNotFound
}

var errNoRoom = errors.New("no room for another clone")

// fakeFeed answers every window with the responses its recorder got.
type fakeFeed struct{ rec *measure.Recorder }

func (f *fakeFeed) AddCloneDial(context.Context, string, *url.URL, func(context.Context) (net.Conn, error), string) error {
	return nil
}
func (f *fakeFeed) RemoveClone(string) (httpproxy.CloneStats, error) {
	return httpproxy.CloneStats{}, nil
}

func (f *fakeFeed) CloneStats(name string, reset bool) (httpproxy.CloneStats, error) {
	s := f.rec.Snapshot()
	if reset {
		s = f.rec.Reset()
	}
	return httpproxy.CloneStats{Name: name, Response: s}, nil
}

// phaseReplay counts a clone's calls as unmatched until warmEnd and as
// matched from matchFrom on, one every millisecond.
type phaseReplay struct {
	mu                 sync.Mutex
	from               time.Time
	warmEnd, matchFrom time.Time
}

func (r *phaseReplay) ServeClone(context.Context, string) (string, error) { return "127.0.0.1:2", nil }
func (r *phaseReplay) StopClone(string) error                             { return nil }
func (r *phaseReplay) Attach(string) error                                { return nil }
func (r *phaseReplay) ServeCloneOn(_ string, ln net.Listener) error       { return ln.Close() }

func (r *phaseReplay) ReplayStats(name string, reset bool) (httpproxy.ReplayStats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	overlap := func(a, b time.Time) int64 { // ms of [a, b) within [r.from, now)
		a, b = later(a, r.from), earlier(b, now)
		return max(0, int64(b.Sub(a)/time.Millisecond))
	}
	s := httpproxy.ReplayStats{Name: name, Start: r.from, End: now,
		Unmatched: overlap(time.Time{}, r.warmEnd), Matched: overlap(r.matchFrom, now.Add(time.Hour))}
	s.MatchRate = 1
	if n := s.Matched + s.Unmatched; n > 0 {
		s.MatchRate = float64(s.Matched) / float64(n)
	}
	if reset {
		r.from = now
	}
	return s, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// answering returns a recorder that a response of 1 ms reaches every half
// millisecond until t ends, as the in-proxy's window of a busy clone.
func answering(t *testing.T) *measure.Recorder {
	rec := measure.NewRecorder()
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				rec.Record(time.Millisecond)
			}
		}
	}()
	return rec
}

func sandbox() justrunit.Host {
	return justrunit.Host{Name: "sb", Class: "std", Cores: 2, MemoryMiB: 1024, On: true, Sandbox: true,
		Power: justrunit.PowerModel{IdleWatts: 50, MaxWatts: 100}}
}

func space(t *testing.T, params ...string) justrunit.Space {
	t.Helper()
	var s justrunit.Space
	for _, p := range params {
		par, err := justrunit.ParseParameter(p)
		if err != nil {
			t.Fatal(err)
		}
		s.Params = append(s.Params, par)
	}
	return s
}

// TestOpenChecksRoom checks that a study whose clones cannot all fit on the
// sandbox host at the top of its ranges is refused naming slots, before
// anything is cloned.
func TestOpenChecksRoom(t *testing.T) {
	busy := justrunit.Instance{ID: "other-c", Host: "sb", State: "running", Alloc: justrunit.Allocation{CPU: 50, MemoryMiB: 256}}
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 60, MemoryMiB: 128}}
	for _, c := range []struct {
		name   string
		space  []string
		slots  int
		others []justrunit.Instance
		want   string // "" for room enough
	}{
		{"Fits", []string{"cpu=20..100 step 10"}, 2, nil, ""},
		{"TooManySlots", []string{"cpu=20..100 step 10"}, 3, nil, "3 clones at up to 100% CPU"},
		{"OthersHoldSome", []string{"cpu=20..100 step 10"}, 2, []justrunit.Instance{busy}, "150% of 200% free"},
		{"TargetAllocCounts", []string{"mem=64,128"}, 4, nil, "4 clones at up to 60% CPU"},
		{"Memory", []string{"cpu=10..50 step 10", "mem=256..512 step 256"}, 3, nil, "3 clones at up to 512 MiB"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := &fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: append([]justrunit.Instance{target}, c.others...)}
			cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Space: space(t, c.space...),
				Feed: &fakeFeed{rec: measure.NewRecorder()}, Window: measure.WindowConfig{Max: time.Second}, Logger: quiet}
			// Check counts the host as empty: what others hold now does
			// not make a study impossible.
			switch err := Check(cfg, c.slots); {
			case c.want == "" || c.others != nil:
				if err != nil {
					t.Errorf("Check: %v, want nil", err)
				}
			case !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), c.want):
				t.Errorf("Check = %v, want an invalid slots saying %q", err, c.want)
			}
			r, err := Open(context.Background(), cfg, c.slots)
			if c.want == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if err := r.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "slots") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open error = %v, want an invalid slots saying %q", err, c.want)
			}
			if p.clones != 0 {
				t.Errorf("%d clones made before the refusal", p.clones)
			}
		})
	}
}

// TestOpenChecksParameters checks that a space with a parameter the runner
// cannot set on a clone (every value of it would be measured at the
// clone's one setting), or a host class it has no sandbox host for, is
// refused naming it, before anything is cloned.
func TestOpenChecksParameters(t *testing.T) {
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 60}}
	for _, c := range []struct {
		space   []string
		want    string
		classes map[string]ClassHost
		noFreq  bool
	}{
		{space: []string{"threads=1,8"}, want: "parameters[0]: unknown parameter"},
		{space: []string{"cpu=20..100 step 40", "hostclass=std,fast"}, want: "parameters[1]: no sandbox host of class fast",
			classes: map[string]ClassHost{"std": {Host: sandbox()}}},
		{space: []string{"hostclass=std"}, want: "parameters[0]: host h0 is not a sandbox host",
			classes: map[string]ClassHost{"std": {Host: justrunit.Host{Name: "h0", Class: "std", On: true}}}},
		{space: []string{"hostclass=fast"}, want: "parameters[0]: host sb is of class std, not fast",
			classes: map[string]ClassHost{"fast": {Host: sandbox()}}},
		{space: []string{"cpu=20..100 step 40", "hostclass=std"}, want: "class std runs at 1.2 GHz, and the fake platform cannot set",
			classes: map[string]ClassHost{"std": {Host: sandbox(), FreqGHz: 1.2}}, noFreq: true},
	} {
		p := &fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: []justrunit.Instance{target}, noFreq: c.noFreq}
		cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Classes: c.classes, Space: space(t, c.space...),
			Feed: &fakeFeed{rec: measure.NewRecorder()}, Window: measure.WindowConfig{Max: time.Second}, Logger: quiet}
		if err := Check(cfg, 1); !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%v) = %v, want %q", c.space, err, c.want)
		}
		_, err := Open(context.Background(), cfg, 1)
		if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%v) = %v, want %q", c.space, err, c.want)
		}
		if p.clones != 0 {
			t.Errorf("Open(%v): %d clones made before the refusal", c.space, p.clones)
		}
	}
}

// TestHostClasses: with a hostclass parameter, the runner clones the
// target onto the sandbox host of each class, runs every experiment on a
// clone of its point's class with the class's frequency, and meters it
// with that host's power model.
func TestHostClasses(t *testing.T) {
	rec := answering(t) // the clones answer every half millisecond
	std := sandbox()
	slow := justrunit.Host{Name: "sb-slow", Class: "slow", Cores: 2, On: true, Sandbox: true, Power: justrunit.PowerModel{IdleWatts: 20, MaxWatts: 40}}
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 50}}
	p := &fakePlatform{hosts: []justrunit.Host{std, slow}, insts: []justrunit.Instance{target}}
	cfg := Config{Platform: p, Target: target, Space: space(t, "cpu=50,100", "hostclass=std,slow"),
		Classes: map[string]ClassHost{"std": {Host: std}, "slow": {Host: slow, FreqGHz: 1.2}},
		Feed:    &fakeFeed{rec: rec}, Window: measure.WindowConfig{Max: 100 * time.Millisecond, MinSamples: 10}, Logger: quiet}
	r, err := Open(context.Background(), cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	on := map[string]int{}
	hostOf := map[string]string{}
	for _, in := range p.insts[1:] {
		on[in.Host]++
		hostOf[in.ID] = in.Host
	}
	if on["sb"] != 2 || on["sb-slow"] != 2 || len(on) != 2 {
		t.Fatalf("clones by host %v, want 2 on each class's sandbox host", on)
	}
	for _, c := range []struct {
		p          justrunit.Point
		host, meta string
		freq       float64
	}{
		{justrunit.Point{100, 1}, "sb-slow", "host class slow", 1.2},
		{justrunit.Point{50, 0}, "sb", "host class std", 0},
	} {
		p.mu.Lock()
		p.set = nil
		p.mu.Unlock()
		obs, err := r.Run(context.Background(), c.p)
		if err != nil {
			t.Fatalf("Run(%v): %v", c.p, err)
		}
		p.mu.Lock()
		set := p.set
		p.mu.Unlock()
		if len(set) != 1 {
			t.Fatalf("Run(%v) set %v, want one clone's allocation", c.p, set)
		}
		for id, a := range set {
			if hostOf[id] != c.host || a.CPU != c.p[0] || a.Freq != c.freq {
				t.Errorf("Run(%v) set %s on %s (%s), want cpu=%g freq=%g on a clone on %s", c.p, a, id, hostOf[id], c.p[0], c.freq, c.host)
			}
		}
		if !strings.Contains(obs.Energy.Model, c.meta) {
			t.Errorf("Run(%v) energy model %q, want %q's", c.p, obs.Energy.Model, c.meta)
		}
	}
}

// TestReplayStatsCoverWindow checks that an observation's match rate is the
// out-proxy's over the measured window, not over the warm-up too.
func TestReplayStatsCoverWindow(t *testing.T) {
	rec := answering(t) // the clone answers every half millisecond
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 50}}
	p := &fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: []justrunit.Instance{target}}
	warmUp := 300 * time.Millisecond
	replay := &phaseReplay{}
	cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Space: space(t, "cpu=50,100"),
		Feed: &fakeFeed{rec: rec}, Replay: replay, NextTier: "10.0.0.3:80",
		Window: measure.WindowConfig{WarmUp: warmUp, Max: 300 * time.Millisecond, MinSamples: 10}, Logger: quiet}
	r, err := Open(context.Background(), cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	// Calls made during the warm-up find no match; those of the window
	// (from 50 ms after the warm-up, to stay clear of its edge) all do.
	start := time.Now()
	replay.mu.Lock()
	replay.from, replay.warmEnd, replay.matchFrom = start, start.Add(warmUp-50*time.Millisecond), start.Add(warmUp+50*time.Millisecond)
	replay.mu.Unlock()
	obs, err := r.Run(context.Background(), justrunit.Point{100})
	if err != nil {
		t.Fatal(err)
	}
	if obs.MatchRate != 1 {
		t.Errorf("match rate %.3f, want 1: the warm-up's unmatched calls were counted", obs.MatchRate)
	}
}

// reachingPlatform is a fakePlatform that reaches into its clones'
// networks: it serves each Answer on a loopback listener of its own and
// gives the clone a Dial, or fails after serving them when fail is set.
type reachingPlatform struct {
	fakePlatform
	fail error
	opts justrunit.CloneOptions
}

func (p *reachingPlatform) ReachesIntoClones() bool { return true }

func (p *reachingPlatform) Clone(ctx context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	p.opts = opts
	for _, serve := range opts.Answer {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		if err := serve(ln); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if p.fail != nil {
		return nil, p.fail
	}
	c, err := p.fakePlatform.Clone(ctx, id, host, opts)
	if err != nil {
		return nil, err
	}
	c.Endpoint, c.Network = "", "inside a test's network"
	c.Dial = func(context.Context) (net.Conn, error) { return nil, errors.New("not dialled in this test") }
	return c, nil
}

// dialFeed records how its clones are attached.
type dialFeed struct {
	fakeFeed
	target  *url.URL
	dialled bool
	where   string
}

func (f *dialFeed) AddCloneDial(_ context.Context, _ string, target *url.URL, dial func(context.Context) (net.Conn, error), where string) error {
	f.target, f.dialled, f.where = target, dial != nil, where
	return nil
}

// listenReplay records the listeners handed to it and closes them when
// the clone is stopped.
type listenReplay struct {
	phaseReplay
	served, stopped []string
	lns             []net.Listener
}

func (r *listenReplay) ServeClone(context.Context, string) (string, error) {
	return "", errors.New("ServeClone called for a clone inside its own network")
}

func (r *listenReplay) ServeCloneOn(name string, ln net.Listener) error {
	r.served, r.lns = append(r.served, name), append(r.lns, ln)
	return nil
}

func (r *listenReplay) StopClone(name string) error {
	r.stopped = append(r.stopped, name)
	for _, ln := range r.lns {
		ln.Close()
	}
	return nil
}

// TestOpenInNetwork: on a platform that reaches into its clones'
// networks, the runner asks for a clone inside its own, has the out-proxy
// serve the listener the platform opens there, attaches the clone through
// its Dial under its own address, and stops the out-proxy's serving when
// it closes — also when the clone fails after the listener was handed over.
func TestOpenInNetwork(t *testing.T) {
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Addr: "0.0.0.0:8181", Alloc: justrunit.Allocation{CPU: 50}}
	p := &reachingPlatform{fakePlatform: fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: []justrunit.Instance{target}}}
	feed, replay := &dialFeed{fakeFeed: fakeFeed{rec: measure.NewRecorder()}}, &listenReplay{}
	cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Space: space(t, "cpu=50,100"),
		Feed: feed, Replay: replay, NextTier: "127.0.0.1:8082", Window: measure.WindowConfig{Max: time.Second}, Logger: quiet}
	r, err := Open(context.Background(), cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !p.opts.InNetwork || p.opts.Redirect != nil || p.opts.Answer["127.0.0.1:8082"] == nil || len(replay.served) != 1 {
		t.Errorf("clone options %+v, listeners served %v; want InNetwork with an Answer for the next tier, served once", p.opts, replay.served)
	}
	if !feed.dialled || feed.target.Host != "127.0.0.1:8181" || feed.where != "inside a test's network" {
		t.Errorf("attached at %v (dialled %v, where %q), want 127.0.0.1:8181 through the clone's Dial", feed.target, feed.dialled, feed.where)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(replay.stopped) != 1 {
		t.Errorf("out-proxy stopped for %v, want the clone's", replay.stopped)
	}
	// A closed runner refuses to run: its clones are gone.
	if _, err := r.Run(context.Background(), justrunit.Point{50}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Run after Close = %v, want it refused", err)
	}

	p.fail = errors.New("the clone would not start")
	replay = &listenReplay{}
	cfg.Replay = replay
	if _, err := Open(context.Background(), cfg, 1); !errors.Is(err, p.fail) {
		t.Fatalf("Open() = %v, want the clone's failure", err)
	}
	if len(replay.served) != 1 || len(replay.stopped) != 1 {
		t.Errorf("served %v, stopped %v after the clone failed; want the handed-over listener stopped", replay.served, replay.stopped)
	}
}

// TestCloseKeepsWhatItCannotRemove checks that a clone whose Destroy fails
// is kept, and named in Close's error, so that a later Close destroys it
// (and only it); once all is removed, Close does nothing.
func TestCloseKeepsWhatItCannotRemove(t *testing.T) {
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 50}}
	p := &fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: []justrunit.Instance{target}}
	cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Space: space(t, "cpu=50,100"),
		Feed: &fakeFeed{rec: measure.NewRecorder()}, Window: measure.WindowConfig{Max: time.Second}, Logger: quiet}
	r, err := Open(context.Background(), cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	stuck, other := p.insts[1].ID, p.insts[2].ID
	busy := errors.New("device or resource busy")
	p.mu.Lock()
	p.failDestroy = map[string]error{stuck: busy}
	p.mu.Unlock()
	if err := r.Close(context.Background()); !errors.Is(err, busy) || !strings.Contains(err.Error(), stuck) || !strings.Contains(err.Error(), "sb") {
		t.Fatalf("Close with %s stuck = %v, want its Destroy's error naming it and its sandbox host", stuck, err)
	}
	p.mu.Lock()
	p.failDestroy = nil
	p.mu.Unlock()
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("third Close: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.destroys[stuck] != 2 || p.destroys[other] != 1 {
		t.Errorf("Destroy calls %v, want 2 of %s (failed, then retried) and 1 of %s", p.destroys, stuck, other)
	}
	if len(p.insts) != 1 {
		t.Errorf("instances left %v, want the target only", p.insts)
	}
}

// TestOpenKeepsWhatItCannotRemove checks that an Open that fails, and
// cannot destroy a clone it made, returns a Runner holding that clone
// with its error, whose Close destroys it later.
func TestOpenKeepsWhatItCannotRemove(t *testing.T) {
	target := justrunit.Instance{ID: "app0", Host: "h0", State: "running", Alloc: justrunit.Allocation{CPU: 50}}
	busy := errors.New("device or resource busy")
	p := &fakePlatform{hosts: []justrunit.Host{sandbox()}, insts: []justrunit.Instance{target}, maxClones: 1,
		failDestroy: map[string]error{"app0-c1": busy}}
	cfg := Config{Platform: p, Target: target, Sandbox: sandbox(), Space: space(t, "cpu=50,100"),
		Feed: &fakeFeed{rec: measure.NewRecorder()}, Window: measure.WindowConfig{Max: time.Second}, Logger: quiet}
	r, err := Open(context.Background(), cfg, 2)
	if !errors.Is(err, errNoRoom) || !errors.Is(err, busy) || r == nil {
		t.Fatalf("Open = %v, %v; want the clone's failure, the destroy's, and a Runner holding what is left", r, err)
	}
	p.mu.Lock()
	p.failDestroy = nil
	p.mu.Unlock()
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(p.insts) != 1 {
		t.Errorf("instances left %v, want the target only", p.insts)
	}

	p.maxClones, p.clones = 1, 0 // a failure whose clones are all destroyed
	if r, err := Open(context.Background(), cfg, 2); !errors.Is(err, errNoRoom) || r != nil {
		t.Errorf("Open = %v, %v; want the clone's failure and no Runner", r, err)
	}
}
