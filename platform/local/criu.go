package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/justrunit/justrunit/internal/cgroup"
)

// Live clones (CRIU). Where `criu check` passes, a clone keeps the
// original's memory state, as the paper's clones do:
//
//  1. with the original's cgroup frozen, its state directory is
//     snapshotted and its process tree dumped by `criu dump
//     --leave-running --freeze-cgroup` (the same instant for memory and
//     files), then the original runs on;
//  2. the shim starts in new PID and mount namespaces and the clone's
//     network namespace, mounts the state directory's overlay and a
//     /proc of its own, and runs `criu restore`, which recreates the tree
//     there with the same PIDs (free in the new namespace), the same
//     listening sockets (in the clone's namespace) and
//     the open files (on the overlay); established TCP connections are
//     restored closed (--tcp-close), so the clone's callers reconnect to
//     it through the proxies;
//  3. the shim stays the new namespace's init, criu the restored tree's
//     parent, all in the clone's cgroup (--manage-cgroups=ignore keeps
//     criu from restoring the tree into the original's cgroups).
//
// A tree criu cannot dump (a socket family it does not know, such as the
// MPTCP listeners Go 1.24 and later open by default where the kernel has
// MPTCP, with criu 3.17 and 4.2) is cloned cold instead; the log and
// CloneInfo.ColdBecause say why.

// LiveClones says why clones on this machine are cold (nil: criu works
// here, and clones are live where the original's tree can be dumped).
func LiveClones() error {
	_, err := criuHere()
	return err
}

// criuHere is probeCriu, run once per process: the kernel and criu do not
// change while it runs, and a test binary makes many platforms.
var criuHere = sync.OnceValues(probeCriu)

// criuTimeout bounds a check; dumpTimeout a dump, during which the original
// is frozen (past it the dump is killed, the original thawed and the clone
// made cold).
const (
	criuTimeout = 30 * time.Second
	dumpTimeout = 10 * time.Second
)

// InstalledCriu is where scripts/install-criu puts a criu for JustRunIt
// alone (Debian's newest, with its own libraries), for machines whose
// distribution's criu is older than their kernel.
const InstalledCriu = "/opt/justrunit/criu/bin/criu"

// CriuEnv names the environment variable that picks the criu binary; when
// it is set, no other is tried.
const CriuEnv = "JUSTRUNIT_CRIU"

// probeCriu returns the first criu binary whose `criu check` passes here:
// $JUSTRUNIT_CRIU alone when it is set, else the one on PATH, then
// InstalledCriu. Otherwise it says why live clones are not available, and
// how to get them.
func probeCriu() (string, error) {
	return findCriu(os.Getenv(CriuEnv), InstalledCriu)
}

// findCriu is probeCriu with the environment variable's value (env) and the
// installed criu's path given.
func findCriu(env, installed string) (string, error) {
	if p := env; p != "" {
		if err := checkCriu(p); err != nil {
			return "", fmt.Errorf("%s=%s: %v", CriuEnv, p, err)
		}
		return p, nil
	}
	var why []string
	if p, err := exec.LookPath("criu"); err != nil {
		why = append(why, "criu is not installed")
	} else if err := checkCriu(p); err != nil {
		why = append(why, p+": "+err.Error())
	} else {
		return p, nil
	}
	if _, err := os.Stat(installed); err == nil {
		if err := checkCriu(installed); err != nil {
			why = append(why, installed+": "+err.Error())
		} else {
			return installed, nil
		}
	}
	return "", fmt.Errorf("%s (scripts/install-criu installs a newer criu for JustRunIt alone, at %s)", strings.Join(why, "; "), installed)
}

// checkCriu runs `criu check` with the criu binary at path.
func checkCriu(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), criuTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	if err != nil {
		why := lastLines(string(out), 2)
		if why == "" {
			why = err.Error()
		}
		return fmt.Errorf("criu check fails here: %s", why)
	}
	return nil
}

// errMPTCP is criu's refusal of an MPTCP socket. An instance that has one
// keeps it (its listener), so its later clones are made cold without
// freezing it for a dump that fails again.
var errMPTCP = errors.New("the instance has an MPTCP socket, which criu cannot dump")

// criuDump dumps the process tree rooted at pid into dir, leaving it
// running. freezer is the tree's cgroup directory holding the freezer
// (v1's freezer.state or v2's cgroup.freeze), frozen by the caller: criu
// takes the tree as it is and leaves the cgroup as it found it.
func criuDump(criu string, pid int, dir, freezer string) error {
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	log := filepath.Join(dir, "dump.log")
	// --skip-in-flight: connections not yet accepted when the tree froze
	// stay the original's (it runs on and accepts them); the clone gets
	// its own through the in-proxy.
	args := []string{"dump", "--tree", strconv.Itoa(pid), "--images-dir", dir, "--leave-running", "--tcp-close", "--skip-in-flight",
		"--shell-job", "--file-locks", "--manage-cgroups=ignore", "--freeze-cgroup", freezer, "--log-file", log, "-v2"}
	out, err := exec.CommandContext(ctx, criu, args...).CombinedOutput()
	if err != nil {
		b, _ := os.ReadFile(log)
		msg := string(out) + string(b)
		if strings.Contains(msg, "Unsupported proto 262") {
			return fmt.Errorf("criu dump: %w (Go 1.24 and later listen with MPTCP: run the instance with GODEBUG=multipathtcp=0)", errMPTCP)
		}
		return fmt.Errorf("criu dump: %v: %s", err, lastLines(msg, 3))
	}
	return nil
}

// criuRestoreArgs is the command the shim runs to restore a dump. It names
// the dump's directory "." and its log relative to it (criu writes its log
// in its work directory, by default the images'): the shim runs it in the
// directory it opened before mounting the clone's /tmp, which may cover the
// dump's path (see mountClone), and the platform reads the log there.
func criuRestoreArgs(criu string) []string {
	return []string{criu, "restore", "--images-dir", ".", "--tcp-close", "--shell-job", "--file-locks",
		"--manage-cgroups=ignore", "--log-file", "restore.log", "-v3"} // -v3: the log says when it finished
}

// lastLines returns the last n non-empty lines of s, joined by " / ".
func lastLines(s string, n int) string {
	var ls []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			ls = append(ls, l)
		}
	}
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " / ")
}

// dumpOriginal dumps the process tree of on-line instance orig, frozen in
// g by the caller, into dir.
func (p *Platform) dumpOriginal(orig *inst, g *cgroup.Group, dir string) error {
	p.mu.Lock()
	cmd := orig.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return errors.New("no process")
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	if err := criuDump(p.criu, cmd.Process.Pid, dir, cgroup.FreezerDir(p.cg, g.Path())); err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	return nil
}

// waitRestored waits until criu's restore log in dir says the restore
// finished, the shim exits (done), the timeout passes or ctx ends.
func waitRestored(ctx context.Context, dir string, timeout time.Duration, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	log := filepath.Join(dir, "restore.log")
	for {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "Restore finished successfully") {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("criu restore failed: %s", lastLines(string(b), 3))
		case <-ctx.Done():
			return fmt.Errorf("criu restore not finished after %v: %s", timeout, lastLines(string(b), 3))
		case <-time.After(10 * time.Millisecond):
		}
	}
}
