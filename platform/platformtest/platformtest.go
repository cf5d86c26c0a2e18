// Package platformtest is the conformance suite every justrunit.Platform
// runs: it checks the contracts of the interface's doc comments (ErrNotFound
// for unknown IDs, ErrInvalid for bad allocations, clones that answer at
// their endpoint and are listed with their origin, Usage that grows, Destroy
// that is idempotent) against a real platform and a real test instance.
//
// A platform's own tests call Run with a fresh platform and a way to launch
// an instance that answers GET /health with 200 on its address.
package platformtest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// Config tells Run what to test.
type Config struct {
	// Platform is the platform under test; Run leaves it open.
	Platform justrunit.Platform
	// Launch starts a fresh on-line test instance answering GET /health
	// and returns its ID; it registers its own cleanup with t.
	Launch func(t *testing.T) string
	// Sandbox is the host clones are made on.
	Sandbox string
	// OnlineHost is a host that is not a sandbox; Run checks that cloning
	// onto it is refused. Empty skips that check.
	OnlineHost string
	// Timeout bounds each subtest; 0 is one minute.
	Timeout time.Duration
}

// Run runs the suite.
func Run(t *testing.T, c Config) {
	if c.Timeout == 0 {
		c.Timeout = time.Minute
	}
	p := c.Platform
	ctx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("Describe", func(t *testing.T) {
		if p.Name() == "" {
			t.Error("Name() is empty")
		}
		caps := p.Capabilities()
		hasCPU := false
		for _, cp := range caps {
			switch cp.Param {
			case "cpu", "freq", "mem", "hostclass":
			default:
				t.Errorf("Capabilities() lists unknown parameter %q", cp.Param)
			}
			if cp.How == "" {
				t.Errorf("Capabilities(): %s does not say how it is varied", cp.Param)
			}
			hasCPU = hasCPU || cp.Param == "cpu"
		}
		if !hasCPU {
			t.Error("Capabilities() has no cpu parameter")
		}
		hosts, err := p.Hosts(ctx(t))
		if err != nil {
			t.Fatalf("Hosts() error: %v", err)
		}
		found := false
		for _, h := range hosts {
			if h.Name == c.Sandbox {
				found = true
				if !h.Sandbox {
					t.Errorf("host %s is not marked Sandbox", h.Name)
				}
			}
			if h.Cores <= 0 {
				t.Errorf("host %s has %g cores", h.Name, h.Cores)
			}
		}
		if !found {
			t.Errorf("Hosts() = %v, want a sandbox host named %q", hosts, c.Sandbox)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		ctx := ctx(t)
		const id = "platformtest-no-such-instance"
		checks := map[string]error{
			"Usage":         second(p.Usage(ctx, id)),
			"SetAllocation": p.SetAllocation(ctx, id, justrunit.Allocation{CPU: 50}),
			"Clone":         second(p.Clone(ctx, id, c.Sandbox, justrunit.CloneOptions{})),
		}
		for name, err := range checks {
			if !errors.Is(err, justrunit.ErrNotFound) {
				t.Errorf("%s(%q) error = %v, want ErrNotFound", name, id, err)
			}
		}
		if err := p.Destroy(ctx, id); err != nil && !errors.Is(err, justrunit.ErrNotFound) {
			t.Errorf("Destroy(%q) = %v, want nil or ErrNotFound", id, err)
		}
	})

	t.Run("Optional", func(t *testing.T) {
		ctx := ctx(t)
		if m, ok := p.(justrunit.Migrator); ok {
			if err := m.Migrate(ctx, "platformtest-no-such-instance", c.Sandbox); !errors.Is(err, justrunit.ErrNotFound) {
				t.Errorf("Migrate(unknown) = %v, want ErrNotFound", err)
			}
		}
		if ps, ok := p.(justrunit.PowerSwitch); ok {
			if err := ps.SetPower(ctx, "platformtest-no-such-host", true); !errors.Is(err, justrunit.ErrNotFound) {
				t.Errorf("SetPower(unknown host) = %v, want ErrNotFound", err)
			}
		}
		if cl, ok := p.(justrunit.Cleaner); ok {
			if err := cl.Cleanup(ctx); err != nil {
				t.Errorf("Cleanup() with nothing to clean = %v, want nil", err)
			}
		}
	})

	t.Run("AllocationAndUsage", func(t *testing.T) {
		ctx := ctx(t)
		id := c.Launch(t)
		u1, err := p.Usage(ctx, id)
		if err != nil {
			t.Fatalf("Usage(%s) error: %v", id, err)
		}
		if u1.At.IsZero() {
			t.Errorf("Usage(%s).At is zero", id)
		}
		for i := 0; i < 5; i++ {
			get(t, "http://"+addrOf(t, p, id)+"/health")
		}
		u2, err := p.Usage(ctx, id)
		if err != nil {
			t.Fatalf("Usage(%s) error: %v", id, err)
		}
		if u2.CPUTime < u1.CPUTime {
			t.Errorf("Usage CPU time went back: %v then %v", u1.CPUTime, u2.CPUTime)
		}
		if err := p.SetAllocation(ctx, id, justrunit.Allocation{CPU: 50}); err != nil {
			t.Fatalf("SetAllocation(%s, cpu=50) error: %v", id, err)
		}
		if got := instance(t, p, id).Alloc.CPU; got != 50 {
			t.Errorf("after SetAllocation(cpu=50), Instances() shows cpu=%g", got)
		}
		for _, bad := range []justrunit.Allocation{{CPU: -1}, {CPU: 1e9}, {MemoryMiB: -5}} {
			if err := p.SetAllocation(ctx, id, bad); !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("SetAllocation(%s, %v) = %v, want ErrInvalid", id, bad, err)
			}
		}
		if got := instance(t, p, id).Alloc.CPU; got != 50 {
			t.Errorf("a refused SetAllocation changed cpu to %g", got)
		}
	})

	t.Run("CloneAndDestroy", func(t *testing.T) {
		ctx := ctx(t)
		id := c.Launch(t)
		if c.OnlineHost != "" {
			if _, err := p.Clone(ctx, id, c.OnlineHost, justrunit.CloneOptions{}); !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("Clone(%s, onto non-sandbox %s) = %v, want ErrInvalid", id, c.OnlineHost, err)
			}
		}
		cl, err := p.Clone(ctx, id, c.Sandbox, justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}})
		if err != nil {
			t.Fatalf("Clone(%s) error: %v", id, err)
		}
		if cl.Origin != id || cl.Host != c.Sandbox || cl.Endpoint == "" || cl.ID == "" || cl.ID == id {
			t.Errorf("Clone(%s) = %+v, want a new ID, Origin %s, Host %s and an Endpoint", id, cl, id, c.Sandbox)
		}
		if cl.Mode != justrunit.CloneLive && cl.Mode != justrunit.CloneCold {
			t.Errorf("Clone(%s).Mode = %q, want live or cold", id, cl.Mode)
		}
		if cl.Pause < 0 {
			t.Errorf("Clone(%s).Pause = %v", id, cl.Pause)
		}
		get(t, "http://"+cl.Endpoint+"/health")
		get(t, "http://"+addrOf(t, p, id)+"/health")
		if got := instance(t, p, cl.ID); got.Origin != id {
			t.Errorf("Instances() shows clone %s with Origin %q, want %q", cl.ID, got.Origin, id)
		}
		if _, err := p.Usage(ctx, cl.ID); err != nil {
			t.Errorf("Usage(clone %s) error: %v", cl.ID, err)
		}
		if err := p.SetAllocation(ctx, cl.ID, justrunit.Allocation{CPU: 30}); err != nil {
			t.Errorf("SetAllocation(clone %s) error: %v", cl.ID, err)
		}
		for i := 0; i < 2; i++ {
			if err := p.Destroy(ctx, cl.ID); err != nil {
				t.Fatalf("Destroy(clone %s) #%d = %v, want nil", cl.ID, i+1, err)
			}
		}
		if _, err := p.Usage(ctx, cl.ID); !errors.Is(err, justrunit.ErrNotFound) {
			t.Errorf("Usage(destroyed clone) = %v, want ErrNotFound", err)
		}
		is, _ := p.Instances(ctx)
		for _, in := range is {
			if in.ID == cl.ID {
				t.Errorf("Instances() still lists destroyed clone %s", cl.ID)
			}
		}
		get(t, "http://"+addrOf(t, p, id)+"/health") // the original outlives its clone
		for i := 0; i < 2; i++ {
			if err := p.Destroy(ctx, id); err != nil {
				t.Fatalf("Destroy(%s) #%d = %v, want nil", id, i+1, err)
			}
		}
	})
}

func second[T any](_ T, err error) error { return err }

func instance(t *testing.T, p justrunit.Platform, id string) justrunit.Instance {
	t.Helper()
	is, err := p.Instances(context.Background())
	if err != nil {
		t.Fatalf("Instances() error: %v", err)
	}
	for _, in := range is {
		if in.ID == id {
			return in
		}
	}
	t.Fatalf("Instances() does not list %s", id)
	return justrunit.Instance{}
}

func addrOf(t *testing.T, p justrunit.Platform, id string) string {
	return instance(t, p, id).Addr
}

func get(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
}
