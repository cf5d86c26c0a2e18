package httpproxy

import (
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
)

// Exchange is one on-line call to the next tier and its answer, as the
// out-proxy recorded it.
type Exchange struct {
	// Key is the request's normalised key (see Masks.Key).
	Key string
	// Route is the request's route (see RouteOf); empty: none, and the
	// exchange stands in for no other call.
	Route string
	// Method and URI are the on-line request's, for logs and debugging.
	Method, URI string
	// Start is when the on-line call reached the out-proxy.
	Start time.Time
	// Latency is the next tier's latency: from Start to the end of its
	// response body.
	Latency time.Duration
	// Status, Header and Body are the next tier's response. Hop-by-hop
	// headers are not kept.
	Status int
	Header http.Header
	Body   []byte
}

// size is an estimate of the memory an exchange holds in a Record: its
// strings, its body's capacity, its header map and values, the structs
// that hold it and its slots in the record's slices (what
// TestRecordMemory measures, within a quarter). The key's own queue and
// map slot are keyOverhead, counted once per key.
func (e *Exchange) size() int64 {
	const perExchange = 240 // Exchange, entry, and slots in order and the key's queue
	n := int64(perExchange + len(e.Key) + len(e.Route) + len(e.Method) + len(e.URI) + cap(e.Body))
	if e.Header != nil {
		n += headerMapSize(len(e.Header))
		for k, vs := range e.Header {
			n += int64(len(k))
			for _, v := range vs {
				n += int64(len(v)) + 16 // the value and its slot in the values' slice
			}
		}
	}
	return n
}

// headerMapSize estimates the memory of a map of n header fields: a
// header, and groups of 8 slots of a key and a value slice each, at most
// 7/8 full (Go's maps since 1.24).
func headerMapSize(n int) int64 {
	if n == 0 {
		return 48 // no group until the first field
	}
	slots := 8
	for slots*7/8 < n {
		slots *= 2
	}
	return 48 + int64(slots)*41
}

// keyOverhead estimates the memory of a key's queue in a Record and its
// slot in the map of keys.
const keyOverhead = 128

// RecordStats describes a Record's memory.
type RecordStats struct {
	// Entries and Bytes are what the record holds now; Bytes is an
	// estimate of the memory it uses, never above MaxBytes.
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	// MaxBytes and Window are the record's bounds.
	MaxBytes int64              `json:"max_bytes"`
	Window   justrunit.Duration `json:"window"`
	// Evicted counts exchanges dropped because they left the window or the
	// record was full, since the record was made.
	Evicted int64 `json:"evicted"`
}

// MaxConsumers is how many consumers (clones) one Record can serve.
const MaxConsumers = 64

// Record holds recent exchanges, bounded by a time window and a size, and
// lets consumers (clones) take them in order by key. Each consumer takes
// each exchange at most once, the oldest first; several consumers can replay
// the same record. A consumer's calls that wait for an exchange of a key
// not recorded yet are served first come first served. An exchange stays
// until it leaves the window or the size bound evicts it, whoever took it.
// A Record is safe for concurrent use.
type Record struct {
	window   time.Duration
	maxBytes int64

	mu      sync.Mutex
	order   []*entry // in insertion order; order[head:] are live
	head    int
	byKey   map[string]*keyQueue
	byRoute map[string]*entry // each route's latest exchange
	bytes   int64
	evicted int64
	// keysPeak and routesPeak are the most keys and routes byKey and
	// byRoute have held since they were made: a Go map keeps the memory
	// of its peak, so they are made again once well below it.
	keysPeak, routesPeak int
	consumers            map[string]int // consumer name -> bit
	// waiting holds, per key, the calls waiting for an exchange to take,
	// in the order they came (see takeOrWait); nil when none waits.
	// waitingPeak is the most keys it has held since it was made (see
	// keysPeak).
	waiting     map[string][]*waiter
	waitingPeak int
}

