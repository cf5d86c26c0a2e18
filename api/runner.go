package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/study"
)

// RunnerFactory makes the experimenter for one study: a justrunit.Runner
// that runs the study's experiments (clone, proxies, allocation,
// measurement) and a Closer that tears down everything it made. The site
// runtime supplies it. It is called when the study starts running, with a
// context that ends when the study is cancelled.
type RunnerFactory func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error)

// Default names of a study's strategy and interpolator when a request gives
// none; the same as a study file's. A study with an SLA runs the sla
// strategy by default instead (StrategyFor).
const (
	DefaultStrategy     = driver.NameAdaptive
	DefaultInterpolator = "linear"
)

// StrategyFor names the strategy st runs: its own when it names one, else
// sla when it has an SLA (its question is the least allocation meeting it),
// else DefaultStrategy (driver.NameFor). The daemon's runner, "study
// validate" and the site runtime (siterun.Site.PrepareStudy) choose alike.
func StrategyFor(st *justrunit.Study) string { return driver.NameFor(st) }

// DefaultMaxRunning is how many studies an EngineRunner runs at once; the
// others wait, pending, in the order they were created.
const DefaultMaxRunning = 1

// EngineRunnerConfig is what an EngineRunner needs. Store and NewRunner are
// required.
type EngineRunnerConfig struct {
	Store     justrunit.Store
	NewRunner RunnerFactory
	// Check, when set, vets a study against the site before it is
	// stored: a study it refuses is a bad request, not a failed study.
	Check func(context.Context, *justrunit.Study) error
	// Logger is optional; slog.Default() when nil.
	Logger *slog.Logger
	// Owner identifies this process in the store (see
	// sqlite.OwnerID) so a study it leaves running when it dies is found
	// and marked interrupted on the next start.
	Owner string
	// Metrics, when set, counts experiments and studies.
	Metrics *metrics.Set
	// MaxRunning is how many studies run at once; DefaultMaxRunning when 0.
	MaxRunning int
}

// errShutdown is the cancellation cause of studies stopped because the
// daemon shuts down; they end interrupted, not cancelled (the engine, or
// finish, records them so).
var errShutdown = fmt.Errorf("%w: the daemon shut down while the study ran", study.ErrInterrupted)

// EngineRunner is the in-process StudyRunner: each study runs in its own
// goroutine through a study.Engine with the strategy and interpolator it
// names and the Runner the factory makes for it.
type EngineRunner struct {
	cfg EngineRunnerConfig
	log *slog.Logger
	sem chan struct{}
	wg  sync.WaitGroup

	mu     sync.Mutex
	jobs   map[string]context.CancelCauseFunc
	closed bool
}

var _ StudyRunner = (*EngineRunner)(nil)

// NewEngineRunner checks cfg and returns a runner with nothing running.
func NewEngineRunner(cfg EngineRunnerConfig) (*EngineRunner, error) {
	if cfg.Store == nil {
		return nil, justrunit.Invalid("store", nil, "the study runner needs a store")
	}
	if cfg.NewRunner == nil {
		return nil, justrunit.Invalid("new_runner", nil, "the study runner needs a factory for the experimenter")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxRunning <= 0 {
		cfg.MaxRunning = DefaultMaxRunning
	}
	return &EngineRunner{cfg: cfg, log: cfg.Logger, sem: make(chan struct{}, cfg.MaxRunning), jobs: map[string]context.CancelCauseFunc{}}, nil
}

// Start implements StudyRunner: it validates st, fills in the default
// strategy and interpolator, stores it pending and runs it in the
// background. st is not touched after Start returns.
func (r *EngineRunner) Start(ctx context.Context, st *justrunit.Study) error {
	st.Strategy = StrategyFor(st)
	if st.Interpolator == "" {
		st.Interpolator = DefaultInterpolator
	}
	st.FillMetrics()
	if err := st.Validate(); err != nil {
		return err
	}
	if err := driver.CheckStudy(st); err != nil {
		return err
	}
	if r.cfg.Check != nil {
		if err := r.cfg.Check(ctx, st); err != nil {
			return err
		}
	}
	in, err := interp.New(st.Interpolator)
	if err != nil {
		return err
	}
	strat, err := driver.New(st.Strategy, driver.Options{Interpolator: in})
	if err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("start study: %w: the daemon is shutting down", ErrUnavailable)
	}
	st.State, st.Owner, st.Created = justrunit.StudyPending, r.cfg.Owner, time.Now().UTC()
	if err := r.cfg.Store.CreateStudy(ctx, st); err != nil {
		return fmt.Errorf("create study: %w", err)
	}
	own := *st // the goroutine's copy; the caller keeps st
	jctx, cancel := context.WithCancelCause(context.Background())
	r.jobs[st.ID] = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.jobs, own.ID)
			r.mu.Unlock()
			cancel(nil)
		}()
		r.run(jctx, &own, strat, in)
	}()
	return nil
}

// Cancel implements StudyRunner.
func (r *EngineRunner) Cancel(ctx context.Context, id string) error {
	r.mu.Lock()
	cancel, ok := r.jobs[id]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("cancel study %s: %w: this daemon is not running it", id, justrunit.ErrNotFound)
	}
	cancel(context.Canceled)
	return nil
}

