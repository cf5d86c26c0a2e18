package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/justrunit/justrunit"
)

// RecordResult stores every part of r for the study studyID in one write
// transaction: r.Study as UpdateStudy stores it, then r.Observations,
// r.Checks, r.Matrix and r.Events as their single methods do. Either all
// of them are stored or, on error, none, and r.Events are changed (ID,
// Time, Level, StudyID; see justrunit.Result) only once they are.
//
// Every part is checked and encoded before the transaction begins, so an
// invalid one (errors wrapping justrunit.ErrInvalid, naming the part) does
// not take the write lock. An unknown study gives an error wrapping
// justrunit.ErrNotFound even when r holds only events, which AddEvent
// would keep for any study.
func (s *Store) RecordResult(ctx context.Context, studyID string, r justrunit.Result) error {
	p, err := prepareResult(studyID, r)
	if err != nil {
		return fmt.Errorf("record result: study %s: %w", studyID, err)
	}
	if r.Study != nil {
		s.claim(r.Study)
	}
	ids := make([]int64, len(r.Events))
	err = s.write(ctx, func(tx *sql.Tx) error {
		// Check first: events have no foreign key to the study, and an
		// early answer spares the writes a rollback would undo.
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM studies WHERE id = ?`, studyID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return justrunit.ErrNotFound
		}
		if err != nil {
			return err
		}
		if r.Study != nil {
			if err := updateStudy(ctx, tx, studyID, p.study); err != nil {
				return fmt.Errorf("update study: %w", err)
			}
		}
		for i, data := range p.observations {
			if err := insertObservation(ctx, tx, studyID, data); err != nil {
				return fmt.Errorf("add observations[%d]: %w", i, err)
			}
		}
		for i, data := range p.checks {
			if err := insertCheck(ctx, tx, p.checkResults[i], data); err != nil {
				return fmt.Errorf("add checks[%d]: %w", i, err)
			}
		}
		if r.Matrix != nil {
			if err := saveMatrix(ctx, tx, studyID, p.matrix); err != nil {
				return fmt.Errorf("save matrix: %w", err)
			}
		}
		for i, e := range r.Events {
			row := p.events[i]
			id, err := insertEvent(ctx, tx, row.time, studyID, e.Kind, row.level, e.Message, row.data)
			if err != nil {
				return fmt.Errorf("add events[%d] %s: %w", i, e.Kind, err)
			}
			ids[i] = id
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record result: study %s: %w", studyID, err)
	}
	for i, e := range r.Events {
		e.ID, e.Time, e.Level, e.StudyID = ids[i], p.events[i].time, p.events[i].level, studyID
	}
	return nil
}

// preparedResult is a justrunit.Result checked and encoded for its
// transaction.
type preparedResult struct {
	study        []any // studyArgs, when r.Study is set
	observations []string
	checks       []string
	checkResults []justrunit.CheckResult // with their StudyID filled in
	matrix       string
	events       []eventRow
}

// prepareResult checks r's parts as their single methods check them, and
// that each belongs to the study studyID; the errors name the part.
func prepareResult(studyID string, r justrunit.Result) (*preparedResult, error) {
	var p preparedResult
	if r.Study != nil {
		if r.Study.ID != studyID {
			return nil, justrunit.Invalid("study.id", r.Study.ID, "a result's study must be the one it is recorded for (%s)", studyID)
		}
		args, err := studyArgs(r.Study)
		if err != nil {
			return nil, fmt.Errorf("study: %w", err)
		}
		p.study = args
	}
	for i, o := range r.Observations {
		b, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("observations[%d]: encode: %w", i, err)
		}
		p.observations = append(p.observations, string(b))
	}
	for i, c := range r.Checks {
		switch c.StudyID {
		case "":
			c.StudyID = studyID
		case studyID:
		default:
			return nil, justrunit.Invalid(fmt.Sprintf("checks[%d].study_id", i), c.StudyID, "a result's checks must be of the study it is recorded for (%s)", studyID)
		}
		b, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("checks[%d]: encode: %w", i, err)
		}
		p.checks = append(p.checks, string(b))
		p.checkResults = append(p.checkResults, c)
	}
	if r.Matrix != nil {
		data, err := encodeMatrix(r.Matrix)
		if err != nil {
			return nil, fmt.Errorf("matrix: %w", err)
		}
		p.matrix = data
	}
	for i, e := range r.Events {
		row, err := prepareEvent(e)
		if err != nil {
			return nil, fmt.Errorf("events[%d]: %w", i, err)
		}
		if e.StudyID != "" && e.StudyID != studyID {
			return nil, justrunit.Invalid(fmt.Sprintf("events[%d].study_id", i), e.StudyID, "a result's events must be about the study it is recorded for (%s)", studyID)
		}
		p.events = append(p.events, row)
	}
	return &p, nil
}

// Export returns the study studyID with its matrix (nil when none is
// saved yet), observations, checks and events, all read in one read
// transaction: a WAL snapshot, so a writer committing meanwhile, in this
// process or another, changes none of them. An unknown study gives an
// error wrapping justrunit.ErrNotFound.
func (s *Store) Export(ctx context.Context, studyID string) (*justrunit.StudyExport, error) {
	// A deferred BEGIN on a read connection: the snapshot is taken at the
	// first SELECT and held until the transaction ends.
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("export study %s: %w", studyID, err)
	}
	defer tx.Rollback() // it only read: nothing to commit
	st, err := readStudy(ctx, tx, studyID)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	e := &justrunit.StudyExport{Study: st}
	if e.Matrix, err = readMatrix(ctx, tx, studyID); err != nil && !errors.Is(err, justrunit.ErrNotFound) {
		return nil, fmt.Errorf("export: %w", err)
	}
	if e.Observations, err = readObservations(ctx, tx, studyID); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if e.Checks, err = readChecks(ctx, tx, studyID); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if e.Events, err = readEvents(ctx, tx, justrunit.EventFilter{StudyID: studyID}); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	return e, nil
}