// waiter is a consumer's call waiting for an exchange with key that
// started at since() or after. The record hands it one (ex) as one is
// added or put back, or a consumer's place is freed, and then closes
// ready; Forget closes ready with none. since is read when the waiter is
// served, not when it was queued: the consumer's since can move (a clone
// attached while its call waits), and an exchange from before it is not
// the call's (see take).
type waiter struct {
	consumer, key string
	since         func() time.Time
	ready         chan struct{}
	ex            *Exchange // set under the record's lock
}

type entry struct {
	ex    *Exchange
	size  int64
	taken uint64 // bit i set: consumer i took it
}

// keyQueue holds one key's exchanges in start order. Entries are numbered
// absolutely: entries[i] is number base+i, so numbers survive removals at
// the front. hint[c] is a number below which consumer c has nothing left
// to take: taken, started before its since, or out of the window. spent
// counts the slots before entries in its array, left by exchanges dropped
// from the front: the array is cap(entries)+spent long.
type keyQueue struct {
	base    int64
	entries []*entry
	hint    []int64
	spent   int
}

// NewRecord returns an empty record that keeps exchanges that started within
// window of now and at most maxBytes of them.
func NewRecord(window time.Duration, maxBytes int64) *Record {
	return &Record{
		window:    window,
		maxBytes:  maxBytes,
		byKey:     make(map[string]*keyQueue),
		byRoute:   make(map[string]*entry),
		consumers: make(map[string]int),
	}
}

// Add records e. An exchange larger than the whole record (with its key's
// queue) is not kept and Add reports false.
func (r *Record) Add(e *Exchange) bool {
	sz := e.size()
	if sz+keyOverhead > r.maxBytes {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evictHotLocked(time.Now())
	// e's size, and its key's queue's where it has none yet (evicting may
	// remove the one it has). Unlike the window's, this eviction is not
	// bounded: the record never holds more than maxBytes, however many
	// exchanges e needs the place of.
	need := func() int64 {
		if r.byKey[e.Key] == nil {
			return sz + keyOverhead
		}
		return sz
	}
	for r.bytes+need() > r.maxBytes && r.head < len(r.order) {
		r.dropOldestLocked()
	}
	en := &entry{ex: e, size: sz}
	r.order = append(r.order, en)
	if e.Route != "" {
		r.byRoute[e.Route] = en
		r.routesPeak = max(r.routesPeak, len(r.byRoute))
	}
	q := r.byKey[e.Key]
	if q == nil {
		q = &keyQueue{}
		r.byKey[e.Key] = q
		r.keysPeak = max(r.keysPeak, len(r.byKey))
		r.bytes += keyOverhead
	}
	// Keep each key's exchanges in start order: exchanges are added when
	// they end, and a short call may end before an earlier, longer one.
	pos := len(q.entries)
	if pos == cap(q.entries) { // Insert makes a new array: the old one's spent slots go with it
		q.spent = 0
	}
	for pos > 0 && e.Start.Before(q.entries[pos-1].ex.Start) {
		pos--
	}
	q.entries = slices.Insert(q.entries, pos, en)
	for c, h := range q.hint {
		q.hint[c] = min(h, q.base+int64(pos))
	}
	r.bytes += sz
	if len(r.waiting[e.Key]) > 0 {
		r.serveWaitersLocked(e.Key, time.Now())
		r.shrinkWaitingLocked()
	}
	return true
}

// Take returns, for consumer, the oldest exchange with key that started
// within the window and that consumer has not taken yet, and marks it
// taken. It fails when no exchange matches, when calls of consumer wait
// for one (they come first), or when the record already has MaxConsumers
// other consumers.
func (r *Record) Take(consumer, key string) (*Exchange, bool) {
	return r.take(consumer, key, time.Time{})
}

// take is Take that passes over exchanges that started before since: a
// clone's calls answer requests copied to it after it was attached, and
// the on-line calls made before it was are not theirs (taking them, it
// would be answered a window late for good).
func (r *Record) take(consumer, key string, since time.Time) (*Exchange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waitsLocked(consumer, key) {
		return nil, false
	}
	return r.takeLocked(consumer, key, time.Now(), since)
}

// takeOrWait is take that, when nothing matches, queues a waiter for the
// call behind the consumer's earlier calls waiting for key, and returns
// it. The record hands each waiter the next exchange it can take, first
// come first served, as one is added or put back (untake) or, for a
// consumer that had no place, as Forget frees one. The caller ends the
// wait with endWait, whatever became of it.
//
// since is read each time the waiter is served, and must only move
// forward: the consumer's later calls must not be able to take what an
// earlier one could not (they are served in order), and a take passes
// over what started before since for good.
func (r *Record) takeOrWait(consumer, key string, since func() time.Time) (*Exchange, bool, *waiter) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.waitsLocked(consumer, key) {
		if ex, ok := r.takeLocked(consumer, key, time.Now(), since()); ok {
			return ex, true, nil
		}
	}
	w := &waiter{consumer: consumer, key: key, since: since, ready: make(chan struct{})}
	if r.waiting == nil {
		r.waiting = make(map[string][]*waiter)
	}
	r.waiting[key] = append(r.waiting[key], w)
	r.waitingPeak = max(r.waitingPeak, len(r.waiting))
	return nil, false, w
}