// Running returns the IDs of the studies started and not yet finished.
func (r *EngineRunner) Running() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.jobs))
	for id := range r.jobs {
		ids = append(ids, id)
	}
	return ids
}

// Close refuses new studies, stops the running and pending ones (they are
// stored as interrupted, their experimenters torn down) and waits for them
// until ctx ends.
func (r *EngineRunner) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	for _, cancel := range r.jobs {
		cancel(errShutdown)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop studies: %w (studies still stopping: %v)", ctx.Err(), r.Running())
	}
}

// run waits for a free slot, makes the experimenter, runs the engine and
// tears the experimenter down. Whichever way it returns, the study's end
// is stored: by the engine, else by finish.
func (r *EngineRunner) run(ctx context.Context, st *justrunit.Study, strat justrunit.Strategy, in justrunit.Interpolator) {
	log := r.log.With(keyStudy, st.ID)
	defer r.observe(st)
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
	}
	if ctx.Err() != nil { // cancelled while it waited (select may take a free slot all the same)
		r.finish(st, justrunit.StudyCancelled, context.Cause(ctx), log)
		return
	}
	if m := r.cfg.Metrics; m != nil {
		m.StudiesRunning.Inc()
		defer m.StudiesRunning.Dec()
	}
	runner, closer, err := r.cfg.NewRunner(ctx, st)
	if err != nil {
		st.Started = time.Now()
		if ctx.Err() != nil { // cancelled while it waited to start
			r.finish(st, justrunit.StudyCancelled, context.Cause(ctx), log)
			return
		}
		r.finish(st, justrunit.StudyFailed, fmt.Errorf("start the experimenter: %w", err), log)
		return
	}
	eng := &study.Engine{
		Runner:       &countingRunner{Runner: runner, m: r.cfg.Metrics},
		Strategy:     strat,
		Interpolator: in,
		Store:        r.cfg.Store,
		Logger:       log,
		Owner:        r.cfg.Owner,
	}
	// The engine stores the study's end, interrupted when the shutdown
	// stopped it, before the teardown: what the store says must not wait
	// for the clones to go, which may outlast the shutdown's bound.
	var runErr error
	if ctx.Err() == nil { // a factory may return its experimenter after a cancel
		_, runErr = eng.Run(ctx, st)
	}
	switch {
	case ended(st.State): // the engine stored it
	case ctx.Err() != nil:
		r.finish(st, justrunit.StudyCancelled, context.Cause(ctx), log)
	default: // the engine refused the study
		r.finish(st, justrunit.StudyFailed, runErr, log)
	}
	if closer != nil {
		if err := closer.Close(); err != nil {
			log.Error("tear down the experimenter", keyErr, err)
		}
	}
	if runErr != nil && st.State == justrunit.StudyFailed {
		log.Warn("study ended with an error", keyErr, runErr)
	}
}

// ended reports whether a study in state s has ended.
// Owner is the owner the runner stores its studies under (see
// EngineRunnerConfig.Owner).
func (r *EngineRunner) Owner() string { return r.cfg.Owner }

func ended(s justrunit.StudyState) bool {
	return s != justrunit.StudyPending && s != justrunit.StudyRunning
}

// finish stores a study's end when the engine did not (it never ran) and
// records an event for it.
func (r *EngineRunner) finish(st *justrunit.Study, state justrunit.StudyState, cause error, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if errors.Is(cause, study.ErrInterrupted) {
		state = justrunit.StudyInterrupted
	}
	st.State, st.Finished = state, time.Now()
	if cause != nil {
		st.Error = cause.Error()
	}
	if err := r.cfg.Store.UpdateStudy(ctx, st); err != nil {
		log.Error("store the study's end", keyErr, err)
	}
	kind, level := justrunit.EventStudyFinished, "error"
	switch state {
	case justrunit.StudyInterrupted:
		kind, level = justrunit.EventStudyInterrupted, "warn"
	case justrunit.StudyCancelled:
		level = "info"
	}
	ev := &justrunit.Event{StudyID: st.ID, Kind: kind, Level: level,
		Message: fmt.Sprintf("study %s: %s", state, st.Error), Data: map[string]any{"state": string(state)}}
	if err := r.cfg.Store.AddEvent(ctx, ev); err != nil {
		log.Warn("store event", keyErr, err)
	}
	log.Info("study ended", "state", state, "reason", st.Error)
}

func (r *EngineRunner) observe(st *justrunit.Study) {
	m := r.cfg.Metrics
	if m == nil {
		return
	}
	m.StudiesTotal.WithLabelValues(string(st.State)).Inc()
	if !st.Started.IsZero() && st.Finished.After(st.Started) {
		m.StudyDuration.WithLabelValues(string(st.State)).Observe(st.Finished.Sub(st.Started).Seconds())
	}
}

// countingRunner counts experiments by result.
type countingRunner struct {
	justrunit.Runner
	m *metrics.Set
}

func (c *countingRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	o, err := c.Runner.Run(ctx, p)
	if c.m != nil {
		res := metrics.ResultOK
		switch {
		case err != nil && ctx.Err() != nil:
			res = metrics.ResultCancelled
		case err != nil:
			res = metrics.ResultFailed
		}
		c.m.ExperimentsTotal.WithLabelValues(res).Inc()
	}
	return o, err
}
