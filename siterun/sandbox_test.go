package siterun

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

// TestClaimSandbox checks that a sandbox host serves one study or check at
// a time: a second claim waits for the first's release (or its context),
// and other sandbox hosts are not held up.
func TestClaimSandbox(t *testing.T) {
	s := &Site{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	release, err := s.claimSandbox(ctx, "sb0")
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.claimSandbox(ctx, "sb1")
	if err != nil {
		t.Fatalf("another sandbox host: %v", err)
	}
	other()

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.claimSandbox(short, "sb0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second claim of a busy sandbox = %v, want it to wait until its deadline", err)
	}

	got := make(chan error, 1)
	go func() {
		r, err := s.claimSandbox(ctx, "sb0")
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second claim returned %v while the first holds the sandbox", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	release() // a second release does nothing
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting claim did not get the sandbox after its release")
	}
}
