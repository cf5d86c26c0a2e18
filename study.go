package justrunit

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SLA is a service-level objective on one metric. For a metric where lower
// is better (response times, error rate, energy per request, power) it is a
// ceiling: the metric must stay at or below Max — the paper's "p95 ≤ 50
// ms", written rt_p95<=50. For throughput, where higher is better, it is a
// floor: the metric must stay at or above Min, written throughput>=900.
// Exactly one of Max and Min is set, the one the metric's direction calls
// for (see Metric.HigherIsBetter); Validate says so.
//
// In JSON an SLA is {"metric": "rt_p95", "max": 50} or {"metric":
// "throughput", "min": 900}: a ceiling reads and writes as it always has.
type SLA struct {
	Metric Metric  `json:"metric"`
	Max    float64 `json:"max,omitempty"`
	Min    float64 `json:"min,omitempty"`
}

// HigherIsBetter reports whether a larger value of m is the better one:
// true for throughput only. An SLA on such a metric is a floor (>=), on the
// others a ceiling (<=).
func (m Metric) HigherIsBetter() bool { return m == Throughput }

// ParseSLA parses the command-line form of an SLA: "rt_p95<=50" (a
// ceiling, for metrics where lower is better) or "throughput>=900" (a
// floor, for throughput). The direction must suit the metric: a ceiling on
// throughput, or a floor on a response time, is an error naming "sla".
func ParseSLA(s string) (SLA, error) {
	op := "<="
	name, val, ok := strings.Cut(s, op)
	if !ok {
		op = ">="
		name, val, ok = strings.Cut(s, op)
	}
	if !ok {
		return SLA{}, Invalid("sla", s, "want METRIC<=MAX or METRIC>=MIN, e.g. rt_p95<=50 or throughput>=900")
	}
	name = strings.TrimSpace(name)
	m, err := ParseMetric(name)
	if err != nil {
		return SLA{}, Invalid("sla.metric", name, "unknown metric; known: %v", AllMetrics)
	}
	atLeast := op == ">="
	field := "sla.max"
	if atLeast {
		field = "sla.min"
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return SLA{}, Invalid(field, strings.TrimSpace(val), "must be a finite number > 0")
	}
	if atLeast != m.HigherIsBetter() {
		return SLA{}, Invalid("sla", s, "%s; write %s%s%g", directionHint(m), m, flip(op), v)
	}
	if atLeast {
		return SLA{Metric: m, Min: v}, nil
	}
	return SLA{Metric: m, Max: v}, nil
}

func flip(op string) string {
	if op == "<=" {
		return ">="
	}
	return "<="
}

// directionHint explains which way an SLA on m must point.
func directionHint(m Metric) string {
	if m.HigherIsBetter() {
		return fmt.Sprintf("%s is better higher, so its SLA is a floor it must stay at or above (>=), not a ceiling", m)
	}
	return fmt.Sprintf("%s is better lower, so its SLA is a ceiling it must stay at or below (<=), not a floor", m)
}

// Validate checks the SLA's metric and that the bound its metric's
// direction calls for, and only that one, is a finite number > 0. Errors
// name the field: "sla.metric", "sla.max" or "sla.min".
func (s SLA) Validate() error {
	if _, err := ParseMetric(string(s.Metric)); err != nil {
		return Invalid("sla.metric", string(s.Metric), "unknown; known: %v", AllMetrics)
	}
	want, wantName, other, otherName := s.Max, "sla.max", s.Min, "sla.min"
	if s.Metric.HigherIsBetter() {
		want, wantName, other, otherName = s.Min, "sla.min", s.Max, "sla.max"
	}
	if other != 0 {
		return Invalid(otherName, other, "%s; set %s instead", directionHint(s.Metric), wantName)
	}
	if !(want > 0) || math.IsInf(want, 0) {
		return Invalid(wantName, want, "must be a finite number > 0")
	}
	return nil
}

// AtLeast reports whether the SLA is a floor (throughput>=900) rather than
// a ceiling (rt_p95<=50).
func (s SLA) AtLeast() bool { return s.Min != 0 }

// Level returns the SLA's bound: Min for a floor, Max for a ceiling.
func (s SLA) Level() float64 {
	if s.AtLeast() {
		return s.Min
	}
	return s.Max
}

// Met reports whether value satisfies the SLA: value ≤ Max for a ceiling,
// value ≥ Min for a floor. NaN never does.
func (s SLA) Met(value float64) bool {
	if s.AtLeast() {
		return value >= s.Min
	}
	return value <= s.Max
}

