package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/justrunit/justrunit"
)

// notFoundIfNoStudy turns a foreign-key failure (the study does not exist)
// into an error wrapping justrunit.ErrNotFound.
func notFoundIfNoStudy(op, studyID string, err error) error {
	if sqliteCode(err) == sqliteConstraintForeignKey {
		return fmt.Errorf("%s: study %s: %w", op, studyID, justrunit.ErrNotFound)
	}
	return fmt.Errorf("%s: study %s: %w", op, studyID, err)
}

// SaveMatrix replaces the study's matrix with m. An invalid matrix (see
// justrunit.Matrix.Validate) gives an error wrapping justrunit.ErrInvalid;
// an unknown study one wrapping justrunit.ErrNotFound.
func (s *Store) SaveMatrix(ctx context.Context, studyID string, m *justrunit.Matrix) error {
	if m == nil {
		return fmt.Errorf("save matrix: study %s: %w: nil matrix", studyID, justrunit.ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("save matrix: study %s: %w", studyID, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("save matrix: study %s: encode: %w", studyID, err)
	}
	_, err = s.w.ExecContext(ctx, `INSERT INTO matrices (study_id, data, updated_ns) VALUES (?, ?, ?)
		ON CONFLICT (study_id) DO UPDATE SET data = excluded.data, updated_ns = excluded.updated_ns`,
		studyID, string(b), time.Now().UnixNano())
	if err != nil {
		return notFoundIfNoStudy("save matrix", studyID, err)
	}
	return nil
}

// Matrix returns the study's last saved matrix, or an error wrapping
// justrunit.ErrNotFound when the study is unknown or has none yet.
func (s *Store) Matrix(ctx context.Context, studyID string) (*justrunit.Matrix, error) {
	var data string
	err := s.r.QueryRowContext(ctx, `SELECT data FROM matrices WHERE study_id = ?`, studyID).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("matrix of study %s: %w", studyID, justrunit.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read matrix of study %s: %w", studyID, err)
	}
	m := new(justrunit.Matrix)
	if err := json.Unmarshal([]byte(data), m); err != nil {
		return nil, fmt.Errorf("read matrix of study %s: decode: %w", studyID, err)
	}
	return m, nil
}

// AddObservation appends o to the study's observations. An unknown study
// gives an error wrapping justrunit.ErrNotFound.
func (s *Store) AddObservation(ctx context.Context, studyID string, o justrunit.Observation) error {
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("add observation: study %s: encode: %w", studyID, err)
	}
	// One statement, so the next seq is computed under the write lock even
	// when another process appends too.
	_, err = s.w.ExecContext(ctx, `INSERT INTO observations (study_id, seq, data)
		VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM observations WHERE study_id = ?1), ?2)`,
		studyID, string(b))
	if err != nil {
		return notFoundIfNoStudy("add observation", studyID, err)
	}
	return nil
}

// Observations returns the study's observations in the order added; none
// (and no error) for an unknown study.
func (s *Store) Observations(ctx context.Context, studyID string) ([]justrunit.Observation, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT data FROM observations WHERE study_id = ? ORDER BY seq`, studyID)
	if err != nil {
		return nil, fmt.Errorf("read observations of study %s: %w", studyID, err)
	}
	defer rows.Close()
	var out []justrunit.Observation
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("read observations of study %s: %w", studyID, err)
		}
		var o justrunit.Observation
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			return nil, fmt.Errorf("read observations of study %s: decode: %w", studyID, err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read observations of study %s: %w", studyID, err)
	}
	return out, nil
}

// AddCheck appends a checker result to the study c.StudyID. An unknown
// study gives an error wrapping justrunit.ErrNotFound.
func (s *Store) AddCheck(ctx context.Context, c justrunit.CheckResult) error {
	if c.StudyID == "" {
		return justrunit.Invalid("study_id", nil, "a check result belongs to a study")
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("add check: study %s: encode: %w", c.StudyID, err)
	}
	_, err = s.w.ExecContext(ctx, `INSERT INTO checks (study_id, time_ns, metric, passed, data) VALUES (?, ?, ?, ?, ?)`,
		c.StudyID, nanos(c.Time), string(c.Metric), c.Passed, string(b))
	if err != nil {
		return notFoundIfNoStudy("add check", c.StudyID, err)
	}
	return nil
}

// Checks returns the study's check results in the order added; none (and no
// error) for an unknown study.
func (s *Store) Checks(ctx context.Context, studyID string) ([]justrunit.CheckResult, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT data FROM checks WHERE study_id = ? ORDER BY id`, studyID)
	if err != nil {
		return nil, fmt.Errorf("read checks of study %s: %w", studyID, err)
	}
	defer rows.Close()
	var out []justrunit.CheckResult
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("read checks of study %s: %w", studyID, err)
		}
		var c justrunit.CheckResult
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return nil, fmt.Errorf("read checks of study %s: decode: %w", studyID, err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read checks of study %s: %w", studyID, err)
	}
	return out, nil
}

