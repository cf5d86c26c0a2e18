package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%s) = %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) justrunit.Store {
		return openTest(t, filepath.Join(t.TempDir(), "j.db"))
	})
}

func TestCreateStudyDefaults(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	st := storetest.Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatalf("CreateStudy = %v", err)
	}
	if !regexp.MustCompile(`^s-\d{8}-\d{6}-[0-9a-f]{4}$`).MatchString(st.ID) {
		t.Errorf("CreateStudy assigned ID %q, want s-YYYYMMDD-HHMMSS-xxxx", st.ID)
	}
	if st.State != justrunit.StudyPending {
		t.Errorf("CreateStudy set State = %q, want %q", st.State, justrunit.StudyPending)
	}
	// UpdateStudy with a zero Created keeps the stored one.
	upd := *st
	upd.Created, upd.State = time.Time{}, justrunit.StudyRunning
	if err := s.UpdateStudy(ctx, &upd); err != nil {
		t.Fatalf("UpdateStudy = %v", err)
	}
	got, err := s.Study(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	upd.Created = st.Created
	storetest.SameStudy(t, got, &upd)
	if got.Created.Location() != time.UTC {
		t.Errorf("Study returned Created in %v, want UTC", got.Created.Location())
	}

	// Failed creates leave their argument as it was.
	for _, bad := range []*justrunit.Study{{ID: st.ID}, {ID: "a/b"}, {ID: "-x"}, {ID: strings.Repeat("x", 65)}} {
		before := *bad
		if err := s.CreateStudy(ctx, bad); err == nil {
			t.Errorf("CreateStudy(%q) succeeded", bad.ID)
		}
		if !reflect.DeepEqual(*bad, before) {
			t.Errorf("failed CreateStudy(%q) changed its argument to %+v", before.ID, *bad)
		}
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	st := storetest.Study(t)
	st.ID = "s1"
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, _ := storetest.Matrix(t, st.Space, st.Metrics)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"CreateStudy(bad ID)", s.CreateStudy(ctx, &justrunit.Study{ID: "a/b", Target: "x"}), justrunit.ErrInvalid},
		{"CreateStudy(nil)", s.CreateStudy(ctx, nil), justrunit.ErrInvalid},
		{"UpdateStudy(nil)", s.UpdateStudy(ctx, nil), justrunit.ErrInvalid},
		{"SaveMatrix(unknown study)", s.SaveMatrix(ctx, "nope", m), justrunit.ErrNotFound},
		{"SaveMatrix(nil)", s.SaveMatrix(ctx, "s1", nil), justrunit.ErrInvalid},
		{"SaveMatrix(bad shape)", s.SaveMatrix(ctx, "s1", &justrunit.Matrix{Space: st.Space, Metrics: st.Metrics}), justrunit.ErrInvalid},
		{"AddObservation(unknown study)", s.AddObservation(ctx, "nope", justrunit.Observation{}), justrunit.ErrNotFound},
		{"AddCheck(unknown study)", s.AddCheck(ctx, justrunit.CheckResult{StudyID: "nope"}), justrunit.ErrNotFound},
		{"AddCheck(no study)", s.AddCheck(ctx, justrunit.CheckResult{}), justrunit.ErrInvalid},
		{"AddEvent(nil)", s.AddEvent(ctx, nil), justrunit.ErrInvalid},
		{"AddEvent(no kind)", s.AddEvent(ctx, &justrunit.Event{}), justrunit.ErrInvalid},
		{"Events(negative limit)", func() error { _, err := s.Events(ctx, justrunit.EventFilter{Limit: -1}); return err }(), justrunit.ErrInvalid},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s = %v, want an error wrapping %v", tt.name, tt.err, tt.want)
		}
	}
	if obs, err := s.Observations(ctx, "nope"); err != nil || len(obs) != 0 {
		t.Errorf("Observations(unknown) = %v, %v; want none, nil", obs, err)
	}
	if _, err := s.Matrix(ctx, "s1"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("Matrix after failed saves = %v, want ErrNotFound", err)
	}
}

func TestEventDefaults(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	e := &justrunit.Event{Kind: "x"}
	if err := s.AddEvent(ctx, e); err != nil {
		t.Fatal(err)
	}
	if e.Level != "info" || e.Time.Location() != time.UTC || time.Since(e.Time) > time.Minute {
		t.Errorf("AddEvent set Level %q, Time %v; want info, about now in UTC", e.Level, e.Time)
	}
}

func TestGeneratedIDsUnique(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	now := time.Now()
	seen := map[string]bool{}
	for i := 0; i < 300; i++ { // same second: collisions among 4 hex digits are likely; CreateStudy retries
		st := storetest.Study(t)
		st.Created = now
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatalf("CreateStudy #%d = %v", i, err)
		}
		if seen[st.ID] {
			t.Fatalf("CreateStudy #%d reused ID %s", i, st.ID)
		}
		seen[st.ID] = true
	}
}