// String returns the SLA as ParseSLA reads it: "rt_p95<=50" or
// "throughput>=900".
func (s SLA) String() string {
	if s.AtLeast() {
		return fmt.Sprintf("%s>=%g", s.Metric, s.Min)
	}
	return fmt.Sprintf("%s<=%g", s.Metric, s.Max)
}

// StudyState is where a study is in its life.
type StudyState string

// Study states.
const (
	StudyPending   StudyState = "pending"
	StudyRunning   StudyState = "running"
	StudyDone      StudyState = "done"
	StudyFailed    StudyState = "failed"
	StudyCancelled StudyState = "cancelled"

	// StudyInterrupted means the process running the study (or that was
	// to run it, for one still pending) stopped before the study ended: it
	// shut down, or it died and a store's recovery found it gone. The
	// study did not fail, and no one cancelled it.
	StudyInterrupted StudyState = "interrupted"
)

// StudyStates lists every study state, in the order of a study's life.
var StudyStates = []StudyState{StudyPending, StudyRunning, StudyDone, StudyFailed, StudyCancelled, StudyInterrupted}

// Study is one JustRunIt run: a target, a space, a time bound, metrics and
// optionally an SLA. It produces a matrix.
type Study struct {
	ID     string `json:"id"`
	Name   string `json:"name,omitempty"`
	Target string `json:"target"` // instance under study, or a runner's name
	Space  Space  `json:"space"`
	// Metrics are the matrix's columns; DefaultMetrics when empty.
	Metrics []Metric `json:"metrics"`
	SLA     *SLA     `json:"sla,omitempty"`
	// TimeBound is how long the study may run experiments for, charged
	// each experiment's WarmUp + Window: a bound of N of them runs N
	// experiments on each slot (more when windows end early), although
	// each takes a little longer; that overhead may run the study past its
	// bound by up to a tenth of it (see study.Grace).
	TimeBound Duration `json:"time_bound"`
	// WarmUp and Window make one experiment: WarmUp is discarded, Window
	// measured (it may end early when the p95 estimate has converged).
	WarmUp Duration `json:"warm_up"`
	Window Duration `json:"window"`
	// Slots is how many experiments may run at once (parallel clones).
	Slots        int    `json:"slots"`
	Strategy     string `json:"strategy"`
	Interpolator string `json:"interpolator"`
	// CheckThreshold is the relative error |measured−interpolated|/measured
	// above which the checker raises an alert, e.g. 0.1 for 10%.
	CheckThreshold float64 `json:"check_threshold"`
	// MinSamples is the fewest successful responses a window needs to be a
	// measurement; 0 takes the runner's default (100 for a site's studies).
	// A service with little traffic needs a longer window or a lower value,
	// at least MinStudySamples.
	MinSamples int64 `json:"min_samples,omitempty"`

	State    StudyState `json:"state"`
	Owner    string     `json:"owner,omitempty"` // the process running it: "pid@hostname;start=TICKS;boot=ID" (see sqlite.OwnerID)
	Created  time.Time  `json:"created"`
	Started  time.Time  `json:"started,omitzero"`
	Finished time.Time  `json:"finished,omitzero"`
	Error    string     `json:"error,omitempty"`
	// Experiments counts the experiments run so far, checks included.
	Experiments int `json:"experiments"`
}

// MinStudySamples is the least Study.MinSamples may be: with fewer
// responses the p95's 95% confidence interval has no upper bound (the
// slowest of n responses is above the p95 with probability 1 − 0.95^n,
// under 0.95 for n < 59; see measure.RankInterval).
const MinStudySamples = 60

// FillMetrics sets the metrics a study records when it names none
// (DefaultMetrics), and adds the SLA's metric when it is not among them:
// the SLA is read from the matrix.
func (s *Study) FillMetrics() {
	if len(s.Metrics) == 0 {
		s.Metrics = append([]Metric(nil), DefaultMetrics...)
	}
	if s.SLA != nil && !slices.Contains(s.Metrics, s.SLA.Metric) {
		s.Metrics = append(s.Metrics, s.SLA.Metric)
	}
}

// ExperimentLength is how long one experiment takes at most.
func (s *Study) ExperimentLength() time.Duration { return time.Duration(s.WarmUp + s.Window) }

