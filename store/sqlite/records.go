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
	data, err := encodeMatrix(m)
	if err != nil {
		return fmt.Errorf("save matrix: study %s: %w", studyID, err)
	}
	if err := saveMatrix(ctx, s.w, studyID, data); err != nil {
		return notFoundIfNoStudy("save matrix", studyID, err)
	}
	return nil
}

// encodeMatrix checks m as SaveMatrix does and returns its JSON.
func encodeMatrix(m *justrunit.Matrix) (string, error) {
	if m == nil {
		return "", fmt.Errorf("%w: nil matrix", justrunit.ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	return string(b), nil
}

func saveMatrix(ctx context.Context, x execer, studyID, data string) error {
	_, err := x.ExecContext(ctx, `INSERT INTO matrices (study_id, data, updated_ns) VALUES (?, ?, ?)
		ON CONFLICT (study_id) DO UPDATE SET data = excluded.data, updated_ns = excluded.updated_ns`,
		studyID, data, time.Now().UnixNano())
	return err
}

// Matrix returns the study's last saved matrix, or an error wrapping
// justrunit.ErrNotFound when the study is unknown or has none yet.
func (s *Store) Matrix(ctx context.Context, studyID string) (*justrunit.Matrix, error) {
	return readMatrix(ctx, s.r, studyID)
}

func readMatrix(ctx context.Context, q querier, studyID string) (*justrunit.Matrix, error) {
	var data string
	err := q.QueryRowContext(ctx, `SELECT data FROM matrices WHERE study_id = ?`, studyID).Scan(&data)
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
	if err := insertObservation(ctx, s.w, studyID, string(b)); err != nil {
		return notFoundIfNoStudy("add observation", studyID, err)
	}
	return nil
}

func insertObservation(ctx context.Context, x execer, studyID, data string) error {
	// One statement, so the next seq is computed under the write lock even
	// when another process appends too.
	_, err := x.ExecContext(ctx, `INSERT INTO observations (study_id, seq, data)
		VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM observations WHERE study_id = ?1), ?2)`,
		studyID, data)
	return err
}

// Observations returns the study's observations in the order added; none
// (and no error) for an unknown study.
func (s *Store) Observations(ctx context.Context, studyID string) ([]justrunit.Observation, error) {
	return readObservations(ctx, s.r, studyID)
}

func readObservations(ctx context.Context, q querier, studyID string) ([]justrunit.Observation, error) {
	rows, err := q.QueryContext(ctx, `SELECT data FROM observations WHERE study_id = ? ORDER BY seq`, studyID)
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
	if err := insertCheck(ctx, s.w, c, string(b)); err != nil {
		return notFoundIfNoStudy("add check", c.StudyID, err)
	}
	return nil
}

func insertCheck(ctx context.Context, x execer, c justrunit.CheckResult, data string) error {
	_, err := x.ExecContext(ctx, `INSERT INTO checks (study_id, time_ns, metric, passed, data) VALUES (?, ?, ?, ?, ?)`,
		c.StudyID, nanos(c.Time), string(c.Metric), c.Passed, data)
	return err
}

// Checks returns the study's check results in the order added; none (and no
// error) for an unknown study.
func (s *Store) Checks(ctx context.Context, studyID string) ([]justrunit.CheckResult, error) {
	return readChecks(ctx, s.r, studyID)
}

func readChecks(ctx context.Context, q querier, studyID string) ([]justrunit.CheckResult, error) {
	rows, err := q.QueryContext(ctx, `SELECT data FROM checks WHERE study_id = ? ORDER BY id`, studyID)
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
	row, err := prepareEvent(e)
	if err != nil {
		return err
	}
	id, err := insertEvent(ctx, s.w, row.time, e.StudyID, e.Kind, row.level, e.Message, row.data)
	if err != nil {
		return fmt.Errorf("add event %s: %w", e.Kind, err)
	}
	e.ID, e.Time, e.Level = id, row.time, row.level
	return nil
}

// eventRow is what AddEvent stores of an event besides its fields as given:
// its time and level with their defaults, and its data encoded.
type eventRow struct {
	time  time.Time
	level string
	data  any // JSON text, or nil (NULL) for none
}

// prepareEvent checks e as AddEvent does and returns its row; e is not
// changed, so that a failed write leaves it as it was.
func prepareEvent(e *justrunit.Event) (eventRow, error) {
	if e == nil {
		return eventRow{}, fmt.Errorf("add event: %w: nil event", justrunit.ErrInvalid)
	}
	if e.Kind == "" {
		return eventRow{}, justrunit.Invalid("kind", nil, `name the event's kind, e.g. "study.started"`)
	}
	row := eventRow{time: e.Time, level: e.Level}
	if len(e.Data) > 0 {
		b, err := json.Marshal(e.Data)
		if err != nil {
			return eventRow{}, fmt.Errorf("add event %s: encode data: %w", e.Kind, err)
		}
		row.data = string(b)
	}
	if row.time.IsZero() {
		row.time = time.Now().UTC()
	}
	if row.level == "" {
		row.level = "info"
	}
	return row, nil
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
	return readEvents(ctx, s.r, f)
}

func readEvents(ctx context.Context, qr querier, f justrunit.EventFilter) ([]justrunit.Event, error) {
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
	rows, err := qr.QueryContext(ctx, q, args...)
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