// endWait ends w's wait and returns the exchange it was handed, if any:
// the caller has taken it, and puts it back (untake) if it does not
// answer with it.
func (r *Record) endWait(w *waiter) (*Exchange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.ex != nil {
		return w.ex, true // handed over: out of the queue already
	}
	ws := r.waiting[w.key]
	if i := slices.Index(ws, w); i >= 0 {
		r.setWaitingLocked(w.key, slices.Delete(ws, i, i+1))
		r.shrinkWaitingLocked()
	}
	return nil, false
}

// untake puts ex, which consumer took, back where it was in its key's
// queue, as if it had not been taken, if the record still holds it: a
// call that took it ended before it answered with it, and the call's
// retry, or the consumer's first call waiting for the key, gets it. It
// finds ex in O(log n) of its key's queue (see keyQueue.index).
func (r *Record) untake(consumer string, ex *Exchange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.consumers[consumer]
	q := r.byKey[ex.Key]
	if !ok || q == nil { // forgotten, or ex evicted with its key
		return
	}
	i := q.index(ex)
	bit := uint64(1) << c
	if i < 0 || q.entries[i].taken&bit == 0 {
		return
	}
	q.entries[i].taken &^= bit
	if c < len(q.hint) {
		q.hint[c] = min(q.hint[c], q.base+int64(i))
	}
	if len(r.waiting[ex.Key]) > 0 {
		r.serveWaitersLocked(ex.Key, time.Now())
		r.shrinkWaitingLocked()
	}
}

// waitsLocked reports whether calls of consumer wait for key.
func (r *Record) waitsLocked(consumer, key string) bool {
	for _, w := range r.waiting[key] {
		if w.consumer == consumer {
			return true
		}
	}
	return false
}

// serveWaitersLocked hands the calls waiting for key the exchanges they
// can take, each consumer's in the order they came.
func (r *Record) serveWaitersLocked(key string, now time.Time) {
	ws := r.waiting[key]
	var dry []string // consumers left with nothing to take
	kept := ws[:0]
	for _, w := range ws {
		if !slices.Contains(dry, w.consumer) {
			// A later call of the consumer does not take what an earlier
			// one could not: the since it reads is the same or later.
			if ex, ok := r.takeLocked(w.consumer, key, now, w.since()); ok {
				w.ex = ex
				close(w.ready)
				continue
			}
			dry = append(dry, w.consumer)
		}
		kept = append(kept, w)
	}
	clear(ws[len(kept):])
	r.setWaitingLocked(key, kept)
}

