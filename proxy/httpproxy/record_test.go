package httpproxy

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"runtime"
	"testing"
	"time"
)

func ex(key string, start time.Time, body string) *Exchange {
	return &Exchange{Key: key, Start: start, Status: 200, Body: []byte(body)}
}

func TestRecordInOrderPerConsumer(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	now := time.Now()
	for i := range 3 {
		r.Add(ex("k", now.Add(time.Duration(i)*time.Millisecond), fmt.Sprint(i)))
	}
	r.Add(ex("other", now, "x"))
	for _, consumer := range []string{"a", "b"} {
		for i := range 3 {
			e, ok := r.Take(consumer, "k")
			if !ok || string(e.Body) != fmt.Sprint(i) {
				t.Fatalf("Take(%s, k) #%d = %v, %v; want body %d", consumer, i, e, ok, i)
			}
		}
		if e, ok := r.Take(consumer, "k"); ok {
			t.Fatalf("Take(%s, k) after 3 = %s, want none left", consumer, e.Body)
		}
	}
}

func TestRecordLateEarlierExchange(t *testing.T) {
	// An on-line call that started first but ended last is added last; a
	// consumer that already took the later one still gets it next.
	r := NewRecord(time.Minute, 1<<20)
	now := time.Now()
	r.Add(ex("k", now.Add(time.Millisecond), "second"))
	if e, _ := r.Take("a", "k"); string(e.Body) != "second" {
		t.Fatalf("Take = %s, want second", e.Body)
	}
	r.Add(ex("k", now, "first"))
	if e, ok := r.Take("a", "k"); !ok || string(e.Body) != "first" {
		t.Fatalf("Take = %v %v, want first", e, ok)
	}
	if e, ok := r.Take("b", "k"); !ok || string(e.Body) != "first" {
		t.Fatalf("Take(b) = %v %v, want first (start order)", e, ok)
	}
}

func TestRecordBounds(t *testing.T) {
	t.Run("size", func(t *testing.T) {
		r := NewRecord(time.Minute, 10_000)
		body := string(make([]byte, 1000))
		for i := range 100 {
			r.Add(ex(fmt.Sprint("k", i), time.Now(), body))
		}
		st := r.Stats()
		if st.Bytes > st.MaxBytes || st.Entries == 0 || st.Entries > 10 || st.Evicted < 90 {
			t.Fatalf("Stats() = %+v, want bytes ≤ max, 1..10 entries, ≥ 90 evicted", st)
		}
		if _, ok := r.Take("a", "k0"); ok {
			t.Errorf("Take(k0) succeeded, want it evicted")
		}
		if _, ok := r.Take("a", "k99"); !ok {
			t.Errorf("Take(k99) failed, want the newest kept")
		}
		if r.Add(ex("huge", time.Now(), string(make([]byte, 20_000)))) {
			t.Errorf("Add(larger than the record) = true, want false")
		}
	})
	t.Run("window", func(t *testing.T) {
		r := NewRecord(time.Second, 1<<20)
		r.Add(ex("old", time.Now().Add(-2*time.Second), "x"))
		r.Add(ex("new", time.Now(), "y"))
		if _, ok := r.Take("a", "old"); ok {
			t.Errorf("Take(old) succeeded, want it out of the window")
		}
		if st := r.Stats(); st.Entries != 1 || st.Evicted != 1 {
			t.Errorf("Stats() = %+v, want 1 entry, 1 evicted", st)
		}
	})
}

