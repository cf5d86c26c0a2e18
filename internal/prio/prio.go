// Package prio sets the CPU priority of the whole process: its nice value,
// or the idle scheduling class; and the CPUs it runs on.
//
// On Linux, setpriority(2) and sched_setattr(2) change one thread, and the
// Go runtime has started several threads before main runs (and may start
// more at any time); so every thread in /proc/self/task is set, and threads
// created later inherit the setting from the thread that creates them.
package prio

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

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
// class again needs root. A thread the runtime is creating meanwhile can
// be missed (see SetIdleThisThread); ExecIdle misses none.
func SetIdle() error {
	return eachThread(threadsOf("self"), "set the idle scheduling class", setIdle)
}

// SetIdleThreads puts the threads that list returns (another process's,
// e.g. those of a cgroup) in the idle scheduling class, as SetIdle does;
// with the processes stopped (a frozen cgroup) none can be missed.
func SetIdleThreads(list func() ([]int, error)) error {
	return eachThread(list, "set the idle scheduling class", setIdle)
}

// SetIdleThisThread puts the calling thread alone in the idle scheduling
// class. The caller has locked its goroutine to the thread
// (runtime.LockOSThread) and means to exec from it: the program it execs,
// and every thread that program starts, is then in the class from its first
// instruction. Setting a running process's threads cannot promise that: a
// thread its creator is cloning while they are set copies the creator's old
// class, and may show up in the task list only after the last listing.
func SetIdleThisThread() error {
	if err := setIdle(unix.Gettid()); err != nil {
		return fmt.Errorf("set the idle scheduling class: %w", err)
	}
	return nil
}

// ExecIdle makes this whole process idle, with no thread left out: unless
// the calling thread is in the idle scheduling class already, it execs this
// program again (same arguments and environment) from a thread put in the
// class, and so starts over with every thread in it; run again there, it
// finds its thread idle and returns nil. Call it first thing, before the
// program holds anything an exec would lose. It returns only with nil in
// the re-executed program, or with the error that kept it from executing.
func ExecIdle() error {
	if idle, err := Idle(unix.Gettid()); err == nil && idle {
		return SetIdle() // every thread has it from the exec; this finds none that has not
	}
	runtime.LockOSThread()
	if err := SetIdleThisThread(); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	}
	// This thread stays locked, in the idle class: the goroutine's thread
	// ends with it, rather than serve others idle.
	return fmt.Errorf("run %s again in the idle scheduling class: %w", exe, err)
}

// Affinity returns the CPUs thread tid (0: the calling one) may run on, in
// order.
func Affinity(tid int) ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return nil, fmt.Errorf("read the CPU affinity of thread %d: %w", tid, err)
	}
	var cpus []int
	for c := range len(set) * 8 * int(unsafe.Sizeof(set[0])) {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// SetAffinity makes every thread of this process run on cpus only.
func SetAffinity(cpus []int) error {
	return SetAffinityThreads(threadsOf("self"), cpus)
}

// SetAffinityThreads makes the threads that list returns (another
// process's, e.g. those of a cgroup) run on cpus only.
func SetAffinityThreads(list func() ([]int, error), cpus []int) error {
	if len(cpus) == 0 {
		return fmt.Errorf("set the CPU affinity: no CPU given")
	}
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return eachThread(list, fmt.Sprintf("run on CPUs %v", cpus), func(tid int) error {
		return unix.SchedSetaffinity(tid, &set)
	})
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
