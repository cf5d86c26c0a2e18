//go:build linux

package sqlite

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/storetest"
)

// envHoldLock makes TestHelperHoldOwnerLock, run in a child process, take
// the owner lock it names ("DIR\nOWNER") and hold it until killed.
const envHoldLock = "JUSTRUNIT_TEST_HOLD_OWNER_LOCK"

func TestHelperHoldOwnerLock(t *testing.T) {
	v := os.Getenv(envHoldLock)
	if v == "" {
		t.Skip("run in a child process by the owner lock tests")
	}
	dir, owner, _ := strings.Cut(v, "\n")
	if err := holdOwnerLock(dir, owner); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("held")
	time.Sleep(time.Hour)
}

// holdInChild has a child process take owner's lock in dir, as the owner
// would, and returns a function that kills the child (the owner dies).
func holdInChild(t *testing.T, dir, owner string) (kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldOwnerLock$")
	cmd.Env = append(os.Environ(), envHoldLock+"="+dir+"\n"+owner)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() { cmd.Process.Kill(); cmd.Wait() }
	t.Cleanup(kill)
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "held\n" {
		kill()
		t.Fatalf("the child did not take the lock: %q, %v", line, err)
	}
	return kill
}

// TestOwnerLock checks what an owner lock tells: nothing without a lock
// file; alive while its process holds it; gone once that process was
// killed (the kernel drops its lock); and that a store holds its process's
// lock once it stores a study the process owns.
func TestOwnerLock(t *testing.T) {
	dir := t.TempDir()
	owner := "12345@host;start=1;boot=b;pidns=1"
	if free, known := ownerLockFree(dir, owner); known {
		t.Errorf("ownerLockFree with no lock file = %v, %v; want not known", free, known)
	}
	kill := holdInChild(t, dir, owner)
	if free, known := ownerLockFree(dir, owner); free || !known {
		t.Errorf("ownerLockFree while its process lives = %v, %v; want held", free, known)
	}
	kill()
	if free, known := ownerLockFree(dir, owner); !free || !known {
		t.Errorf("ownerLockFree once its process was killed = %v, %v; want free", free, known)
	}

	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	st := storetest.Study(t)
	st.State, st.Owner = justrunit.StudyPending, OwnerID()
	if err := s.CreateStudy(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if free, known := ownerLockFree(s.locks, OwnerID()); free || !known {
		t.Errorf("ownerLockFree of a process that stored a study it owns = %v, %v; want held", free, known)
	}
}

// TestRecoverInterruptedOtherPIDNamespace checks recovery of the studies of
// an owner in another PID namespace of this host and boot, whose pid says
// nothing here: a daemon whose container restarted (same name, new PID
// namespace) after it died. Its studies are interrupted once its lock is
// free, and its lock file goes; a live owner's, or one without a lock
// file, are left alone.
func TestRecoverInterruptedOtherPIDNamespace(t *testing.T) {
	self := selfOwner(t)
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "j.db"))
	dead := deadPID(t)
	owner := func(n int64) string {
		o := self
		o.pid, o.pidns, o.ticks = dead, "1", self.ticks+n // a namespace other than this process's
		return o.String()
	}
	restarted, alive, unlocked := owner(1), owner(2), owner(3)
	holdInChild(t, s.locks, restarted)() // held, then the owner died
	holdInChild(t, s.locks, alive)
	tests := []struct {
		id, owner string
		want      justrunit.StudyState
	}{
		{"restarted-container", restarted, justrunit.StudyInterrupted},
		{"live-owner", alive, justrunit.StudyRunning},
		{"no-lock-file", unlocked, justrunit.StudyRunning},
	}
	for _, tt := range tests {
		st := storetest.Study(t)
		st.ID, st.State, st.Owner, st.Started = tt.id, justrunit.StudyRunning, tt.owner, time.Now()
		if err := s.CreateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.RecoverInterrupted(ctx); err != nil || n != 1 {
		t.Errorf("RecoverInterrupted() = %d, %v; want 1, nil", n, err)
	}
	for _, tt := range tests {
		if got, err := s.Study(ctx, tt.id); err != nil || got.State != tt.want {
			t.Errorf("study %s after recovery: %+v, %v; want %s", tt.id, got, err, tt.want)
		}
	}
	if _, err := os.Stat(ownerLockPath(s.locks, restarted)); !os.IsNotExist(err) {
		t.Errorf("the lock file of the owner found gone is left: %v", err)
	}
	if _, err := os.Stat(ownerLockPath(s.locks, alive)); err != nil {
		t.Errorf("the lock file of a live owner: %v", err)
	}
}

// TestRecoverInterruptedOwnerDiesDuringRecovery checks that a recovery
// keeps the lock file of an owner it found alive, and that died while the
// recovery waited to write: its study is still running, and only the file
// can tell the next recovery that the owner is gone.
func TestRecoverInterruptedOwnerDiesDuringRecovery(t *testing.T) {
	self := selfOwner(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	s := openTest(t, path)
	o := self
	o.pid, o.pidns, o.ticks = deadPID(t), "1", self.ticks+1 // a namespace other than this process's
	owner := o.String()
	kill := holdInChild(t, s.locks, owner)
	for _, st := range []struct{ id, owner string }{
		{"of-the-owner", owner},
		{"ownerless", ""}, // so that the recovery has something to write
	} {
		sst := storetest.Study(t)
		sst.ID, sst.State, sst.Owner, sst.Started = st.id, justrunit.StudyRunning, st.owner, time.Now()
		if err := s.CreateStudy(ctx, sst); err != nil {
			t.Fatal(err)
		}
	}
	// Another process holds the write lock, so the recovery waits to
	// write after its scan found the owner alive.
	other, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.RecoverInterrupted(ctx); done <- err }()
	time.Sleep(300 * time.Millisecond)
	kill() // the owner dies while the recovery waits
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("RecoverInterrupted: %v", err)
	}
	if _, err := os.Stat(ownerLockPath(s.locks, owner)); err != nil {
		t.Fatalf("the lock file of an owner that died during the recovery, its study still running: %v", err)
	}
	if n, err := s.RecoverInterrupted(ctx); err != nil || n != 1 {
		t.Errorf("the next RecoverInterrupted() = %d, %v; want 1, nil", n, err)
	}
	if got, err := s.Study(ctx, "of-the-owner"); err != nil || got.State != justrunit.StudyInterrupted {
		t.Errorf("study of the owner after the next recovery: %+v, %v; want interrupted", got, err)
	}
	if _, err := os.Stat(ownerLockPath(s.locks, owner)); !os.IsNotExist(err) {
		t.Errorf("the lock file of the owner once its study is marked: %v; want removed", err)
	}
}
