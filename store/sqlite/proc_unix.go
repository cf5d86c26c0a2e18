//go:build unix

package sqlite

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's start time; Linux
// fixes it at 100 for user space on every architecture Go supports.
const clockTicks = 100

// processStatus asks the kernel about pid: kill(pid, 0) tells whether it
// exists (EPERM means it does, owned by another user); on Linux /proc adds
// whether it is a zombie and when it started.
func processStatus(pid int) procStatus {
	err := syscall.Kill(pid, 0)
	switch {
	case errors.Is(err, syscall.ESRCH):
		return procStatus{known: true}
	case err != nil && !errors.Is(err, syscall.EPERM):
		return procStatus{}
	}
	st := procStatus{known: true, exists: true}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return st
	}
	state, ticks, ok := parseStat(string(stat))
	if !ok {
		return st
	}
	st.zombie = state == "Z" || state == "X"
	if boot, ok := bootTime(); ok {
		st.started = boot.Add(time.Duration(ticks) * time.Second / clockTicks)
	}
	return st
}

// bootTime reads the boot time from /proc/stat, in whole seconds.
func bootTime() (time.Time, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			return time.Unix(n, 0), true
		}
	}
	return time.Time{}, false
}