// setWaitingLocked sets the calls waiting for key.
func (r *Record) setWaitingLocked(key string, ws []*waiter) {
	if len(ws) == 0 {
		delete(r.waiting, key)
		return
	}
	r.waiting[key] = ws
}

// shrinkWaitingLocked lets go of the memory of the map of waiting calls:
// a Go map keeps the memory of the most keys it held (see shrinkLocked),
// so it is dropped once empty and made again once under a quarter of its
// peak. Not called while the map is ranged over.
func (r *Record) shrinkWaitingLocked() {
	switch {
	case len(r.waiting) == 0:
		r.waiting, r.waitingPeak = nil, 0
	case r.waitingPeak >= shrinkMin && len(r.waiting) < r.waitingPeak/4:
		r.waiting = remake(r.waiting)
		r.waitingPeak = len(r.waiting)
	}
}

func (r *Record) takeLocked(consumer, key string, now, since time.Time) (*Exchange, bool) {
	r.evictHotLocked(now)
	c, ok := r.consumers[consumer]
	if !ok {
		if c, ok = r.freeBitLocked(); !ok {
			return nil, false
		}
		r.consumers[consumer] = c
	}
	q := r.byKey[key]
	if q == nil {
		return nil, false
	}
	for len(q.hint) <= c {
		q.hint = append(q.hint, 0)
	}
	// The entries before base are gone: a hint below it would never move
	// again, and every take would scan the whole queue.
	q.hint[c] = max(q.hint[c], q.base)
	bit := uint64(1) << c
	oldest := now.Add(-r.window)
	for i := max(q.hint[c]-q.base, 0); i < int64(len(q.entries)); i++ {
		en := q.entries[i]
		if en.taken&bit != 0 || en.ex.Start.Before(since) { // never this consumer's
			if q.base+i == q.hint[c] {
				q.hint[c]++
			}
			continue
		}
		if en.ex.Start.Before(oldest) {
			// Out of the window for good (now only moves forward), but
			// maybe not evicted yet (evictHotLocked leaves what it has no
			// time for to the sweep): the hint passes it too, or every
			// take would scan it again until the sweep comes.
			if q.base+i == q.hint[c] {
				q.hint[c]++
			}
			continue
		}
		en.taken |= bit
		if q.base+i == q.hint[c] {
			q.hint[c]++
		}
		return en.ex, true
	}
	return nil, false
}

// Latest returns the most recent exchange with key, taken or not, if it
// started within the window. The out-proxy answers a clone's read with it
// when the clone asks before the on-line instance has made the same call
// (the clone is faster than an overloaded on-line instance): a read's
// answer does not depend on who consumed it.
func (r *Record) Latest(key string) (*Exchange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.evictHotLocked(now)
	q := r.byKey[key]
	if q == nil || len(q.entries) == 0 {
		return nil, false
	}
	// Eviction goes in the order exchanges were added, as they ended: one
	// that started before the window can still be held behind a newer
	// one. The queue is in start order, so when its last is out of the
	// window, all are.
	en := q.entries[len(q.entries)-1]
	if en.ex.Start.Before(now.Add(-r.window)) {
		return nil, false
	}
	return en.ex, true
}

// LatestRoute returns the exchange of route recorded last, taken or not,
// whatever its key, if it started within the window (else none, even if
// one recorded before it, which ended sooner, started later). The
// out-proxy lets it stand in for a clone's read that nothing recorded
// matches (StandIn).
func (r *Record) LatestRoute(route string) (*Exchange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.evictHotLocked(now)
	en := r.byRoute[route]
	if en == nil || en.ex.Start.Before(now.Add(-r.window)) { // held behind a newer one (see Latest)
		return nil, false
	}
	return en.ex, true
}

// freeBitLocked returns the lowest consumer bit not in use.
func (r *Record) freeBitLocked() (int, bool) {
	var used uint64
	for _, c := range r.consumers {
		used |= 1 << c
	}
	for c := range MaxConsumers {
		if used&(1<<c) == 0 {
			return c, true
		}
	}
	return 0, false
}

