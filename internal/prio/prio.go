// Package prio sets the CPU priority of the whole process: its nice value,
// or the idle scheduling class.
//
// On Linux, setpriority(2) and sched_setattr(2) change one thread, and the
// Go runtime has started several threads before main runs (and may start
// more at any time); so every thread in /proc/self/task is set, and threads
// created later inherit the setting from the thread that creates them.
package prio

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetNice sets every thread of this process to nice. A lower value than
// the current one needs root (or CAP_SYS_NICE); a higher one does not.
func SetNice(nice int) error {
	return eachThread(threadsOf("self"), fmt.Sprintf("set nice %d", nice), func(tid int) error {
		return unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
	})
}

// SetIdle puts every thread of this process in the idle scheduling class
// (SCHED_IDLE): it runs only on CPU time no ordinary task wants, and an
// ordinary task that wakes up takes the CPU from it at once rather than
// after its slice, which a low nice value alone does not give. Leaving the
// class again needs root.
func SetIdle() error {
	return eachThread(threadsOf("self"), "set the idle scheduling class", setIdle)
}

// SetIdleThreads puts the threads that list returns (another process's,
// e.g. those of a cgroup) in the idle scheduling class, as SetIdle does.
func SetIdleThreads(list func() ([]int, error)) error {
	return eachThread(list, "set the idle scheduling class", setIdle)
}

func setIdle(tid int) error {
	return unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0)
}

// Idle reports whether thread tid is in the idle scheduling class.
func Idle(tid int) (bool, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return false, err
	}
	return a.Policy == unix.SCHED_IDLE, nil
}

// threadsOf returns a listing of the threads of process pid ("self" for
// this one).
func threadsOf(pid string) func() ([]int, error) {
	return func() ([]int, error) {
		tasks, err := os.ReadDir("/proc/" + pid + "/task")
		if err != nil {
			return nil, err
		}
		var tids []int
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				tids = append(tids, tid)
			}
		}
		return tids, nil
	}
}

// eachThread calls set for every thread that list returns. A thread
// started while the threads are being set, from one not set yet, would keep
// the old setting; so the threads are listed again until a listing finds
// none that was not set.
func eachThread(list func() ([]int, error), what string, set func(tid int) error) error {
	done := map[int]bool{}
	for range 100 {
		tids, err := list()
		if err != nil {
			return fmt.Errorf("%s: list the threads: %w", what, err)
		}
		fresh := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh = true
			if err := set(tid); err != nil && err != unix.ESRCH { // ESRCH: the thread has ended
				return fmt.Errorf("%s on thread %d: %w", what, tid, err)
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
	return fmt.Errorf("%s: threads kept appearing", what)
}