// TestRecordLatestRoute checks that a route's latest exchange is the one
// added last, taken or not, and that the route is gone once its exchanges
// have left the record (by the window or the size bound).
func TestRecordLatestRoute(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	now := time.Now()
	for i, key := range []string{"GET /items/1", "GET /items/2", "GET /users/3"} {
		e := ex(key, now.Add(time.Duration(i)*time.Millisecond), key)
		e.Route = RouteOf("GET", key[len("GET "):], "")
		r.Add(e)
	}
	r.Add(ex("POST /items/2/bids", now, "write")) // no route: never stands in
	r.Take("a", "GET /items/2")
	if e, ok := r.LatestRoute("GET /items/*"); !ok || string(e.Body) != "GET /items/2" {
		t.Errorf("LatestRoute(GET /items/*) = %v, %v; want the exchange of /items/2, taken or not", e, ok)
	}
	if e, ok := r.LatestRoute("POST /items/*/bids"); ok {
		t.Errorf("LatestRoute of a write = %s, want none", e.Body)
	}

	// The size bound evicts the oldest first: the route's latest goes last.
	small := NewRecord(time.Minute, 3*ex("GET /items/1", now, "x").size())
	for i := range 5 {
		e := ex(fmt.Sprintf("GET /items/%d", i), now.Add(time.Duration(i)*time.Millisecond), fmt.Sprint(i))
		e.Route = "GET /items/*"
		small.Add(e)
		if got, ok := small.LatestRoute("GET /items/*"); !ok || string(got.Body) != fmt.Sprint(i) {
			t.Fatalf("after adding %d: LatestRoute = %v, %v; want %d", i, got, ok, i)
		}
	}
	old := NewRecord(time.Millisecond, 1<<20)
	e := ex("GET /items/1", now.Add(-time.Second), "stale")
	e.Route = "GET /items/*"
	old.Add(e)
	if got, ok := old.LatestRoute("GET /items/*"); ok {
		t.Errorf("LatestRoute after the window = %s, want none", got.Body)
	}
}

// TestRecordHintPastEvicted checks that a consumer's place in a key's queue
// moves on past entries evicted before its first take: left below them,
// every take would scan the whole queue under the record's lock.
func TestRecordHintPastEvicted(t *testing.T) {
	r := NewRecord(time.Minute, 1<<30)
	now := time.Now()
	r.Add(ex("k", now.Add(-time.Minute+time.Second), "stale"))
	const n = 100
	for i := range n {
		r.Add(ex("k", now.Add(time.Duration(i)), fmt.Sprint(i)))
	}
	later := now.Add(2 * time.Second) // the first entry has left the window
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range n {
		e, ok := r.takeLocked("c", "k", later, time.Time{})
		if !ok || string(e.Body) != fmt.Sprint(i) {
			t.Fatalf("take #%d = %v, %v; want body %d", i, e, ok, i)
		}
	}
	q := r.byKey["k"]
	if h := q.hint[r.consumers["c"]]; h != q.base+n {
		t.Errorf("hint = %d after %d takes past base %d, want %d", h, n, q.base, q.base+n)
	}
}

// TestRecordSince checks that a take passes over the exchanges that
// started before its since, for good: they are not the consumer's.
func TestRecordSince(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	now := time.Now()
	r.Add(ex("k", now.Add(-30*time.Second), "before"))
	r.Add(ex("k", now.Add(time.Millisecond), "after"))
	if e, ok := r.take("c", "k", now); !ok || string(e.Body) != "after" {
		t.Fatalf("take since now = %v, %v; want the exchange after", e, ok)
	}
	if e, ok := r.take("c", "k", now); ok {
		t.Fatalf("second take = %s, want none: the one before is not the consumer's", e.Body)
	}
	if q := r.byKey["k"]; q.hint[r.consumers["c"]] != q.base+2 {
		t.Errorf("hint = %d, want past both entries (%d)", q.hint[r.consumers["c"]], q.base+2)
	}
	if e, ok := r.Take("d", "k"); !ok || string(e.Body) != "before" {
		t.Errorf("Take with no since = %v, %v; want the oldest in the window", e, ok)
	}
}