// Forget removes consumer: its calls waiting for an exchange stop waiting
// with none, its marks are cleared and its place can be taken by a new
// consumer, first by the calls waiting for want of one. A consumer of the
// same name that comes later starts from the oldest exchange in the
// window. It scans every exchange and key under the lock, which is fine
// for a call made once per clone stopped (StopClone, Close): the on-line
// path never waits for the record's lock, and per-consumer indexes would
// cost every take.
func (r *Record) Forget(consumer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.shrinkWaitingLocked() // once the map is no longer ranged over
	for key, ws := range r.waiting {
		kept := ws[:0]
		for _, w := range ws {
			if w.consumer == consumer {
				close(w.ready)
				continue
			}
			kept = append(kept, w)
		}
		clear(ws[len(kept):])
		r.setWaitingLocked(key, kept)
	}
	c, ok := r.consumers[consumer]
	if !ok {
		return
	}
	delete(r.consumers, consumer)
	bit := uint64(1) << c
	for _, en := range r.order[r.head:] {
		en.taken &^= bit
	}
	for _, q := range r.byKey {
		if c < len(q.hint) {
			q.hint[c] = 0
		}
	}
	// A call queued because every place was taken (MaxConsumers) can take
	// now: serve it, or what is already recorded would be handed to it
	// only once another exchange of its key came, and the consumer's
	// later calls would queue behind it.
	now := time.Now()
	for key := range r.waiting {
		r.serveWaitersLocked(key, now)
	}
}

// hotEvictMax bounds the exchanges that left the window one call on the
// hot path (Add, Take, Latest, LatestRoute: the on-line calls' recording
// and the clones' calls) drops under the record's lock. Without a bound,
// the first call after a burst left the window would drop all of it (a
// drop costs up to about a microsecond with unique keys: thousands hold
// the lock for milliseconds) while every other call waits for the lock.
// What is left behind is out of the window and never served (each of
// those checks the window itself); each Add drops up to hotEvictMax for
// the one it adds, so a backlog shrinks with traffic, and the sweep
// (Start runs it every sweepEvery) drops the rest in batches. The size
// bound is not spread out: Add drops as many as the new exchange needs,
// so Bytes never exceeds MaxBytes.
const hotEvictMax = 16

// evictHotLocked drops up to hotEvictMax exchanges that started before
// the window, for a call on the hot path (see hotEvictMax).
func (r *Record) evictHotLocked(now time.Time) {
	r.evictSomeLocked(now, hotEvictMax)
}

// evictSomeLocked drops up to n (negative: all) exchanges that started
// before the window, oldest first, and reports whether it dropped them
// all. Making the maps smaller (shrinkLocked) is left to the sweep: it
// copies a map, too long for the hot path.
func (r *Record) evictSomeLocked(now time.Time, n int) bool {
	oldest := now.Add(-r.window)
	for r.head < len(r.order) && r.order[r.head].ex.Start.Before(oldest) {
		if n == 0 {
			return false
		}
		n--
		r.dropOldestLocked()
	}
	return true
}

// shrinkMin is the fewest keys (or routes) a map must have held before it
// is made again smaller: a small map's memory is not worth a copy.
const shrinkMin = 1024

// shrinkLocked makes byKey and byRoute again once they hold under a
// quarter of their peak: a Go map keeps the memory of the most keys it
// held, so a burst of unique keys would hold it for good. The copy costs
// as many steps as the map holds, at most once per three quarters of its
// keys deleted.
func (r *Record) shrinkLocked() {
	if r.keysPeak >= shrinkMin && len(r.byKey) < r.keysPeak/4 {
		r.byKey = remake(r.byKey)
		r.keysPeak = len(r.byKey)
	}
	if r.routesPeak >= shrinkMin && len(r.byRoute) < r.routesPeak/4 {
		r.byRoute = remake(r.byRoute)
		r.routesPeak = len(r.byRoute)
	}
}

