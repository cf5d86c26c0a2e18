package prio

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

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
