package siterun

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/proxy/httpproxy"
	"github.com/justrunit/justrunit/site"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// memPlatform is an in-memory platform for checks and studies without
// root: instances are records, and every clone answers at one test
// server's address. It logs what is done to the instances.
type memPlatform struct {
	mu       sync.Mutex
	hosts    []justrunit.Host
	insts    []justrunit.Instance
	endpoint string // where clones answer
	clones   int
	log      []string // "set ID CPU", "usage ID", "destroy ID", in order
	sets     []allocChange

	// partial makes the next SetAllocation of an id apply its CPU, then
	// fail with errPartial (as qemu when its balloon fails).
	partial map[string]bool
	// cloneSetErr fails every SetAllocation of a clone; failDestroy every
	// Destroy of one.
	cloneSetErr, failDestroy error
	// maxClones, when not 0, fails the Clone calls after so many.
	maxClones int
}

var errNoRoom = fmt.Errorf("no room for another clone")

// allocChange is one SetAllocation of an on-line instance.
type allocChange struct {
	id            string
	before, after justrunit.Allocation
}

var errPartial = fmt.Errorf("balloon: timed out")

func (p *memPlatform) Name() string { return "mem" }
func (p *memPlatform) Capabilities() []justrunit.Capability {
	return []justrunit.Capability{{Param: "cpu"}, {Param: "mem"}}
}

func (p *memPlatform) Hosts(context.Context) ([]justrunit.Host, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.hosts), nil
}

func (p *memPlatform) Instances(context.Context) ([]justrunit.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.insts), nil
}

func (p *memPlatform) Clone(_ context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.maxClones > 0 && p.clones >= p.maxClones {
		return nil, errNoRoom
	}
	p.clones++
	in := justrunit.Instance{ID: fmt.Sprintf("%s-c%d", id, p.clones), Origin: id, Host: host, State: "running", Alloc: opts.Alloc}
	p.insts = append(p.insts, in)
	return &justrunit.Clone{Instance: in, Mode: justrunit.CloneCold, Endpoint: p.endpoint}, nil
}

func (p *memPlatform) SetAllocation(ctx context.Context, id string, a justrunit.Allocation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.insts, func(x justrunit.Instance) bool { return x.ID == id })
	if i < 0 {
		return justrunit.ErrNotFound
	}
	in := &p.insts[i]
	if in.Origin != "" && p.cloneSetErr != nil {
		return p.cloneSetErr
	}
	p.log = append(p.log, fmt.Sprintf("set %s %g", id, a.CPU))
	before := in.Alloc
	if p.partial[id] {
		delete(p.partial, id)
		in.Alloc.CPU = a.CPU
		p.sets = append(p.sets, allocChange{id, before, in.Alloc})
		return errPartial
	}
	in.Alloc = a
	if in.Origin == "" {
		p.sets = append(p.sets, allocChange{id, before, a})
	}
	return nil
}

func (p *memPlatform) Usage(_ context.Context, id string) (justrunit.Usage, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, "usage "+id)
	return justrunit.Usage{}, nil
}

func (p *memPlatform) Destroy(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, "destroy "+id)
	i := slices.IndexFunc(p.insts, func(x justrunit.Instance) bool { return x.ID == id })
	if i < 0 {
		return nil
	}
	if p.insts[i].Origin != "" && p.failDestroy != nil {
		return p.failDestroy
	}
	p.insts = slices.Delete(p.insts, i, i+1)
	return nil
}

// alloc returns instance id's allocation.
func (p *memPlatform) alloc(id string) justrunit.Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.insts {
		if in.ID == id {
			return in.Alloc
		}
	}
	return justrunit.Allocation{}
}

// clonesLeft returns the ids of the clones on the platform.
func (p *memPlatform) clonesLeft() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for _, in := range p.insts {
		if in.Origin != "" {
			ids = append(ids, in.ID)
		}
	}
	return ids
}

// changes returns the SetAllocation calls of the on-line instances so far.
func (p *memPlatform) changes() []allocChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sets)
}

// events returns the log so far.
func (p *memPlatform) events() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.log)
}

// memSite is a site of one instance, app0 on host pm0 at 80% CPU, on a
// memPlatform with a sandbox host sb: app0 is a test server behind a real
// in-proxy (clone lag lag) under a load of a request every 2 ms until the
// test ends; its clones answer on a test server of their own.
func memSite(t *testing.T, lag time.Duration) (*Site, *memPlatform) {
	t.Helper()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	online, clone := httptest.NewServer(ok), httptest.NewServer(ok)
	t.Cleanup(online.Close)
	t.Cleanup(clone.Close)
	u, _ := url.Parse(online.URL)
	in, err := httpproxy.NewInProxy(httpproxy.InConfig{Online: u, CloneLag: lag, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := in.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		c := &http.Client{Timeout: time.Second}
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/", nil)
			if resp, err := c.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	d := justrunit.Duration(lag)
	f := &site.Site{Platform: "mem", Classes: map[string]site.Class{"std": {IdleWatts: 50, MaxWatts: 100}},
		Services: []site.Service{{Name: "svc", Tiers: []site.Tier{{Name: "app", Instances: []site.Instance{{
			ID: "app0", Host: "pm0", Addr: u.Host, InProxy: &site.InProxy{Listen: addr.String(), CloneLag: &d}}}}}}}}
	power := justrunit.PowerModel{IdleWatts: 50, MaxWatts: 100}
	p := &memPlatform{
		hosts: []justrunit.Host{{Name: "pm0", Class: "std", Cores: 1, On: true, Power: power},
			{Name: "sb", Class: "std", Cores: 2, On: true, Sandbox: true, Power: power}},
		insts:    []justrunit.Instance{{ID: "app0", Host: "pm0", State: "running", Addr: u.Host, Alloc: justrunit.Allocation{CPU: 80}}},
		endpoint: strings.TrimPrefix(clone.URL, "http://"),
	}
	s := &Site{File: f, Platform: p, log: quiet, in: map[string]*httpproxy.InProxy{"app0": in}, out: map[string]*httpproxy.OutProxy{}}
	return s, p
}

// cpuStudy is a study of app0 over cpu=50,100 and its matrix, measured at
// both points.
func cpuStudy(t *testing.T) (*justrunit.Study, *justrunit.Matrix) {
	t.Helper()
	cpu, err := justrunit.ParseParameter("cpu=50,100")
	if err != nil {
		t.Fatal(err)
	}
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean, justrunit.Throughput},
		WarmUp:  0, Window: justrunit.Duration(300 * time.Millisecond), TimeBound: justrunit.Duration(time.Minute),
		Slots: 1, Strategy: "grid", Interpolator: "linear", CheckThreshold: 0.1}
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []float64{50, 100} {
		if err := m.Record(justrunit.Observation{Point: justrunit.Point{c}, RT: justrunit.ResponseTime{Mean: 1}, Throughput: 400, Samples: 100}); err != nil {
			t.Fatal(err)
		}
	}
	return st, m
}
