// Package sqlite is JustRunIt's embedded store: a justrunit.Store kept in one
// SQLite file through the pure-Go driver modernc.org/sqlite (no cgo).
//
// It holds studies, their matrices, observations, check results and events.
// The schema lives in migrations/NNNN_name.sql, embedded in the binary and
// applied in order on Open, each in its own transaction; the schema version
// is the file's PRAGMA user_version. A binary refuses a file whose version is
// newer than it knows, rather than misread it.
//
// # Concurrency
//
// The file is in WAL mode, so readers never block the writer and the writer
// never blocks readers, in this process or another one (a CLI reading while
// the daemon writes). A Store keeps two connection pools on the file:
//
//   - one writer connection: every write in this process goes through it, so
//     writers in one process queue in database/sql and never meet SQLITE_BUSY
//     among themselves. Transactions begin IMMEDIATE, taking the write lock
//     up front, so a writer in another process waits on busy_timeout instead
//     of failing with a lock-upgrade deadlock;
//   - a pool of read-only (query_only) connections for every read, running in
//     parallel with each other and with the writer.
//
// Writers in different processes serialise on SQLite's file lock and wait up
// to busyTimeout for it. synchronous=NORMAL is used, the usual WAL setting: a
// power cut may lose the last transactions but never corrupts the file.
//
// # Interrupted studies
//
// A study in state running records its Owner (see OwnerID).
// When that process dies without finishing the study, the row stays running;
// a daemon calls RecoverInterrupted when it starts to mark such studies
// interrupted, so they are not silently lost. A process that stores a study
// it owns also holds a lock in the directory FILE-owners next to the file
// until it exits, which tells a process in another PID namespace on the
// same host whether it is alive.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	sqlitedriver "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/justrunit/justrunit"
)

// busyTimeout is how long a statement waits for another process's lock on
// the file before failing with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

//go:embed migrations/*.sql
var migrationFS embed.FS

// Store is a justrunit.Store in one SQLite file. It is safe for concurrent
// use by multiple goroutines, and other processes may open the same file at
// the same time.
type Store struct {
	path string
	w    *sql.DB // one connection: every write
	r    *sql.DB // read-only connections: every read
	// owner is this process's OwnerID, and locks the directory of owner
	// locks (see holdOwnerLock): path + "-owners".
	owner, locks string
}

var _ justrunit.Store = (*Store)(nil)

// Open opens the store in the SQLite file at path, creating the file (mode
// 0600) and its parent directory (0700) when missing, and brings its schema
// up to date. A file written by a newer JustRunIt, with a schema this binary
// does not know, gives an error wrapping justrunit.ErrUnsupported.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, justrunit.Invalid("path", nil, "name the database file, e.g. /var/lib/justrunit/justrunit.db")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Create the file ourselves so it gets mode 0600; SQLite gives its -wal
	// and -shm files the mode of the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}

	s := &Store{path: abs, owner: OwnerID(), locks: abs + "-owners"}
	s.w, err = sql.Open("sqlite", dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)

	if err := s.migrate(ctx); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}

	s.r, err = sql.Open("sqlite", dsn(abs, true))
	if err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	s.r.SetMaxOpenConns(n)
	s.r.SetMaxIdleConns(n)
	if err := s.r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	return s, nil
}

// dsn returns the driver's data source name for the file at abs: a URI with
// the pragmas every connection needs.
func dsn(abs string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		// query_only rather than mode=ro: a read-only connection could not
		// create the -shm file if it is the first to open a WAL database.
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Set("_txlock", "immediate")
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}
	return u.String()
}

// Path returns the absolute path of the store's file.
func (s *Store) Path() string { return s.path }

// Close releases the store's connections. Calls after Close fail.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// write runs fn in an IMMEDIATE transaction on the writer connection and
// commits it when fn returns nil.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit a no-op; on a panic in fn, the writer is freed
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// migration is one embedded schema step.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in order, checking that their
// versions run 1, 2, 3... without gaps.
func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := filepath.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", base)
		}
		b, err := migrationFS.ReadFile(name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// SchemaVersion is the schema version this binary writes: the number of the
// last embedded migration.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		panic(err) // the embedded files are fixed at build time; a test covers them
	}
	return len(ms)
}

// migrate applies every migration newer than the file's user_version, each
// in its own transaction together with the version bump, so a crash leaves
// the file at a version it fully has. Another process migrating at the same
// time is harmless: the version is read again under the write lock.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	var v int
	if err := s.w.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if err := checkVersion(v, len(ms)); err != nil || v == len(ms) {
		return err
	}
	for _, m := range ms {
		err := s.write(ctx, func(tx *sql.Tx) error {
			var v int
			if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			if err := checkVersion(v, len(ms)); err != nil {
				return err
			}
			if v >= m.version {
				return nil
			}
			if v != m.version-1 {
				return fmt.Errorf("schema version %d: cannot apply migration %s", v, m.name)
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
			// PRAGMA takes no bound parameters; m.version is an int.
			if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version)); err != nil {
				return fmt.Errorf("migration %s: set schema version: %w", m.name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func checkVersion(have, known int) error {
	if have > known {
		return fmt.Errorf("schema version %d is newer than this binary knows (%d); upgrade justrunit: %w",
			have, known, justrunit.ErrUnsupported)
	}
	return nil
}

// Extended SQLite result codes the store maps to justrunit error categories.
const (
	sqliteConstraintForeignKey = 19 | 3<<8 // SQLITE_CONSTRAINT_FOREIGNKEY
	sqliteConstraintPrimaryKey = 19 | 6<<8 // SQLITE_CONSTRAINT_PRIMARYKEY
)

// sqliteCode returns err's SQLite extended result code, or 0.
func sqliteCode(err error) int {
	var se *sqlitedriver.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// nanos returns t as Unix nanoseconds, or nil (NULL) for the zero time.
func nanos(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// fromNanos is the inverse of nanos; times read back are in UTC.
func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}
