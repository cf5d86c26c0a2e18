package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mtimeSlack widens the window of files the second pass copies whatever
// their size and mtime: a write in the same tick as the pre-copy's stat
// can leave both unchanged, and file times come from a coarse clock.
const mtimeSlack = 2 * time.Second

// treeSync copies directory src into dst the way rsync does: what is
// missing or differs in dst is copied, what is gone from src is removed.
// Every entry keeps its owner, mode and extended attributes (see
// xattrKept), and regular files their mtime, so that a later pass can tell
// them apart by size and mtime. Sockets, fifos and devices are not state
// and are skipped.
//
// A state directory is snapshotted in two passes: a pre-copy while its
// owner runs (live), then, with the owner frozen, a pass that brings dst
// up to date (since set to the pre-copy's start), so the time frozen is
// that of what changed, not of the whole directory.
type treeSync struct {
	// ctx ends the walk early: the snapshot is not wanted any more.
	ctx      context.Context
	src, dst string
	// since, when set, makes files modified at or after since-mtimeSlack
	// copied even when their size, mtime and mode match.
	since time.Time
	// live: src changes under the walk; entries that vanish are skipped
	// (the next pass catches up).
	live bool

	// lost collects the extended attributes dst could not take.
	lost *xattrsLost

	// copied counts the regular files copied.
	copied int
	// reflinked is whether every file copied shares blocks with its source.
	reflinked bool
}

// preCopyTree copies directory src to dst (which must not exist) while
// src may change, and returns when it started, for syncTree. It stops with
// ctx's error once ctx ends. The extended attributes dst cannot take are
// added to lost (which may be nil).
func preCopyTree(ctx context.Context, src, dst string, lost *xattrsLost) (started time.Time, reflinked bool, err error) {
	started = time.Now()
	ts := &treeSync{ctx: ctx, src: src, dst: dst, live: true, lost: lost}
	err = ts.run()
	return started, ts.reflinked, err
}

// syncTree brings dst, a pre-copy of src started at since, up to date with
// src, which must not change meanwhile. It returns how many files it
// copied and whether those all were reflinked, or ctx's error once ctx
// ends. The extended attributes dst cannot take are added to lost.
func syncTree(ctx context.Context, src, dst string, since time.Time, lost *xattrsLost) (copied int, reflinked bool, err error) {
	ts := &treeSync{ctx: ctx, src: src, dst: dst, since: since, lost: lost}
	err = ts.run()
	return ts.copied, ts.reflinked, err
}

func (ts *treeSync) run() error {
	ts.reflinked = true
	if err := ts.prune(); err != nil {
		return err
	}
	return filepath.WalkDir(ts.src, ts.visit)
}

// vanished reports whether err is a source entry gone under a live walk.
func (ts *treeSync) vanished(err error) bool {
	return ts.live && errors.Is(err, fs.ErrNotExist)
}

