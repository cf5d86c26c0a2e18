package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/testutil"
)

// TestCloneOwnScratch: a clone, cold or live, with a state directory or
// without, sees the host's /tmp and /dev/shm as they were when it was
// cloned, and its writes there stay in its own layers: the on-line
// instance's files keep their content, and the host sees none of the
// clone's new files. Its original holds a file open in each (a live
// clone restores them at their paths). Destroy leaves no mount and no
// layer.
func TestCloneOwnScratch(t *testing.T) {
	for _, d := range []string{"/tmp", "/dev/shm"} {
		if _, err := os.Stat(d); err != nil {
			// The cgroup guests' busybox systems have no /dev/shm.
			t.Skipf("this system has no %s to clone a view of: %v", d, err)
		}
	}
	for _, tc := range []struct {
		name     string
		live     bool
		stateDir bool
		inMemory bool // as where the data directory holds no overlay layer
	}{
		{name: "cold"},
		{name: "cold with state dir", stateDir: true},
		{name: "live with state dir", live: true, stateDir: true},
		{name: "cold with layers in memory", stateDir: true, inMemory: true},
		{name: "live with layers in memory", live: true, stateDir: true, inMemory: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *Platform
			if tc.live {
				p = newPlatform(t)
				testutil.NeedLiveClones(t, p.criuErr)
			} else {
				p = newPlatform(t, coldClones)
			}
			if tc.inMemory {
				p.overlayOK = false
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			// The server keeps its files in a directory of the host's /tmp;
			// two symlinks there lead to /dev/shm.
			dir, err := os.MkdirTemp("/tmp", "jri-scratch-")
			if err != nil {
				t.Fatal(err)
			}
			shm := filepath.Join("/dev/shm", filepath.Base(dir))
			t.Cleanup(func() {
				os.RemoveAll(dir)
				os.Remove(shm)
				os.Remove(shm + "-new")
			})
			for _, file := range []string{filepath.Join(dir, "held"), shm} {
				if err := os.WriteFile(file, []byte("held open"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for link, to := range map[string]string{"shm": shm, "shm-new": shm + "-new"} {
				if err := os.Symlink(to, filepath.Join(dir, link)); err != nil {
					t.Fatal(err)
				}
			}
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			spec := justrunit.InstanceSpec{ID: "web", Host: "pm1", Addr: addr, Command: []string{"/bin/sh", "-c",
				`exec 3<"$1" 4<>"$2"; shift 2; exec "$@"`, "sh", filepath.Join(dir, "held"), shm,
				testServer(t), "-addr", addr, "-state", dir}}
			if tc.stateDir {
				spec.StateDir = t.TempDir()
			}
			if _, err := p.Launch(ctx, spec); err != nil {
				t.Fatalf("Launch() error: %v", err)
			}
			t.Cleanup(func() { _ = p.Destroy(context.Background(), "web") })
			base := "http://" + addr
			waitHTTP(t, base+"/health", 10*time.Second)
			if err := os.WriteFile(filepath.Join(dir, "pre"), []byte("before the clone"), 0o644); err != nil {
				t.Fatal(err)
			}
			put(t, base+"/file/shared", "original")
			put(t, base+"/file/shm", "original")
			mounts := mountPoints(t)

			cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}})
			if err != nil {
				t.Fatalf("Clone() error: %v", err)
			}
			if want := map[bool]string{true: justrunit.CloneLive, false: justrunit.CloneCold}[tc.live]; cl.Mode != want {
				info, _ := p.Info(cl.ID)
				t.Fatalf("Mode = %q, want %q (cold because: %s)", cl.Mode, want, info.ColdBecause)
			}
			cbase := "http://" + cl.Endpoint
			for name, want := range map[string]string{"pre": "before the clone", "shared": "original", "shm": "original"} {
				if code, body := getBody(t, cbase+"/file/"+name); code != 200 || body != want {
					t.Errorf("clone reads %s: %d %q, want %q", name, code, body, want)
				}
			}
			for _, name := range []string{"shared", "shm", "new", "shm-new"} {
				put(t, cbase+"/file/"+name, "clone")
				if code, body := getBody(t, cbase+"/file/"+name); code != 200 || body != "clone" {
					t.Errorf("clone reads back %s: %d %q, want %q", name, code, body, "clone")
				}
			}
			for file, want := range map[string]string{filepath.Join(dir, "shared"): "original", shm: "original"} {
				if b, err := os.ReadFile(file); err != nil || string(b) != want {
					t.Errorf("host's %s = %q, %v; want %q (the clone wrote it)", file, b, err, want)
				}
			}
			for _, file := range []string{filepath.Join(dir, "new"), shm + "-new"} {
				if _, err := os.Lstat(file); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("host sees the clone's new %s: %v", file, err)
				}
			}
			if code, body := getBody(t, base+"/file/shared"); body != "original" {
				t.Errorf("original reads shared: %d %q, want %q", code, body, "original")
			}
			cdir := filepath.Join(p.cfg.StateDir, "clones", cl.ID)
			if tc.inMemory {
				// The layers are in the tmpfs the clone's namespace has on
				// this directory: the host sees it empty.
				if ents, err := os.ReadDir(filepath.Join(cdir, "scratch")); err != nil || len(ents) != 0 {
					t.Errorf("host's view of the clone's in-memory layers: %d entries, %v; want an empty directory", len(ents), err)
				}
			}
			for _, file := range []string{
				filepath.Join(cdir, "scratch", "tmp", "upper", strings.TrimPrefix(dir, "/tmp/"), "new"),
				filepath.Join(cdir, "scratch", "dev-shm", "upper", filepath.Base(shm)+"-new"),
			} {
				if tc.inMemory {
					continue
				}
				if b, err := os.ReadFile(file); err != nil || string(b) != "clone" {
					t.Errorf("clone's layer %s = %q, %v; want %q", file, b, err, "clone")
				}
			}
			checkMountPoints(t, "while the clone runs", mounts, cdir)

			if err := p.Destroy(ctx, cl.ID); err != nil {
				t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
			}
			if _, err := os.Lstat(cdir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after Destroy, %s: %v; want it removed with its layers", cdir, err)
			}
			checkMountPoints(t, "after Destroy", mounts, cdir)
			checkNoLeftovers(t, p, regexp.MustCompile(regexp.QuoteMeta(cl.ID)))
			if code, body := getBody(t, base+"/file/shm"); body != "original" {
				t.Errorf("original reads shm after Destroy: %d %q", code, body)
			}
		})
	}
}

