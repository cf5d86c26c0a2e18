// Package checker is JustRunIt's checker: it re-measures the interpolated
// cells a decision used (T cells) and raises an alert when the interpolation
// was off by more than the user's threshold (the paper's "checker").
//
// A check runs one experiment at the cell's point through a
// justrunit.Runner, stores the measurement in the matrix with Matrix.Verify
// (the cell becomes V and carries the measured value, remembering the
// prediction), and compares the two. A failed check is logged as a slog
// warning and passed to the Notify hook; the study engine stores the
// returned justrunit.CheckResult values and events.
package checker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/justrunit/justrunit"
)

// Log attribute keys, so that log readers can rely on them.
const (
	keyEvent     = "event"
	keyStudy     = "study"
	keyPoint     = "point"
	keyMetric    = "metric"
	keyPredicted = "predicted"
	keyMeasured  = "measured"
	keyRelError  = "rel_error"
	keyThreshold = "threshold"
	keyReason    = "reason"
	keyErr       = "err"
)

// Checker validates the interpolated cells decisions rest on. Set the fields
// (or use New), then call Check or CheckAll.
//
// A Checker holds no mutable state: one may be used from several goroutines
// at once, each on its own matrix (a Matrix itself is not safe for
// concurrent mutation). Runner, Logger and Notify must then be safe for
// concurrent use too.
type Checker struct {
	// Runner runs the checking experiments. Required.
	Runner justrunit.Runner
	// Threshold is the relative error |measured − predicted| / |measured|
	// above which a check fails, e.g. 0.1 for 10%; must be > 0.
	Threshold float64
	// Logger receives a warning for every failed check; nil logs nothing.
	Logger *slog.Logger
	// Notify, when set, is called with every failed check, on the goroutine
	// that runs the check, before Check returns. It should not block: it is
	// the hook the API exposes to alert the management entity.
	Notify func(justrunit.CheckResult)
	// StudyID is copied into every CheckResult and log line; empty leaves
	// it to the caller.
	StudyID string
	// Now returns the time stamped on results; time.Now when nil.
	Now func() time.Time
}