// prune removes from dst what src no longer has, or has as another type.
func (ts *treeSync) prune() error {
	if _, err := os.Lstat(ts.dst); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return filepath.WalkDir(ts.dst, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(ts.dst, path)
		si, err := os.Lstat(filepath.Join(ts.src, rel))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil && si.Mode().Type() == d.Type() && (d.IsDir() || d.Type() == fs.ModeSymlink || d.Type().IsRegular()) {
			return nil
		}
		if rel == "." {
			return &fs.PathError{Op: "snapshot", Path: ts.src, Err: unix.ENOTDIR}
		}
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		if d.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
}

func (ts *treeSync) visit(path string, d fs.DirEntry, err error) error {
	if cerr := ts.ctx.Err(); cerr != nil {
		return cerr
	}
	if err != nil {
		if ts.vanished(err) {
			return nil
		}
		return err
	}
	rel, _ := filepath.Rel(ts.src, path)
	to := filepath.Join(ts.dst, rel)
	info, err := d.Info()
	if err != nil {
		if ts.vanished(err) {
			return nil
		}
		return err
	}
	di, derr := os.Lstat(to)
	if derr != nil && !errors.Is(derr, fs.ErrNotExist) {
		return derr
	}
	have := derr == nil
	if have && di.Mode().Type() != info.Mode().Type() {
		// Changed type since prune (live walk): start that entry again.
		if err := os.RemoveAll(to); err != nil {
			return err
		}
		have = false
	}
	switch {
	case d.IsDir():
		if !have {
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
			return ts.meta(path, to, info, nil)
		}
		return ts.meta(path, to, info, di)
	case info.Mode()&fs.ModeSymlink != 0:
		l, err := os.Readlink(path)
		if err != nil {
			if ts.vanished(err) {
				return nil
			}
			return err
		}
		if have {
			if cur, err := os.Readlink(to); err == nil && cur == l {
				return ts.meta(path, to, info, di)
			}
			if err := os.Remove(to); err != nil {
				return err
			}
		}
		if err := os.Symlink(l, to); err != nil {
			return err
		}
		return ts.meta(path, to, info, nil)
	case info.Mode().IsRegular():
		if have && !ts.stale(info, di) {
			return ts.meta(path, to, info, di)
		}
		if have {
			if err := os.Remove(to); err != nil {
				return err
			}
		}
		ok, err := copyFile(path, to)
		if err == nil {
			err = ts.meta(path, to, info, nil) // after the data: a write drops security.capability
		}
		if err != nil {
			if ts.vanished(err) {
				_ = os.Remove(to)
				return nil
			}
			return err
		}
		// The mtime seen before the copy: a write during it shows as a
		// newer mtime to the next pass.
		if err := os.Chtimes(to, time.Time{}, info.ModTime()); err != nil {
			return err
		}
		ts.copied++
		ts.reflinked = ts.reflinked && ok
	}
	return nil
}

// meta gives dst, the copy of src (whose Lstat is info), src's owner, mode
// and xattrs; to a copy made before (whose Lstat is have), only where they
// may differ: its owner or mode does, or src's ctime is recent (since),
// which an xattr's change moves. A service that drops privileges
// (PostgreSQL, or a command run by runuser) can then use its snapshot as
// its original does: the overlay's copy-up checks the lower file's owner
// and mode.
func (ts *treeSync) meta(src, dst string, info, have fs.FileInfo) error {
	if have != nil && !ts.metaStale(info, have) {
		return nil
	}
	if err := copyMeta(src, dst, info, ts.lost); err != nil && !ts.vanished(err) {
		return err // (one that vanished is pruned by the next pass)
	}
	return nil
}

func (ts *treeSync) metaStale(src, dst fs.FileInfo) bool {
	ss, ds := src.Sys().(*syscall.Stat_t), dst.Sys().(*syscall.Stat_t)
	switch {
	case ss.Uid != ds.Uid, ss.Gid != ds.Gid:
		return true
	case src.Mode()&fs.ModeSymlink == 0 && modeBits(src) != modeBits(dst):
		return true
	case !ts.since.IsZero() && !time.Unix(ss.Ctim.Unix()).Before(ts.since.Add(-mtimeSlack)):
		return true
	}
	return false
}

// modeBits are the mode bits a copy keeps: permissions, setuid, setgid
// and sticky.
func modeBits(info fs.FileInfo) fs.FileMode {
	return info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// copyMeta gives dst the owner, mode (not the umask's) and xattrs of src,
// whose Lstat is info, in that order: a chown drops setuid, setgid and
// security.capability. The xattrs dst cannot take are added to lost.
func copyMeta(src, dst string, info fs.FileInfo, lost *xattrsLost) error {
	st := info.Sys().(*syscall.Stat_t)
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink == 0 {
		if err := os.Chmod(dst, modeBits(info)); err != nil {
			return err
		}
	}
	return copyXattrs(src, dst, lost)
}

// xattrKept reports whether a snapshot keeps extended attribute name: the
// applications' own (user.*), file capabilities, SELinux labels and POSIX
// ACLs. Of security.*, only those: security.evm and security.ima are the
// kernel's integrity measurements, which it refuses to take from user
// space or checks against policy. trusted.* is not kept: where the state
// directory is itself on an overlay, its trusted.overlay.* are that
// overlay's, and in the clone's lower layer they would change how the
// clone's overlay reads it.
func xattrKept(name string) bool {
	switch name {
	case "security.capability", "security.selinux", "system.posix_acl_access", "system.posix_acl_default":
		return true
	}
	return strings.HasPrefix(name, "user.")
}

// xattrsLost collects the extended attributes a snapshot could not give
// its copies, so that a clone logs them once rather than once per file:
// the platform's state directory may be on a filesystem that takes none
// or no user.* (ramfs, tmpfs before Linux 6.6, NFSv3, vfat), or an LSM
// may refuse one. The copy is made without them: a clone of an
// application that needs them may fail, which the log then explains.
type xattrsLost struct {
	// files holds, by attribute name, the copies that lack it, each
	// once: a snapshot's passes refuse a file the same attribute again
	// each time they copy it or bring its metadata up to date.
	files map[string]map[string]bool
	first error
}

// add records that copy dst could not take (or drop) attribute name, err
// saying why.
func (l *xattrsLost) add(name, dst string, err error) {
	if l == nil {
		return
	}
	if l.files == nil {
		l.files, l.first = map[string]map[string]bool{}, err
	}
	if l.files[name] == nil {
		l.files[name] = map[string]bool{}
	}
	l.files[name][dst] = true
}

// summary lists the attributes lost, each with how many copies lack it,
// and the first refusal; "" when none was.
func (l *xattrsLost) summary() (names string, first error) {
	var ns []string
	for n, files := range l.files {
		ns = append(ns, fmt.Sprintf("%s (%d)", n, len(files)))
	}
	slices.Sort(ns)
	return strings.Join(ns, ", "), l.first
}

// copyXattrs makes dst's kept extended attributes those of src, as far as
// dst takes them: what it refuses to set or to remove is added to lost.
// security.selinux is never removed (SELinux refuses to), only replaced.
// A source filesystem without xattrs has none to copy.
func copyXattrs(src, dst string, lost *xattrsLost) error {
	names, err := listXattrs(src)
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "listxattr", Path: src, Err: err}
	}
	for _, n := range names {
		v, err := getXattr(src, n)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since listed
		}
		if err != nil {
			return &fs.PathError{Op: "getxattr " + n, Path: src, Err: err}
		}
		if err := unix.Lsetxattr(dst, n, v, 0); err != nil {
			lost.add(n, dst, &fs.PathError{Op: "setxattr " + n, Path: dst, Err: err})
		}
	}
	old, err := listXattrs(dst)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		return &fs.PathError{Op: "listxattr", Path: dst, Err: err}
	}
	for _, n := range old {
		if slices.Contains(names, n) || n == "security.selinux" {
			continue
		}
		if err := unix.Lremovexattr(dst, n); err != nil && !errors.Is(err, unix.ENODATA) {
			lost.add(n, dst, &fs.PathError{Op: "removexattr " + n, Path: dst, Err: err})
		}
	}
	return nil
}

// listXattrs lists the kept extended attributes of path (not followed).
func listXattrs(path string) ([]string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if xattrKept(name) {
				out = append(out, name)
			}
		}
		return out, nil
	}
}

// getXattr reads extended attribute name of path (not followed).
func getXattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// stale reports whether regular file dst, a copy of src, must be copied
// again.
func (ts *treeSync) stale(src, dst fs.FileInfo) bool {
	switch {
	case src.Size() != dst.Size(), !src.ModTime().Equal(dst.ModTime()):
		return true
	case !ts.since.IsZero() && !src.ModTime().Before(ts.since.Add(-mtimeSlack)):
		return true
	}
	return false
}

// copyFile copies regular file src to dst (which must not exist), sharing
// blocks (FICLONE) where the filesystem can. dst is left 0600: copyMeta
// gives it src's owner and mode.
func copyFile(src, dst string) (reflinked bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return true, nil
	}
	_, err = io.Copy(out, in) // copy_file_range where the kernel has it
	return false, err
}
