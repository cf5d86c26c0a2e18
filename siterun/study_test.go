package siterun

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/proxy/httpproxy"
	"github.com/justrunit/justrunit/site"
)

// panicStore is a store whose every method panics (a nil Store inside).
type panicStore struct{ justrunit.Store }

// claimWithin claims sandbox host name of s, failing the test unless it
// gets it within a second.
func claimWithin(t *testing.T, s *Site, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	release, err := s.claimSandbox(ctx, name)
	if err != nil {
		t.Fatalf("claim of sandbox host %s: %v", name, err)
	}
	release()
}

// TestRunStudyClosesOnPanic checks that a panic in the engine still
// removes the study's clones and gives its sandbox host back.
func TestRunStudyClosesOnPanic(t *testing.T) {
	s, p := memSite(t, 0)
	st, _ := cpuStudy(t)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("RunStudy with a store that panics did not panic")
			}
		}()
		s.RunStudy(context.Background(), st, StudyOptions{Store: panicStore{}, MinSamples: 10})
	}()
	if left := p.clonesLeft(); len(left) != 0 || p.clones == 0 {
		t.Errorf("after the panic: %d clones made, %v left; want them all removed", p.clones, left)
	}
	claimWithin(t, s, "sb")
}

// TestStudyCloseLeavesSandboxClean checks that a study whose clone cannot
// be destroyed says what is left, and that the next claim of its sandbox
// host removes it first, or fails while it cannot: no study measures next
// to it.
func TestStudyCloseLeavesSandboxClean(t *testing.T) {
	s, p := memSite(t, 0)
	st, _ := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x, err := s.PrepareStudy(ctx, st, StudyOptions{MinSamples: 10})
	if err != nil {
		t.Fatal(err)
	}
	clone := p.clonesLeft()[0]
	busy := errors.New("cgroup busy")
	p.mu.Lock()
	p.failDestroy = busy
	p.mu.Unlock()
	err = x.Close(ctx)
	if !errors.Is(err, busy) || !strings.Contains(err.Error(), clone) || !strings.Contains(err.Error(), "sandbox host sb") || !strings.Contains(err.Error(), "platform gc") {
		t.Fatalf("Close with a clone that cannot be destroyed = %v, want its error naming %s, sandbox host sb and platform gc", err, clone)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	if _, err := s.claimSandbox(short, "sb"); !errors.Is(err, busy) || !strings.Contains(err.Error(), "earlier study") {
		t.Fatalf("claim of sb with %s still there = %v, want the destroy's error", clone, err)
	}
	p.mu.Lock()
	p.failDestroy = nil
	p.mu.Unlock()
	claimWithin(t, s, "sb")
	if left := p.clonesLeft(); len(left) != 0 {
		t.Errorf("clones left after the next claim: %v", left)
	}
	claimWithin(t, s, "sb") // nothing left to remove

	// A study whose second clone fails, and whose first cannot be
	// destroyed: the same.
	p.mu.Lock()
	p.failDestroy, p.maxClones = busy, p.clones+1
	p.mu.Unlock()
	st.Slots = 2
	if _, err := s.PrepareStudy(ctx, st, StudyOptions{MinSamples: 10}); !errors.Is(err, errNoRoom) || !errors.Is(err, busy) || !strings.Contains(err.Error(), "platform gc") {
		t.Fatalf("PrepareStudy with a clone that fails and one that cannot be destroyed = %v, want both errors and platform gc", err)
	}
	p.mu.Lock()
	p.failDestroy = nil
	p.mu.Unlock()
	claimWithin(t, s, "sb")
	if left := p.clonesLeft(); len(left) != 0 {
		t.Errorf("clones left after the next claim: %v", left)
	}
}

// waitLog is a slog handler that closes waiting at the first record whose
// message says it waits.
type waitLog struct {
	slog.Handler
	waiting chan struct{}
}

func (h waitLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "waiting") {
		select {
		case <-h.waiting:
		default:
			close(h.waiting)
		}
	}
	return nil
}

// TestPrepareStudyReadsAfterClaim checks that a study that waited for its
// sandbox host clones the target as it is when it gets the host, not as it
// was when it began to wait.
func TestPrepareStudyReadsAfterClaim(t *testing.T) {
	s, p := memSite(t, 0)
	waiting := make(chan struct{})
	s.log = slog.New(waitLog{Handler: quiet.Handler(), waiting: waiting})
	st, _ := cpuStudy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release, err := s.claimSandbox(ctx, "sb") // another study's
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		x   *Study
		err error
	}
	got := make(chan result, 1)
	go func() {
		x, err := s.PrepareStudy(ctx, st, StudyOptions{MinSamples: 10})
		got <- result{x, err}
	}()
	select {
	case <-waiting:
	case <-ctx.Done():
		t.Fatal("the study did not wait for the sandbox host")
	}
	p.mu.Lock()
	p.insts[0].Alloc.CPU = 60 // a plan applied meanwhile
	p.mu.Unlock()
	release()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.x.Close(ctx)
	insts, _ := p.Instances(ctx)
	for _, in := range insts {
		if in.Origin != "" && in.Alloc.CPU != 60 {
			t.Errorf("clone %s made at %s, want cpu=60, the target's allocation once the sandbox was free", in.ID, in.Alloc)
		}
	}
}

// series counts the series of gauge vector v.
func series(v *prometheus.GaugeVec) int {
	ch := make(chan prometheus.Metric, 16)
	v.Collect(ch)
	close(ch)
	return len(ch)
}

// TestMatchRateSeries checks that a study exports the out-proxy match
// rate of a target with an out-proxy only, and that the series goes when
// the study ends.
func TestMatchRateSeries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, withOut := range []bool{false, true} {
		s, _ := memSite(t, 0)
		set := metrics.New(prometheus.NewRegistry())
		s.metrics = set
		if withOut {
			in, _, _, _ := s.File.Instance("app0")
			in.OutProxy = &site.OutProxy{Listen: "127.0.0.1:1", Next: "127.0.0.1:2"}
			op, err := httpproxy.NewOutProxy(httpproxy.OutConfig{Upstream: &url.URL{Scheme: "http", Host: "127.0.0.1:2"}, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { op.Close() })
			s.out["app0"] = op
		}
		st, _ := cpuStudy(t)
		x, err := s.PrepareStudy(ctx, st, StudyOptions{MinSamples: 10, RelCI: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x.Engine.Runner.Run(ctx, justrunit.Point{50}); err != nil {
			t.Fatal(err)
		}
		want := 0
		if withOut {
			want = 1
		}
		if n := series(set.OutProxyMatchRate); n != want {
			t.Errorf("out-proxy %v: %d match-rate series during the study, want %d", withOut, n, want)
		}
		if err := x.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := series(set.OutProxyMatchRate); n != 0 {
			t.Errorf("out-proxy %v: %d match-rate series after the study, want none", withOut, n)
		}
	}
}
