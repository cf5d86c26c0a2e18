package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/sqlite"
)

// TestEngineRunnerCheckAndCancelWhileStarting checks that a study the
// site's Check refuses is not stored, and that a study cancelled while its
// runner waits to start ends cancelled, not failed.
func TestEngineRunnerCheckAndCancelWhileStarting(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	refuse := justrunit.Invalid("warm_up", "1s", "must be at least the clone lag")
	starting := make(chan struct{}, 1)
	r, err := NewEngineRunner(EngineRunnerConfig{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Check: func(_ context.Context, st *justrunit.Study) error {
			if st.Name == "refused" {
				return refuse
			}
			return nil
		},
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			starting <- struct{}{}
			<-ctx.Done() // as a study waiting for a verification to end
			return nil, nil, ctx.Err()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 10")
	study := func(name string) *justrunit.Study {
		return &justrunit.Study{Name: name, Target: "auction0-app", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
			Window: justrunit.Duration(time.Second), WarmUp: justrunit.Duration(time.Second), TimeBound: justrunit.Duration(time.Minute), Slots: 1, CheckThreshold: 0.1}
	}
	if err := r.Start(ctx, study("refused")); !errors.Is(err, refuse) {
		t.Errorf("Start of a study Check refuses: %v, want its error", err)
	}
	if all, _ := store.Studies(ctx); len(all) != 0 {
		t.Errorf("%d studies stored after a refused one, want 0", len(all))
	}
	st := study("waiting")
	if err := r.Start(ctx, st); err != nil {
		t.Fatal(err)
	}
	select {
	case <-starting:
	case <-time.After(10 * time.Second):
		t.Fatal("the runner was not asked for")
	}
	if err := r.Cancel(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the study to end", func() bool {
		got, err := store.Study(ctx, st.ID)
		return err == nil && got.State != justrunit.StudyPending && got.State != justrunit.StudyRunning
	})
	if got, _ := store.Study(ctx, st.ID); got.State != justrunit.StudyCancelled {
		t.Errorf("study cancelled while starting ended %s (%s), want cancelled", got.State, got.Error)
	}
}

// TestEngineRunnerCancelWhileMakingExperimenter checks that a study
// cancelled while its experimenter is made, by a factory that finishes all
// the same (its last step did not look at the context), is stored
// cancelled, not left pending, and its experimenter torn down.
func TestEngineRunnerCancelWhileMakingExperimenter(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	making, made := make(chan struct{}), make(chan struct{})
	closers := &closeCounter{}
	r, err := NewEngineRunner(EngineRunnerConfig{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Owner: sqlite.OwnerID(),
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			close(making)
			<-made
			return &curveRunner{hold: 10 * time.Millisecond}, closers, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 20")
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}}, Strategy: "grid",
		Window: justrunit.Duration(time.Hour), TimeBound: justrunit.Duration(10 * time.Hour), Slots: 1, CheckThreshold: 0.1}
	if err := r.Start(ctx, st); err != nil {
		t.Fatal(err)
	}
	<-making
	if err := r.Cancel(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	close(made)
	waitFor(t, 10*time.Second, "the job to end", func() bool { return len(r.Running()) == 0 })
	if got, _ := store.Study(ctx, st.ID); got.State != justrunit.StudyCancelled || got.Finished.IsZero() {
		t.Errorf("study cancelled while its experimenter was made is stored %s (finished %v), want cancelled", got.State, got.Finished)
	}
	if n := closers.n.Load(); n != 1 {
		t.Errorf("experimenters torn down = %d, want 1", n)
	}
}

// blockingCloser is an experimenter whose teardown lasts until release is
// closed, as a qemu clone's may outlast the shutdown's bound.
type blockingCloser struct{ release chan struct{} }

func (c blockingCloser) Close() error { <-c.release; return nil }

// TestEngineRunnerShutdownInterrupts checks that a study the shutdown stops
// is stored interrupted before its experimenter is torn down, so that a
// teardown outlasting the shutdown's bound does not leave it stored
// otherwise, and that it is never shown as finished (cancelled) first.
func TestEngineRunnerShutdownInterrupts(t *testing.T) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	teardown := blockingCloser{release: make(chan struct{})}
	r, err := NewEngineRunner(EngineRunnerConfig{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Owner: sqlite.OwnerID(),
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			return &curveRunner{hold: time.Hour}, teardown, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 20")
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}}, Strategy: "grid",
		Window: justrunit.Duration(time.Hour), TimeBound: justrunit.Duration(10 * time.Hour), Slots: 1, CheckThreshold: 0.1}
	if err := r.Start(ctx, st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the study to run", func() bool {
		got, err := store.Study(ctx, st.ID)
		return err == nil && got.State == justrunit.StudyRunning
	})
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := r.Close(sctx); err == nil {
		t.Errorf("Close returned before the teardown ended, want its bound's error")
	}
	if got, _ := store.Study(ctx, st.ID); got.State != justrunit.StudyInterrupted || !strings.Contains(got.Error, "shut down") {
		t.Errorf("study stopped by the shutdown is stored %s (%q) while torn down, want interrupted saying the daemon shut down", got.State, got.Error)
	}
	close(teardown.release)
	waitFor(t, 10*time.Second, "the job to end", func() bool { return len(r.Running()) == 0 })
	if got, _ := store.Study(ctx, st.ID); got.State != justrunit.StudyInterrupted {
		t.Errorf("study stopped by the shutdown is stored %s after its teardown, want interrupted", got.State)
	}
	for kind, want := range map[string]int{justrunit.EventStudyInterrupted: 1, justrunit.EventStudyFinished: 0} {
		if evs, _ := store.Events(ctx, justrunit.EventFilter{StudyID: st.ID, Kind: kind}); len(evs) != want {
			t.Errorf("%s events = %d, want %d", kind, len(evs), want)
		}
	}
}

// TestStrategyFor: a study that names no strategy runs sla when it has an
// SLA, adaptive otherwise — through the daemon as through the site runtime.
func TestStrategyFor(t *testing.T) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	for _, tt := range []struct {
		strategy string
		sla      *justrunit.SLA
		want     string
	}{
		{"", nil, "adaptive"},
		{"", sla, "sla"},
		{"grid", sla, "grid"},
		{"adaptive", sla, "adaptive"},
	} {
		if got := StrategyFor(&justrunit.Study{Strategy: tt.strategy, SLA: tt.sla}); got != tt.want {
			t.Errorf("StrategyFor(strategy %q, sla %v) = %q, want %q", tt.strategy, tt.sla, got, tt.want)
		}
	}
	d := newDaemon(t, daemonOpts{hold: 10 * time.Millisecond})
	st, err := d.client().CreateStudy(context.Background(), StudyRequest{Target: "app0", Parameters: []string{"cpu=60..100 step 20"},
		SLA: "rt_p95<=50", TimeBound: "20s", WarmUp: "0s", Window: "10ms"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Strategy != "sla" {
		t.Errorf("a study posted with an SLA and no strategy runs %q, want sla", st.Strategy)
	}
	d.waitState(st.ID, justrunit.StudyDone)
}
