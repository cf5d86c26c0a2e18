package httpproxy

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// TestOutProxyEvictsWhenIdle checks that the record lets go of the
// exchanges that left the window with no traffic at all: no on-line call,
// no clone's call, no statistics read.
func TestOutProxyEvictsWhenIdle(t *testing.T) {
	nt := newNextTier(t, 0)
	const window = 200 * time.Millisecond
	p, online, _ := startOut(t, OutConfig{Upstream: nt.URL, Window: window})
	c := testClient()
	for range 3 {
		do(t, c, "GET", online+"/counter", "")
	}
	waitFor(t, 5*time.Second, "3 exchanges recorded", func() bool { return p.Stats().Recorded == 3 })
	held := func() (int, int64) { // without evicting, as Stats would
		p.rec.mu.Lock()
		defer p.rec.mu.Unlock()
		return len(p.rec.order) - p.rec.head, p.rec.bytes
	}
	if n, _ := held(); n != 3 {
		t.Fatalf("the record holds %d exchanges, want the 3 recorded", n)
	}
	waitFor(t, 20*window, "the idle record emptied", func() bool { n, b := held(); return n == 0 && b == 0 })
}

// TestRecordShrinksKeyMap checks that the memory a burst of unique keys
// took is given back once they have left the record: a Go map does not
// shrink as its keys are deleted, so the record rebuilds its maps when
// they are well below their peak.
func TestRecordShrinksKeyMap(t *testing.T) {
	const n = 50_000
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := int64(ms.HeapAlloc)
	r := NewRecord(time.Minute, 1<<30)
	start := time.Now()
	for i := range n {
		e := ex(fmt.Sprint("GET /items/", i), start, "")
		e.Route = fmt.Sprint("GET /items/", i, "?x")
		r.Add(e)
	}
	if st := r.Stats(); st.Entries != n {
		t.Fatalf("Stats() = %+v, want the %d exchanges of the burst", st, n)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	full := int64(ms.HeapAlloc) - before
	later := start.Add(2 * time.Minute) // the burst has left the window
	r.sweep(later)
	r.mu.Lock()
	entries := len(r.order) - r.head
	r.mu.Unlock()
	if entries != 0 {
		t.Fatalf("%d exchanges left after the sweep, want the burst evicted", entries)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	left := int64(ms.HeapAlloc) - before
	t.Logf("heap held: %d bytes with %d keys, %d after they left", full, n, left)
	if left > full/20 {
		t.Errorf("the record holds %d bytes of heap after %d keys left it (%d with them), want less than a twentieth", left, n, full)
	}
	runtime.KeepAlive(r)
}

// TestOutProxySweepEndsWithContext checks that the record's sweep ends
// when the context given to Start ends, not only on Close: a proxy
// dropped without Close does not keep its goroutine for good.
func TestOutProxySweepEndsWithContext(t *testing.T) {
	nt := newNextTier(t, 0)
	p, err := NewOutProxy(OutConfig{Upstream: nt.URL, Window: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, _, err := p.Start(ctx, "127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan struct{})
	go func() { p.swept.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sweep still runs 5s after Start's context ended, want it ended with the context")
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close after Start's context ended = %v, want nil", err)
	}
}
