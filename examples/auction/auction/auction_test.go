package auction

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// site is the three tiers running on loopback with kernel-chosen ports.
type site struct {
	data                    *DataServer
	dataURL, appURL, webURL string
	dataSrv, appSrv, webSrv *httptest.Server
}

// startSite starts the three tiers; dataHandler, if not nil, wraps the data
// tier (to record or replay what the app tier asks it).
func startSite(t *testing.T, work float64, wrap func(http.Handler) http.Handler) *site {
	t.Helper()
	d, err := NewDataServer(t.TempDir(), DataOptions{SeedItems: 200, SeedUsers: 50})
	if err != nil {
		t.Fatalf("NewDataServer: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	var dh http.Handler = d
	if wrap != nil {
		dh = wrap(d)
	}
	s := &site{data: d}
	s.dataSrv = httptest.NewServer(dh)
	t.Cleanup(s.dataSrv.Close)
	a, err := NewAppServer(s.dataSrv.URL, AppOptions{Work: work})
	if err != nil {
		t.Fatalf("NewAppServer: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	s.appSrv = httptest.NewServer(a)
	t.Cleanup(s.appSrv.Close)
	w, err := NewWebServer(s.appSrv.URL, WebOptions{})
	if err != nil {
		t.Fatalf("NewWebServer: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	s.webSrv = httptest.NewServer(w)
	t.Cleanup(s.webSrv.Close)
	s.dataURL, s.appURL, s.webURL = s.dataSrv.URL, s.appSrv.URL, s.webSrv.URL
	return s
}

// do sends a request and returns the status and body.
func do(t *testing.T, method, url, contentType, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

const (
	form = "application/x-www-form-urlencoded"
	js   = "application/json"
)

func TestWebEndpoints(t *testing.T) {
	s := startSite(t, 0.1, nil)
	tests := []struct {
		name, method, path, ctype, body string
		want                            int
		contains                        string
	}{
		{"home", "GET", "/", "", "", 200, "<h1>Categories</h1>"},
		{"browse", "GET", "/browse?category=3", "", "", 200, "Business &amp; Industrial"},
		{"browse page 1", "GET", "/browse?category=3&page=1", "", "", 200, "page 1"},
		{"browse no category", "GET", "/browse", "", "", 400, "category"},
		{"browse bad category", "GET", "/browse?category=21", "", "", 400, "category"},
		{"item", "GET", "/item/7", "", "", 200, "bid history"},
		{"item missing", "GET", "/item/100000", "", "", 404, "no item 100000"},
		{"item bad id", "GET", "/item/x", "", "", 400, "bad id"},
		{"bids", "GET", "/item/7/bids", "", "", 200, "Bids on"},
		{"search", "GET", "/search?q=vintage", "", "", 200, "Search: vintage"},
		{"search two words", "GET", "/search?q=Vintage+LAMP&page=1", "", "", 200, "Search: vintage lamp"},
		{"search no q", "GET", "/search", "", "", 400, "q: missing"},
		{"sell form", "GET", "/sell", "", "", 200, `action="/sell"`},
		{"bid form", "POST", "/bid", form, "item_id=5&user_id=2", 201, "Bid placed"},
		{"bid json", "POST", "/bid", js, `{"item_id":6,"user_id":2}`, 201, "Bid placed"},
		{"bid too low", "POST", "/bid", js, `{"item_id":6,"user_id":3,"amount":1}`, 409, "Bid too low"},
		{"bid unknown user", "POST", "/bid", js, `{"item_id":6,"user_id":5000,"amount":900000}`, 404, "no such item"},
		{"bid bad form", "POST", "/bid", form, "item_id=abc&user_id=2", 400, "item_id"},
		{"bid bad json", "POST", "/bid", js, `{"item":1}`, 400, "unknown field"},
		{"sell", "POST", "/sell", form, "seller_id=4&name=old+radio&description=works&category=9&start_price=1500", 201, "old radio"},
		{"sell json", "POST", "/sell", js, `{"seller_id":4,"name":"lamp","category":12,"start_price":100}`, 201, "Home &amp; Garden"},
		{"sell no name", "POST", "/sell", js, `{"seller_id":4,"name":" ","category":12,"start_price":100}`, 400, "name"},
		{"sell bad category", "POST", "/sell", js, `{"seller_id":4,"name":"x","category":0,"start_price":100}`, 400, "category"},
		{"healthz", "GET", "/healthz", "", "", 200, `"ok"`},
		{"not found", "GET", "/nope", "", "", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, tt.method, s.webURL+tt.path, tt.ctype, tt.body)
			if status != tt.want || !strings.Contains(body, tt.contains) {
				t.Errorf("%s %s = %d %.300q, want %d containing %q", tt.method, tt.path, status, body, tt.want, tt.contains)
			}
		})
	}
	for _, u := range []string{s.appURL, s.dataURL} {
		if status, _ := do(t, "GET", u+"/healthz", "", ""); status != 200 {
			t.Errorf("GET %s/healthz = %d, want 200", u, status)
		}
	}
}

func TestWebJSON(t *testing.T) {
	s := startSite(t, 0.1, nil)
	for _, tc := range []struct{ path, accept string }{
		{"/item/3?format=json", ""},
		{"/item/3", "application/json"},
	} {
		status, body := do(t, "GET", s.webURL+tc.path, "", "", "Accept", tc.accept)
		var p Page
		if err := json.Unmarshal([]byte(body), &p); status != 200 || err != nil || p.Kind != "item" {
			t.Errorf("GET %s (Accept %q) = %d, kind %q, err %v; want 200 and an item page", tc.path, tc.accept, status, p.Kind, err)
		}
	}
}

// dataItem reads an item and its bids straight from the data tier.
func dataItem(t *testing.T, s *site, id int) (Item, []Bid) {
	t.Helper()
	var it Item
	_, body := do(t, "GET", fmt.Sprintf("%s/items/%d", s.dataURL, id), "", "")
	if err := json.Unmarshal([]byte(body), &it); err != nil {
		t.Fatalf("item %d: %v in %q", id, err, body)
	}
	var bl BidList
	_, body = do(t, "GET", fmt.Sprintf("%s/items/%d/bids?limit=500", s.dataURL, id), "", "")
	if err := json.Unmarshal([]byte(body), &bl); err != nil {
		t.Fatalf("bids of %d: %v in %q", id, err, body)
	}
	return it, bl.Bids
}

func TestBidPersistedAndLosingBidRejected(t *testing.T) {
	s := startSite(t, 0.1, nil)
	before, bidsBefore := dataItem(t, s, 10)
	amount := MinNextBid(before) + 1234
	status, body := do(t, "POST", s.webURL+"/bid", js, fmt.Sprintf(`{"item_id":10,"user_id":7,"amount":%d}`, amount))
	if status != http.StatusCreated {
		t.Fatalf("winning bid = %d %q, want 201", status, body)
	}
	after, bids := dataItem(t, s, 10)
	if after.MaxBid != amount || after.NumBids != before.NumBids+1 || len(bids) != len(bidsBefore)+1 {
		t.Fatalf("after bid of %d: max %d, num %d, %d bids; want %d, %d, %d",
			amount, after.MaxBid, after.NumBids, len(bids), amount, before.NumBids+1, len(bidsBefore)+1)
	}
	if top := bids[0]; top.UserID != 7 || top.Amount != amount {
		t.Errorf("top bid = %+v, want user 7 amount %d", top, amount)
	}

	// A bid that does not beat the new price by the increment loses,
	// both when the app tier sees it and when only the data tier can.
	status, body = do(t, "POST", s.webURL+"/bid", js, fmt.Sprintf(`{"item_id":10,"user_id":8,"amount":%d}`, amount))
	if status != http.StatusConflict || !strings.Contains(body, "Bid too low") {
		t.Errorf("losing bid via web = %d %.200q, want 409 Bid too low", status, body)
	}
	status, body = do(t, "POST", s.dataURL+"/items/10/bids", js, fmt.Sprintf(`{"user_id":8,"amount":%d}`, amount+1))
	var rej BidRejection
	if err := json.Unmarshal([]byte(body), &rej); status != http.StatusConflict || err != nil || rej.MinBid != MinNextBid(after) {
		t.Errorf("losing bid via data = %d %q, want 409 with min_bid %d", status, body, MinNextBid(after))
	}
	// A bid past MaxBid is refused (a huge one made the next minimum
	// overflow, so that any bid won after it).
	if status, body := do(t, "POST", s.dataURL+"/items/10/bids", js, `{"user_id":8,"amount":9200000000000000000}`); status != http.StatusBadRequest {
		t.Errorf("bid of 9.2e18 cents = %d %q, want 400", status, body)
	}
	if again, bids2 := dataItem(t, s, 10); again != after || len(bids2) != len(bids) {
		t.Errorf("losing bids changed the item: %+v -> %+v, %d -> %d bids", after, again, len(bids), len(bids2))
	}

	// The state outlives the data tier: reopen the directory.
	dir := t.TempDir()
	d1, err := NewDataServer(dir, DataOptions{SeedItems: 5, SeedUsers: 5})
	if err != nil {
		t.Fatal(err)
	}
	if b, status, err := d1.placeBid(t.Context(), 2, BidRequest{UserID: 3, Amount: 1 << 30}); err != nil || status != 201 {
		t.Fatalf("placeBid = %+v, %d, %v", b, status, err)
	}
	d1.Close()
	d2, err := NewDataServer(dir, DataOptions{SeedItems: 50, SeedUsers: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	rec := httptest.NewRecorder()
	d2.ServeHTTP(rec, httptest.NewRequest("GET", "/items?limit=100", nil))
	var list ItemList
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || list.Total != 5 || list.Items[1].MaxBid != 1<<30 {
		t.Errorf("reopened: %d items, item 2 max bid %d (err %v); want 5 items (no re-seed) and %d", list.Total, list.Items[1].MaxBid, err, 1<<30)
	}
}

func TestConcurrentBids(t *testing.T) {
	s := startSite(t, 0.05, nil)
	const n = 16
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Go(func() {
			statuses[i], _ = do(t, "POST", s.appURL+"/bid", js, fmt.Sprintf(`{"item_id":20,"user_id":%d}`, 1+i))
		})
	}
	wg.Wait()
	won := 0
	for i, st := range statuses {
		switch st {
		case http.StatusCreated:
			won++
		case http.StatusConflict:
		default:
			t.Errorf("bid %d = %d, want 201 or 409", i, st)
		}
	}
	it, bids := dataItem(t, s, 20)
	var placed []Bid
	for _, b := range bids {
		if !strings.HasPrefix(b.CreatedAt, "2026-01-01") { // not seeded
			placed = append(placed, b)
		}
	}
	if won == 0 || len(placed) != won {
		t.Fatalf("%d bids won, %d recorded; want the same, at least 1", won, len(placed))
	}
	if it.MaxBid != bids[0].Amount {
		t.Errorf("max bid %d, highest bid %d; want equal", it.MaxBid, bids[0].Amount)
	}
	slices.SortFunc(placed, func(a, b Bid) int { return int(a.ID - b.ID) })
	for i := 1; i < len(placed); i++ {
		if placed[i].Amount <= placed[i-1].Amount {
			t.Errorf("bid %d (%d) does not beat bid %d (%d)", placed[i].ID, placed[i].Amount, placed[i-1].ID, placed[i-1].Amount)
		}
	}
}

// exchange is one request the app tier sent the data tier and the answer.
type exchange struct {
	method, url, body string
	status            int
	answer            []byte
}

// replayer plays an out-proxy: the first time it sees a request it passes
// it to the data tier and records the answer; later it answers identical
// requests from the record. It logs every request it sees.
type replayer struct {
	next http.Handler
	mu   sync.Mutex
	seen []string
	rec  map[string]exchange
}

func (p *replayer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Method + " " + r.URL.String() + " " + string(body)
	p.mu.Lock()
	p.seen = append(p.seen, key)
	ex, ok := p.rec[key]
	p.mu.Unlock()
	if !ok {
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		p.next.ServeHTTP(rec, r)
		ex = exchange{method: r.Method, url: r.URL.String(), body: string(body), status: rec.Code, answer: rec.Body.Bytes()}
		p.mu.Lock()
		p.rec[key] = ex
		p.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ex.status)
	w.Write(ex.answer)
}

func (p *replayer) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.seen)
	p.seen = nil
	return out
}

// stripGenerated removes the one field allowed to differ.
func stripGenerated(t *testing.T, body string) Page {
	t.Helper()
	var p Page
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("not a page: %v: %.200q", err, body)
	}
	if p.GeneratedAt == "" {
		t.Errorf("page %s has no generated_at", p.Kind)
	}
	p.GeneratedAt = ""
	return p
}

// TestAppDeterministic checks that identical requests to two app tiers
// with identical data-tier answers (an out-proxy's replay) give identical
// pages, apart from generated_at, and identical data-tier requests.
func TestAppDeterministic(t *testing.T) {
	var rp *replayer
	s := startSite(t, 0.2, func(d http.Handler) http.Handler {
		rp = &replayer{next: d, rec: map[string]exchange{}}
		return rp
	})
	// A second app tier, like a clone, behind the same replayer.
	clone, err := NewAppServer(s.dataURL, AppOptions{Work: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	cloneSrv := httptest.NewServer(clone)
	defer cloneSrv.Close()

	reqs := []struct{ method, path, body string }{
		{"GET", "/", ""},
		{"GET", "/browse?category=4&page=1", ""},
		{"GET", "/item/12", ""},
		{"GET", "/item/12/bids", ""},
		{"GET", "/search?q=rare+clock", ""},
		{"POST", "/bid", `{"item_id":12,"user_id":9}`},
		{"POST", "/sell", `{"seller_id":3,"name":"a  b","description":"c","category":2,"start_price":700}`},
	}
	for _, r := range reqs {
		status1, body1 := do(t, r.method, s.appURL+r.path, js, r.body)
		seen1 := rp.requests()
		status2, body2 := do(t, r.method, cloneSrv.URL+r.path, js, r.body)
		seen2 := rp.requests()
		p1, p2 := stripGenerated(t, body1), stripGenerated(t, body2)
		if status1 != status2 || !reflectEqual(p1, p2) {
			t.Errorf("%s %s: on-line %d, clone %d; pages differ:\n%+v\n%+v", r.method, r.path, status1, status2, p1, p2)
		}
		if status1/100 != 2 {
			t.Errorf("%s %s = %d %.200q, want 2xx", r.method, r.path, status1, body1)
		}
		if !slices.Equal(seen1, seen2) || len(seen1) == 0 {
			t.Errorf("%s %s: data-tier requests differ or are missing:\n%q\n%q", r.method, r.path, seen1, seen2)
		}
		if r.method == "GET" { // and the same tier answers the same again
			_, body3 := do(t, r.method, s.appURL+r.path, js, r.body)
			rp.requests()
			if p3 := stripGenerated(t, body3); !reflectEqual(p1, p3) {
				t.Errorf("%s %s twice: pages differ", r.method, r.path)
			}
		}
	}
}

func reflectEqual(a, b Page) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// cpuTime is the CPU time this process has used.
func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Skipf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestWorkIsCPU checks that the work factor buys CPU time in the app
// process (not sleep): CPU time, unlike wall time, does not depend on what
// else the machine runs.
func TestWorkIsCPU(t *testing.T) {
	s := startSite(t, 10, nil)
	do(t, "GET", s.appURL+"/item/1", "", "") // warm up
	const n = 5
	c0, w0 := cpuTime(t), time.Now()
	for range n {
		do(t, "GET", s.appURL+"/item/1", "", "")
	}
	cpu, wall := cpuTime(t)-c0, time.Since(w0)
	// An item page costs about 16-21 units of ~0.1 ms; at work 10 about
	// 16-21 ms each.
	if cpu < n*8*time.Millisecond {
		t.Errorf("%d item pages at work 10 used %v of CPU (%v wall), want at least %v", n, cpu, wall, n*8*time.Millisecond)
	}
	t.Logf("%d item pages at work 10: %v CPU, %v wall", n, cpu, wall)
}

func TestConstructorErrors(t *testing.T) {
	if _, err := NewDataServer("", DataOptions{}); err == nil {
		t.Error("NewDataServer(\"\") = nil error, want one")
	}
	for _, u := range []string{"", "127.0.0.1:1", "ftp://x"} {
		if _, err := NewAppServer(u, AppOptions{}); err == nil {
			t.Errorf("NewAppServer(%q) = nil error, want one", u)
		}
		if _, err := NewWebServer(u, WebOptions{}); err == nil {
			t.Errorf("NewWebServer(%q) = nil error, want one", u)
		}
	}
	if _, err := NewAppServer("http://127.0.0.1:1", AppOptions{Work: -1}); err == nil {
		t.Error("NewAppServer(work -1) = nil error, want one")
	}
}

func TestNextTierDown(t *testing.T) {
	// Port 1 on loopback: nothing listens, the connection is refused.
	a, _ := NewAppServer("http://127.0.0.1:1", AppOptions{Client: NewClient(time.Second)})
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/item/1", nil))
	if rec.Code != http.StatusBadGateway {
		t.Errorf("app with no data tier: GET /item/1 = %d, want 502", rec.Code)
	}
	w, _ := NewWebServer("http://127.0.0.1:1", WebOptions{Client: NewClient(time.Second)})
	for _, accept := range []string{"text/html", "application/json"} {
		rec = httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/item/1", nil)
		req.Header.Set("Accept", accept)
		w.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "app tier unavailable") {
			t.Errorf("web with no app tier: GET /item/1 (Accept %s) = %d %.200q, want 502 app tier unavailable", accept, rec.Code, rec.Body.String())
		}
	}
}

func TestDollars(t *testing.T) {
	for _, tt := range []struct {
		cents int64
		want  string
	}{{0, "$0.00"}, {5, "$0.05"}, {123456, "$1,234.56"}, {100000000, "$1,000,000.00"}, {-250, "-$2.50"}} {
		if got := dollars(tt.cents); got != tt.want {
			t.Errorf("dollars(%d) = %q, want %q", tt.cents, got, tt.want)
		}
	}
}

// TestMeasureUnit checks that MeasureUnit gives the time a unit of work
// takes: work of 50 units takes at least about 50 of them.
func TestMeasureUnit(t *testing.T) {
	unit := MeasureUnit()
	if unit <= 0 {
		t.Fatalf("MeasureUnit = %v, want > 0", unit)
	}
	best := time.Duration(math.MaxInt64)
	for i := range 5 {
		start := time.Now()
		measureSink ^= spin(uint64(i), 50*unitRounds)
		best = min(best, time.Since(start))
	}
	if got := float64(best) / float64(50*unit); got < 0.7 {
		t.Errorf("50 units took %v, %.2f times 50 × MeasureUnit (%v): MeasureUnit overstates a unit", best, got, unit)
	}
}

// TestAuctionsClose: an item put up for sale leaves the catalogue after the
// auction length (found by id still, taking no more bids), an id is never
// given twice, and the seeded items stay.
func TestAuctionsClose(t *testing.T) {
	var clock atomic.Int64
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) { clock.Store(t0.Add(d).UnixNano()) }
	at(0)
	d, err := NewDataServer(t.TempDir(), DataOptions{SeedItems: 5, SeedUsers: 5, AuctionLength: 10 * time.Second,
		Clock: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	data := httptest.NewServer(d)
	t.Cleanup(data.Close)
	a, err := NewAppServer(data.URL, AppOptions{Work: 0.05})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	app := httptest.NewServer(a)
	t.Cleanup(app.Close)

	sell := func(name string) Item {
		t.Helper()
		status, body := do(t, "POST", data.URL+"/items", js,
			fmt.Sprintf(`{"seller_id":1,"name":%q,"description":"d","category":2,"start_price":500}`, name))
		var it Item
		if err := json.Unmarshal([]byte(body), &it); status != http.StatusCreated || err != nil {
			t.Fatalf("sell %s = %d %q (%v)", name, status, body, err)
		}
		return it
	}
	get := func(id int64) Item {
		t.Helper()
		status, body := do(t, "GET", fmt.Sprintf("%s/items/%d", data.URL, id), "", "")
		var it Item
		if err := json.Unmarshal([]byte(body), &it); status != http.StatusOK || err != nil {
			t.Fatalf("GET /items/%d = %d %q (%v)", id, status, body, err)
		}
		return it
	}
	listed := func() (ids []int64, total int) {
		t.Helper()
		_, body := do(t, "GET", data.URL+"/items?limit=100", "", "")
		var list ItemList
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			t.Fatalf("GET /items: %q: %v", body, err)
		}
		for _, it := range list.Items {
			ids = append(ids, it.ID)
		}
		_, body = do(t, "GET", data.URL+"/categories", "", "")
		var cats struct{ Categories []Category }
		if err := json.Unmarshal([]byte(body), &cats); err != nil {
			t.Fatalf("GET /categories: %q: %v", body, err)
		}
		for _, c := range cats.Categories {
			total += c.Items
		}
		return ids, total
	}

	first := sell("first") // 6
	// A sold item with bids closes too (with foreign keys enforced on
	// bids.item_id it could not leave items, and every later sale failed).
	if status, body := do(t, "POST", data.URL+"/items/6/bids", js, `{"user_id":2,"amount":100000}`); status != http.StatusCreated {
		t.Fatalf("bid on a sold item = %d %q, want 201", status, body)
	}
	at(5 * time.Second)
	second := sell("second") // 7
	at(12 * time.Second)
	third := sell("third") // 8; first closes
	if first.ID != 6 || second.ID != 7 || third.ID != 8 {
		t.Fatalf("ids %d, %d, %d; want 6, 7, 8", first.ID, second.ID, third.ID)
	}
	if ids, total := listed(); !slices.Equal(ids, []int64{1, 2, 3, 4, 5, 7, 8}) || total != 7 {
		t.Errorf("listed %v, categories count %d; want [1 2 3 4 5 7 8] and 7", ids, total)
	}
	if it := get(first.ID); it.ClosedAt != t0.Add(12*time.Second).Format(timeFormat) || it.Name != "first" {
		t.Errorf("closed item = %+v, want it closed at 12 s", it)
	}
	if it := get(second.ID); it.ClosedAt != "" {
		t.Errorf("open item = %+v, want no closed_at", it)
	}
	if status, body := do(t, "GET", data.URL+"/items/6/bids", "", ""); status != http.StatusOK || !strings.Contains(body, `"amount":100000`) {
		t.Errorf("bids of a closed item = %d %q, want 200 with its bid", status, body)
	}
	if status, body := do(t, "POST", data.URL+"/items/6/bids", js, `{"user_id":2,"amount":100000}`); status != http.StatusGone || !strings.Contains(body, "closed") {
		t.Errorf("bid on a closed item = %d %q, want 410 saying it closed", status, body)
	}
	status, body := do(t, "POST", app.URL+"/bid", js, `{"item_id":6,"user_id":2}`)
	if page := (Page{}); status != http.StatusConflict || json.Unmarshal([]byte(body), &page) != nil || page.Title != "Auction closed" {
		t.Errorf("app bid on a closed item = %d %q, want 409 \"Auction closed\"", status, body)
	}

	// A bid past an auction's end, with no sale since, finds it closed.
	at(18 * time.Second)
	if status, body := do(t, "POST", data.URL+"/items/7/bids", js, `{"user_id":2,"amount":100000}`); status != http.StatusGone {
		t.Errorf("bid on item 7 after its end (no sale since) = %d %q, want 410", status, body)
	}
	// With no sale or bid, the closer takes an item out of the listing
	// within a second or so of its end.
	at(25 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ids, total := listed()
		if slices.Equal(ids, []int64{1, 2, 3, 4, 5}) && total == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listed %v (%d) 10 s after item 8's end with no sale or bid, want the seeded items alone", ids, total)
		}
	}

	// Every listed item closes; the next id is still past them all.
	at(time.Minute)
	fourth := sell("fourth")
	if fourth.ID != 9 {
		t.Errorf("after the listed items closed, a new item got id %d, want 9 (ids are never given twice)", fourth.ID)
	}
	if ids, _ := listed(); !slices.Equal(ids, []int64{1, 2, 3, 4, 5, 9}) {
		t.Errorf("listed %v, want the seeded items and 9", ids)
	}
	// Seeded items never close.
	if it := get(1); it.ClosedAt != "" {
		t.Errorf("seeded item 1 = %+v, want it open", it)
	}
	if status, body := do(t, "POST", data.URL+"/items/1/bids", js, `{"user_id":2,"amount":100000000}`); status != http.StatusCreated {
		t.Errorf("bid on seeded item 1 = %d %q, want 201", status, body)
	}
}

// TestAuctionsNeverClose: a negative auction length keeps every item listed.
func TestAuctionsNeverClose(t *testing.T) {
	var clock atomic.Int64
	d, err := NewDataServer(t.TempDir(), DataOptions{SeedItems: 2, SeedUsers: 2, AuctionLength: -1,
		Clock: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	for i := range 3 {
		clock.Store(int64(i) * int64(24*time.Hour))
		if status, body := do(t, "POST", srv.URL+"/items", js, `{"seller_id":1,"name":"n","description":"d","category":1,"start_price":5}`); status != http.StatusCreated {
			t.Fatalf("sell = %d %q", status, body)
		}
	}
	_, body := do(t, "GET", srv.URL+"/items", "", "")
	var list ItemList
	if err := json.Unmarshal([]byte(body), &list); err != nil || list.Total != 5 {
		t.Errorf("GET /items = %q (%v), want all 5 items listed", body, err)
	}
}
