package sqlite

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if _, err := exec.LookPath("true"); err != nil {
		cmd = exec.Command(os.Args[0], "-test.run=^$") // this test binary, running no test
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("run a short process: %v", err)
	}
	pid := cmd.Process.Pid
	if st := processStatus(pid); st.exists {
		t.Skipf("pid %d of an exited process was reused at once", pid)
	}
	return pid
}

func TestOwnerID(t *testing.T) {
	want := strconv.Itoa(os.Getpid()) + "@"
	if got := OwnerID(); !strings.HasPrefix(got, want) || len(got) == len(want) {
		t.Errorf("OwnerID() = %q, want %shostname", got, want)
	}
}

func TestRecoverInterrupted(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	dead := strconv.Itoa(deadPID(t)) + "@" + hostname()
	self := OwnerID()
	recent := time.Now().Add(-time.Millisecond) // after this test process started
	tests := []struct {
		id      string
		state   justrunit.StudyState
		owner   string
		started time.Time
		want    justrunit.StudyState
	}{
		{"dead-owner", justrunit.StudyRunning, dead, recent, justrunit.StudyInterrupted},
		{"no-owner", justrunit.StudyRunning, "", recent, justrunit.StudyInterrupted},
		{"alive-owner", justrunit.StudyRunning, self, recent, justrunit.StudyRunning},
		{"other-host", justrunit.StudyRunning, strconv.Itoa(deadPID(t)) + "@not-" + hostname(), recent, justrunit.StudyRunning},
		{"malformed-owner", justrunit.StudyRunning, "daemon", recent, justrunit.StudyRunning},
		{"done-dead-owner", justrunit.StudyDone, dead, recent, justrunit.StudyDone},
		{"pending-no-owner", justrunit.StudyPending, "", time.Time{}, justrunit.StudyPending},
		{"pending-dead-owner", justrunit.StudyPending, dead, time.Time{}, justrunit.StudyInterrupted},
		{"pending-alive-owner", justrunit.StudyPending, self, time.Time{}, justrunit.StudyPending},
	}
	if processStatus(os.Getpid()).started.IsZero() {
		t.Log("no process start times here (/proc); not testing pid reuse")
	} else {
		// This process's pid, but the study started long before this process
		// did: the pid was reused (a restarted daemon in a container).
		tests = append(tests, struct {
			id      string
			state   justrunit.StudyState
			owner   string
			started time.Time
			want    justrunit.StudyState
		}{"reused-pid", justrunit.StudyRunning, self, time.Now().Add(-24 * time.Hour), justrunit.StudyInterrupted})
	}
	wantN := 0
	for _, tt := range tests {
		st := storetest.Study(t)
		st.ID, st.State, st.Owner, st.Started = tt.id, tt.state, tt.owner, tt.started
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
		if tt.want == justrunit.StudyInterrupted {
			wantN++
		}
	}

	n, err := s.RecoverInterrupted(ctx)
	if err != nil || n != wantN {
		t.Fatalf("RecoverInterrupted() = %d, %v; want %d, nil", n, err, wantN)
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			st, err := s.Study(ctx, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != tt.want {
				t.Errorf("state = %s, want %s", st.State, tt.want)
			}
			evs, err := s.Events(ctx, justrunit.EventFilter{StudyID: tt.id, Kind: justrunit.EventStudyInterrupted})
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != justrunit.StudyInterrupted {
				if len(evs) != 0 || !st.Finished.IsZero() || st.Error != "" {
					t.Errorf("untouched study got events %v, Finished %v, Error %q", evs, st.Finished, st.Error)
				}
				return
			}
			if st.Finished.IsZero() || time.Since(st.Finished) > time.Minute {
				t.Errorf("Finished = %v, want about now", st.Finished)
			}
			if !strings.Contains(st.Error, "interrupted") {
				t.Errorf("Error = %q, want it to say the study was interrupted", st.Error)
			}
			if len(evs) != 1 || evs[0].Level != "warn" || evs[0].Data["owner"] != tt.owner {
				t.Errorf("events = %+v, want one warning naming owner %q", evs, tt.owner)
			}
			t.Logf("Error: %s", st.Error)
		})
	}

	if n, err := s.RecoverInterrupted(ctx); err != nil || n != 0 {
		t.Errorf("second RecoverInterrupted() = %d, %v; want 0, nil", n, err)
	}
}
