//go:build !unix

package sqlite

// processStatus cannot tell on this platform; RecoverInterrupted then only
// recovers studies without an owner.
func processStatus(pid int) procStatus { return procStatus{} }
