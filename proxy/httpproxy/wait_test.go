package httpproxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// waitingCalls counts the calls waiting in r for an exchange.
func waitingCalls(r *Record) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ws := range r.waiting {
		n += len(ws)
	}
	return n
}

// TestOutProxyWaitFIFO checks that a clone's calls that come before the
// on-line calls they match, and wait for them, are answered in the order
// they came: the first with the first on-line answer, and so on.
func TestOutProxyWaitFIFO(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: 10 * time.Second})
	c := testClient()
	const n = 4
	got := make([]chan answer, n)
	for i := range n {
		got[i] = make(chan answer, 1)
		go func() {
			resp, err := c.Get(clone + "/counter")
			if err != nil {
				got[i] <- answer{}
				return
			}
			got[i] <- answer{status: resp.StatusCode, body: string(mustRead(resp.Body))}
		}()
		waitFor(t, 5*time.Second, fmt.Sprintf("clone call %d waiting", i), func() bool { return waitingCalls(p.rec) == i+1 })
	}
	for i := range n {
		on := do(t, c, "GET", online+"/counter", "")
		if a := <-got[i]; a.status != 200 || a.body != on.body {
			t.Errorf("clone call %d = %d %q, want the on-line answer %d %q", i, a.status, a.body, i, on.body)
		}
	}
	if rs, err := p.ReplayStats(DefaultCloneName, false); err != nil || rs.Matched != n || rs.Waited != n {
		t.Errorf("ReplayStats = %+v, %v; want %d matched after waiting", rs, err, n)
	}
}

// TestCloneEndpointWaitFIFO checks that a clone's calls that wait for the
// same key are served first come first served: a call that comes after
// the exchange an earlier call waited for was recorded, before that call
// took it, does not take it; it waits behind.
func TestCloneEndpointWaitFIFO(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	ctx := context.Background()
	consumers := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.consumers)
	}
	for round := range 20 { // the race the old code lost is won by chance now and then
		ep := &cloneEndpoint{name: "a", consumer: fmt.Sprint("a#", round), stopping: make(chan struct{})}
		key := fmt.Sprint("k", round)
		first := make(chan *Exchange, 1)
		go func() {
			e, _, _ := ep.wait(ctx, r, key, 10*time.Second)
			first <- e
		}()
		waitFor(t, 5*time.Second, "the first call waiting", func() bool { return consumers() == round+1 })
		r.Add(ex(key, time.Now(), "first"))
		// A call that does not wait, as a clone's call first tries.
		if e, ok, _ := ep.wait(ctx, r, key, -1); ok {
			t.Fatalf("round %d: a later call took %q, the exchange the first call waited for", round, e.Body)
		}
		second := make(chan *Exchange, 1)
		go func() {
			e, _, _ := ep.wait(ctx, r, key, 10*time.Second)
			second <- e
		}()
		if e := <-first; e == nil || string(e.Body) != "first" {
			t.Fatalf("round %d: the first call got %v, want the exchange it waited for", round, e)
		}
		r.Add(ex(key, time.Now(), "second"))
		if e := <-second; e == nil || string(e.Body) != "second" {
			t.Fatalf("round %d: the second call got %v, want the next exchange", round, e)
		}
	}
}

// TestOutProxyPutBackOnCancel checks that a clone's call that ends (its
// client went away) while its answer's latency is replayed leaves the
// exchange it took where it was, so that the call's retry gets it, and
// counts nothing for it.
func TestOutProxyPutBackOnCancel(t *testing.T) {
	nt := newNextTier(t, 300*time.Millisecond)
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1})
	c := testClient()
	first := do(t, c, "GET", online+"/counter", "")
	do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "2 exchanges recorded", func() bool { return p.Stats().Recorded == 2 })
	key := p.cfg.Masks.Key("GET", "/counter", "", nil)
	taken := func() int {
		p.rec.mu.Lock()
		defer p.rec.mu.Unlock()
		n := 0
		if q := p.rec.byKey[key]; q != nil {
			for _, en := range q.entries {
				if en.taken != 0 {
					n++
				}
			}
		}
		return n
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", clone+"/counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			mustRead(resp.Body)
		}
		ended <- err
	}()
	waitFor(t, 5*time.Second, "the clone's call taking its exchange", func() bool { return taken() == 1 })
	cancel() // during the replayed 300 ms
	if err := <-ended; err == nil {
		t.Fatal("the cancelled call got an answer, want none")
	}
	waitFor(t, 5*time.Second, "the exchange put back", func() bool { return taken() == 0 })
	if a := do(t, c, "GET", clone+"/counter", ""); a.status != 200 || a.body != first.body {
		t.Errorf("the retry = %d %q, want the exchange the cancelled call took %q", a.status, a.body, first.body)
	}
	rs, err := p.ReplayStats(DefaultCloneName, false)
	if err != nil || rs.Matched != 1 || rs.Unmatched != 0 {
		t.Errorf("ReplayStats = %+v, %v; want the retry only, matched", rs, err)
	}
	p.mu.Lock()
	ep := p.clones[DefaultCloneName]
	p.mu.Unlock()
	if n := ep.replayed.Snapshot().Count; n != 1 {
		t.Errorf("%d next-tier latencies replayed, want the retry's only", n)
	}
}