// New returns a Checker running experiments through r and failing checks
// whose relative error exceeds threshold. The optional fields (Logger,
// Notify, StudyID, Now) can be set on the result.
func New(r justrunit.Runner, threshold float64) (*Checker, error) {
	c := &Checker{Runner: r, Threshold: threshold}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks the Checker's settings and names the first bad field.
func (c *Checker) Validate() error {
	if c.Runner == nil {
		return justrunit.Invalid("runner", nil, "the checker needs a runner to re-measure cells")
	}
	if !(c.Threshold > 0) || math.IsInf(c.Threshold, 0) {
		return justrunit.Invalid("check_threshold", c.Threshold, "must be a number > 0, e.g. 0.1 for 10%%")
	}
	return nil
}

// RelError returns the relative error of a prediction against a
// measurement: |measured − predicted| / |measured|. A measurement of 0 has
// no scale of its own: the error is then 0 when the prediction is 0 too and
// 1 (100%) otherwise, and Passes says such a check fails whatever the
// threshold, since nothing non-zero is close to zero in relative terms. A
// NaN or infinite value also gives 1. The result is always finite, so check
// results encode to JSON.
func RelError(measured, predicted float64) float64 {
	switch {
	case measured == predicted:
		return 0
	case measured == 0 || !finite(measured) || !finite(predicted):
		return 1
	}
	return min(math.Abs(measured-predicted)/math.Abs(measured), math.MaxFloat64)
}

// Passes reports whether predicted is within threshold of measured:
// RelError(measured, predicted) ≤ threshold, except that a non-zero (or
// non-finite) prediction of a measured 0, or any non-finite value, never
// passes.
func Passes(measured, predicted, threshold float64) bool {
	switch {
	case measured == predicted:
		return finite(measured)
	case measured == 0 || !finite(measured) || !finite(predicted):
		return false
	}
	return RelError(measured, predicted) <= threshold
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// Check re-measures the T cell of metric at point p: it runs one experiment
// at p, stores it with Matrix.Verify and returns the verdict on that cell.
// Passed is RelError ≤ Threshold (see Passes for a measured 0). The one experiment verifies every T cell of the point (see
// CheckPoint); failures of any of them are logged and notified.
//
// An experiment whose clone was saturated (Observation.Saturated) fails the
// checks of the metrics its figures understate (Observation.Understates:
// the response times), whatever their error, with a Reason saying so; the
// cells become V with what it measured.
//
// An experiment that ran its window and measured too few responses (an
// error wrapping justrunit.ErrTooFewSamples, not cut by a deadline: the
// clone saturated at p, or got no traffic) is the worst an interpolation
// can do: every T cell of p fails its check, with a Reason saying why (see
// justrunit.CheckResult), and p is marked unmeasurable with
// Matrix.VerifyUnmeasurable, so that no decision uses it again.
//
// A cell that is not T (not interpolated, or interpolated but not used by a
// decision, or already verified) is an error wrapping justrunit.ErrInvalid,
// and nothing runs. A failed experiment leaves the matrix unchanged.
func (c *Checker) Check(ctx context.Context, m *justrunit.Matrix, p justrunit.Point, metric justrunit.Metric) (justrunit.CheckResult, error) {
	if err := c.Validate(); err != nil {
		return justrunit.CheckResult{}, err
	}
	cell, err := m.Cell(p, metric)
	if err != nil {
		return justrunit.CheckResult{}, fmt.Errorf("check: %w", err)
	}
	if cell.Prov != justrunit.Used {
		return justrunit.CheckResult{}, notUsed(m, p, metric, cell.Prov)
	}
	results, err := c.CheckPoint(ctx, m, p)
	if err != nil {
		return justrunit.CheckResult{}, err
	}
	for _, r := range results {
		if r.Metric == metric {
			return r, nil
		}
	}
	// Unreachable: metric's cell was T, so CheckPoint returned its result.
	return justrunit.CheckResult{}, fmt.Errorf("check %s %s: no result", m.Space.Format(p), metric)
}

// CheckPoint re-measures every T cell of point p with one experiment and
// returns a verdict per cell, in the matrix's metric order. A point without
// T cells is an error wrapping justrunit.ErrInvalid, and nothing runs.
func (c *Checker) CheckPoint(ctx context.Context, m *justrunit.Matrix, p justrunit.Point) ([]justrunit.CheckResult, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	i, err := m.Space.IndexOf(p)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return c.checkRow(ctx, m, i)
}

// CheckAll checks every point of m that holds a T cell, one experiment per
// point in the matrix's order, and returns the verdicts. A failed experiment
// does not stop the others: its error is joined into the returned error and
// its cells stay T (one that measured too few responses is no error but
// failed checks, as Check says). When ctx ends, CheckAll returns at once with the
// verdicts so far and ctx's error.
func (c *Checker) CheckAll(ctx context.Context, m *justrunit.Matrix) ([]justrunit.CheckResult, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var results []justrunit.CheckResult
	var errs []error
	for i, row := range m.Rows {
		if !hasUsed(row) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return results, errors.Join(append(errs, err)...)
		}
		rs, err := c.checkRow(ctx, m, i)
		results = append(results, rs...)
		if err != nil {
			if ctx.Err() != nil {
				return results, errors.Join(append(errs, err)...)
			}
			errs = append(errs, err)
		}
	}
	return results, errors.Join(errs...)
}

// checkRow runs one experiment at row i and verifies its T cells.
func (c *Checker) checkRow(ctx context.Context, m *justrunit.Matrix, i int) ([]justrunit.CheckResult, error) {
	row := &m.Rows[i]
	p := append(justrunit.Point(nil), row.Point...)
	where := m.Space.Format(p)
	var used []int
	for j, cell := range row.Cells {
		if cell.Prov == justrunit.Used {
			used = append(used, j)
		}
	}
	if len(used) == 0 {
		return nil, fmt.Errorf("check %s: %w: no cell of the point was used by a decision (T); nothing to check", where, justrunit.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("check %s: %w", where, err)
	}
	obs, err := c.Runner.Run(ctx, p)
	if err != nil && unmeasurable(ctx, err) {
		return c.unmeasurable(m, i, used, err)
	}
	if err != nil {
		c.logger().Warn("check experiment failed", keyStudy, c.StudyID, keyPoint, where, keyErr, err)
		return nil, fmt.Errorf("check %s: run experiment: %w", where, err)
	}
	switch {
	case len(obs.Point) == 0:
		obs.Point = p
	case !obs.Point.Equal(p):
		return nil, fmt.Errorf("check %s: the runner measured %s instead", where, m.Space.Format(obs.Point))
	}
	// Verify turns every T cell of the row into V (and blank ones into X)
	// from this one observation; the predictions stay in Cell.Predicted.
	if _, err := m.Verify(obs, m.Metrics[used[0]]); err != nil {
		return nil, fmt.Errorf("check %s: %w", where, err)
	}
	now := c.now()
	results := make([]justrunit.CheckResult, 0, len(used))
	for _, j := range used {
		cell := row.Cells[j]
		r := justrunit.CheckResult{
			StudyID:   c.StudyID,
			Point:     append(justrunit.Point(nil), p...),
			Metric:    m.Metrics[j],
			Predicted: cell.Predicted,
			Measured:  cell.Value,
			RelError:  RelError(cell.Value, cell.Predicted),
			Threshold: c.Threshold,
			Time:      now,
		}
		r.Passed = Passes(r.Measured, r.Predicted, c.Threshold)
		if obs.Understates(r.Metric) {
			// Not what the clients would see: the requests still queued at
			// the window's end are missing from it, as the sla strategy
			// and the manager take such a figure.
			r.Passed, r.Reason = false, saturated(&obs, r)
		}
		c.report(r, where)
		results = append(results, r)
	}
	return results, nil
}

// unmeasurable reports whether err, from a checking experiment, says that
// it ran its whole window and measured too few responses: a fact about the
// point, as the study engine takes it, rather than a failure to measure.
func unmeasurable(ctx context.Context, err error) bool {
	return errors.Is(err, justrunit.ErrTooFewSamples) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
}

// unmeasurable fails the check of the T cells used of row i, whose
// experiment measured too few responses (runErr), and marks the point
// unmeasurable.
func (c *Checker) unmeasurable(m *justrunit.Matrix, i int, used []int, runErr error) ([]justrunit.CheckResult, error) {
	row := &m.Rows[i]
	p := append(justrunit.Point(nil), row.Point...)
	where := m.Space.Format(p)
	if err := m.VerifyUnmeasurable(p, runErr.Error()); err != nil {
		return nil, fmt.Errorf("check %s: %w", where, err)
	}
	now := c.now()
	results := make([]justrunit.CheckResult, 0, len(used))
	for _, j := range used {
		r := justrunit.CheckResult{
			StudyID:   c.StudyID,
			Point:     append(justrunit.Point(nil), p...),
			Metric:    m.Metrics[j],
			Predicted: row.Cells[j].Predicted,
			RelError:  1, // nothing measured: as far off as a prediction of a measured 0
			Threshold: c.Threshold,
			Time:      now,
			Reason:    justrunit.CheckUnmeasurable + ": " + runErr.Error(),
		}
		c.report(r, where)
		results = append(results, r)
	}
	return results, nil
}

// saturated is the Reason of check r failed by a saturated clone's
// observation o.
func saturated(o *justrunit.Observation, r justrunit.CheckResult) string {
	answered := fmt.Sprintf("%.1f req/s, clearly fewer than it was sent", o.Throughput)
	if o.Offered > 0 {
		answered = fmt.Sprintf("%.1f of %.1f req/s offered", o.Throughput, o.Offered)
	}
	return fmt.Sprintf("%s: the clone answered %s, so the measured %.4g %s understates what clients would see", justrunit.CheckSaturated, answered, r.Measured, r.Metric.Unit())
}

// report logs a verdict and notifies a failure.
func (c *Checker) report(r justrunit.CheckResult, where string) {
	attrs := []any{keyStudy, c.StudyID, keyPoint, where, keyMetric, string(r.Metric),
		keyPredicted, r.Predicted, keyMeasured, r.Measured, keyRelError, r.RelError, keyThreshold, r.Threshold}
	if r.Passed {
		c.logger().Debug("check passed", append([]any{keyEvent, justrunit.EventCheckPassed}, attrs...)...)
		return
	}
	msg := "check failed: interpolation off by more than the threshold"
	if r.Reason != "" {
		msg = "check failed: the checking experiment cannot confirm the interpolation"
		attrs = append(attrs, keyReason, r.Reason)
	}
	c.logger().Warn(msg, append([]any{keyEvent, justrunit.EventCheckFailed}, attrs...)...)
	if c.Notify != nil {
		c.Notify(r)
	}
}

func (c *Checker) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func hasUsed(r justrunit.Row) bool {
	for _, cell := range r.Cells {
		if cell.Prov == justrunit.Used {
			return true
		}
	}
	return false
}

func notUsed(m *justrunit.Matrix, p justrunit.Point, metric justrunit.Metric, prov justrunit.Provenance) error {
	why := map[justrunit.Provenance]string{
		justrunit.Empty:        "it has no value",
		justrunit.Measured:     "it was measured, not interpolated",
		justrunit.Interpolated: "no decision used it; mark it with Matrix.Use first",
		justrunit.Verified:     "it was already verified",
	}[prov]
	return fmt.Errorf("check %s %s: %w: provenance %s, want T (%s)", m.Space.Format(p), metric, justrunit.ErrInvalid, prov, why)
}
