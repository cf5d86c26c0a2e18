// Package prio sets the CPU priority (nice value) of the whole process.
//
// On Linux, setpriority(2) with PRIO_PROCESS changes one thread, and the Go
// runtime has started several threads before main runs; so every thread in
// /proc/self/task is set, and threads created later inherit the value from
// the thread that creates them.
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
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("set nice %d on thread %d: %w", nice, tid, err)
		}
	}
	return nil
}