// TestOutProxyAbandonedWhileWaiting: a clone's call that ends while it
// waits for its match is neither counted unmatched nor passed through.
func TestOutProxyAbandonedWhileWaiting(t *testing.T) {
	nt := newNextTier(t, 0)
	p, _, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: 10 * time.Second, PassThrough: []string{"GET"}})
	c := testClient()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan struct{})
	for i, method := range []string{"GET", "POST"} {
		req, err := http.NewRequestWithContext(ctx, method, clone+"/counter", nil)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			if resp, err := c.Do(req); err == nil {
				mustRead(resp.Body)
			}
			ended <- struct{}{}
		}()
		waitFor(t, 5*time.Second, fmt.Sprintf("clone call %d waiting", i), func() bool { return waitingCalls(p.rec) == i+1 })
	}
	cancel()
	<-ended
	<-ended
	waitFor(t, 5*time.Second, "the waits ended", func() bool { return waitingCalls(p.rec) == 0 })
	// The handlers may still be finishing: give them the time a
	// count would take to show, by a call that goes all the way.
	time.Sleep(50 * time.Millisecond)
	rs, err := p.ReplayStats(DefaultCloneName, false)
	if err != nil || rs.Unmatched != 0 || rs.PassedThrough != 0 || rs.Matched != 0 || rs.Waited != 0 || rs.WaitMs != 0 {
		t.Errorf("ReplayStats = %+v, %v; want nothing counted for calls that ended while waiting, not even their waits", rs, err)
	}
	if n := nt.n.Load(); n != 0 {
		t.Errorf("the next tier got %d calls, want none", n)
	}
}

// newCloneOut returns an out-proxy that is not listening, the handler of
// its clone "a" and that clone's endpoint: tests call the handler
// directly, with contexts of their own.
func newCloneOut(t *testing.T, cfg OutConfig) (*OutProxy, http.Handler, *cloneEndpoint) {
	t.Helper()
	p, err := NewOutProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	h := p.CloneHandler("a")
	p.mu.Lock()
	ep := p.clones["a"]
	p.mu.Unlock()
	return p, h, ep
}

// takenBy counts the exchanges of key in r that consumer has taken.
func takenBy(r *Record, consumer, key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.consumers[consumer]
	q := r.byKey[key]
	if !ok || q == nil {
		return 0
	}
	n := 0
	for _, en := range q.entries {
		if en.taken&(1<<c) != 0 {
			n++
		}
	}
	return n
}

// TestOutProxyTakenAtOnceByEndedCall: a clone's call that found no match
// at first, then took one at once where it would have waited, and whose
// client had gone away meanwhile, puts the exchange back and counts
// nothing, not even a wait: its retry gets the exchange.
func TestOutProxyTakenAtOnceByEndedCall(t *testing.T) {
	nt := newNextTier(t, 0)
	p, h, ep := newCloneOut(t, OutConfig{Upstream: nt.URL, MatchWait: 10 * time.Second})
	key := p.cfg.Masks.Key("GET", "/counter", "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.afterTake = func(*http.Request) {
		// Between the call's first take and its wait: the on-line call
		// is recorded, and the clone's client goes away.
		p.rec.Add(ex(key, time.Now(), "first"))
		cancel()
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, "GET", "/counter", nil))
	p.afterTake = nil
	if n := takenBy(p.rec, ep.consumer, key); n != 0 {
		t.Fatalf("the ended call left %d exchanges taken, want the one it took put back", n)
	}
	if rs, err := p.ReplayStats("a", false); err != nil || rs.Matched+rs.Unmatched+rs.Waited != 0 || ep.replayed.Snapshot().Count != 0 {
		t.Errorf("ReplayStats = %+v, %v; want nothing counted for the ended call", rs, err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/counter", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "first" {
		t.Errorf("the retry = %d %q, want the exchange the ended call took, \"first\"", rec.Code, rec.Body.String())
	}
	// A call that takes at once where it would have waited did not wait.
	p.afterTake = func(*http.Request) { p.rec.Add(ex(key, time.Now(), "second")) }
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/counter", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "second" {
		t.Errorf("the next call = %d %q, want the exchange recorded after its first take, \"second\"", rec.Code, rec.Body.String())
	}
	if rs, err := p.ReplayStats("a", false); err != nil || rs.Matched != 2 || rs.Waited != 0 {
		t.Errorf("ReplayStats = %+v, %v; want 2 matched, no call counted as waiting", rs, err)
	}
}