// TestRecordMemory checks the record's estimate of its memory against the
// heap it holds, for small exchanges (where the structs and maps around a
// body weigh most) and larger ones, past its bound.
func TestRecordMemory(t *testing.T) {
	for _, tc := range []struct {
		name             string
		keys, body, hdrs int
	}{
		{"small, unique keys", 0, 40, 2},
		{"small, 100 keys", 100, 40, 2},
		{"no header", 0, 10, 0},
		{"1 KiB bodies", 0, 1000, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const maxBytes = 8 << 20
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			before := ms.HeapAlloc
			r := NewRecord(time.Hour, maxBytes)
			now := time.Now()
			for i := range 4 * maxBytes / 500 {
				k := i
				if tc.keys > 0 {
					k = i % tc.keys
				}
				h := http.Header{}
				for j := range tc.hdrs {
					h[fmt.Sprint("X-H", j)] = []string{fmt.Sprint("value-", j, "-", i)}
				}
				r.Add(&Exchange{Key: fmt.Sprint("GET /items/", k, "?x=1"), Route: fmt.Sprint("GET /items/", i%10), Method: string([]byte("GET")),
					URI: fmt.Sprint("/items/", i, "?x=1"), Start: now, Status: 200, Header: h, Body: append(make([]byte, 0, 16), make([]byte, tc.body)...)})
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			st := r.Stats()
			heap := float64(int64(ms.HeapAlloc) - int64(before))
			t.Logf("%d entries: estimate %d bytes, heap %.0f (%.2fx)", st.Entries, st.Bytes, heap, heap/float64(st.Bytes))
			if st.Evicted == 0 || st.Bytes > st.MaxBytes {
				t.Fatalf("stats %+v: want the bound reached and kept", st)
			}
			if heap > 1.25*float64(st.Bytes) || heap < 0.75*float64(st.Bytes) {
				t.Errorf("the record holds %.0f bytes of heap, its estimate is %d: want within a quarter", heap, st.Bytes)
			}
			runtime.KeepAlive(r)
		})
	}
}

// TestRecordNeverAboveBound: the record's estimate never passes its bound,
// counting a new key's queue with the exchange that makes it.
func TestRecordNeverAboveBound(t *testing.T) {
	for _, body := range []int{1, 500, 700, 941, 1000} {
		r := NewRecord(time.Minute, 1000)
		for i := range 5 {
			r.Add(ex(fmt.Sprint("k", i), time.Now(), string(make([]byte, body))))
			if st := r.Stats(); st.Bytes > st.MaxBytes {
				t.Fatalf("%d-byte bodies, after %d: %d bytes held, above the bound of %d", body, i+1, st.Bytes, st.MaxBytes)
			}
		}
	}
}

// TestRecordLatestWindow checks that Latest and LatestRoute answer only
// with an exchange that started within the window, like Take, even when
// it is still held: the record evicts in the order exchanges were added
// (they are added as they end), so a long call added after a newer short
// one outlives its window until the short one leaves.
func TestRecordLatestWindow(t *testing.T) {
	r := NewRecord(time.Second, 1<<20)
	now := time.Now()
	short := ex("GET /items/1", now, "short")
	short.Route = "GET /items/*"
	r.Add(short)
	long := ex("GET /slow/1", now.Add(-2*time.Second), "long") // started before the window, ended now
	long.Route = "GET /slow/*"
	r.Add(long)
	if e, ok := r.Latest("GET /slow/1"); ok {
		t.Errorf("Latest of an exchange that started before the window = %s, want none", e.Body)
	}
	if e, ok := r.LatestRoute("GET /slow/*"); ok {
		t.Errorf("LatestRoute of an exchange that started before the window = %s, want none", e.Body)
	}
	if e, ok := r.Latest("GET /items/1"); !ok || string(e.Body) != "short" {
		t.Errorf("Latest(GET /items/1) = %v, %v; want the exchange in the window", e, ok)
	}
	if e, ok := r.LatestRoute("GET /items/*"); !ok || string(e.Body) != "short" {
		t.Errorf("LatestRoute(GET /items/*) = %v, %v; want the exchange in the window", e, ok)
	}
}

