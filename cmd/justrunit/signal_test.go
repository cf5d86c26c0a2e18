package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInterrupted checks that the first SIGINT cancels the command and says
// how to quit at once, and which command then removes what is left: the
// one the running command named, else one for either platform.
func TestInterrupted(t *testing.T) {
	t.Cleanup(func() { setCleanupHint("") })
	for _, tt := range []struct {
		hint string
		want []string
	}{
		{"", []string{`"justrunit platform gc --all"`, `"justrunit platform gc --platform qemu"`}},
		{"justrunit --data-dir /srv/jr platform gc --platform qemu", []string{`then "justrunit --data-dir /srv/jr platform gc --platform qemu" removes what is left`}},
	} {
		setCleanupHint(tt.hint)
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
		out := w.String()
		if !strings.Contains(out, "stopping and cleaning up") || !strings.Contains(out, "the same signal again quits at once") {
			t.Errorf("said %q, want what happens and how to quit at once", out)
		}
		for _, want := range tt.want {
			if !strings.Contains(out, want) {
				t.Errorf("with hint %q said %q, want %q", tt.hint, out, want)
			}
		}
	}
}
