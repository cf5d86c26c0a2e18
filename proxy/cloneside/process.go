package cloneside

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
)

// Log keys of the lines forwarded from the helper.
const (
	logKeySide    = "clone_side"
	logKeySidePid = "clone_side_pid"
	logKeyLine    = "line"
	logKeyErr     = "err"
)

// proc is the helper's process, reaped by the goroutine that started it.
type proc struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process is reaped
	waitErr error         // cmd.Wait's, set before exited is closed
}

// launch starts cmd with its threads on cpus (nil: wherever this process
// may run) and reaps it when it ends.
//
// The child inherits the CPU affinity of the thread that forks it, and
// every thread it makes inherits it in turn, so setting that one thread's
// affinity for the fork pins the helper from its first instruction; pinning
// a running process's threads could miss one it is creating meanwhile.
//
// The same goroutine then stays locked to that thread until the helper is
// reaped, because the helper's parent-death signal (Pdeathsig) follows the
// thread that forked it, not the process: a thread that went back to the
// runtime could be ended under it (the runtime ends a thread whose locked
// goroutine exits, as code that enters a network namespace does on
// purpose), and the helper would be killed with it. One parked thread per
// helper is the price.
func launch(cmd *exec.Cmd, cpus []int) (*proc, error) {
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := startPinned(cmd, cpus)
		started <- err
		if err == nil {
			p.waitErr = cmd.Wait()
			close(p.exited)
		}
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise the goroutine ends locked to the thread, and the
		// runtime ends the thread rather than run others on its CPUs.
	}()
	return p, <-started
}

// startPinned starts cmd from the calling thread (locked to its
// goroutine) with the thread's affinity set to cpus, and sets it back; it
// reports whether the thread's affinity is as it was.
func startPinned(cmd *exec.Cmd, cpus []int) (restored bool, err error) {
	if len(cpus) == 0 {
		return true, cmd.Start()
	}
	// The thread's own CPUs do not limit it: the site's process may run
	// on the on-line hosts' CPUs only. What may be set is what the
	// process's cpuset allows, and the kernel says what that is: it
	// refuses a set wholly outside it, and keeps the part inside of one
	// partly outside.
	var old, set, got unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return true, fmt.Errorf("read the CPU affinity: %w", err)
	}
	for _, c := range cpus {
		if c < 0 || c >= 8*int(unsafe.Sizeof(set)) {
			return true, justrunit.Invalid("cpus", cpus, "CPU %d does not exist", c)
		}
		set.Set(c)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return true, justrunit.Invalid("cpus", cpuList(cpus), "this process cannot run there (outside its cpuset, or offline): %v", err)
	}
	if err := unix.SchedGetaffinity(0, &got); err != nil || got != set {
		restored := unix.SchedSetaffinity(0, &old) == nil
		var missing []int
		for _, c := range cpus {
			if !got.IsSet(c) {
				missing = append(missing, c)
			}
		}
		return restored, justrunit.Invalid("cpus", cpuList(missing), "outside this process's cpuset, or offline")
	}
	err = cmd.Start()
	return unix.SchedSetaffinity(0, &old) == nil, err
}

// cpuList writes cpus as Linux lists them ("0-3,6").
func cpuList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j == i {
			fmt.Fprint(&b, cpus[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", cpus[i], cpus[j])
		}
		i = j + 1
	}
	return b.String()
}

// Bounds of what stderrLog keeps.
const (
	tailLines   = 20
	tailLineLen = 512
	maxLineLen  = 64 << 10
)

// stderrLog is the helper's stderr: each line goes to the site's log, a
// JSON log record with its level, message and attributes, anything else
// (a panic, an error printed before the helper's logger existed) as a
// warning with the line. The last lines are kept for errors (tail).
type stderrLog struct {
	log  *slog.Logger
	name string
	pid  atomic.Int64

	mu      sync.Mutex
	partial []byte
	tail    []string
}

// Write logs every complete line in p and keeps the rest for later.
func (l *stderrLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.partial = append(l.partial, p...)
	var lines [][]byte
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			if len(l.partial) > maxLineLen { // a line that long goes in pieces
				lines = append(lines, l.partial)
				l.partial = nil
			}
			break
		}
		lines = append(lines, l.partial[:i])
		l.partial = l.partial[i+1:]
	}
	l.partial = slices.Clone(l.partial) // let the logged lines' bytes go
	for _, b := range lines {
		l.keep(b)
	}
	l.mu.Unlock()
	for _, b := range lines {
		l.forward(b)
	}
	return len(p), nil
}

// flush logs a last line that had no newline.
func (l *stderrLog) flush() {
	l.mu.Lock()
	b := l.partial
	l.partial = nil
	if len(b) > 0 {
		l.keep(b)
	}
	l.mu.Unlock()
	if len(b) > 0 {
		l.forward(b)
	}
}

// keep adds b to the tail; l.mu is held.
func (l *stderrLog) keep(b []byte) {
	s := string(b)
	if len(s) > tailLineLen {
		s = s[:tailLineLen] + "…"
	}
	l.tail = append(l.tail, s)
	if len(l.tail) > tailLines {
		l.tail = slices.Delete(l.tail, 0, len(l.tail)-tailLines)
	}
}

// Tail returns the last lines the helper wrote, empty for none.
func (l *stderrLog) Tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.tail, "\n")
}

// forward logs line b on the site's logger.
func (l *stderrLog) forward(b []byte) {
	b = bytes.TrimRight(b, "\r")
	if len(bytes.TrimSpace(b)) == 0 {
		return
	}
	attrs := []any{logKeySide, l.name, logKeySidePid, l.pid.Load()}
	var rec map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if d.Decode(&rec) == nil {
		if msg, ok := rec[slog.MessageKey].(string); ok {
			level := slog.LevelInfo
			if s, ok := rec[slog.LevelKey].(string); ok {
				_ = level.UnmarshalText([]byte(s))
			}
			for _, k := range []string{slog.TimeKey, slog.LevelKey, slog.MessageKey} {
				delete(rec, k)
			}
			keys := make([]string, 0, len(rec))
			for k := range rec {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				attrs = append(attrs, slog.Any(k, rec[k]))
			}
			l.log.Log(context.Background(), level, msg, attrs...)
			return
		}
	}
	l.log.Warn("clone side output", append(attrs, logKeyLine, string(b))...)
}
