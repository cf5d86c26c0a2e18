package sqlite

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

// TestTwoStoresSameFile has two Stores on one file, as a daemon and a CLI
// in one process would: both write, one reads while they do.
func TestTwoStoresSameFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "j.db")
	a, b := openTest(t, path), openTest(t, path)
	st := storetest.Study(t)
	if err := a.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Study(ctx, st.ID); err != nil {
		t.Fatalf("second store: Study = %v", err)
	}
	m, _ := storetest.Matrix(t, st.Space, st.Metrics)

	const perStore = 60
	var wg sync.WaitGroup
	for _, s := range []*Store{a, b} {
		wg.Go(func() {
			for i := 0; i < perStore; i++ {
				if err := s.AddEvent(ctx, &justrunit.Event{StudyID: st.ID, Kind: "test"}); err != nil {
					t.Errorf("AddEvent = %v", err)
					return
				}
				if err := s.AddObservation(ctx, st.ID, justrunit.Observation{Samples: int64(i)}); err != nil {
					t.Errorf("AddObservation = %v", err)
					return
				}
				if i%10 == 0 {
					if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
						t.Errorf("SaveMatrix = %v", err)
						return
					}
				}
			}
		})
	}
	var seen int
	var readErr error
	wg.Go(func() { seen, readErr = storetest.PollEvents(ctx, b, 2*perStore) })
	wg.Wait()
	if readErr != nil || seen != 2*perStore {
		t.Errorf("second store read %d events (%v), want %d", seen, readErr, 2*perStore)
	}
	for _, s := range []*Store{a, b} {
		obs, err := s.Observations(ctx, st.ID)
		if err != nil || len(obs) != 2*perStore {
			t.Errorf("Observations = %d, %v; want %d", len(obs), err, 2*perStore)
		}
	}
}

const (
	envReaderDB   = "JUSTRUNIT_SQLITE_TEST_READER_DB"
	envReaderWant = "JUSTRUNIT_SQLITE_TEST_READER_WANT"
)

// TestReaderProcess has another process (this test binary again) read the
// file while this one writes: a CLI reading while the daemon works.
func TestReaderProcess(t *testing.T) {
	if path := os.Getenv(envReaderDB); path != "" {
		readerChild(t, path)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "j.db")
	s := openTest(t, path)
	st := storetest.Study(t)
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := s.AddEvent(ctx, &justrunit.Event{StudyID: st.ID, Kind: "first"}); err != nil {
		t.Fatal(err)
	}

	const want = 100
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestReaderProcess$")
	cmd.Env = append(os.Environ(), envReaderDB+"="+path, envReaderWant+"="+strconv.Itoa(want))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	// Write the rest only once the reader has the file open and is polling.
	if !lines.Scan() || lines.Text() != "ready" {
		cmd.Wait()
		t.Fatalf("reader process did not get ready: %q %v", lines.Text(), lines.Err())
	}
	for i := 1; i < want; i++ {
		if err := s.AddEvent(ctx, &justrunit.Event{StudyID: st.ID, Kind: "more"}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddObservation(ctx, st.ID, justrunit.Observation{Samples: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("reader process: %v; output %q", err, rest)
	}
	if got := strings.Join(rest, "\n"); !strings.Contains(got, fmt.Sprintf("seen %d events", want)) {
		t.Errorf("reader process said %q, want it to have seen %d events", got, want)
	}
}

func readerChild(t *testing.T, path string) {
	want, err := strconv.Atoi(os.Getenv(envReaderWant))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("reader: Open = %v", err)
	}
	defer s.Close()
	evs, err := s.Events(ctx, justrunit.EventFilter{Limit: 1})
	if err != nil || len(evs) != 1 {
		t.Fatalf("reader: first event: %v, %v", evs, err)
	}
	fmt.Println("ready")
	n, err := storetest.PollEvents(ctx, s, want)
	if err != nil {
		t.Fatalf("reader: saw %d events: %v", n, err)
	}
	fmt.Printf("seen %d events\n", n)
}