// TestRecordForgetServesWaiting: a consumer's call that waits because
// every place in the record was taken (MaxConsumers) is handed what is
// recorded for it as soon as Forget frees a place, not when the next
// exchange of its key comes.
func TestRecordForgetServesWaiting(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	for i := range MaxConsumers {
		r.Take(fmt.Sprint("c", i), "other")
	}
	r.Add(ex("k", time.Now(), "k"))
	ep := &cloneEndpoint{name: "late", consumer: "late#1", stopping: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *Exchange, 1)
	go func() {
		e, _, _ := ep.wait(ctx, r, "k", 10*time.Second)
		got <- e
	}()
	waitFor(t, 5*time.Second, "the call waiting for a place", func() bool { return waitingCalls(r) == 1 })
	r.Forget("c0")
	select {
	case e := <-got:
		if e == nil || string(e.Body) != "k" {
			t.Errorf("the waiting call got %v, want the exchange recorded for it", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting call got nothing after Forget freed a place")
	}
}

// TestRecordSweepShrinksKeyQueue: a burst on a key that leaves the
// record does not leave the key's queue holding the burst's array while
// the key keeps a few exchanges.
func TestRecordSweepShrinksKeyQueue(t *testing.T) {
	r := NewRecord(time.Minute, 1<<30)
	start := time.Now()
	const burst, kept = 10_000, 10
	for range burst {
		r.Add(ex("k", start, ""))
	}
	for range kept {
		r.Add(ex("k", start.Add(time.Hour), "")) // still in the window after the sweep
	}
	lastSlot := func() **entry { // the queue's array's last slot: where the array is
		s := r.byKey["k"].entries
		s = s[:cap(s)]
		return &s[len(s)-1]
	}
	before := lastSlot()
	r.sweep(start.Add(2 * time.Minute))
	q := r.byKey["k"]
	if q == nil || len(q.entries) != kept {
		t.Fatalf("the key's queue = %v after the sweep, want the %d exchanges after the burst", q, kept)
	}
	if lastSlot() == before || cap(q.entries) > 4*queueShrinkMin {
		t.Errorf("the key's queue holds %d entries in an array of %d or more, the burst's: want it made again", len(q.entries), cap(q.entries))
	}
	if e, ok := r.take("a", "k", time.Time{}); !ok || !e.Start.Equal(start.Add(time.Hour)) {
		t.Errorf("take after the queue was made again = %v, %v; want the first exchange after the burst", e, ok)
	}
}

// TestRecordWaitingMapShrinks: the map of waiting calls gives back the
// memory of a burst of calls waiting for many keys: it is made again once
// under a quarter of its peak, and dropped once no call waits.
func TestRecordWaitingMapShrinks(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	never := func() time.Time { return time.Time{} }
	const n = 4 * shrinkMin
	ws := make([]*waiter, n)
	for i := range ws {
		var ok bool
		if _, ok, ws[i] = r.takeOrWait("c", fmt.Sprint("k", i), never); ok || ws[i] == nil {
			t.Fatalf("takeOrWait(k%d) took an exchange, want the call queued", i)
		}
	}
	mapOf := func() uintptr { return reflect.ValueOf(r.waiting).Pointer() }
	peak := mapOf()
	for _, w := range ws[:n-n/8] {
		r.endWait(w)
	}
	if mapOf() == peak {
		t.Errorf("the map of waiting calls is the one of the peak with %d of %d keys left, want it made again", waitingCalls(r), n)
	}
	for _, w := range ws[n-n/8:] {
		r.endWait(w)
	}
	if r.waiting != nil {
		t.Errorf("the map of waiting calls is kept with no call waiting, want it dropped")
	}
}

// TestRecordHotPathEvictionBounded checks that a call on the hot path
// (Add, Take, Latest, LatestRoute) drops at most hotEvictMax exchanges
// that left the window under one hold of the record's lock, the sweep
// the rest, and that those left behind for the sweep are never served.
func TestRecordHotPathEvictionBounded(t *testing.T) {
	const n = 5000
	held := func(r *Record) (int, int64) { // without evicting, as Stats would
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.order) - r.head, r.evicted
	}
	for _, tc := range []struct {
		name string
		call func(r *Record)
	}{
		{"Add", func(r *Record) { r.Add(ex("fresh", time.Now(), "")) }},
		{"Take", func(r *Record) { r.Take("a", "k1") }},
		{"Latest", func(r *Record) { r.Latest("k1") }},
		{"LatestRoute", func(r *Record) { r.LatestRoute("r1") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The burst, a minute ago, recorded in a window of an hour
			// (however long the adds take, none is evicted)...
			r := NewRecord(time.Hour, 1<<30)
			burst := time.Now().Add(-time.Minute)
			for i := range n {
				e := ex(fmt.Sprint("k", i%10), burst.Add(time.Duration(i)), "")
				e.Route = fmt.Sprint("r", i%10)
				r.Add(e)
			}
			if got, _ := held(r); got != n {
				t.Fatalf("the record holds %d exchanges, want the %d of the burst", got, n)
			}
			// ...and then the window is a second: the whole burst has
			// left it, with no wait.
			r.mu.Lock()
			r.window = time.Second
			r.mu.Unlock()
			tc.call(r)
			got, evicted := held(r)
			if evicted == 0 || evicted > hotEvictMax {
				t.Fatalf("%s after a burst of %d left the window evicted %d under one hold of the lock, want 1..%d (the sweep drops the rest)", tc.name, n, evicted, hotEvictMax)
			}
			// What is left for the sweep is out of the window: served to no one.
			if e, ok := r.Take("b", "k1"); ok {
				t.Errorf("Take(b, k1) = %v, want none: what is left is out of the window", e)
			}
			r.mu.Lock()
			q, hint := r.byKey["k1"], int64(-1)
			if c, ok := r.consumers["b"]; ok && q != nil && c < len(q.hint) {
				hint = q.hint[c]
			}
			if q != nil && hint != q.base+int64(len(q.entries)) {
				t.Errorf("b's hint on k1 = %d after a take found nothing in the window, want %d (past what is left for the sweep, not scanned again)", hint, q.base+int64(len(q.entries)))
			}
			r.mu.Unlock()
			if e, ok := r.Latest("k1"); ok {
				t.Errorf("Latest(k1) = %v, want none: what is left is out of the window", e)
			}
			if e, ok := r.LatestRoute("r1"); ok {
				t.Errorf("LatestRoute(r1) = %v, want none: what is left is out of the window", e)
			}
			r.sweep(time.Now())
			left, _ := held(r)
			if want := got - (n - int(evicted)); left != want {
				t.Errorf("after the sweep the record holds %d exchanges, want %d (the burst gone)", left, want)
			}
		})
	}
}

// TestRecordHotPathSizeBound checks that the size bound is kept on the
// hot path however many exchanges it must drop: only the window's
// eviction is spread over calls and the sweep, never the size bound's.
func TestRecordHotPathSizeBound(t *testing.T) {
	const n = 500
	body := string(make([]byte, 1000))
	one := ex("k0", time.Now(), body).size()
	r := NewRecord(time.Minute, int64(n)*one+keyOverhead*10)
	start := time.Now()
	for i := range n {
		r.Add(ex(fmt.Sprint("k", i%10), start.Add(time.Duration(i)), body))
	}
	// An exchange that needs the place of many more than hotEvictMax.
	big := ex("big", time.Now(), string(make([]byte, int(one)*(4*hotEvictMax))))
	if !r.Add(big) {
		t.Fatal("Add(big) = false, want it kept: it fits in the record")
	}
	r.mu.Lock()
	bytes, maxBytes, evicted := r.bytes, r.maxBytes, r.evicted
	r.mu.Unlock()
	if bytes > maxBytes {
		t.Errorf("the record holds %d bytes after Add(big), want at most its bound %d", bytes, maxBytes)
	}
	if evicted <= hotEvictMax {
		t.Errorf("Add(big) evicted %d, want more than %d: the size bound is not spread over calls", evicted, hotEvictMax)
	}
	if e, ok := r.Take("a", "big"); !ok || e != big {
		t.Errorf("Take(big) = %v, %v; want the exchange just added", e, ok)
	}
}

// TestRecordUntakeCost checks that putting back a taken exchange does not
// cost as many steps as its key's queue holds: untake finds it by its
// start (the queue is in start order), not by a scan. It compares the
// time of untake at the end of a long queue with that in a short one.
func TestRecordUntakeCost(t *testing.T) {
	cost := func(n int) time.Duration {
		r := NewRecord(time.Hour, 1<<30)
		start := time.Now()
		for i := range n {
			r.Add(ex("k", start.Add(time.Duration(i)), ""))
		}
		var last *Exchange
		for range n {
			e, ok := r.Take("a", "k")
			if !ok {
				t.Fatalf("Take(a, k) failed with %d recorded", n)
			}
			last = e
		}
		best := time.Duration(1 << 62)
		for range 50 {
			t0 := time.Now()
			r.untake("a", last)
			best = min(best, time.Since(t0))
			if e, ok := r.Take("a", "k"); !ok || e != last {
				t.Fatalf("Take(a, k) after untake = %v, %v; want the exchange put back", e, ok)
			}
		}
		return best
	}
	short, long := cost(100), cost(100_000)
	t.Logf("untake: %v with 100 exchanges of the key, %v with 100000", short, long)
	if long > 20*max(short, time.Microsecond) {
		t.Errorf("untake took %v in a queue of 100000, %v in one of 100: want it near independent of the queue's length", long, short)
	}
}