// Validate checks a study's settings and names the first bad field.
func (s *Study) Validate() error {
	if strings.TrimSpace(s.Target) == "" {
		return Invalid("target", nil, "name the instance to study")
	}
	if err := s.Space.Validate(); err != nil {
		return err
	}
	if err := checkLimits(s.Space); err != nil {
		return err
	}
	for i, m := range s.Metrics {
		if _, err := ParseMetric(string(m)); err != nil {
			return Invalid(fmt.Sprintf("metrics[%d]", i), string(m), "unknown; known: %v", AllMetrics)
		}
	}
	if s.Window <= 0 {
		return Invalid("window", s.Window, "must be > 0, e.g. 30s")
	}
	if s.WarmUp < 0 {
		return Invalid("warm_up", s.WarmUp, "must be ≥ 0")
	}
	if s.TimeBound < Duration(s.ExperimentLength()) {
		return Invalid("time_bound", s.TimeBound, "shorter than one experiment (warm-up %v + window %v = %v); raise it or shorten the experiment",
			s.WarmUp, s.Window, s.ExperimentLength())
	}
	if s.Slots < 1 {
		return Invalid("slots", s.Slots, "must be ≥ 1")
	}
	if !(s.CheckThreshold > 0) || math.IsInf(s.CheckThreshold, 0) {
		return Invalid("check_threshold", s.CheckThreshold, "must be a number > 0, e.g. 0.1 for 10%%")
	}
	if s.MinSamples != 0 && s.MinSamples < MinStudySamples {
		return Invalid("min_samples", s.MinSamples, "must be 0 (the default) or at least %d: with fewer responses the p95's confidence interval has no upper bound", MinStudySamples)
	}
	if s.SLA != nil {
		if err := s.SLA.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// checkLimits refuses a cpu, freq or mem value a platform could not set
// as a limit: at or below 0 (the platforms read an allocation's 0 as no
// limit, so a row labelled 0 would be measured unlimited), or a memory
// size that is not a whole number of MiB (an allocation holds whole MiB).
func checkLimits(sp Space) error {
	for i, par := range sp.Params {
		if par.Categorical() {
			continue
		}
		field := fmt.Sprintf("parameters[%d]", i)
		switch par.Name {
		case "cpu", "freq", "mem":
			if v := par.Values[0]; v <= 0 {
				return Invalid(field, fmt.Sprintf("%s=%g", par.Name, v), "%s values must be > 0: an allocation's 0 means no limit, so the point would be measured unlimited", par.Name)
			}
		}
		if par.Name == "mem" {
			for _, v := range par.Values {
				if v != math.Trunc(v) {
					return Invalid(field, fmt.Sprintf("mem=%g", v), "memory is set in whole MiB")
				}
			}
		}
	}
	return nil
}

// Runner runs one experiment: the target at point p under the live workload
// for a warm-up and a window. It returns what it measured, or an error; it
// must return promptly when ctx is done. Implementations must be safe for
// concurrent calls when a study has more than one slot.
type Runner interface {
	Run(ctx context.Context, p Point) (Observation, error)
}

// PlanState is what a Strategy sees when it chooses the next experiments.
type PlanState struct {
	// Matrix holds the measured cells so far (and the last interpolation).
	Matrix *Matrix
	// Running are points whose experiments are under way.
	Running []Point
	// TimeLeft is what remains of the time bound; ExperimentLength is how
	// long one experiment takes at most (warm-up + window). The study
	// engine charges the bound each experiment's ExperimentLength, not
	// what it takes beyond it (its allocation is set, its clone checked,
	// its observation stored), up to a grace of a tenth of the bound (see
	// study.Grace): a bound of N experiment lengths leaves a slot time for
	// N experiments, each whole.
	TimeLeft         time.Duration
	ExperimentLength time.Duration
	// Slots is the number of experiments that may run at once; Free of them
	// are idle now.
	Slots int
	Free  int
	// SLA is the study's objective, if any (the sla strategy needs it).
	SLA *SLA
}

// Budget returns how many more experiments fit into the time left using
// every slot: each slot runs floor(TimeLeft/ExperimentLength) experiments.
// It assumes every experiment takes its full length and ignores that slots
// busy with running experiments free up later.
func (st PlanState) Budget() int {
	if st.ExperimentLength <= 0 {
		return 0
	}
	return int(st.TimeLeft/st.ExperimentLength) * max(st.Slots, 1)
}

// Strategy chooses which experiments to run (the paper's driver).
type Strategy interface {
	// Name is the strategy's registered name ("grid", "adaptive", "sla").
	Name() string
	// Next returns up to st.Free points to run now; none means the strategy
	// is done (or must wait for running experiments when st.Running is not
	// empty). It never returns a point that cannot finish within st.TimeLeft,
	// a point already measured, or one that is running.
	Next(ctx context.Context, st PlanState) ([]Point, error)
	// Estimate returns how many more experiments the strategy expects to
	// start from st (not counting measured or running points), never more
	// than st.Budget() − len(st.Running).
	Estimate(st PlanState) int
}

// Interpolator fills the cells of a matrix that have no measurement.
type Interpolator interface {
	// Name is the interpolator's registered name ("linear", "gp", ...).
	Name() string
	// Interpolate sets every cell without a measurement (Empty, I) from the
	// measured ones (X, V), with an uncertainty estimate. T cells keep their
	// value (a decision already rests on it). Measured cells that are not
	// finite are not used, and a category (of a categorical parameter) with
	// nothing measured stays Empty. With no measured cell it returns an
	// error wrapping ErrInvalid.
	Interpolate(m *Matrix) error
}

// CheckResult is the checker's verdict on one T cell.
type CheckResult struct {
	StudyID   string    `json:"study_id"`
	Point     Point     `json:"point"`
	Metric    Metric    `json:"metric"`
	Predicted float64   `json:"predicted"`
	Measured  float64   `json:"measured"`
	RelError  float64   `json:"rel_error"` // |measured − predicted| / |measured|
	Threshold float64   `json:"threshold"`
	Passed    bool      `json:"passed"`
	Time      time.Time `json:"time"`
	// Reason says why a check failed other than by its relative error,
	// e.g. "unmeasurable: ..." when the checking experiment ran its window
	// and measured too few responses (the clone saturated at the point, or
	// got no traffic): Measured is then 0 and RelError 1; or
	// "saturated: ..." when the clone answered clearly fewer requests than
	// it was sent, so that the response time it measured (Measured)
	// understates what clients would see. Empty otherwise.
	Reason string `json:"reason,omitempty"`
}

// The prefixes of a CheckResult's Reason, which say how the check failed.
const (
	CheckUnmeasurable = "unmeasurable"
	CheckSaturated    = "saturated"
)

// Unmeasurable reports whether the checking experiment measured too few
// responses for a value (see Reason).
func (r CheckResult) Unmeasurable() bool { return strings.HasPrefix(r.Reason, CheckUnmeasurable) }

// Event is something a study, the checker or the manager wants recorded and
// shown: a study starting, an experiment ending, a check failing.
type Event struct {
	ID      int64          `json:"id"`
	Time    time.Time      `json:"time"`
	StudyID string         `json:"study_id,omitempty"`
	Kind    string         `json:"kind"`  // e.g. "study.started", "check.failed"
	Level   string         `json:"level"` // "info", "warn", "error"
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

// Event kinds the engine emits.
const (
	EventStudyStarted     = "study.started"
	EventStudyFinished    = "study.finished"
	EventExperimentDone   = "experiment.done"
	EventExperimentFailed = "experiment.failed"
	// EventExperimentCut is added, level "warn", for an experiment the
	// study's time bound stopped before its window had enough samples: it
	// measured nothing, and the study goes on without it.
	EventExperimentCut = "experiment.cut"
	// EventExperimentUnmeasurable is added, level "warn", for an
	// experiment that ran its whole window and measured too few responses
	// to count: the clone was saturated at that point, or got no traffic
	// (Row.Unmeasurable). The study goes on.
	EventExperimentUnmeasurable = "experiment.unmeasurable"
	EventCheckPassed            = "check.passed"
	EventCheckFailed            = "check.failed"
	// EventStudyInterrupted is added, level "warn", when a study ends
	// StudyInterrupted, in place of EventStudyFinished: by its process as
	// it shuts down (data {"state": "interrupted"}), or by a store's
	// recovery for a study whose process died (data {"owner": OWNER}, the
	// process's Study.Owner; see the store's recovery on start).
	EventStudyInterrupted = "study.interrupted"
	// EventVerifyDone is added for each point the fidelity check ("study
	// verify") measured on the on-line target: level "warn" when a metric
	// missed the study's check threshold. Its data holds the point and a
	// list of per-metric "verifications" (predicted, measured, error).
	// EventVerifyFailed is added when measuring a point on-line failed.
	EventVerifyDone   = "verify.done"
	EventVerifyFailed = "verify.failed"
)

// EventFilter selects events; zero fields match everything.
type EventFilter struct {
	StudyID string
	// Kind is one kind ("study.started"), or every kind of a family when
	// it ends in ".*" ("manager.*").
	Kind    string
	AfterID int64
	// Limit bounds how many events are returned: the oldest matching, or
	// with Newest the newest (still oldest first).
	Limit  int
	Newest bool
}

// KindPrefix returns the prefix a family filter ("manager.*") selects,
// "manager.", and whether Kind is one.
func (f EventFilter) KindPrefix() (string, bool) {
	if p, ok := strings.CutSuffix(f.Kind, "*"); ok && strings.HasSuffix(p, ".") {
		return p, true
	}
	return "", false
}

// Store keeps studies, their matrices, observations, check results and
// events. Implementations are safe for concurrent use and for concurrent
// readers in other processes.
type Store interface {
	// CreateStudy stores a new study, assigning ID and Created when empty.
	// An existing ID gives ErrExists.
	CreateStudy(ctx context.Context, s *Study) error
	// UpdateStudy replaces a study's stored fields; unknown ID gives ErrNotFound.
	// SaveMatrix, AddObservation, AddCheck and RecordResult give
	// ErrNotFound for an unknown study too.
	UpdateStudy(ctx context.Context, s *Study) error
	// Study returns one study or ErrNotFound.
	Study(ctx context.Context, id string) (*Study, error)
	// Studies returns every study, newest first.
	Studies(ctx context.Context) ([]*Study, error)
	// SaveMatrix replaces the study's matrix.
	SaveMatrix(ctx context.Context, studyID string, m *Matrix) error
	// Matrix returns the study's last saved matrix or ErrNotFound.
	Matrix(ctx context.Context, studyID string) (*Matrix, error)
	// AddObservation appends an experiment's observation to the study.
	AddObservation(ctx context.Context, studyID string, o Observation) error
	// Observations returns the study's observations in the order added.
	Observations(ctx context.Context, studyID string) ([]Observation, error)
	// AddCheck appends a checker result.
	AddCheck(ctx context.Context, c CheckResult) error
	// Checks returns the study's check results in the order added.
	Checks(ctx context.Context, studyID string) ([]CheckResult, error)
	// AddEvent appends an event, setting its ID (and Time when zero).
	AddEvent(ctx context.Context, e *Event) error
	// Events returns events matching f in ID order.
	Events(ctx context.Context, f EventFilter) ([]Event, error)
	// RecordResult stores every part of r for the study in one
	// transaction: all of them or, on error, none, so that a reader never
	// sees an observation without the matrix it went into, and a crash
	// leaves neither. Each part is checked as its single method checks it
	// (an invalid one gives ErrInvalid); an unknown study gives
	// ErrNotFound whatever r holds, events included.
	RecordResult(ctx context.Context, studyID string, r Result) error
	// Export returns the study with everything recorded about it, read
	// as of one moment: a study, matrix, observations, checks and events
	// that a concurrent RecordResult cannot make disagree. An unknown
	// study gives ErrNotFound; one with no matrix yet a nil Matrix.
	Export(ctx context.Context, studyID string) (*StudyExport, error)
	// Close releases the store.
	Close() error
}

// Result is what one step of a study records together: an experiment's
// observation with the matrix it went into, the study's experiment count
// and the event saying so; or a round of checks with their observations.
// Every part is optional. Store.RecordResult writes it at once.
type Result struct {
	// Study, when set, replaces the study's stored fields as UpdateStudy
	// does; its ID must be the study's the result is recorded for.
	Study *Study
	// Observations are appended in order, as AddObservation appends.
	Observations []Observation
	// Checks are appended in order, as AddCheck appends. An empty StudyID
	// is the study's; another study's is invalid.
	Checks []CheckResult
	// Matrix, when set, replaces the study's matrix, as SaveMatrix does.
	Matrix *Matrix
	// Events are appended in order, as AddEvent appends: once the result
	// is recorded (not before, nor when it fails) each has its ID set, its
	// Time when zero, its Level when empty and its StudyID when empty.
	// Another study's is invalid.
	Events []*Event
}

// StudyExport is a study with everything recorded about it, as
// Store.Export reads it: what GET /api/v1/studies/{id}/export answers and
// "justrunit study export" writes.
type StudyExport struct {
	Study *Study `json:"study"`
	// Matrix is nil when the study has none yet (no experiment ended).
	Matrix       *Matrix       `json:"matrix,omitempty"`
	Observations []Observation `json:"observations"`
	Checks       []CheckResult `json:"checks"`
	Events       []Event       `json:"events"`
}
