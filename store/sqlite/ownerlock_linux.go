//go:build linux

package sqlite

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Owner locks tell whether the owner of a study is alive where its pid
// cannot: from another PID namespace of the same kernel (a daemon's
// container restarted with the same name, and a new PID namespace, after
// its daemon died). A process takes its lock, an flock on a file named
// after its Owner in ownerLockDir, before it stores a study it owns, and
// holds it until it exits; the kernel drops the lock of a process that
// exits, whatever its namespace. A lock file that can be locked thus names
// an owner that is gone. Where there is no lock file, nothing is told.

// holders are the lock files this process holds, by path, kept open (and
// so locked) until it exits: a second flock from this process, through
// another open file, would conflict with the first.
var holders struct {
	mu    sync.Mutex
	files map[string]*os.File
}

// ownerLockPath is owner's lock file in dir.
func ownerLockPath(dir, owner string) string {
	sum := sha256.Sum256([]byte(owner))
	return filepath.Join(dir, hex.EncodeToString(sum[:16])+".lock")
}

// holdOwnerLock takes owner's lock (owner is this process) in dir, for the
// rest of this process's life; once taken, it does nothing.
func holdOwnerLock(dir, owner string) error {
	p := ownerLockPath(dir, owner)
	holders.mu.Lock()
	defer holders.mu.Unlock()
	if _, ok := holders.files[p]; ok {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The file is locked before it takes its name, so no one finds it
	// unlocked while this process lives.
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		_, err = f.WriteString(owner + "\n") // for people, and the sweep
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if holders.files == nil {
		holders.files = map[string]*os.File{}
	}
	holders.files[p] = f
	return nil
}

// ownerLockFree reports whether owner's lock file is in dir and unlocked:
// its process has exited. known is false when there is no lock file, or it
// cannot be tried.
func ownerLockFree(dir, owner string) (free, known bool) {
	if dir == "" {
		return false, false
	}
	f, err := os.Open(ownerLockPath(dir, owner))
	if err != nil {
		return false, false
	}
	defer f.Close()
	switch err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		return true, true // closing f unlocks it
	case errors.Is(err, syscall.EWOULDBLOCK):
		return false, true
	default:
		return false, false
	}
}

// staleTemp is how old a temporary lock file left in dir (its process died
// while making it) must be for sweepOwnerLocks to remove it.
const staleTemp = time.Hour

// sweepOwnerLocks removes the lock files in dir of owners that have exited
// and left nothing open: files it can lock, of owners of this boot or of
// this host, for which settled, asked while the file is locked, reports
// that the store holds no pending or running study of theirs any more.
// The file of an owner that died after a recovery judged it alive is kept
// (its studies are still running, and only the file can tell a recovery
// in another PID namespace that the owner is gone), as are another host's
// (its locks may not be this kernel's to judge) and files it cannot read.
func sweepOwnerLocks(dir string, settled func(owner string) bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	boot, ok := bootID()
	if !ok {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
				removeIfFree(p, func() bool { return true })
			}
			continue
		}
		if !strings.HasSuffix(e.Name(), ".lock") {
			continue
		}
		// This boot's owners, and this host's of earlier boots.
		if owner, o, ok := lockOwner(p); ok && (o.boot == boot || o.host == hostname()) {
			removeIfFree(p, func() bool { return settled(owner) })
		}
	}
}

// lockOwner reads the owner a lock file names, as written and parsed.
func lockOwner(path string) (string, procOwner, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", procOwner{}, false
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return "", procOwner{}, false
	}
	owner := strings.TrimSuffix(line, "\n")
	o, ok := parseOwner(owner)
	return owner, o, ok
}

// removeIfFree removes the file at path when it can lock it (no process
// holds it) and then ok reports true: the owner is gone, so what ok finds
// cannot change any more.
func removeIfFree(path string, ok func() bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil && ok() {
		_ = os.Remove(path)
	}
}
