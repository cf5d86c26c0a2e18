package cloneside

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// siteFlag, on a helper's command line, names the process that started
// it (its site): "--site=PID".
const siteFlag = "--site="

// ReapOrphans kills the clone sides on this machine whose site is gone: a
// helper runs "<program> clone-side --name=... --site=PID", and once its
// parent is no longer that site it is an orphan. A helper ends by itself
// when its site closes the control socket or dies (the socket ends, and
// the kernel sends it SIGKILL as the thread that started it goes), so
// there is one only if it hung; "justrunit platform gc" runs this. It
// returns the pids killed.
func ReapOrphans() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var killed []int
	var errs []error
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !isOrphanHelper(pid) {
			continue
		}
		switch err := syscall.Kill(pid, syscall.SIGKILL); {
		case err == nil:
			killed = append(killed, pid)
		case errors.Is(err, syscall.ESRCH): // ended meanwhile
		default:
			errs = append(errs, fmt.Errorf("kill clone side %d: %w", pid, err))
		}
	}
	return killed, errors.Join(errs...)
}

// isOrphanHelper reports whether process pid is a clone side whose
// parent is no longer the site that started it.
func isOrphanHelper(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 2 || args[1] != Subcommand {
		return false
	}
	for _, a := range args[2:] {
		if site, ok := strings.CutPrefix(a, siteFlag); ok {
			ppid := parentOf(pid)
			return ppid != 0 && strconv.Itoa(ppid) != site
		}
	}
	return false // not started by Start
}

// parentOf returns pid's parent pid, or 0 when it cannot be read.
func parentOf(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
