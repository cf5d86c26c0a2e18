package study

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/checker"
)

// Use marks the cells a decision rests on: an interpolated cell becomes T
// (measured cells are returned as they are). The matrix is saved so the
// stored study shows what the decision used. When a cell cannot be used,
// none is marked.
func (e *Engine) Use(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, metrics ...justrunit.Metric) ([]justrunit.Cell, error) {
	for _, mt := range metrics { // all or nothing: check every cell first
		c, err := m.Cell(p, mt)
		if err == nil && c.Prov == justrunit.Empty {
			_, err = m.Use(p, mt) // says why, and changes nothing
		}
		if err != nil {
			return nil, err
		}
	}
	cells := make([]justrunit.Cell, 0, len(metrics))
	for _, mt := range metrics {
		c, _ := m.Use(p, mt)
		cells = append(cells, c)
	}
	if e.Store != nil {
		if err := e.Store.SaveMatrix(ctx, st.ID, m); err != nil {
			return nil, fmt.Errorf("save matrix: %w", err)
		}
	}
	return cells, nil
}

// Check runs the checker on every T cell of m: one experiment per point
// through the engine's Runner, the cells become V with the measured value,
// the other interpolated cells are filled again with the new measurements,
// each experiment's observation is stored with the study's (as Run stores
// its own), and each result with a check.passed or check.failed event.
// notify, when not nil, is called for every failed check (the hook that
// alerts the management entity). A point whose checking experiment
// measured too few responses fails the checks of its T cells and is marked
// unmeasurable (see checker.Checker.Check). The matrix is saved afterwards
// with the observations, results, events and the study's experiment count,
// in one transaction, also when some checking experiments failed (their
// cells stay T; the errors are returned joined).
func (e *Engine) Check(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, notify func(justrunit.CheckResult)) ([]justrunit.CheckResult, error) {
	c, err := checker.New(e.Runner, st.CheckThreshold)
	if err != nil {
		return nil, err
	}
	c.Logger, c.StudyID, c.Notify = e.logger(), st.ID, notify
	results, checkErr := c.CheckAll(ctx, m)
	// An experiment that failed is not counted, as in Run; one that
	// measured too few responses is.
	st.Experiments += len(points(results))
	if len(results) > 0 && e.Interpolator != nil {
		// The checks measured new points: the cells filled from the old
		// measurements are filled again with them.
		if err := e.Interpolator.Interpolate(m); err != nil {
			checkErr = errors.Join(checkErr, fmt.Errorf("interpolate after the checks: %w", err))
		}
	}
	if e.Store == nil {
		return results, checkErr
	}
	// The observations, checks, events, matrix and study count go in
	// one transaction: a reader never sees a check without the V cell and
	// observation it rests on, nor does a crash leave one.
	var rec justrunit.Result
	for _, p := range points(results) {
		// The point's observation is the checking experiment's: a T cell
		// is on a row without one, and Verify gave it one. A point that
		// measured nothing has none.
		i, err := m.Space.IndexOf(p)
		if err != nil || m.Rows[i].Observation == nil {
			continue
		}
		rec.Observations = append(rec.Observations, *m.Rows[i].Observation)
	}
	for _, r := range results {
		rec.Checks = append(rec.Checks, r)
		kind, level, verdict := justrunit.EventCheckPassed, "info", "within"
		if !r.Passed {
			kind, level, verdict = justrunit.EventCheckFailed, "warn", "EXCEEDS"
		}
		msg := fmt.Sprintf("check %s %s: interpolated %.4g, measured %.4g: error %.1f%% %s threshold %.1f%%",
			st.Space.Format(r.Point), r.Metric, r.Predicted, r.Measured, 100*r.RelError, verdict, 100*r.Threshold)
		data := map[string]any{"metric": string(r.Metric), "rel_error": r.RelError}
		if r.Reason != "" {
			msg = fmt.Sprintf("check %s %s: interpolated %.4g, FAILED: %s", st.Space.Format(r.Point), r.Metric, r.Predicted, r.Reason)
			data["reason"] = r.Reason
		}
		rec.Events = append(rec.Events, newEvent(st, kind, level, msg, data))
	}
	rec.Matrix, rec.Study = m, st
	if err := e.Store.RecordResult(context.WithoutCancel(ctx), st.ID, rec); err != nil {
		return results, errors.Join(checkErr, fmt.Errorf("store checks: %w", err))
	}
	return results, checkErr
}

// points returns the distinct points of results, in order: one experiment
// each.
func points(results []justrunit.CheckResult) []justrunit.Point {
	var seen []justrunit.Point
	for _, r := range results {
		if !slices.ContainsFunc(seen, r.Point.Equal) {
			seen = append(seen, r.Point)
		}
	}
	return seen
}