// fillStore stores a study with a matrix, observations, checks and events,
// and returns what it stored.
func fillStore(t *testing.T, s *Store) (*justrunit.Study, *justrunit.Matrix, []justrunit.Observation, []justrunit.Event) {
	t.Helper()
	ctx := context.Background()
	st := storetest.Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, obs := storetest.Matrix(t, st.Space, st.Metrics)
	if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
		t.Fatal(err)
	}
	var events []justrunit.Event
	for i, o := range obs {
		if err := s.AddObservation(ctx, st.ID, o); err != nil {
			t.Fatal(err)
		}
		e := justrunit.Event{StudyID: st.ID, Kind: justrunit.EventExperimentDone, Data: map[string]any{"i": float64(i)}}
		if err := s.AddEvent(ctx, &e); err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	if err := s.AddCheck(ctx, justrunit.CheckResult{StudyID: st.ID, Point: obs[2].Point, Metric: justrunit.RTP95, Predicted: 52, Measured: 55, Passed: true}); err != nil {
		t.Fatal(err)
	}
	return st, m, obs, events
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	// A parent that does not exist yet, with characters a URI would mangle.
	dir := filepath.Join(t.TempDir(), "data dir?#%")
	path := filepath.Join(dir, "justrunit.db")
	s := openTest(t, path)
	st, m, obs, events := fillStore(t, s)
	// Checked while open: SQLite removes the -wal file on a clean close.
	for _, p := range []struct {
		path string
		want os.FileMode
	}{{dir, 0o700 | os.ModeDir}, {path, 0o600}, {path + "-wal", 0o600}, {path + "-shm", 0o600}} {
		fi, err := os.Stat(p.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != p.want {
			t.Errorf("%s has mode %v, want %v", p.path, fi.Mode(), p.want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}

	for round := 0; round < 2; round++ {
		s := openTest(t, path)
		got, err := s.Study(ctx, st.ID)
		if err != nil {
			t.Fatalf("after reopening: Study = %v", err)
		}
		storetest.SameStudy(t, got, st)
		gm, err := s.Matrix(ctx, st.ID)
		if err != nil || !reflect.DeepEqual(gm, m) {
			t.Errorf("after reopening: Matrix = %+v, %v; want %+v", gm, err, m)
		}
		gobs, err := s.Observations(ctx, st.ID)
		if err != nil || !reflect.DeepEqual(gobs, obs) {
			t.Errorf("after reopening: Observations = %+v, %v; want %+v", gobs, err, obs)
		}
		checks, err := s.Checks(ctx, st.ID)
		if err != nil || len(checks) != 1 || checks[0].Measured != 55 {
			t.Errorf("after reopening: Checks = %+v, %v", checks, err)
		}
		gev, err := s.Events(ctx, justrunit.EventFilter{StudyID: st.ID})
		if err != nil || len(gev) != len(events) {
			t.Fatalf("after reopening: Events = %+v, %v; want %d", gev, err, len(events))
		}
		for i := range gev {
			if gev[i].ID != events[i].ID || !gev[i].Time.Equal(events[i].Time) || !reflect.DeepEqual(gev[i].Data, events[i].Data) {
				t.Errorf("after reopening: event %d = %+v, want %+v", i, gev[i], events[i])
			}
		}
		// New records continue the sequences.
		if err := s.AddObservation(ctx, st.ID, justrunit.Observation{Throughput: float64(round)}); err != nil {
			t.Fatal(err)
		}
		obs = append(obs, justrunit.Observation{Throughput: float64(round)})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrations(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatalf("migrations() = %v", err)
	}
	if len(ms) == 0 || SchemaVersion() != len(ms) {
		t.Fatalf("SchemaVersion() = %d with %d migrations", SchemaVersion(), len(ms))
	}
	path := filepath.Join(t.TempDir(), "j.db")
	schema := func() string {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v int
		if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
			t.Fatal(err)
		}
		rows, err := db.Query("SELECT type, name FROM sqlite_schema ORDER BY name")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := fmt.Sprintf("version %d:", v)
		for rows.Next() {
			var typ, name string
			if err := rows.Scan(&typ, &name); err != nil {
				t.Fatal(err)
			}
			out += " " + typ + ":" + name
		}
		return out
	}
	var first string
	for i := 0; i < 3; i++ {
		s, err := Open(context.Background(), path)
		if err != nil {
			t.Fatalf("Open #%d = %v", i, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		got := schema()
		if i == 0 {
			first = got
			if !strings.HasPrefix(got, fmt.Sprintf("version %d:", len(ms))) || !strings.Contains(got, "table:studies") {
				t.Fatalf("schema after Open = %s", got)
			}
		} else if got != first {
			t.Errorf("schema after reopen #%d = %s, want %s", i, got, first)
		}
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	s := openTest(t, path)
	st, _, _, _ := fillStore(t, s)
	s.Close()

	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", SchemaVersion()+1)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s2, err := Open(context.Background(), path)
	if err == nil {
		s2.Close()
		t.Fatal("Open(newer schema) succeeded, want an error")
	}
	if !errors.Is(err, justrunit.ErrUnsupported) || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open(newer schema) = %v, want an error wrapping ErrUnsupported that says the schema is newer", err)
	}
	// The refusal changed nothing.
	db, err = sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM studies WHERE id = ?", st.ID).Scan(&n); err != nil || n != 1 {
		t.Errorf("after the refused Open: %d rows, %v", n, err)
	}
}

func TestOpenBadPath(t *testing.T) {
	if _, err := Open(context.Background(), ""); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf(`Open("") = %v, want ErrInvalid`, err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(context.Background(), filepath.Join(file, "j.db")); err == nil {
		s.Close()
		t.Errorf("Open(under a regular file) succeeded")
	}
}

func TestBigMatrix(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	st, m := bigMatrix(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
		t.Fatalf("SaveMatrix = %v", err)
	}
	saved := time.Since(start)
	got, err := s.Matrix(ctx, st.ID)
	if err != nil {
		t.Fatalf("Matrix = %v", err)
	}
	loaded := time.Since(start) - saved
	t.Logf("20x20x20 matrix (%d rows, observation on every row): save %v, load %v", len(m.Rows), saved, loaded)
	if len(got.Rows) != 8000 || !reflect.DeepEqual(got.Rows[7999], m.Rows[7999]) {
		t.Errorf("Matrix returned %d rows; last %+v, want %+v", len(got.Rows), got.Rows[len(got.Rows)-1], m.Rows[7999])
	}
	// How fast it saves is BenchmarkSaveMatrix20x20x20's question, not a
	// wall-clock assertion here (it failed once at 1.27 s on a loaded
	// machine).
}

func bigMatrix(t testing.TB) (*justrunit.Study, *justrunit.Matrix) {
	vals := make([]float64, 20)
	for i := range vals {
		vals[i] = float64(5 * (i + 1))
	}
	sp, err := justrunit.NewSpace(
		justrunit.Parameter{Name: "cpu", Values: vals},
		justrunit.Parameter{Name: "freq", Values: vals},
		justrunit.Parameter{Name: "mem", Values: vals},
	)
	if err != nil {
		t.Fatal(err)
	}
	st := &justrunit.Study{Target: "big", Space: sp, Metrics: justrunit.DefaultMetrics}
	m, err := justrunit.NewMatrix(sp, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Rows {
		o := justrunit.Observation{Point: m.Rows[i].Point, Start: time.Unix(int64(i), 0).UTC(), Samples: int64(i), Throughput: float64(i) / 3,
			RT: justrunit.ResponseTime{Mean: 1.1, P50: 1, P95: float64(i) / 7, P99: 9.9}, Energy: justrunit.Energy{PerRequest: 0.01, Source: justrunit.EnergyRAPL}, MatchRate: 1}
		if err := m.Record(o); err != nil { // a grid study measures every point
			t.Fatal(err)
		}
	}
	return st, m
}

func BenchmarkSaveMatrix20x20x20(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "j.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	st, m := bigMatrix(b)
	if err := s.CreateStudy(ctx, st); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUpgradeKeepsStudies checks that a file written by the first schema
// opens with the current one, its studies readable with the new columns'
// defaults.
func TestUpgradeKeepsStudies(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "j.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{ms[0].sql, "PRAGMA user_version = 1",
		`INSERT INTO studies (id, target, space, metrics, time_bound_ns, warm_up_ns, window_ns, slots, check_threshold, state, created_ns)
		 VALUES ('old', 'auction0/app', '{"params":[]}', '["rt_p95"]', 60000000000, 1000000000, 5000000000, 1, 0.1, 'done', 1)`} {
		if _, err := db.Exec(q); err != nil {
			db.Close()
			t.Fatalf("%.40s: %v", q, err)
		}
	}
	db.Close()
	s := openTest(t, path)
	defer s.Close()
	st, err := s.Study(context.Background(), "old")
	if err != nil {
		t.Fatalf("Study(old) after the upgrade = %v", err)
	}
	if st.Target != "auction0/app" || st.MinSamples != 0 || st.State != justrunit.StudyDone {
		t.Errorf("Study(old) = %+v, want target auction0/app, min_samples 0, done", st)
	}
}
