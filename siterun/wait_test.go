package siterun

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestWaitListeningCancelled checks that a wait for an instance ended by
// its context says so, rather than reading as a readiness timeout.
func TestWaitListeningCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := waitListening(ctx, addr, 10*time.Second); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "after") {
		t.Errorf("waitListening cancelled = %v, want context.Canceled and no timeout", err)
	}
	if err := waitListening(context.Background(), addr, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "not listening on "+addr) || errors.Is(err, context.Canceled) {
		t.Errorf("waitListening timed out = %v, want not listening on %s", err, addr)
	}
}