// AddEvent appends e, setting e.ID, e.Time when zero (to now, UTC) and
// e.Level when empty ("info"). e.Kind is required. Events are a log: e.StudyID
// need not name a stored study. Event IDs increase and are never reused, so
// a reader can poll with EventFilter.AfterID.
func (s *Store) AddEvent(ctx context.Context, e *justrunit.Event) error {
	if e == nil {
		return fmt.Errorf("add event: %w: nil event", justrunit.ErrInvalid)
	}
	if e.Kind == "" {
		return justrunit.Invalid("kind", nil, `name the event's kind, e.g. "study.started"`)
	}
	var data any
	if len(e.Data) > 0 {
		b, err := json.Marshal(e.Data)
		if err != nil {
			return fmt.Errorf("add event %s: encode data: %w", e.Kind, err)
		}
		data = string(b)
	}
	t, level := e.Time, e.Level
	if t.IsZero() {
		t = time.Now().UTC()
	}
	if level == "" {
		level = "info"
	}
	id, err := insertEvent(ctx, s.w, t, e.StudyID, e.Kind, level, e.Message, data)
	if err != nil {
		return fmt.Errorf("add event %s: %w", e.Kind, err)
	}
	e.ID, e.Time, e.Level = id, t, level
	return nil
}

// execer is a *sql.DB or *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func insertEvent(ctx context.Context, x execer, t time.Time, studyID, kind, level, msg string, data any) (int64, error) {
	var sid any
	if studyID != "" {
		sid = studyID
	}
	res, err := x.ExecContext(ctx, `INSERT INTO events (time_ns, study_id, kind, level, message, data)
		VALUES (?, ?, ?, ?, ?, ?)`, t.UnixNano(), sid, kind, level, msg, data)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// Events returns the events matching f in ID order: those of f.StudyID and
// of kind f.Kind when set, with an ID above f.AfterID, at most f.Limit of
// them when it is above zero. A negative Limit gives an error wrapping
// justrunit.ErrInvalid. Event data is JSON-decoded, so its numbers come back
// as float64.
func (s *Store) Events(ctx context.Context, f justrunit.EventFilter) ([]justrunit.Event, error) {
	if f.Limit < 0 {
		return nil, justrunit.Invalid("limit", f.Limit, "must be ≥ 0 (0 means no limit)")
	}
	q := `SELECT id, time_ns, study_id, kind, level, message, data FROM events WHERE id > ?`
	args := []any{f.AfterID}
	if f.StudyID != "" {
		q += ` AND study_id = ?`
		args = append(args, f.StudyID)
	}
	if prefix, ok := f.KindPrefix(); ok {
		// A range over the kind index: "manager." ≤ kind < "manager/".
		q += ` AND kind >= ? AND kind < ?`
		args = append(args, prefix, prefix[:len(prefix)-1]+"/")
	} else if f.Kind != "" {
		q += ` AND kind = ?`
		args = append(args, f.Kind)
	}
	if f.Newest {
		q += ` ORDER BY id DESC`
	} else {
		q += ` ORDER BY id`
	}
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	var out []justrunit.Event
	for rows.Next() {
		var (
			e             justrunit.Event
			t             int64
			studyID, data sql.NullString
		)
		if err := rows.Scan(&e.ID, &t, &studyID, &e.Kind, &e.Level, &e.Message, &data); err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		e.Time = time.Unix(0, t).UTC()
		e.StudyID = studyID.String
		if data.Valid {
			if err := json.Unmarshal([]byte(data.String), &e.Data); err != nil {
				return nil, fmt.Errorf("read event %d: decode data: %w", e.ID, err)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	if f.Newest {
		slices.Reverse(out)
	}
	return out, nil
}