// TestOutProxyEndedCallThatNeverWaits: a clone's call that never waits
// for its match (ReuseReads on a read that may pass through, no
// MatchWait, a body over MaxBody) and whose client went away is neither
// counted nor passed through.
func TestOutProxyEndedCallThatNeverWaits(t *testing.T) {
	nt := newNextTier(t, 0)
	for _, tc := range []struct {
		name         string
		cfg          OutConfig
		method, body string
	}{
		{"reused read", OutConfig{ReuseReads: true, MatchWait: 10 * time.Second}, "GET", ""},
		{"no wait", OutConfig{MatchWait: -1}, "GET", ""},
		{"over max body", OutConfig{MaxBody: 10, MatchWait: 10 * time.Second}, "GET", strings.Repeat("x", 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Upstream, tc.cfg.PassThrough = nt.URL, []string{"GET"}
			p, h, _ := newCloneOut(t, tc.cfg)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			start := time.Now()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, tc.method, "/counter", strings.NewReader(tc.body)))
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the ended call took %v, want it over at once", took)
			}
			rs, err := p.ReplayStats("a", false)
			if err != nil || rs.Matched+rs.Unmatched+rs.PassedThrough+rs.Waited != 0 {
				t.Errorf("ReplayStats = %+v, %v; want nothing counted for the ended call", rs, err)
			}
			if n := nt.count(); n != 0 {
				t.Errorf("the next tier got %d calls, want none", n)
			}
		})
	}
}

// TestCloneEndpointWaitAttach: a clone's call waiting for its match when
// the clone is attached is not handed an on-line exchange that started
// before the attach (it is not the clone's), but the next one.
func TestCloneEndpointWaitAttach(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	made := time.Now().Add(-time.Second)
	ep := &cloneEndpoint{name: "a", consumer: "a#1", stopping: make(chan struct{})}
	ep.since.Store(made.UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *Exchange, 1)
	go func() {
		e, _, _ := ep.wait(ctx, r, "k", 10*time.Second)
		got <- e
	}()
	waitFor(t, 5*time.Second, "the call waiting", func() bool { return waitingCalls(r) == 1 })
	attached := time.Now()
	ep.attach(attached)
	ep.attach(made) // never back
	if s := ep.sinceTime(); !s.Equal(time.Unix(0, attached.UnixNano())) {
		t.Errorf("since = %v after an attach at %v and one earlier, want the later", s, attached)
	}
	r.Add(ex("k", made.Add(500*time.Millisecond), "before")) // started before the attach, ended after
	r.Add(ex("k", time.Now(), "after"))
	select {
	case e := <-got:
		if e == nil || string(e.Body) != "after" {
			t.Errorf("the waiting call got %v, want the exchange that started after the attach", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting call got nothing")
	}
}

// TestOutProxyEndedCallOnStoppedClone: a call on a stopped clone whose
// client went away is neither counted nor passed through, whether the
// clone was stopped before the call or after its first take.
func TestOutProxyEndedCallOnStoppedClone(t *testing.T) {
	nt := newNextTier(t, 0)
	for _, tc := range []struct {
		name string
		// stop stops the clone called "a" before the call, or sets
		// p.afterTake to stop it after; cancel ends the call's client.
		stop func(p *OutProxy, ep *cloneEndpoint, cancel func())
	}{
		{"stopped before", func(p *OutProxy, ep *cloneEndpoint, cancel func()) {
			if err := p.StopClone("a"); err != nil {
				t.Fatal(err)
			}
			cancel()
		}},
		{"stopped after its take", func(p *OutProxy, ep *cloneEndpoint, cancel func()) {
			p.afterTake = func(*http.Request) { ep.stop(); cancel() }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, h, ep := newCloneOut(t, OutConfig{Upstream: nt.URL, PassThrough: []string{"GET"}})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tc.stop(p, ep, cancel)
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, "GET", "/counter", nil))
			if st := p.Stats(); st.Matched+st.Unmatched+st.PassedThrough+st.StoodIn != 0 {
				t.Errorf("Stats() = %+v, want nothing counted for the ended call", st)
			}
			if n := ep.calls[callUnmatched].Load(); n != 0 {
				t.Errorf("the clone counted %d unmatched, want none for the ended call", n)
			}
			if n := nt.count(); n != 0 {
				t.Errorf("the next tier got %d calls, want none", n)
			}
		})
	}
}
