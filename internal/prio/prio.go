// Package prio sets the CPU priority (nice value) of the whole process.
//
// On Linux, setpriority(2) with PRIO_PROCESS changes one thread, and the Go
// runtime has started several threads before main runs (and may start more
// at any time); so every thread in /proc/self/task is set, and threads
// created later inherit the value from the thread that creates them.
package prio

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetNice sets every thread of this process to nice. A lower value than
// the current one needs root (or CAP_SYS_NICE); a higher one does not.
//
// A thread the runtime starts while the threads are being set, from one
// not set yet, would keep the old value; so the threads are listed again
// until a listing finds none that was not set.
func SetNice(nice int) error {
	done := map[int]bool{}
	for range 100 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		fresh := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh = true
			err = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
			if err != nil && err != unix.ESRCH { // ESRCH: the thread has ended
				return fmt.Errorf("set nice %d on thread %d: %w", nice, tid, err)
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
	return fmt.Errorf("set nice %d: threads kept appearing", nice)
}
