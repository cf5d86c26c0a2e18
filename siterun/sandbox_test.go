package siterun

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/manager/planner"
)

// TestClaimSandbox checks that a sandbox host serves one study or check at
// a time: a second claim waits for the first's release (or its context),
// and other sandbox hosts are not held up.
func TestClaimSandbox(t *testing.T) {
	s := &Site{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	release, err := s.claimSandbox(ctx, "sb0")
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.claimSandbox(ctx, "sb1")
	if err != nil {
		t.Fatalf("another sandbox host: %v", err)
	}
	other()

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.claimSandbox(short, "sb0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second claim of a busy sandbox = %v, want it to wait until its deadline", err)
	}

	got := make(chan error, 1)
	go func() {
		r, err := s.claimSandbox(ctx, "sb0")
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second claim returned %v while the first holds the sandbox", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	release() // a second release does nothing
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting claim did not get the sandbox after its release")
	}
}

// statePlatform is a platform whose hosts and instances a test sets; it
// counts allocation changes. Other methods are not called.
type statePlatform struct {
	justrunit.Platform
	hosts []justrunit.Host
	insts []justrunit.Instance
	sets  int
}

func (p *statePlatform) Hosts(context.Context) ([]justrunit.Host, error) { return p.hosts, nil }
func (p *statePlatform) Instances(context.Context) ([]justrunit.Instance, error) {
	return p.insts, nil
}
func (p *statePlatform) SetAllocation(context.Context, string, justrunit.Allocation) error {
	p.sets++
	return nil
}

// TestApplyPlanRefusesStale checks that a plan made from a site that has
// changed since is not applied, and says what changed.
func TestApplyPlanRefusesStale(t *testing.T) {
	p := &statePlatform{hosts: []justrunit.Host{{Name: "pm0", Cores: 1, On: true}},
		insts: []justrunit.Instance{{ID: "app0", Host: "pm0", Alloc: justrunit.Allocation{CPU: 40}}}}
	s := &Site{Platform: p}
	from := planner.State(p.hosts, p.insts)
	plan := planner.Plan{Steps: []planner.Step{{Kind: planner.SetAllocation, Instance: "app0", Alloc: &justrunit.Allocation{CPU: 60}}}}
	p.insts[0].Alloc.CPU = 50 // changed by someone else since
	_, err := s.ApplyPlan(context.Background(), plan, from)
	if !errors.Is(err, ErrSiteChanged) || !strings.Contains(err.Error(), "app0") || p.sets != 0 {
		t.Fatalf("ApplyPlan of a stale plan = %v after %d changes, want ErrSiteChanged naming app0 and none", err, p.sets)
	}
	if _, err := s.ApplyPlan(context.Background(), plan, planner.State(p.hosts, p.insts)); err != nil || p.sets != 1 {
		t.Fatalf("ApplyPlan of a current plan = %v after %d changes, want it applied", err, p.sets)
	}
}

// TestClaimSandboxes checks that a study over host classes claims the
// sandbox host of every class, and on a failed claim gives back those it
// got.
func TestClaimSandboxes(t *testing.T) {
	s := &Site{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	cfg := experiment.Config{Classes: map[string]experiment.ClassHost{
		"new": {Host: justrunit.Host{Name: "sb1"}}, "old": {Host: justrunit.Host{Name: "sb0"}}}}
	release, err := s.claimSandboxes(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"sb0", "sb1"} {
		short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		if _, err := s.claimSandbox(short, n); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("claim of %s while a study over both classes holds it = %v, want it to wait", n, err)
		}
		cancel()
	}
	release()

	// sb1 busy: the claim of both fails and leaves sb0 free.
	busy, err := s.claimSandbox(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.claimSandboxes(short, cfg); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim of both while sb1 is busy = %v, want it to wait until its deadline", err)
	}
	r, err := s.claimSandbox(ctx, "sb0")
	if err != nil {
		t.Fatalf("sb0 after the failed claim of both: %v", err)
	}
	r()
	busy()
}