// TestCloneScratchNotDirectory: a scratch directory that is a symlink fails
// the clone, naming it, and leaves nothing behind: found by Clone before it
// makes anything, or by the shim when it becomes one after that check.
func TestCloneScratchNotDirectory(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "web"})
	saved, savedHook := scratchDirs, testHookStarting
	t.Cleanup(func() { scratchDirs, testHookStarting = saved, savedHook })
	for _, tc := range []struct {
		name    string
		replace bool // a directory at first, a symlink once the clone starts
	}{
		{name: "found by Clone"},
		{name: "found by the shim", replace: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			scratch := filepath.Join(d, "scratch")
			symlink := func() error {
				if err := os.RemoveAll(scratch); err != nil {
					return err
				}
				return os.Symlink(d, scratch)
			}
			testHookStarting = nil
			var err error
			if tc.replace {
				err = os.Mkdir(scratch, 0o755)
				var hookErr error
				testHookStarting = func(in *inst) {
					if in.Origin != "" {
						hookErr = symlink()
					}
				}
				t.Cleanup(func() {
					if hookErr != nil {
						t.Errorf("replace %s with a symlink: %v", scratch, hookErr)
					}
				})
			} else {
				err = symlink()
			}
			if err != nil {
				t.Fatal(err)
			}
			scratchDirs = append(slices.Clone(saved), scratch)
			defer func() { scratchDirs, testHookStarting = saved, savedHook }()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{})
			if err == nil {
				_ = p.Destroy(ctx, cl.ID)
				t.Fatalf("Clone() with %s a symlink succeeded", scratch)
			}
			t.Logf("Clone() error: %v", err)
			if !strings.Contains(err.Error(), scratch+": ") || !strings.Contains(err.Error(), "it is a symlink") {
				t.Errorf("Clone() error = %v, want one naming %s and saying it is a symlink", err, scratch)
			}
			if !tc.replace && !errors.Is(err, justrunit.ErrUnsupported) {
				t.Errorf("Clone() error = %v, want ErrUnsupported", err)
			}
			checkNoLeftovers(t, p, regexp.MustCompile(`c\d+-web`))
			if ents, _ := os.ReadDir(d); len(ents) != 1 {
				t.Errorf("%s holds %d entries, want only the symlink", d, len(ents))
			}
		})
	}
}

// mountPoints counts the mounts at /tmp, /var/tmp and /dev/shm in this
// (the host's) mount namespace.
func mountPoints(t *testing.T) map[string]int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, l := range strings.Split(string(b), "\n") {
		if fs := strings.Fields(l); len(fs) > 4 && slices.Contains(scratchDirs, fs[4]) {
			n[fs[4]]++
		}
	}
	return n
}

// checkMountPoints checks that the host's mounts at the scratch
// directories are still before, and that none names the clone's directory
// cdir: the clone's overlays are in its mount namespace only.
func checkMountPoints(t *testing.T, when string, before map[string]int, cdir string) {
	t.Helper()
	if now := mountPoints(t); !maps.Equal(now, before) {
		t.Errorf("%s: the host's mounts at %v are %v, want %v", when, scratchDirs, now, before)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, cdir) {
			t.Errorf("%s: host mount of the clone: %s", when, l)
		}
	}
}

// TestCloneScratchMissing: a scratch directory the host does not have (a
// minimal system's /var/tmp) is skipped: the clone starts, and nothing
// makes the directory.
func TestCloneScratchMissing(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "web"})
	saved := scratchDirs
	t.Cleanup(func() { scratchDirs = saved })
	missing := filepath.Join(t.TempDir(), "none")
	scratchDirs = append(slices.Clone(saved), missing)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone() with no %s: %v, want it skipped", missing, err)
	}
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
	}
	if _, err := os.Lstat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s after a clone: %v, want it still missing", missing, err)
	}
	checkNoLeftovers(t, p, regexp.MustCompile(regexp.QuoteMeta(cl.ID)))
}
