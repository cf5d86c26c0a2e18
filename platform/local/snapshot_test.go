package local

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// treeState describes a directory tree: per path, its type, permissions
// and content or link target.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		names, err := listXattrs(path)
		if err != nil {
			return err
		}
		meta := fmt.Sprintf("%d:%d", st.Uid, st.Gid)
		for _, n := range names {
			v, err := getXattr(path, n)
			if err != nil {
				return err
			}
			meta += fmt.Sprintf(" %s=%x", n, v)
		}
		switch {
		case d.IsDir():
			m[rel] = fmt.Sprintf("dir %v %s", modeBits(info), meta)
		case d.Type() == fs.ModeSymlink:
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			m[rel] = fmt.Sprintf("link %s %s", l, meta)
		default:
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			m[rel] = fmt.Sprintf("file %v %s %q", modeBits(info), meta, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameTree(t *testing.T, src, dst string) {
	t.Helper()
	want, got := treeState(t, src), treeState(t, dst)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: snapshot has %q, source %q", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: in the snapshot (%q), not in the source", k, v)
		}
	}
}

func writeAt(t *testing.T, path, content string, perm fs.FileMode, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// netBindCap is a security.capability value (VFS_CAP_REVISION_2, effective)
// granting CAP_NET_BIND_SERVICE.
var netBindCap = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func chown(t *testing.T, path string, uid, gid int) {
	t.Helper()
	needRoot(t)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// setXattr sets xattr name of path; it returns false where the filesystem
// has no xattrs.
func setXattr(t *testing.T, path, name string, v []byte) bool {
	t.Helper()
	err := unix.Lsetxattr(path, name, v, 0)
	if errors.Is(err, unix.ENOTSUP) {
		t.Logf("no xattrs on %s's filesystem: %v", path, err)
		return false
	}
	if err != nil {
		t.Fatalf("setxattr %s %s: %v", name, path, err)
	}
	return true
}

// checkMeta checks path's owner, and that it has xattr name when want.
func checkMeta(t *testing.T, path string, uid, gid uint32, name string, want bool) {
	t.Helper()
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := info.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
	if want {
		if _, err := getXattr(path, name); err != nil {
			t.Errorf("%s: xattr %s: %v, want it kept", path, name, err)
		}
	}
}

// TestSnapshotTwoPass: what changes between the pre-copy and the frozen
// pass is in the snapshot, and the frozen pass copies only that.
func TestSnapshotTwoPass(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "lower")
	old := time.Now().Add(-time.Hour)
	for d := range 5 {
		dir := filepath.Join(src, fmt.Sprintf("d%d", d))
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		for f := range 40 {
			perm := fs.FileMode(0o644)
			if f%3 == 0 {
				perm = 0o666 // not what the umask leaves
			}
			writeAt(t, filepath.Join(dir, fmt.Sprintf("f%d", f)), fmt.Sprintf("content %d/%d", d, f), perm, old)
		}
	}
	if err := os.Symlink("d0/f0", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "gone"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeAt(t, filepath.Join(src, "gone", "x"), "x", 0o644, old)
	writeAt(t, filepath.Join(src, "becomes-dir"), "file", 0o644, old)
	// Owners, setgid, sticky and xattrs, which a service that drops
	// privileges, or a binary with file capabilities, needs kept.
	owned := filepath.Join(src, "d0", "f5")
	chown(t, owned, 65534, 65533)
	chown(t, filepath.Join(src, "d1"), 65534, 65534)
	if err := os.Chmod(filepath.Join(src, "d1"), 0o770|fs.ModeSetgid|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(src, "link"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	xattrs := setXattr(t, owned, "user.justrunit", []byte("kept"))
	capable := filepath.Join(src, "d0", "f6")
	chown(t, capable, 65534, 65534)
	xattrs = xattrs && setXattr(t, capable, "security.capability", netBindCap)
	// Written in the same clock tick as the pre-copy reads it: same size,
	// same mtime, other content.
	recent := time.Now().Add(-time.Second)
	writeAt(t, filepath.Join(src, "recent"), "before", 0o644, recent)

	since, _, err := preCopyTree(t.Context(), src, dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	checkMeta(t, filepath.Join(dst, "d0", "f5"), 65534, 65533, "user.justrunit", xattrs)
	checkMeta(t, filepath.Join(dst, "d0", "f6"), 65534, 65534, "security.capability", xattrs)
	checkMeta(t, dst, uint32(os.Getuid()), uint32(os.Getgid()), "", false)

	// What the original does before it is frozen.
	writeAt(t, filepath.Join(src, "d0", "f1"), "CONTENT 0/1", 0o644, time.Now()) // same size
	writeAt(t, filepath.Join(src, "d1", "f2"), "longer content 1/2", 0o644, old) // other size, old mtime
	writeAt(t, filepath.Join(src, "d2", "new"), "new", 0o600, time.Now())        // new file
	writeAt(t, filepath.Join(src, "recent"), "BEFORE", 0o644, recent)            // same tick
	if err := os.Remove(filepath.Join(src, "d3", "f3")); err != nil {            // removed file
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(src, "gone")); err != nil { // removed dir
		t.Fatal(err)
	}
	writeAt(t, filepath.Join(src, "gone"), "now a file", 0o644, time.Now()) // dir to file
	if err := os.Remove(filepath.Join(src, "becomes-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "becomes-dir"), 0o700); err != nil { // file to dir
		t.Fatal(err)
	}
	writeAt(t, filepath.Join(src, "becomes-dir", "y"), "y", 0o644, time.Now())
	if err := os.Remove(filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d1/f1", filepath.Join(src, "link")); err != nil { // retargeted link
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "d4", "f4"), 0o600); err != nil { // mode only
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "d4"), 0o700); err != nil {
		t.Fatal(err)
	}
	chown(t, filepath.Join(src, "d4", "f5"), 65534, 65534) // owner only
	chown(t, filepath.Join(src, "d2"), 65533, 65533)
	if xattrs { // xattrs only
		setXattr(t, owned, "user.justrunit", []byte("KEPT"))
		setXattr(t, filepath.Join(src, "d3", "f7"), "user.added", []byte("x"))
		if err := unix.Lremovexattr(capable, "security.capability"); err != nil {
			t.Fatal(err)
		}
	}

	copied, _, err := syncTree(t.Context(), src, dst, since, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	checkMeta(t, filepath.Join(dst, "d4", "f5"), 65534, 65534, "", false)
	// d0/f1, d1/f2, d2/new, recent, gone, becomes-dir/y; not the 199
	// files that did not change.
	if copied != 6 {
		t.Errorf("frozen pass copied %d files, want 6", copied)
	}
	// Nothing changed since: nothing but the recent files is copied.
	copied, _, err = syncTree(t.Context(), src, dst, since, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	if copied != 5 { // d0/f1, d2/new, recent, gone, becomes-dir/y are recent
		t.Errorf("pass with no change copied %d files, want 5", copied)
	}
}

// TestSnapshotLive: a pre-copy taken while the tree changes under it, then
// brought up to date once the changes stop, equals the tree.
func TestSnapshotLive(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "lower")
	for d := range 10 {
		dir := filepath.Join(src, fmt.Sprintf("d%d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range 50 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", f)), bytes.Repeat([]byte{'a'}, 1000*f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the original, writing, creating and removing
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			dir := filepath.Join(src, fmt.Sprintf("d%d", i%10))
			name := filepath.Join(dir, fmt.Sprintf("f%d", i%50))
			switch i % 4 {
			case 0:
				_ = os.WriteFile(name, []byte(strings.Repeat("b", i%2000)), 0o644)
			case 1:
				_ = os.Remove(name)
			case 2:
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("n%d", i%30)), []byte(fmt.Sprint(i)), 0o644)
			case 3:
				sub := filepath.Join(dir, "sub")
				if i%8 == 3 {
					_ = os.RemoveAll(sub)
				} else if os.Mkdir(sub, 0o755) == nil {
					_ = os.WriteFile(filepath.Join(sub, "z"), []byte(fmt.Sprint(i)), 0o644)
				}
			}
		}
	}()
	since, _, err := preCopyTree(t.Context(), src, dst, nil)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := syncTree(t.Context(), src, dst, since, nil); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
}

func TestXattrKept(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"user.app", true},
		{"security.capability", true},
		{"security.selinux", true},
		{"system.posix_acl_access", true},
		{"system.posix_acl_default", true},
		{"security.evm", false}, // refused from user space where EVM is on
		{"security.ima", false},
		{"trusted.overlay.opaque", false},
	} {
		if got := xattrKept(c.name); got != c.want {
			t.Errorf("xattrKept(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSnapshotXattrsRefused: a snapshot into a filesystem that takes no
// user.* xattrs (ramfs here; tmpfs before Linux 6.6, NFSv3, vfat) is made
// without them, and says which it lost.
func TestSnapshotXattrsRefused(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	for _, n := range []string{"a", "b"} {
		f := filepath.Join(src, n)
		writeAt(t, f, "data "+n, 0o644, time.Now())
		if !setXattr(t, f, "user.app", []byte("v")) {
			t.Skip("needs user xattrs on the test's temporary directory")
		}
	}
	mnt := t.TempDir()
	if err := unix.Mount("ramfs", mnt, "ramfs", 0, ""); err != nil {
		t.Skipf("needs ramfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	if err := unix.Lsetxattr(mnt, "user.probe", []byte("1"), 0); err == nil {
		t.Skip("this kernel's ramfs takes user xattrs")
	}
	dst := filepath.Join(mnt, "lower")
	lost := &xattrsLost{}
	since, _, err := preCopyTree(t.Context(), src, dst, lost)
	if err != nil {
		t.Fatalf("preCopyTree into ramfs: %v, want the snapshot made without user.app", err)
	}
	if _, _, err := syncTree(t.Context(), src, dst, since, lost); err != nil {
		t.Fatalf("syncTree into ramfs: %v, want the snapshot made without user.app", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "b")); err != nil || string(b) != "data b" {
		t.Errorf("snapshot of b = %q, %v; want %q", b, err, "data b")
	}
	// Each file once, though both passes copied a and b (their mtime is
	// recent) and refused them user.app.
	if names, first := lost.summary(); names != "user.app (2)" || first == nil {
		t.Errorf("lost.summary() = %q, %v; want %q and the error", names, first, "user.app (2)")
	}
}

// TestSnapshotKeepsSELinuxLabel: a copy's security.selinux, which the
// copy's filesystem gave it and SELinux refuses to remove, stays when the
// source has none.
func TestSnapshotKeepsSELinuxLabel(t *testing.T) {
	needRoot(t)
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "lower")
	// Not copied again by the second pass, only its metadata brought up
	// to date.
	writeAt(t, filepath.Join(src, "f"), "f", 0o644, time.Now().Add(-time.Hour))
	since, _, err := preCopyTree(t.Context(), src, dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	label := []byte("system_u:object_r:var_lib_t:s0")
	if err := unix.Lsetxattr(filepath.Join(dst, "f"), "security.selinux", label, 0); err != nil {
		t.Skipf("cannot set security.selinux here: %v", err)
	}
	if _, _, err := syncTree(t.Context(), src, dst, since, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := getXattr(filepath.Join(dst, "f"), "security.selinux"); err != nil || !bytes.Equal(v, label) {
		t.Errorf("security.selinux of the copy = %q, %v; want %q kept", v, err, label)
	}
}
