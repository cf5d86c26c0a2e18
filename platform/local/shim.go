package local

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit/internal/prio"
)

// The platform starts every instance and clone through a shim: the binary
// that embeds this package re-executed with shimEnv set. The shim waits until
// the platform has put it in the instance's cgroup (so the whole process tree
// is accounted from its first instruction), sets up a clone's private mount
// namespace and joins its network namespace, enters the command's working
// directory, then execs the real command.
// Errors before the exec reach the platform through a close-on-exec pipe.
//
// This runs from init, before main or any test, in every binary that imports
// the package (the justrunit command, test binaries).
const shimEnv = "_JUSTRUNIT_LOCAL_SHIM"

// shimConfig is what the platform tells the shim.
type shimConfig struct {
	Path string   `json:"path"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	// Netns is the path of the network namespace to join; empty keeps the
	// host's.
	Netns string `json:"netns,omitempty"`
	// Private: the shim runs in a mount namespace of its own (CLONE_NEWNS),
	// as every clone does, and makes the mounts below there; never set
	// for an on-line instance, which shares the host's.
	Private bool `json:"private,omitempty"`
	// Scratch are the machine-wide scratch directories (see scratchDirs)
	// that the clone sees through overlays of its own.
	Scratch []scratchOverlay `json:"scratch,omitempty"`
	// ScratchTmpfs, when set, is a directory (the one holding Scratch's
	// layers) that the shim covers with a tmpfs, in the clone's mount
	// namespace, and makes the layers in: the platform's data directory
	// cannot hold an overlay's upper layer (see scratchLayers).
	ScratchTmpfs string `json:"scratch_tmpfs,omitempty"`
	// Target is the directory the command knows as its state directory;
	// for a clone it is covered, in the clone's own mount namespace, by an
	// overlay of Lower/Upper/Work, or by a bind mount of Bind.
	Target string `json:"target,omitempty"`
	Lower  string `json:"lower,omitempty"`
	Upper  string `json:"upper,omitempty"`
	Work   string `json:"work,omitempty"`
	Bind   string `json:"bind,omitempty"`
	// Restore: the command (Path, Argv) is criu restore, in new PID and mount
	// namespaces; the shim mounts a /proc of the new PID namespace and runs
	// criu in Images, the dump's directory (criuRestoreArgs names the
	// images and the log relative to it).
	Restore bool   `json:"restore,omitempty"`
	Images  string `json:"images,omitempty"`
	// Idle: the shim execs the command from a thread in the idle
	// scheduling class, so the command and every thread and process it
	// starts are in it from their first instruction (a clone with
	// clone_class: idle; not criu restore, which gives the restored
	// threads their original's class).
	Idle bool `json:"idle,omitempty"`
	// Dir is the command's working directory, absolute (Launch makes an
	// empty one the platform's); empty keeps the platform's. The shim
	// enters it after its mounts: a working directory taken before them
	// would stay on the directory the overlay covers, so a clone whose Dir
	// is at or below Target would open the original's files by their
	// relative paths.
	Dir string `json:"dir,omitempty"`
	// CPUs are the host's CPUs: the shim runs on them, and the command
	// starts there, whatever CPUs the platform's own process may run on
	// (which Linux would otherwise keep it within, where its cpuset allows).
	CPUs []int `json:"cpus,omitempty"`
}

// scratchOverlay is one scratch directory of a clone: the host's directory
// Path as the lower layer, covered at Path by the clone's Upper and Work.
// Mode, UID and GID are Path's, which the overlay's root takes from Upper:
// the shim gives them to an Upper it makes (ScratchTmpfs).
type scratchOverlay struct {
	Path  string      `json:"path"`
	Upper string      `json:"upper"`
	Work  string      `json:"work"`
	Mode  os.FileMode `json:"mode"`
	UID   int         `json:"uid"`
	GID   int         `json:"gid"`
}

func init() {
	if v := os.Getenv(shimEnv); v != "" {
		runShim(v)
	}
}

// runShim never returns: it execs the command or exits 127 after writing
// the reason to fd 4.
func runShim(v string) {
	runtime.LockOSThread() // setns and exec must happen on the same thread
	errPipe := os.NewFile(4, "errpipe")
	fail := func(format string, args ...any) {
		fmt.Fprintf(errPipe, format, args...)
		os.Exit(127)
	}
	syscall.CloseOnExec(4)
	var c shimConfig
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		fail("shim config: %v", err)
	}
	// Wait for the platform to place us in our cgroup.
	gate := os.NewFile(3, "gate")
	b := make([]byte, 1)
	if n, _ := gate.Read(b); n != 1 {
		os.Exit(125) // the platform gave up on us
	}
	gate.Close()
	if len(c.CPUs) > 0 {
		var set unix.CPUSet
		for _, cpu := range c.CPUs {
			set.Set(cpu)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			fail("run on the host's CPUs %v: %v", c.CPUs, err)
		}
	}

	nsfd := -1
	if c.Netns != "" {
		fd, err := unix.Open(c.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fail("open network namespace: %v", err)
		}
		nsfd = fd
	}
	if c.Private {
		// Our mount namespace is new (CLONE_NEWNS); keep every change in it.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fail("make mounts private: %v", err)
		}
		// Drop our copies of the named network namespaces: they would keep
		// other clones' namespaces (and veths) alive after those are destroyed.
		dropNetnsMounts()
		if err := mountClone(c); err != nil {
			fail("%v", err)
		}
	}
	if c.Dir != "" && !c.Restore { // criu runs in Images (mountClone)
		if err := unix.Chdir(c.Dir); err != nil {
			fail("enter working directory %s: %v", c.Dir, err)
		}
	}
	if nsfd >= 0 {
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			fail("join network namespace: %v", err)
		}
		unix.Close(nsfd)
	}
	if c.Restore {
		runRestore(c, errPipe)
	}
	if c.Idle {
		if err := prio.SetIdleThisThread(); err != nil {
			fail("%v", err)
		}
	}
	err := syscall.Exec(c.Path, c.Argv, c.Env)
	fail("exec %s: %v", c.Path, err)
}

// mountClone makes a clone's mounts in its own mount namespace: an overlay
// on each scratch directory, then the state directory's overlay (or bind
// mount) at Target, as the clone sees that path (on its /tmp overlay, for
// a state directory below /tmp), then, to restore, the PID namespace's
// /proc; and it enters Images to restore.
//
// Every directory a mount takes is opened first, before anything is
// mounted, and named through /proc/self/fd from then on: the platform's
// state directory, which holds the layers and the dump, may be below /tmp
// (a test's is), and there the overlay on /tmp would cover them — overlayfs
// refuses an upper layer on an overlay, and criu would write its log to the
// clone's /tmp rather than where the platform reads it. A scratch
// directory is opened without following a symlink and mounted on through
// its descriptor, so the overlay covers that directory and nothing a
// symlink leads to.
func mountClone(c shimConfig) error {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	open := func(path string, flags int) (string, error) {
		fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|flags, 0)
		if err != nil {
			return "", err
		}
		fds = append(fds, fd)
		return "/proc/self/fd/" + strconv.Itoa(fd), nil
	}
	if c.ScratchTmpfs != "" {
		if err := scratchTmpfs(c); err != nil {
			return err
		}
	}
	type overlay struct{ target, lower, upper, work string }
	var scratch []overlay
	for _, s := range c.Scratch {
		lower, err := open(s.Path, unix.O_NOFOLLOW)
		if err != nil {
			if why := checkScratchDir(s.Path); why != nil {
				return why
			}
			return fmt.Errorf("the clone's own %s: %v", s.Path, err)
		}
		o := overlay{target: lower, lower: lower}
		if o.upper, err = open(s.Upper, 0); err == nil {
			o.work, err = open(s.Work, 0)
		}
		if err != nil {
			return fmt.Errorf("the clone's own %s: its layers: %v", s.Path, err)
		}
		scratch = append(scratch, o)
	}
	var state overlay
	var err error
	switch {
	case c.Lower != "":
		if state.lower, err = open(c.Lower, 0); err == nil {
			if state.upper, err = open(c.Upper, 0); err == nil {
				state.work, err = open(c.Work, 0)
			}
		}
	case c.Bind != "":
		state.lower, err = open(c.Bind, 0)
	}
	if err != nil {
		return fmt.Errorf("the state directory's layers: %v", err)
	}
	images := -1
	if c.Restore {
		fd, err := unix.Open(c.Images, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("the dump %s: %v", c.Images, err)
		}
		fds = append(fds, fd)
		images = fd
	}

	for i, o := range scratch {
		if err := mountOverlay(o.target, o.lower, o.upper, o.work); err != nil {
			return fmt.Errorf("mount the clone's own %s (an overlay on the host's, its writes in %s): %v", c.Scratch[i].Path, c.Scratch[i].Upper, err)
		}
	}
	switch {
	case c.Lower != "":
		if err := mountOverlay(c.Target, state.lower, state.upper, state.work); err != nil {
			return fmt.Errorf("mount overlay on %s: %v", c.Target, err)
		}
	case c.Bind != "":
		if err := unix.Mount(state.lower, c.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %v", c.Bind, c.Target, err)
		}
	}
	if c.Restore {
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc of the clone's PID namespace: %v", err)
		}
		// By its descriptor: the path may be below the clone's /tmp.
		if err := unix.Fchdir(images); err != nil {
			return fmt.Errorf("enter %s: %v", c.Images, err)
		}
	}
	return nil
}

// scratchTmpfs covers c.ScratchTmpfs with a tmpfs, in the clone's mount
// namespace, and makes the scratch overlays' layers there, each upper with
// its host directory's owner and mode (/tmp's 1777). Nothing of it shows
// outside the clone, and it goes with the clone's last process. It runs
// before anything else is mounted: the directory may be below /tmp.
func scratchTmpfs(c shimConfig) error {
	if err := unix.Mount("tmpfs", c.ScratchTmpfs, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		return fmt.Errorf("mount a tmpfs on %s for the clone's scratch layers: %v", c.ScratchTmpfs, err)
	}
	for _, s := range c.Scratch {
		for _, d := range []string{s.Upper, s.Work} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return fmt.Errorf("the clone's own %s: its layers in memory: %v", s.Path, err)
			}
		}
		if err := os.Lchown(s.Upper, s.UID, s.GID); err != nil {
			return fmt.Errorf("the clone's own %s: its upper layer: %v", s.Path, err)
		}
		if err := os.Chmod(s.Upper, s.Mode); err != nil {
			return fmt.Errorf("the clone's own %s: its upper layer: %v", s.Path, err)
		}
	}
	return nil
}

// mountOverlay mounts an overlay of lower, upper and work on target.
func mountOverlay(target, lower, upper, work string) error {
	return unix.Mount("overlay", target, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work)
}

func dropNetnsMounts() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && (strings.HasPrefix(fs[4], "/run/netns/") || strings.HasPrefix(fs[4], "/var/run/netns/")) {
			mps = append(mps, fs[4])
		}
	}
	for _, mp := range mps {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
}

// runRestore runs criu restore as the shim's child and never returns: the
// shim stays the PID namespace's init (criu restores the tree as its own
// children and waits for it), reaps what the restored tree orphans, and
// exits with criu's status. Errors starting criu go to errPipe, which is
// closed once criu runs.
func runRestore(c shimConfig, errPipe *os.File) {
	cmd := exec.Command(c.Path, c.Argv[1:]...)
	cmd.Env = c.Env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(errPipe, "start %s: %v", c.Path, err)
		os.Exit(127)
	}
	errPipe.Close()
	criu := cmd.Process.Pid
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
		case err != nil: // ECHILD: nothing left
			os.Exit(1)
		case pid == criu && ws.Exited():
			os.Exit(ws.ExitStatus())
		case pid == criu && ws.Signaled():
			os.Exit(128 + int(ws.Signal()))
		}
	}
}
