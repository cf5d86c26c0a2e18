package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// nextTier is a test next tier: GET /counter answers an increasing number,
// POST /orders answers a generated id, every call takes delay.
type nextTier struct {
	*backend
	n     atomic.Int64
	delay time.Duration
}

func newNextTier(t *testing.T, delay time.Duration) *nextTier {
	nt := &nextTier{delay: delay}
	nt.backend = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(nt.delay)
		n := nt.n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Seq", fmt.Sprint(n))
		switch {
		case r.Method == "POST":
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"id":%d,"created":%d}`, n, time.Now().UnixNano())
		default:
			fmt.Fprintf(w, `{"n":%d}`, n)
		}
	})
	return nt
}

func (nt *nextTier) methods() map[string]int {
	m := map[string]int{}
	for _, r := range nt.requests() {
		m[r.method]++
	}
	return m
}

func startOut(t *testing.T, cfg OutConfig) (p *OutProxy, online, clone string) {
	t.Helper()
	p, err := NewOutProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	on, cl, err := p.Start(context.Background(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, "http://" + on.String(), "http://" + cl.String()
}

type answer struct {
	status int
	header http.Header
	body   string
	took   time.Duration
}

func do(t *testing.T, c *http.Client, method, u, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	b := mustRead(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b), time.Since(start)}
}

func TestOutProxyReplay(t *testing.T) {
	nt := newNextTier(t, 0)
	masks, err := ParseMasks([]string{`ts=(\d+)`}, []string{"$.ts"})
	if err != nil {
		t.Fatal(err)
	}
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, Masks: masks, MatchWait: -1})
	c := testClient()

	// On-line: three reads of the same resource and a write with a
	// timestamp in its body and its query.
	var onAnswers []answer
	for range 3 {
		onAnswers = append(onAnswers, do(t, c, "GET", online+"/counter", ""))
	}
	write := do(t, c, "POST", online+"/orders?ts=111", `{"item":7,"ts":111}`)
	if write.status != 201 || onAnswers[2].body != `{"n":3}` {
		t.Fatalf("on-line answers %+v, %+v: not forwarded", onAnswers, write)
	}
	waitFor(t, 5*time.Second, "4 exchanges recorded", func() bool { return p.Stats().Recorded == 4 })

	// The clone: same calls, a fresh timestamp, in order.
	for i := range 3 {
		a := do(t, c, "GET", clone+"/counter", "")
		if a.status != 200 || a.body != onAnswers[i].body || a.header.Get("X-Seq") != onAnswers[i].header.Get("X-Seq") {
			t.Errorf("clone GET #%d = %d %q (seq %s), want the on-line answer %q", i, a.status, a.body, a.header.Get("X-Seq"), onAnswers[i].body)
		}
	}
	a := do(t, c, "POST", clone+"/orders?ts=222", `{"ts":222,"item":7}`)
	if a.status != 201 || a.body != write.body {
		t.Errorf("clone POST with a fresh timestamp = %d %q, want the recorded %q", a.status, a.body, write.body)
	}

	// Unmatched: a fourth read, another write.
	if a := do(t, c, "GET", clone+"/counter", ""); a.status != DefaultFallbackStatus || a.header.Get(UnmatchedHeader) != "1" {
		t.Errorf("unmatched GET = %d %v, want %d with %s", a.status, a.header, DefaultFallbackStatus, UnmatchedHeader)
	}
	if a := do(t, c, "POST", clone+"/orders", `{"item":8,"ts":1}`); a.status != DefaultFallbackStatus {
		t.Errorf("unmatched POST = %d, want %d", a.status, DefaultFallbackStatus)
	}
	st := p.Stats()
	if st.Matched != 4 || st.Unmatched != 2 || st.PassedThrough != 0 || st.MatchRate != 4.0/6 {
		t.Errorf("stats %+v, want 4 matched, 2 unmatched, rate 0.667", st)
	}
	if m := nt.methods(); m["POST"] != 1 || m["GET"] != 3 {
		t.Errorf("next tier saw %v, want only the on-line calls (1 POST, 3 GET)", m)
	}
	if r := p.Reset(); r.Matched != 4 {
		t.Errorf("Reset() = %+v, want the window's counts", r)
	}
	if st := p.Stats(); st.Matched != 0 || st.MatchRate != 1 || st.Record.Entries != 4 {
		t.Errorf("after Reset: %+v, want counts 0, rate 1, the record kept", st)
	}
}

func TestOutProxyPassThroughSafeOnly(t *testing.T) {
	nt := newNextTier(t, 0)
	p, _, clone := startOut(t, OutConfig{Upstream: nt.URL, PassThrough: []string{"get", "HEAD"}, MatchWait: -1, FallbackStatus: 502})
	c := testClient()
	if a := do(t, c, "GET", clone+"/counter", ""); a.status != 200 || a.body != `{"n":1}` {
		t.Errorf("unmatched GET = %d %q, want passed through", a.status, a.body)
	}
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		if a := do(t, c, m, clone+"/orders", `{"x":1}`); a.status != 502 {
			t.Errorf("unmatched %s = %d, want the fallback 502", m, a.status)
		}
	}
	if m := nt.methods(); len(m) != 1 || m["GET"] != 1 {
		t.Errorf("next tier saw %v, want exactly the one GET: a clone's writes never reach it", m)
	}
	st := p.Stats()
	if st.Unmatched != 5 || st.PassedThrough != 1 || st.Matched != 0 || st.MatchRate != 0 {
		t.Errorf("stats %+v, want 5 unmatched, 1 passed through", st)
	}
	if _, err := NewOutProxy(OutConfig{Upstream: nt.URL, PassThrough: []string{"POST"}}); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("PassThrough POST: %v, want ErrInvalid", err)
	}
}

// TestOutProxyLatencyReplay checks that a clone's call is answered after
// the next tier's recorded latency (100 ms; tolerance −10 ms, +400 ms for a
// shared machine), and that a call arriving before the on-line exchange
// ends waits for it.
func TestOutProxyLatencyReplay(t *testing.T) {
	nt := newNextTier(t, 100*time.Millisecond)
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: 5 * time.Second})
	c := testClient()
	on := do(t, c, "GET", online+"/slow", "")
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 1 })
	a := do(t, c, "GET", clone+"/slow", "")
	if a.body != on.body || a.took < 90*time.Millisecond || a.took > 500*time.Millisecond {
		t.Errorf("clone answer %q after %v, want %q after about 100ms", a.body, a.took, on.body)
	}

	// The clone calls first; the on-line call starts 20 ms later.
	var wg sync.WaitGroup
	var early answer
	wg.Add(1)
	go func() {
		defer wg.Done()
		early = do(t, c, "GET", clone+"/race", "")
	}()
	time.Sleep(20 * time.Millisecond)
	on = do(t, c, "GET", online+"/race", "")
	wg.Wait()
	if early.status != 200 || early.body != on.body {
		t.Errorf("early clone call = %d %q, want to wait for the on-line answer %q", early.status, early.body, on.body)
	}
}

func TestOutProxyBoundedMemory(t *testing.T) {
	nt := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 10<<10))
	})
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MaxRecordBytes: 100 << 10, MaxBody: 20 << 10, MatchWait: -1})
	c := testClient()
	for i := range 50 {
		do(t, c, "GET", fmt.Sprintf("%s/r%d", online, i), "")
	}
	// A response above MaxBody is forwarded but not recorded.
	big := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, strings.Repeat("y", 30<<10)) })
	p2, online2, _ := startOut(t, OutConfig{Upstream: big.URL, MaxBody: 20 << 10})
	if a := do(t, c, "GET", online2+"/big", ""); len(a.body) != 30<<10 {
		t.Errorf("large on-line answer has %d bytes, want %d", len(a.body), 30<<10)
	}
	waitFor(t, 5*time.Second, "all recorded", func() bool { return p.Stats().Recorded == 50 && p2.Stats().NotRecorded == 1 })
	st := p.Stats().Record
	t.Logf("record: %+v", st)
	if st.Bytes > st.MaxBytes || st.Entries >= 10 || st.Evicted < 40 {
		t.Errorf("record %+v, want ≤ %d bytes, < 10 entries, ≥ 40 evicted", st, st.MaxBytes)
	}
	if a := do(t, c, "GET", clone+"/r49", ""); a.status != 200 {
		t.Errorf("newest exchange: %d, want matched", a.status)
	}
	if a := do(t, c, "GET", clone+"/r0", ""); a.status != DefaultFallbackStatus {
		t.Errorf("evicted exchange: %d, want unmatched", a.status)
	}

	w, online3, _ := startOut(t, OutConfig{Upstream: nt.URL, Window: 50 * time.Millisecond})
	do(t, c, "GET", online3+"/a", "")
	waitFor(t, 5*time.Second, "the window to evict", func() bool {
		st := w.Stats()
		return st.Recorded == 1 && st.Record.Entries == 0 && st.Record.Evicted == 1
	})
}

func TestOutProxyBadConfig(t *testing.T) {
	nt := newBackend(t, nil)
	for _, tt := range []struct {
		name string
		cfg  OutConfig
	}{
		{"no upstream", OutConfig{}},
		{"bad upstream", OutConfig{Upstream: mustURL(t, "unix:///x")}},
		{"fallback", OutConfig{Upstream: nt.URL, FallbackStatus: 42}},
		{"pass-through write", OutConfig{Upstream: nt.URL, PassThrough: []string{"GET", "DELETE"}}},
		{"upstream with a path", OutConfig{Upstream: nt.URL.JoinPath("api")}},
		{"upstream with an escaped path", OutConfig{Upstream: mustURL(t, nt.URL.String()+"/%2F")}},
	} {
		if _, err := NewOutProxy(tt.cfg); !errors.Is(err, justrunit.ErrInvalid) {
			t.Errorf("%s: NewOutProxy = %v, want ErrInvalid", tt.name, err)
		}
	}
	// The on-line calls are forwarded byte for byte, their paths
	// unchanged: a path in the next tier's URL would apply to the clones'
	// passed-through calls only. It is refused, naming the field and why.
	_, err := NewOutProxy(OutConfig{Upstream: nt.URL.JoinPath("api")})
	if fe, ok := errors.AsType[*justrunit.FieldError](err); !ok || fe.Field != "upstream" || !strings.Contains(fe.Msg, "path") {
		t.Errorf("NewOutProxy(upstream with a path) = %v, want a FieldError naming upstream and its path", err)
	}
	for _, u := range []string{nt.URL.String(), nt.URL.String() + "/"} {
		p, err := NewOutProxy(OutConfig{Upstream: mustURL(t, u)})
		if err != nil {
			t.Errorf("NewOutProxy(upstream %s) = %v, want it accepted", u, err)
			continue
		}
		p.Close()
	}
	t.Run("clone port in use", func(t *testing.T) {
		p, err := NewOutProxy(OutConfig{Upstream: nt.URL})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		onAddr := freeAddr(t)
		if _, _, err := p.Start(context.Background(), onAddr, nt.Listener.Addr().String()); !errors.Is(err, justrunit.ErrInvalid) {
			t.Fatalf("Start = %v, want ErrInvalid", err)
		}
		assertFree(t, onAddr)
	})
	t.Run("unknown upstream", func(t *testing.T) {
		p, err := NewOutProxy(OutConfig{Upstream: mustURL(t, "http://no-such-host.invalid")})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		on, cl := freeAddr(t), freeAddr(t)
		if _, _, err := p.Start(context.Background(), on, cl); !errors.Is(err, justrunit.ErrInvalid) {
			t.Fatalf("Start = %v, want ErrInvalid", err)
		}
		assertFree(t, on)
		assertFree(t, cl)
	})
}

// TestOutProxyClonesApart checks that clones served on their own listeners
// each consume the record on their own, have their own windows, and that a
// stopped clone's listener is closed.
func TestOutProxyClonesApart(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, _ := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1})
	ctx := context.Background()
	a, err := p.ServeClone(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.ServeClone(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ServeClone(ctx, "a"); !errors.Is(err, justrunit.ErrExists) {
		t.Errorf("ServeClone(a) again = %v, want ErrExists", err)
	}
	c := testClient()
	on := do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 1 })
	for _, addr := range []string{a, b} {
		if got := do(t, c, "GET", "http://"+addr+"/counter", ""); got.body != on.body {
			t.Errorf("clone at %s got %q, want %q", addr, got.body, on.body)
		}
	}
	do(t, c, "GET", "http://"+a+"/counter", "") // a second call: unmatched for a
	ra, err := p.ReplayStats("a", true)
	if err != nil || ra.Matched != 1 || ra.Unmatched != 1 || ra.MatchRate != 0.5 {
		t.Errorf("ReplayStats(a) = %+v, %v; want 1 matched, 1 unmatched", ra, err)
	}
	if ra, _ := p.ReplayStats("a", false); ra.Matched != 0 {
		t.Errorf("a after reset: %+v, want a new window", ra)
	}
	if rb, _ := p.ReplayStats("b", false); rb.Matched != 1 || rb.MatchRate != 1 {
		t.Errorf("ReplayStats(b) = %+v, want b's window untouched by a's reset", rb)
	}
	if err := p.StopClone("a"); err != nil {
		t.Fatal(err)
	}
	assertFree(t, a)
	if err := p.StopClone("a"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("StopClone(a) again = %v, want ErrNotFound", err)
	}
	if _, err := p.ReplayStats("a", false); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("ReplayStats(a) after stop = %v, want ErrNotFound", err)
	}
	// A clone served again under the same name starts afresh: the on-line
	// calls made before it was served are not its clone's.
	a2, err := p.ServeClone(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got := do(t, c, "GET", "http://"+a2+"/counter", ""); got.status != DefaultFallbackStatus {
		t.Errorf("re-served clone got %d %q for a call made on-line before it was served, want the fallback", got.status, got.body)
	}
	on2 := do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 2 })
	if got := do(t, c, "GET", "http://"+a2+"/counter", ""); got.body != on2.body {
		t.Errorf("re-served clone got %q, want %q", got.body, on2.body)
	}
}

// TestOutProxyReuseReads checks that with ReuseReads a clone's repeated read
// is answered with the latest exchange of its key at once, while a repeated
// write is not.
func TestOutProxyReuseReads(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1, ReuseReads: true})
	c := testClient()
	on := do(t, c, "GET", online+"/counter", "")
	do(t, c, "POST", online+"/bid", `{"amount":1}`)
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 2 })
	for i := range 3 {
		if got := do(t, c, "GET", clone+"/counter", ""); got.body != on.body || got.status != http.StatusOK {
			t.Errorf("read %d = %d %q, want the recorded %q", i, got.status, got.body, on.body)
		}
	}
	do(t, c, "POST", clone+"/bid", `{"amount":1}`)
	if got := do(t, c, "POST", clone+"/bid", `{"amount":1}`); got.status != DefaultFallbackStatus {
		t.Errorf("second write = %d, want the fallback %d", got.status, DefaultFallbackStatus)
	}
	rs, err := p.ReplayStats(DefaultCloneName, false)
	if err != nil || rs.Matched != 4 || rs.Reused != 2 || rs.Unmatched != 1 {
		t.Errorf("ReplayStats = %+v, %v; want 4 matched (2 reused reads), 1 unmatched write", rs, err)
	}
	if hits := len(nt.requests()); hits != 2 {
		t.Errorf("next tier saw %d calls, want only the 2 on-line ones", hits)
	}
}

// TestOutProxyStandIn checks that with StandIn a clone's read that nothing
// recorded matches is answered at once with the latest exchange of its
// route, after that exchange's latency, counted as unmatched and stood in;
// that a read of a route never seen and a write are not stood in for; and
// that none of it reaches the next tier.
func TestOutProxyStandIn(t *testing.T) {
	nt := newNextTier(t, 30*time.Millisecond)
	for _, standIn := range []bool{false, true} {
		t.Run(fmt.Sprintf("stand_in=%v", standIn), func(t *testing.T) {
			p, online, clone := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1, ReuseReads: true, StandIn: standIn})
			c := testClient()
			before := len(nt.requests())
			do(t, c, "GET", online+"/items/7?q=lamp&category=3", "")
			last := do(t, c, "GET", online+"/items/8?category=4&q=desk", "")
			do(t, c, "POST", online+"/items/8/bids", `{"amount":5}`)
			waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 3 })

			got := do(t, c, "GET", clone+"/items/42?category=1&q=chair", "")
			if !standIn {
				if got.status != DefaultFallbackStatus {
					t.Errorf("unmatched read without StandIn = %d %q, want the fallback %d", got.status, got.body, DefaultFallbackStatus)
				}
			} else if got.status != http.StatusOK || got.body != last.body || got.took < 25*time.Millisecond {
				t.Errorf("stood-in read = %d %q after %v, want the route's latest %q after its 30ms latency", got.status, got.body, got.took, last.body)
			}
			if got := do(t, c, "GET", clone+"/users/42", ""); got.status != DefaultFallbackStatus {
				t.Errorf("read of a route never seen = %d %q, want the fallback %d", got.status, got.body, DefaultFallbackStatus)
			}
			if got := do(t, c, "POST", clone+"/items/42/bids", `{"amount":5}`); got.status != DefaultFallbackStatus {
				t.Errorf("unmatched write = %d %q, want the fallback %d", got.status, got.body, DefaultFallbackStatus)
			}
			rs, err := p.ReplayStats(DefaultCloneName, false)
			wantStood := int64(0)
			if standIn {
				wantStood = 1
			}
			if err != nil || rs.Matched != 0 || rs.Unmatched != 3 || rs.StoodIn != wantStood || rs.MatchRate != 0 {
				t.Errorf("ReplayStats = %+v, %v; want 3 unmatched, %d stood in, match rate 0", rs, err, wantStood)
			}
			if st := p.Stats(); st.StoodIn != wantStood {
				t.Errorf("Stats().StoodIn = %d, want %d", st.StoodIn, wantStood)
			}
			// The stood-in answer was replayed with the next tier's 30 ms.
			if nt := rs.NextTier; (standIn && (nt.Mean < 25 || nt.Max < 25)) || (!standIn && nt.Max != 0) {
				t.Errorf("NextTier = %+v, want the 30 ms replayed (none without stand-ins)", nt)
			}
			if hits := len(nt.requests()) - before; hits != 3 {
				t.Errorf("next tier saw %d calls, want only the 3 on-line ones", hits)
			}
		})
	}
}

// TestOutProxyForwardsUnchanged checks the on-line face: the next tier
// sees the on-line instance's call as it was sent, the instance gets the
// next tier's answer as it was sent, and the record keeps the exchange
// without the connection's own headers.
func TestOutProxyForwardsUnchanged(t *testing.T) {
	next := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Answer", "42")
		w.Header().Set("Keep-Alive", "timeout=5") // hop-by-hop: forwarded, not recorded
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
	})
	p, online, clone := startOut(t, OutConfig{Upstream: next.URL, MatchWait: -1})
	c := testClient()

	// A chunked body (no Content-Length): recorded whole all the same.
	req, _ := http.NewRequest("PUT", online+"/a/b%2Fc?x=1&y=2;z=3", io.MultiReader(strings.NewReader("pay"), strings.NewReader("load")))
	req.Host = "db.internal"
	req.Header.Set("X-Custom", "v")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := mustRead(resp.Body)
	if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Answer") != "42" || resp.Header.Get("Keep-Alive") != "timeout=5" || string(body) != "PUT /a/b%2Fc?x=1&y=2;z=3" {
		t.Fatalf("on-line answer = %d %v %q, want the next tier's unchanged", resp.StatusCode, resp.Header, body)
	}
	got := next.requests()[0]
	if got.method != "PUT" || got.uri != "/a/b%2Fc?x=1&y=2;z=3" || got.host != "db.internal" || got.header.Get("X-Custom") != "v" ||
		string(got.body) != "payload" || got.header.Get("X-Forwarded-For") != "" || got.header.Get("Transfer-Encoding") != "" {
		t.Errorf("next tier saw %+v, want the call unchanged", got)
	}

	waitFor(t, 5*time.Second, "the exchange recorded", func() bool { return p.Stats().Recorded == 1 })
	req, _ = http.NewRequest("PUT", clone+"/a/b%2Fc?x=1&y=2;z=3", strings.NewReader("payload"))
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body = mustRead(resp.Body)
	if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Answer") != "42" || string(body) != "PUT /a/b%2Fc?x=1&y=2;z=3" {
		t.Errorf("replayed answer = %d %v %q, want the recorded one", resp.StatusCode, resp.Header, body)
	}
	if ka := resp.Header.Get("Keep-Alive"); ka == "timeout=5" {
		t.Errorf("replayed answer carries the on-line connection's Keep-Alive %q", ka)
	}
	if n := next.count(); n != 1 {
		t.Errorf("next tier got %d calls, want the on-line one only", n)
	}
}

// TestOutProxyNextTierDown checks that an on-line call the next tier
// cannot take gets a 502 and nothing is recorded.
func TestOutProxyNextTierDown(t *testing.T) {
	p, online, _ := startOut(t, OutConfig{Upstream: deadServer(t), MatchWait: -1})
	a := do(t, testClient(), "GET", online+"/counter", "")
	if a.status != http.StatusBadGateway {
		t.Errorf("on-line call with the next tier down = %d %q, want 502", a.status, a.body)
	}
	if s := p.Stats(); s.Recorded != 0 || s.Record.Entries != 0 {
		t.Errorf("stats %+v, want nothing recorded", s)
	}
}

func TestReplayStatsApply(t *testing.T) {
	var o justrunit.Observation
	ReplayStats{Matched: 3, MatchRate: 0.75, NextTier: justrunit.ResponseTime{Mean: 12, P95: 77, Max: 90}}.Apply(&o)
	if o.MatchRate != 0.75 || o.NextTier == nil || o.NextTier.P95 != 77 {
		t.Errorf("observation after Apply: match rate %g, next tier %+v; want 0.75 and the replayed latencies", o.MatchRate, o.NextTier)
	}
	ReplayStats{Unmatched: 2, MatchRate: 0}.Apply(&o)
	if o.MatchRate != 0 || o.NextTier != nil {
		t.Errorf("observation after Apply with nothing replayed: match rate %g, next tier %+v; want 0 and none", o.MatchRate, o.NextTier)
	}
}

// TestOutProxyStopCloneWithCallWaiting checks that a clone's call waiting
// for its match when the clone is stopped gives up and takes nothing: the
// clone leaves no place behind in the record (after MaxConsumers such
// places every new clone would match nothing), and a clone served again
// under the same name finds the exchange the stopped one was waiting for.
func TestOutProxyStopCloneWithCallWaiting(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, _ := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: 3 * time.Second})
	consumers := func() int {
		p.rec.mu.Lock()
		defer p.rec.mu.Unlock()
		return len(p.rec.consumers)
	}
	ctx := context.Background()
	a, err := p.ServeClone(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	c := testClient()
	waiting := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + a + "/counter")
		if err != nil {
			waiting <- 0
			return
		}
		mustRead(resp.Body)
		waiting <- resp.StatusCode
	}()
	waitFor(t, 5*time.Second, "the clone's call waiting for its match", func() bool { return consumers() == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- p.StopClone("a") }()
	time.Sleep(50 * time.Millisecond) // StopClone under way
	on := do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "the on-line call recorded", func() bool { return p.Stats().Recorded == 1 })
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("StopClone: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("StopClone did not return")
	}
	if code := <-waiting; code != DefaultFallbackStatus {
		t.Errorf("the call waiting when its clone stopped got %d, want the fallback %d", code, DefaultFallbackStatus)
	}
	if n := consumers(); n != 0 {
		t.Errorf("%d consumers left in the record after the clone stopped, want 0", n)
	}
	a2, err := p.ServeClone(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	on2 := do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "the second on-line call recorded", func() bool { return p.Stats().Recorded == 2 })
	if got := do(t, c, "GET", "http://"+a2+"/counter", ""); got.status != 200 || got.body != on2.body || on2.body == on.body {
		t.Errorf("the clone served again got %d %q, want the on-line answer made after it was served %q (the first was %q)", got.status, got.body, on2.body, on.body)
	}
}

// TestOutProxyNoUpgradePassThrough checks that an unmatched clone call
// asking to switch protocols is never passed through, even with its
// method allowed: the real next tier could switch, and the connection
// would then carry whatever the clone writes.
func TestOutProxyNoUpgradePassThrough(t *testing.T) {
	nt := newNextTier(t, 0)
	p, _, clone := startOut(t, OutConfig{Upstream: nt.URL, PassThrough: []string{"GET"}, MatchWait: -1})
	c := testClient()
	for _, h := range []http.Header{
		{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}},
		{"Upgrade": {"h2c"}},
		{"Connection": {"keep-alive, Upgrade"}},
	} {
		req, err := http.NewRequest("GET", clone+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		mustRead(resp.Body)
		if resp.StatusCode != DefaultFallbackStatus || resp.Header.Get(UnmatchedHeader) != "1" {
			t.Errorf("unmatched GET with %v = %d, want the fallback %d with %s", h, resp.StatusCode, DefaultFallbackStatus, UnmatchedHeader)
		}
	}
	if n := nt.count(); n != 0 {
		t.Errorf("the next tier got %d of the clone's calls, want none", n)
	}
	if st := p.Stats(); st.Unmatched != 3 || st.PassedThrough != 0 {
		t.Errorf("stats %+v, want 3 unmatched, none passed through", st)
	}
	// A plain GET still passes through.
	if a := do(t, c, "GET", clone+"/counter", ""); a.status != 200 || nt.count() != 1 {
		t.Errorf("unmatched plain GET = %d, next tier calls %d; want passed through", a.status, nt.count())
	}
}

// TestOutProxyServeCloneFailureKeepsEndpoint checks that a ServeClone
// that cannot listen leaves a clone its caller serves through
// CloneHandler, and its counts, as they were.
func TestOutProxyServeCloneFailureKeepsEndpoint(t *testing.T) {
	nt := newNextTier(t, 0)
	p, _, _ := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1})
	srv := httptest.NewServer(p.CloneHandler("x"))
	defer srv.Close()
	c := testClient()
	do(t, c, "GET", srv.URL+"/counter", "") // unmatched
	if _, err := p.ServeCloneAt(context.Background(), "x", srv.Listener.Addr().String()); err == nil {
		t.Fatal("ServeCloneAt on an address in use succeeded")
	}
	if rs, err := p.ReplayStats("x", false); err != nil || rs.Unmatched != 1 {
		t.Errorf("ReplayStats(x) after the failed ServeCloneAt = %+v, %v; want the handler's clone and its 1 unmatched call", rs, err)
	}
	if _, err := p.ServeCloneAt(context.Background(), "y", srv.Listener.Addr().String()); err == nil {
		t.Fatal("ServeCloneAt on an address in use succeeded")
	}
	if _, err := p.ReplayStats("y", false); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("ReplayStats(y) after its failed ServeCloneAt = %v, want ErrNotFound", err)
	}
}

// TestOutProxyRecordsBodyTeedAfterAnswer checks that an on-line POST whose
// 64 KiB body comes slowly, in pieces, is recorded under its whole body's
// key, whether the next tier reads the body before it answers or answers
// at once and reads the body after (the response then ends while the
// proxy is still teeing the request body): the clone's same POST matches.
// In the first case the test sends the rest of the body only once the
// answer has come back whole, so the order is not left to chance.
func TestOutProxyRecordsBodyTeedAfterAnswer(t *testing.T) {
	const pieces, pieceLen = 16, 4 << 10
	for _, tt := range []struct {
		name         string
		answersFirst bool
		chunked      bool
	}{
		{"answers before reading", true, false},
		{"answers before reading, chunked", true, true},
		{"reads first", false, false},
		{"reads first, chunked", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int64
			next := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					answer := fmt.Sprintf("HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\ncreated%02d", n.Add(1))
					if !tt.answersFirst {
						if _, err := io.Copy(io.Discard, req.Body); err != nil {
							return
						}
					}
					if _, err := io.WriteString(c, answer); err != nil {
						return
					}
					if _, err := io.Copy(io.Discard, req.Body); err != nil {
						return
					}
				}
			})
			p, online, clone := startOut(t, OutConfig{Upstream: next, MatchWait: -1})
			onlineAddr := strings.TrimPrefix(online, "http://")

			const calls = 5
			bodies := make([]string, calls)
			answers := make([]string, calls)
			for i := range calls {
				bodies[i] = strings.Repeat(fmt.Sprintf("item %d;", i), pieces*pieceLen/len("item 0;")+1)[:pieces*pieceLen]
				answers[i] = postInPieces(t, onlineAddr, bodies[i], pieceLen, tt.chunked, tt.answersFirst)
			}
			waitFor(t, 5*time.Second, "every exchange recorded or not", func() bool {
				st := p.Stats()
				return st.Recorded+st.NotRecorded == calls
			})
			if st := p.Stats(); st.Recorded != calls {
				t.Fatalf("Stats() = recorded %d, not recorded %d; want all %d recorded", st.Recorded, st.NotRecorded, calls)
			}
			c := testClient()
			for i, body := range bodies {
				if got := do(t, c, "POST", clone+"/upload", body); got.status != http.StatusCreated || got.body != answers[i] {
					t.Errorf("clone POST #%d = %d %q, want the recorded %q", i, got.status, got.body, answers[i])
				}
			}
		})
	}
}

// postInPieces sends a POST of body to addr in pieces of n bytes, a
// moment apart, and returns the answer's body. With answersFirst the
// first piece goes alone and the rest only after the answer has come back
// whole.
func postInPieces(t *testing.T, addr, body string, n int, chunked, answersFirst bool) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	framing := fmt.Sprintf("Content-Length: %d", len(body))
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	if _, err := fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: next\r\n%s\r\n\r\n", framing); err != nil {
		t.Fatal(err)
	}
	send := func(piece string) {
		if chunked {
			piece = fmt.Sprintf("%x\r\n%s\r\n", len(piece), piece)
		}
		if _, err := io.WriteString(conn, piece); err != nil {
			t.Fatalf("sending the body: %v", err)
		}
	}
	br := bufio.NewReader(conn)
	readAnswer := func() string {
		resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading the answer's body: %v", err)
		}
		return string(b)
	}
	var answer string
	for i := 0; i < len(body); i += n {
		send(body[i : i+n])
		if i == 0 && answersFirst {
			answer = readAnswer()
		} else {
			time.Sleep(time.Millisecond) // in pieces, as a slow caller sends them
		}
	}
	if chunked {
		if _, err := io.WriteString(conn, "0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	if !answersFirst {
		answer = readAnswer()
	}
	return answer
}

// TestCloneEndpointWait checks that a clone's call waiting for its match
// gets the exchange of its key recorded while it waits (and not another
// key's), gives up after its wait, when its context ends, and at once when
// the endpoint stops, and that a stopped endpoint takes nothing.
func TestCloneEndpointWait(t *testing.T) {
	r := NewRecord(time.Minute, 1<<20)
	ep := &cloneEndpoint{name: "a", consumer: "a#1", stopping: make(chan struct{})}
	ctx := context.Background()
	consumers := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.consumers)
	}

	got := make(chan *Exchange, 1)
	go func() {
		e, _, _ := ep.wait(ctx, r, "k", 10*time.Second)
		got <- e
	}()
	waitFor(t, 5*time.Second, "the call taking", func() bool { return consumers() == 1 })
	r.Add(ex("other", time.Now(), "no"))
	r.Add(ex("k", time.Now(), "yes"))
	if e := <-got; e == nil || string(e.Body) != "yes" {
		t.Fatalf("wait = %v, want the exchange of its key added while waiting", e)
	}

	start := time.Now()
	if e, ok, _ := ep.wait(ctx, r, "none", 30*time.Millisecond); ok || time.Since(start) > 5*time.Second {
		t.Fatalf("wait(none) = %v, %v after %v; want nothing after about 30ms", e, ok, time.Since(start))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if e, ok, _ := ep.wait(cctx, r, "none", 10*time.Second); ok {
		t.Fatalf("wait with its context ended = %v, want nothing", e)
	}

	done := make(chan bool, 1)
	go func() {
		_, ok, _ := ep.wait(ctx, r, "late", 10*time.Second)
		done <- ok
	}()
	ep.stop()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("wait on a stopped endpoint took an exchange")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not give up when the endpoint stopped")
	}
	r.Add(ex("late", time.Now(), "late"))
	if e, ok, _ := ep.wait(ctx, r, "late", 10*time.Second); ok {
		t.Fatalf("wait after stop = %v, want nothing taken", e)
	}
}

// TestOutProxyWindows checks that the proxy's window counts every clone's
// calls whatever becomes of the clones' own windows (ended at each
// experiment's edges, gone with a stopped clone), and that ending the
// proxy's window leaves the clones' own alone.
func TestOutProxyWindows(t *testing.T) {
	nt := newNextTier(t, 0)
	p, _, _ := startOut(t, OutConfig{Upstream: nt.URL, PassThrough: []string{"GET"}, MatchWait: -1})
	c := testClient()
	a := httptest.NewServer(p.CloneHandler("a"))
	defer a.Close()
	b := httptest.NewServer(p.CloneHandler("b"))
	defer b.Close()
	do(t, c, "GET", a.URL+"/counter", "") // unmatched: passed through
	if rs, err := p.ReplayStats("a", true); err != nil || rs.PassedThrough != 1 {
		t.Fatalf("clone a's window = %+v, %v; want 1 passed through", rs, err)
	}
	if err := p.StopClone("a"); err != nil {
		t.Fatal(err)
	}
	do(t, c, "GET", b.URL+"/counter", "")
	if st := p.Stats(); st.PassedThrough != 2 || st.Unmatched != 2 || nt.count() != 2 {
		t.Errorf("proxy window after a clone's window ended and it stopped: %+v, next tier calls %d; want 2 unmatched, 2 passed through", st, nt.count())
	}
	if st := p.Reset(); st.PassedThrough != 2 {
		t.Errorf("Reset = %+v, want 2 passed through", st)
	}
	if st := p.Stats(); st.PassedThrough != 0 || st.Unmatched != 0 {
		t.Errorf("proxy window after Reset: %+v, want it empty", st)
	}
	if rs, err := p.ReplayStats("b", false); err != nil || rs.PassedThrough != 1 || rs.Unmatched != 1 {
		t.Errorf("clone b's window after the proxy's Reset = %+v, %v; want its call still counted", rs, err)
	}
}

// TestOutProxyAttach checks that a clone attached after it was served is
// answered from the on-line calls made since it was attached, not from
// those made while it was being made.
func TestOutProxyAttach(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, _ := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1})
	c := testClient()
	a, err := p.ServeClone(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	before := do(t, c, "GET", online+"/counter", "") // while the clone is made
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 1 })
	if err := p.Attach("a"); err != nil {
		t.Fatal(err)
	}
	after := do(t, c, "GET", online+"/counter", "")
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 2 })
	if got := do(t, c, "GET", "http://"+a+"/counter", ""); got.body != after.body || got.body == before.body {
		t.Errorf("attached clone got %q, want the call made since it was attached %q (not %q)", got.body, after.body, before.body)
	}
	if err := p.Attach("nobody"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("Attach(unknown) = %v, want ErrNotFound", err)
	}
}

// TestOutProxyCloseStopsClones checks that Close stops every clone
// endpoint, however it is served: a call waiting for its match gets the
// fallback at once (Close does not wait out the grace for it), nothing is
// left listening, the record keeps no clone's place, and a call through a
// CloneHandler after Close gets the fallback, never the real next tier.
func TestOutProxyCloseStopsClones(t *testing.T) {
	nt := newNextTier(t, 0)
	p, err := NewOutProxy(OutConfig{Upstream: nt.URL, MatchWait: time.Minute, PassThrough: []string{"GET"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ctx := context.Background()
	on, cl, err := p.Start(ctx, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.ServeClone(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ServeCloneOn("b", ln); err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(p.CloneHandler("c"))
	defer h.Close()
	c := testClient()
	waiting := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + a + "/counter")
		if err != nil {
			waiting <- 0
			return
		}
		mustRead(resp.Body)
		waiting <- resp.StatusCode
	}()
	waitFor(t, 5*time.Second, "the clone's call waiting for its match", func() bool { return waitingCalls(p.rec) == 1 })

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if took := time.Since(start); took > DefaultShutdownGrace/2 {
		t.Errorf("Close took %v with a clone's call waiting, want it stopped at once (grace %v)", took, DefaultShutdownGrace)
	}
	if code := <-waiting; code != DefaultFallbackStatus {
		t.Errorf("the call waiting at Close got %d, want the fallback %d", code, DefaultFallbackStatus)
	}
	for _, addr := range []string{on.String(), cl.String(), a, ln.Addr().String()} {
		assertFree(t, addr)
	}
	p.rec.mu.Lock()
	places := len(p.rec.consumers)
	p.rec.mu.Unlock()
	if places != 0 {
		t.Errorf("%d clones keep a place in the record after Close, want none", places)
	}
	late := httptest.NewServer(p.CloneHandler("d")) // a clone first served after Close
	defer late.Close()
	for name, u := range map[string]string{"c": h.URL, "d": late.URL} {
		if a := do(t, c, "GET", u+"/counter", ""); a.status != DefaultFallbackStatus || a.header.Get(UnmatchedHeader) != "1" {
			t.Errorf("call through CloneHandler(%s) after Close = %d, want the fallback %d", name, a.status, DefaultFallbackStatus)
		}
	}
	if n := nt.count(); n != 0 {
		t.Errorf("the next tier got %d calls after Close, want none", n)
	}
}

// TestOutProxyStoppedCloneNoReuseOrStandIn: a clone's call that found no
// match while its clone was live, and finds it stopped after, gets the
// fallback, like any call after stop: not the latest exchange of its key
// (ReuseReads) or of its route (StandIn).
func TestOutProxyStoppedCloneNoReuseOrStandIn(t *testing.T) {
	nt := newNextTier(t, 0)
	for _, tc := range []struct{ name, path string }{
		{"reuse", "/items/7"},    // recorded, and taken already
		{"stand in", "/items/9"}, // not recorded; its route is
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, h, ep := newCloneOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1, ReuseReads: true, StandIn: true, PassThrough: []string{"GET"}})
			e := ex(p.cfg.Masks.Key("GET", "/items/7", "", nil), time.Now(), "item 7")
			e.Route = p.route("GET", "/items/7", "")
			p.rec.Add(e)
			if _, ok, _ := ep.take(p.rec, e.Key); !ok {
				t.Fatal("the clone took nothing of what was recorded")
			}
			p.afterTake = func(*http.Request) { ep.stop() } // StopClone, after the call's take
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
			if rec.Code != DefaultFallbackStatus || rec.Header().Get(UnmatchedHeader) != "1" {
				t.Errorf("GET %s on a clone stopped after its take = %d %q, want the fallback %d", tc.path, rec.Code, rec.Body.String(), DefaultFallbackStatus)
			}
			rs, err := p.ReplayStats("a", false)
			if err != nil || rs.Matched != 0 || rs.Reused != 0 || rs.StoodIn != 0 || rs.PassedThrough != 0 || rs.Unmatched != 1 {
				t.Errorf("ReplayStats = %+v, %v; want 1 unmatched, answered with the fallback", rs, err)
			}
			if n := nt.count(); n != 0 {
				t.Errorf("the next tier got %d calls, want none", n)
			}
		})
	}
}
