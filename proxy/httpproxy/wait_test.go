package httpproxy

import (
	"context"
	"fmt"
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
			e, _ := ep.wait(ctx, r, key, 10*time.Second)
			first <- e
		}()
		waitFor(t, 5*time.Second, "the first call waiting", func() bool { return consumers() == round+1 })
		r.Add(ex(key, time.Now(), "first"))
		// A call that does not wait, as a clone's call first tries.
		if e, ok := ep.wait(ctx, r, key, -1); ok {
			t.Fatalf("round %d: a later call took %q, the exchange the first call waited for", round, e.Body)
		}
		second := make(chan *Exchange, 1)
		go func() {
			e, _ := ep.wait(ctx, r, key, 10*time.Second)
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
