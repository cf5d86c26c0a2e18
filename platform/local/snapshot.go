package local

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// mtimeSlack widens the window of files the second pass copies whatever
// their size and mtime: a write in the same tick as the pre-copy's stat
// can leave both unchanged, and file times come from a coarse clock.
const mtimeSlack = 2 * time.Second

// treeSync copies directory src into dst the way rsync does: what is
// missing or differs in dst is copied, what is gone from src is removed.
// Regular files keep their mode and mtime, so a later pass can tell them
// apart by size, mtime and mode. Sockets, fifos and devices are not state
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

	// copied counts the regular files copied.
	copied int
	// reflinked is whether every file copied shares blocks with its source.
	reflinked bool
}

// preCopyTree copies directory src to dst (which must not exist) while
// src may change, and returns when it started, for syncTree. It stops with
// ctx's error once ctx ends.
func preCopyTree(ctx context.Context, src, dst string) (started time.Time, reflinked bool, err error) {
	started = time.Now()
	ts := &treeSync{ctx: ctx, src: src, dst: dst, live: true}
	err = ts.run()
	return started, ts.reflinked, err
}

// syncTree brings dst, a pre-copy of src started at since, up to date with
// src, which must not change meanwhile. It returns how many files it
// copied and whether those all were reflinked, or ctx's error once ctx
// ends.
func syncTree(ctx context.Context, src, dst string, since time.Time) (copied int, reflinked bool, err error) {
	ts := &treeSync{ctx: ctx, src: src, dst: dst, since: since}
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
	perm := info.Mode().Perm()
	switch {
	case d.IsDir():
		if !have {
			if err := os.Mkdir(to, perm); err != nil {
				return err
			}
			return os.Chmod(to, perm) // not the umask's
		}
		if di.Mode().Perm() != perm {
			return os.Chmod(to, perm)
		}
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
				return nil
			}
			if err := os.Remove(to); err != nil {
				return err
			}
		}
		return os.Symlink(l, to)
	case info.Mode().IsRegular():
		if have && !ts.stale(info, di) {
			if di.Mode().Perm() != perm {
				return os.Chmod(to, perm)
			}
			return nil
		}
		if have {
			if err := os.Remove(to); err != nil {
				return err
			}
		}
		ok, err := copyFile(path, to, perm)
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

// copyFile copies regular file src to dst (which must not exist) with
// permissions perm, sharing blocks (FICLONE) where the filesystem can.
func copyFile(src, dst string, perm fs.FileMode) (reflinked bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return false, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	if err := out.Chmod(perm); err != nil { // not the umask's
		return false, err
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return true, nil
	}
	_, err = io.Copy(out, in) // copy_file_range where the kernel has it
	return false, err
}
