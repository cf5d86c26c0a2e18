package httpproxy

import (
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestServerCloseWaitsForHandlers: a handler still running when the grace
// ends (a clone's call waiting for its match) has returned by the time
// close does, and one that ignores its context holds close for
// handlerWait, not for ever.
func TestServerCloseWaitsForHandlers(t *testing.T) {
	t.Run("cut off", func(t *testing.T) {
		entered := make(chan struct{})
		var returned atomic.Bool
		s := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-r.Context().Done() // the connection is closed
			time.Sleep(50 * time.Millisecond)
			returned.Store(true)
		}))
		go http.Get("http://" + s.ln.Addr().String() + "/")
		waitClosed(t, entered)
		if err := s.close(10 * time.Millisecond); err != nil {
			t.Logf("close: %v (the grace ended with a request in progress)", err)
		}
		if !returned.Load() {
			t.Fatal("close returned while a handler cut off at the grace's end still ran")
		}
	})
	t.Run("stuck", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		defer close(release)
		s := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-release // ignores its context
		}))
		s.handlerWait = 100 * time.Millisecond
		go http.Get("http://" + s.ln.Addr().String() + "/")
		waitClosed(t, entered)
		done := make(chan struct{})
		go func() { s.close(10 * time.Millisecond); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("close waited for a stuck handler past its bound")
		}
	})
}

func serveTest(t *testing.T, h http.Handler) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := serveOn(ln, h, discardLogger)
	t.Cleanup(func() { s.close(0) })
	return s
}

func waitClosed(t *testing.T, c chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach its handler")
	}
}