// remake returns a copy of m sized for what it holds (maps.Clone keeps
// m's size).
func remake[V any](m map[string]V) map[string]V {
	c := make(map[string]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// sweepBatch bounds the exchanges a sweep drops under one hold of the
// record's lock, so that adds and takes wait little for it (a few
// hundred microseconds at most: see hotEvictMax).
const sweepBatch = 256

// sweep drops the exchanges that left the window, sweepBatch at a time,
// with no traffic needed: otherwise they are dropped only as the record
// is used, a few per call (hotEvictMax), and an idle record would hold
// its memory. Once they are gone it makes the maps again if they are well
// below their peak (shrinkLocked).
func (r *Record) sweep(now time.Time) {
	for {
		r.mu.Lock()
		done := r.evictSomeLocked(now, sweepBatch)
		if done {
			r.shrinkLocked()
		}
		r.mu.Unlock()
		if done {
			return
		}
	}
}

func (r *Record) dropOldestLocked() {
	en := r.order[r.head]
	r.order[r.head] = nil
	r.head++
	if r.head > 1024 && r.head*2 > len(r.order) {
		r.order = append([]*entry(nil), r.order[r.head:]...)
		r.head = 0
	}
	r.bytes -= en.size
	r.evicted++
	if rt := en.ex.Route; rt != "" && r.byRoute[rt] == en {
		delete(r.byRoute, rt) // the route's latest leaves last: no older one is left
	}
	k := en.ex.Key
	q := r.byKey[k]
	i := 0 // nearly always: the oldest added is the oldest started
	if len(q.entries) == 0 || q.entries[0] != en {
		i = q.index(en.ex)
	}
	switch {
	case i == 0:
		q.entries[0] = nil
		q.entries = q.entries[1:]
		q.spent++
		q.base++
	case i > 0:
		q.entries = slices.Delete(q.entries, i, i+1)
		for c, h := range q.hint {
			if h > q.base+int64(i) {
				q.hint[c] = h - 1
			}
		}
	}
	if len(q.entries) == 0 {
		delete(r.byKey, k)
		r.bytes -= keyOverhead
		return
	}
	// A burst on a key leaves its queue's array behind while the key has
	// entries: copy them to a new one once they fill under a quarter of
	// it (at most once per three quarters of it dropped).
	if n := cap(q.entries) + q.spent; n > queueShrinkMin && len(q.entries) < n/4 {
		q.entries = slices.Clone(q.entries)
		q.spent = 0
	}
}

// index returns the index of ex in q, or -1 when q does not hold it.
// q's entries are in start order (Add keeps them so), so a binary search
// finds the first that started when ex did, and ex is among the few that
// started at the same instant: O(log n), where a scan of the queue would
// cost as many steps as the key has exchanges, under the record's lock.
func (q *keyQueue) index(ex *Exchange) int {
	i, _ := slices.BinarySearchFunc(q.entries, ex.Start, func(en *entry, t time.Time) int { return en.ex.Start.Compare(t) })
	for ; i < len(q.entries) && q.entries[i].ex.Start.Compare(ex.Start) == 0; i++ {
		if q.entries[i].ex == ex {
			return i
		}
	}
	return -1
}

// queueShrinkMin is the longest array of a key's queue that is not made
// again smaller: a small array is not worth a copy.
const queueShrinkMin = 64

// Stats returns the record's size and bounds.
func (r *Record) Stats() RecordStats {
	// Dropped in batches, the lock let go between them, as the sweep
	// does: not all in one hold of the lock the hot path waits for.
	r.sweep(time.Now())
	r.mu.Lock()
	defer r.mu.Unlock()
	return RecordStats{
		Entries:  len(r.order) - r.head,
		Bytes:    r.bytes,
		MaxBytes: r.maxBytes,
		Window:   justrunit.Duration(r.window),
		Evicted:  r.evicted,
	}
}
