package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInterrupted checks that the first SIGINT cancels the command and says
// how to quit at once.
func TestInterrupted(t *testing.T) {
	done := make(chan struct{})
	var w lockedBuffer
	interrupted(func() { close(done) }, &w)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGINT did not cancel the command")
	}
	if out := w.String(); !strings.Contains(out, "stopping and cleaning up") || !strings.Contains(out, "platform gc") {
		t.Errorf("said %q, want what happens and how to quit at once", out)
	}
}
