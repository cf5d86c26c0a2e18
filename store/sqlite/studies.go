package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/justrunit/justrunit"
)

const studyColumns = `id, name, target, space, metrics, sla, time_bound_ns, warm_up_ns, window_ns,
	slots, strategy, interpolator, check_threshold, state, owner, created_ns, started_ns,
	finished_ns, error, experiments, min_samples`

// NewStudyID returns a fresh study ID for a study created at t:
// "s-YYYYMMDD-HHMMSS-xxxx" in UTC with four random hex digits. IDs sort by
// creation time to the second; CreateStudy retries on the rare collision.
func NewStudyID(t time.Time) string {
	var b [2]byte
	rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return "s-" + t.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// validID reports whether id is usable in a URL path and a file name:
// 1 to 64 characters from [A-Za-z0-9._-], not starting with '.' or '-'.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 || id[0] == '.' || id[0] == '-' {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// studyArgs returns st's column values in studyColumns order, without id.
func studyArgs(st *justrunit.Study) ([]any, error) {
	space, err := json.Marshal(st.Space)
	if err != nil {
		return nil, fmt.Errorf("encode space: %w", err)
	}
	metrics, err := json.Marshal(st.Metrics)
	if err != nil {
		return nil, fmt.Errorf("encode metrics: %w", err)
	}
	var sla any
	if st.SLA != nil {
		b, err := json.Marshal(st.SLA)
		if err != nil {
			return nil, fmt.Errorf("encode sla: %w", err)
		}
		sla = string(b)
	}
	return []any{
		st.Name, st.Target, string(space), string(metrics), sla,
		int64(st.TimeBound), int64(st.WarmUp), int64(st.Window),
		st.Slots, st.Strategy, st.Interpolator, st.CheckThreshold,
		string(st.State), st.Owner, nanos(st.Created), nanos(st.Started),
		nanos(st.Finished), st.Error, st.Experiments, st.MinSamples,
	}, nil
}

// CreateStudy stores a new study. It assigns st.ID (see NewStudyID) when
// empty, st.Created when zero and st.State (pending) when empty. A given ID
// must be 1–64 characters from [A-Za-z0-9._-] (IDs appear in URLs); one that
// is already stored gives an error wrapping justrunit.ErrExists. On error st
// is left as it was.
func (s *Store) CreateStudy(ctx context.Context, st *justrunit.Study) error {
	if st == nil {
		return fmt.Errorf("create study: %w: nil study", justrunit.ErrInvalid)
	}
	orig := *st
	generated := st.ID == ""
	if !generated && !validID(st.ID) {
		return justrunit.Invalid("id", st.ID, "want 1-64 characters from A-Z a-z 0-9 . _ -, not starting with . or -")
	}
	if st.Created.IsZero() {
		st.Created = time.Now().UTC()
	}
	if st.State == "" {
		st.State = justrunit.StudyPending
	}
	args, err := studyArgs(st)
	if err != nil {
		*st = orig
		return fmt.Errorf("create study: %w", err)
	}
	s.claim(st)
	const q = `INSERT INTO studies (` + studyColumns + `)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	for attempt := 0; ; attempt++ {
		if generated {
			st.ID = NewStudyID(st.Created)
		}
		_, err = s.w.ExecContext(ctx, q, append([]any{st.ID}, args...)...)
		if err == nil {
			return nil
		}
		id := st.ID
		if sqliteCode(err) == sqliteConstraintPrimaryKey {
			if generated && attempt < 10 {
				continue
			}
			err = justrunit.ErrExists
		}
		*st = orig
		return fmt.Errorf("create study %s: %w", id, err)
	}
}

// claim takes this process's owner lock (holdOwnerLock) before it stores
// a study it owns that has not ended, so that recovery in another PID
// namespace can tell this process is alive. Without the lock nothing is
// lost: that recovery cannot tell, and leaves the study alone.
func (s *Store) claim(st *justrunit.Study) {
	if st.Owner != "" && st.Owner == s.owner && (st.State == justrunit.StudyPending || st.State == justrunit.StudyRunning) {
		_ = holdOwnerLock(s.locks, s.owner)
	}
}

// UpdateStudy replaces every stored field of the study st.ID with st's; a
// zero st.Created keeps the stored one. An unknown ID gives an error
// wrapping justrunit.ErrNotFound.
func (s *Store) UpdateStudy(ctx context.Context, st *justrunit.Study) error {
	if st == nil {
		return fmt.Errorf("update study: %w: nil study", justrunit.ErrInvalid)
	}
	args, err := studyArgs(st)
	if err != nil {
		return fmt.Errorf("update study %s: %w", st.ID, err)
	}
	s.claim(st)
	if err := updateStudy(ctx, s.w, st.ID, args); err != nil {
		return fmt.Errorf("update study %s: %w", st.ID, err)
	}
	return nil
}

// updateStudy replaces the stored fields of the study id with args (see
// studyArgs) through x; an unknown id gives justrunit.ErrNotFound.
func updateStudy(ctx context.Context, x execer, id string, args []any) error {
	const q = `UPDATE studies SET name = ?, target = ?, space = ?, metrics = ?, sla = ?,
		time_bound_ns = ?, warm_up_ns = ?, window_ns = ?, slots = ?, strategy = ?,
		interpolator = ?, check_threshold = ?, state = ?, owner = ?,
		created_ns = COALESCE(?, created_ns), started_ns = ?, finished_ns = ?, error = ?,
		experiments = ?, min_samples = ?
		WHERE id = ?`
	res, err := x.ExecContext(ctx, q, append(args[:len(args):len(args)], id)...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return justrunit.ErrNotFound
	}
	return nil
}

// Study returns the study called id, or an error wrapping
// justrunit.ErrNotFound. Its times are in UTC.
func (s *Store) Study(ctx context.Context, id string) (*justrunit.Study, error) {
	return readStudy(ctx, s.r, id)
}

// querier is a *sql.DB or *sql.Tx: the readers below run on the read pool,
// or in Export's transaction.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func readStudy(ctx context.Context, q querier, id string) (*justrunit.Study, error) {
	row := q.QueryRowContext(ctx, `SELECT `+studyColumns+` FROM studies WHERE id = ?`, id)
	st, err := scanStudy(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("study %s: %w", id, justrunit.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read study %s: %w", id, err)
	}
	return st, nil
}

// Studies returns every study, newest (by Created) first.
func (s *Store) Studies(ctx context.Context) ([]*justrunit.Study, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+studyColumns+` FROM studies ORDER BY created_ns DESC, id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list studies: %w", err)
	}
	defer rows.Close()
	var out []*justrunit.Study
	for rows.Next() {
		st, err := scanStudy(rows)
		if err != nil {
			return nil, fmt.Errorf("list studies: %w", err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list studies: %w", err)
	}
	return out, nil
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanStudy(sc scanner) (*justrunit.Study, error) {
	var (
		st                         justrunit.Study
		space, metrics, state      string
		sla                        sql.NullString
		timeBound, warmUp, window  int64
		created, started, finished sql.NullInt64
	)
	err := sc.Scan(&st.ID, &st.Name, &st.Target, &space, &metrics, &sla, &timeBound, &warmUp, &window,
		&st.Slots, &st.Strategy, &st.Interpolator, &st.CheckThreshold, &state, &st.Owner,
		&created, &started, &finished, &st.Error, &st.Experiments, &st.MinSamples)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(space), &st.Space); err != nil {
		return nil, fmt.Errorf("study %s: decode space: %w", st.ID, err)
	}
	if err := json.Unmarshal([]byte(metrics), &st.Metrics); err != nil {
		return nil, fmt.Errorf("study %s: decode metrics: %w", st.ID, err)
	}
	if sla.Valid {
		st.SLA = new(justrunit.SLA)
		if err := json.Unmarshal([]byte(sla.String), st.SLA); err != nil {
			return nil, fmt.Errorf("study %s: decode sla: %w", st.ID, err)
		}
	}
	st.TimeBound = justrunit.Duration(timeBound)
	st.WarmUp = justrunit.Duration(warmUp)
	st.Window = justrunit.Duration(window)
	st.State = justrunit.StudyState(state)
	st.Created = fromNanos(created)
	st.Started = fromNanos(started)
	st.Finished = fromNanos(finished)
	return &st, nil
}
