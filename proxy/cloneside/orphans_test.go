package cloneside

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestReapOrphans starts two hung clone sides: one whose site (by its
// command line) is another process, an orphan, and one whose site is this
// test. ReapOrphans kills the first only.
func TestReapOrphans(t *testing.T) {
	hung := func(site int) *exec.Cmd {
		cmd := exec.Command(os.Args[0], Subcommand, "--name=reap-test", siteFlag+strconv.Itoa(site))
		cmd.Env = append(os.Environ(), "CLONESIDE_TEST_HANG=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	orphan := hung(1) // its parent is this test, not its site
	ours := hung(os.Getpid())
	killed, err := ReapOrphans()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(killed, orphan.Process.Pid) || slices.Contains(killed, ours.Process.Pid) {
		t.Fatalf("ReapOrphans killed %v, want the orphan %d and not %d, whose site is alive", killed, orphan.Process.Pid, ours.Process.Pid)
	}
	done := make(chan error, 1)
	go func() { done <- orphan.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("the orphan exited cleanly, want it killed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the orphan did not end after ReapOrphans")
	}
	if isOrphanHelper(ours.Process.Pid) {
		t.Errorf("a clone side whose site is alive is taken for an orphan")
	}
}
