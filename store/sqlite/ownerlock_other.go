//go:build !linux

package sqlite

// Owner locks are Linux's only, as PID namespaces are: elsewhere no process
// takes one and none tells anything.

func holdOwnerLock(dir, owner string) error { return nil }

func ownerLockFree(dir, owner string) (free, known bool) { return false, false }

func sweepOwnerLocks(dir string, settled func(owner string) bool) {}
