package prio

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Sched is what the kernel's scheduler counted for a process's threads
// (/proc/PID/task/*/schedstat, summed): the CPU time they ran, the time
// they waited in a run queue (runnable, another task on the CPU, or their
// cgroup throttled), and the times they were put on a CPU. A thread that
// has ended no longer counts; the Go runtime rarely ends one.
type Sched struct {
	CPU    time.Duration
	Wait   time.Duration
	Slices int64
}

// Sub returns s less an earlier reading.
func (s Sched) Sub(earlier Sched) Sched {
	return Sched{CPU: s.CPU - earlier.CPU, Wait: s.Wait - earlier.Wait, Slices: s.Slices - earlier.Slices}
}

// ErrNoSchedstat means the kernel keeps no per-thread scheduler
// statistics (built without CONFIG_SCHED_INFO).
var ErrNoSchedstat = errors.New("this kernel keeps no scheduler statistics (CONFIG_SCHED_INFO)")

// ReadSched reads the scheduler's counts of process pid ("self" for this
// one). They need a kernel with scheduler statistics (CONFIG_SCHED_INFO,
// which most distributions' have).
func ReadSched(pid string) (Sched, error) {
	tids, err := threadsOf(pid)()
	if err != nil {
		return Sched{}, fmt.Errorf("read the scheduler's counts of process %s: %w", pid, err)
	}
	var s Sched
	for _, tid := range tids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%s/task/%d/schedstat", pid, tid))
		if os.IsNotExist(err) {
			if _, serr := os.Stat(fmt.Sprintf("/proc/%s/task/%d", pid, tid)); os.IsNotExist(serr) {
				continue // the thread has ended
			}
			return Sched{}, fmt.Errorf("read the scheduler's counts of process %s: %w", pid, ErrNoSchedstat)
		}
		if err != nil {
			return Sched{}, fmt.Errorf("read the scheduler's counts of process %s: %w", pid, err)
		}
		t, err := parseSchedstat(string(b))
		if err != nil {
			return Sched{}, fmt.Errorf("read the scheduler's counts of process %s, thread %d: %w", pid, tid, err)
		}
		s.CPU += t.CPU
		s.Wait += t.Wait
		s.Slices += t.Slices
	}
	return s, nil
}

// parseSchedstat parses one thread's schedstat: "RUN_NS WAIT_NS SLICES".
func parseSchedstat(s string) (Sched, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return Sched{}, fmt.Errorf("unexpected schedstat %q", s)
	}
	var n [3]int64
	for i, x := range f {
		v, err := strconv.ParseInt(x, 10, 64)
		if err != nil || v < 0 {
			return Sched{}, fmt.Errorf("unexpected schedstat %q", s)
		}
		n[i] = v
	}
	return Sched{CPU: time.Duration(n[0]), Wait: time.Duration(n[1]), Slices: n[2]}, nil
}
