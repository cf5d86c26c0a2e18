package prio

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets this test binary be the program TestExecIdle runs: with
// PRIO_EXEC_IDLE set it calls ExecIdle, starts threads, and prints
// whether each of its threads is idle.
func TestMain(m *testing.M) {
	if os.Getenv("PRIO_EXEC_IDLE") != "1" {
		os.Exit(m.Run())
	}
	if err := ExecIdle(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	// Goroutines blocked in system calls make the runtime start threads.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Millisecond)
			_, _ = os.ReadFile("/proc/self/stat")
		}()
	}
	wg.Wait()
	tids, err := threadsOf("self")()
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for _, tid := range tids {
		idle, err := Idle(tid)
		fmt.Printf("%d %v %v\n", tid, idle, err)
	}
	os.Exit(0)
}

// TestSetIdleThreads puts another process's threads in the idle class
// (which needs no privilege: it lowers the priority) and leaves this
// process's alone.
func TestSetIdleThreads(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	list := threadsOf(strconv.Itoa(cmd.Process.Pid))
	tids, err := list()
	if err != nil || len(tids) == 0 {
		t.Fatalf("threads of %d: %v, %v", cmd.Process.Pid, tids, err)
	}
	if idle, err := Idle(tids[0]); err != nil || idle {
		t.Fatalf("before: Idle(%d) = %v, %v; want false", tids[0], idle, err)
	}
	if err := SetIdleThreads(list); err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		if idle, err := Idle(tid); err != nil || !idle {
			t.Errorf("Idle(%d) = %v, %v; want true", tid, idle, err)
		}
	}
	if idle, err := Idle(os.Getpid()); err != nil || idle {
		t.Errorf("this process: Idle = %v, %v; want false", idle, err)
	}
}

// TestSetIdleThreadsListError: a listing that fails is an error saying so.
func TestSetIdleThreadsListError(t *testing.T) {
	err := SetIdleThreads(threadsOf("-1"))
	if err == nil {
		t.Fatal("SetIdleThreads with a failing listing: no error")
	}
	t.Log(err)
}

// TestExecIdle: a program that calls ExecIdle runs again with every thread
// in the idle class, those the runtime starts later too; this process is
// left as it was.
func TestExecIdle(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PRIO_EXEC_IDLE=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		t.Fatalf("the program printed %q, want a line per thread (more than one)", out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, " true <nil>") {
			t.Errorf("thread not idle: %q", l)
		}
	}
	if idle, err := Idle(os.Getpid()); err != nil || idle {
		t.Errorf("this process: Idle = %v, %v; want false", idle, err)
	}
}

// TestSetAffinity moves every thread of this process to its first CPU,
// threads started after included, and back.
func TestSetAffinity(t *testing.T) {
	cur, err := Affinity(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) < 2 {
		t.Skipf("needs two CPUs to leave one; this process may run on %v", cur)
	}
	defer func() {
		if err := SetAffinity(cur); err != nil {
			t.Errorf("give the CPUs back: %v", err)
		}
	}()
	if err := SetAffinity(cur[:1]); err != nil {
		t.Fatal(err)
	}
	// Goroutines blocked in system calls make the runtime start threads.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			time.Sleep(time.Millisecond)
			_, _ = os.ReadFile("/proc/self/stat")
		})
	}
	wg.Wait()
	tids, err := threadsOf("self")()
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		got, err := Affinity(tid)
		if errors.Is(err, unix.ESRCH) {
			continue // ended
		}
		if err != nil || !slices.Equal(got, cur[:1]) {
			t.Errorf("thread %d may run on CPUs %v (%v); want %v", tid, got, err, cur[:1])
		}
	}
	if err := SetAffinity(cur); err != nil {
		t.Fatal(err)
	}
	if got, err := Affinity(0); err != nil || !slices.Equal(got, cur) {
		t.Errorf("after giving the CPUs back: %v, %v; want %v", got, err, cur)
	}
}

func TestParseSchedstat(t *testing.T) {
	got, err := parseSchedstat("1500 250 7\n")
	if err != nil || got != (Sched{CPU: 1500, Wait: 250, Slices: 7}) {
		t.Errorf("parseSchedstat = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "1 2", "1 2 x", "1 -2 3", "1 2 3 4"} {
		if _, err := parseSchedstat(bad); err == nil {
			t.Errorf("parseSchedstat(%q): no error", bad)
		}
	}
}

// TestReadSched reads this process's counts before and after some work:
// its CPU time must have grown by at least the work's.
func TestReadSched(t *testing.T) {
	before, err := ReadSched("self")
	if err != nil {
		if errors.Is(err, ErrNoSchedstat) && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	// Both readings of the work's CPU time are of one thread.
	runtime.LockOSThread()
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru0)
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		x++
	}
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru1)
	runtime.UnlockOSThread()
	after, err := ReadSched("self")
	if err != nil {
		t.Fatal(err)
	}
	worked := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	d := after.Sub(before)
	if d.CPU < worked/2 || d.Slices < 0 || d.Wait < 0 {
		t.Errorf("over %v of CPU time worked (x=%d), the counts grew by %+v", worked, x, d)
	}
}
