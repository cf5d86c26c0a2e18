package httpproxy

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
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

// TestOutProxyLivesUntilClose checks that the proxy has one lifetime,
// Start to Close: once Start's context has ended, the on-line listener
// still forwards and records, the clone listener still answers, and the
// record's sweep still empties an idle record; Close then ends the sweep
// before it returns.
func TestOutProxyLivesUntilClose(t *testing.T) {
	nt := newNextTier(t, 0)
	const window = 200 * time.Millisecond
	p, err := NewOutProxy(OutConfig{Upstream: nt.URL, Window: window})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	on, cl, err := p.Start(ctx, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	c := testClient()
	for range 3 {
		if a := do(t, c, "GET", "http://"+on.String()+"/counter", ""); a.status != http.StatusOK {
			t.Fatalf("on-line GET after Start's context ended = %d, want 200", a.status)
		}
	}
	waitFor(t, 5*time.Second, "3 exchanges recorded", func() bool { return p.Stats().Recorded == 3 })
	if a := do(t, c, "GET", "http://"+cl.String()+"/counter", ""); a.status != http.StatusOK {
		t.Fatalf("clone's GET after Start's context ended = %d %q, want 200 from the record", a.status, a.body)
	}
	held := func() (int, int64) { // without evicting, as Stats would
		p.rec.mu.Lock()
		defer p.rec.mu.Unlock()
		return len(p.rec.order) - p.rec.head, p.rec.bytes
	}
	waitFor(t, 20*window, "the idle record emptied by the sweep after Start's context ended",
		func() bool { n, b := held(); return n == 0 && b == 0 })
	if err := p.Close(); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}
	select {
	case <-p.sweepDone:
	default:
		t.Fatal("the sweep still runs after Close returned, want it ended")
	}
}

// proxyFrames are the functions the goroutines that a proxy's Start
// launches run: the forwarder's (on-line listeners), an http.Server's on a
// clone listener, the out-proxy's sweep and its recording of exchanges.
var proxyFrames = []string{
	"httpproxy.(*fwdServer).", "httpproxy.(*fwdConn).", "httpproxy.serveOn.",
	"httpproxy.(*OutProxy).sweep(", "httpproxy.(*OutProxy).commit.",
}

// proxyGoroutines returns the stacks of the goroutines running one of
// proxyFrames.
func proxyGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range proxyFrames {
			if strings.Contains(g, f) {
				found = append(found, g)
				break
			}
		}
	}
	return found
}

// TestProxiesCloseLeaveNoGoroutine checks that no goroutine a proxy's
// Start launched is left once Close has returned, after traffic on every
// face of the proxy and with Start's context still live, for either of two
// Close calls made at once: the later one waits for the first.
func TestProxiesCloseLeaveNoGoroutine(t *testing.T) {
	// What earlier tests closed may take a moment to end: wait for none,
	// so that what is left after Close is this test's.
	deadline := time.Now().Add(10 * time.Second)
	for gs := proxyGoroutines(); len(gs) > 0; gs = proxyGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("%d proxy goroutines before the test started, want none:\n%s", len(gs), strings.Join(gs, "\n\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	nt := newNextTier(t, 0)
	c := testClient()
	defer c.CloseIdleConnections()
	check := func(what string, close func() error) {
		t.Helper()
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if err := close(); err != nil {
					t.Errorf("%s: Close() = %v, want nil", what, err)
				}
				if gs := proxyGoroutines(); len(gs) > 0 {
					t.Errorf("%s: %d goroutines left after a Close returned, want none:\n%s", what, len(gs), strings.Join(gs, "\n\n"))
				}
			})
		}
		wg.Wait()
	}

	out, err := NewOutProxy(OutConfig{Upstream: nt.URL, Window: time.Minute, MatchWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	on, cl, err := out.Start(context.Background(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		do(t, c, "GET", "http://"+on.String()+"/counter", "")
	}
	do(t, c, "GET", "http://"+cl.String()+"/counter", "")
	check("out-proxy", out.Close)

	in, err := NewInProxy(InConfig{Online: nt.URL})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := in.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		do(t, c, "GET", "http://"+addr.String()+"/counter", "")
	}
	check("in-proxy", in.Close)
}
