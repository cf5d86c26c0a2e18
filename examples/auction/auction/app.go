package auction

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PageSize is how many rows a browse or search page shows.
const PageSize = 25

// searchCandidates is how many matching items the app tier ranks per search.
const searchCandidates = 200

// Page is the app tier's answer to every request: a rendered HTML fragment
// for the web tier to wrap, the structured data it was rendered from, and a
// signature of the CPU work done for it.
//
// For identical requests and identical data-tier answers the app tier
// returns identical pages, except GeneratedAt.
type Page struct {
	Kind        string          `json:"kind"`  // home, browse, item, bids, search, bid or sell
	Title       string          `json:"title"` // plain text
	HTML        string          `json:"html"`  // body fragment, safe HTML
	Data        json.RawMessage `json:"data"`
	Signature   string          `json:"signature"`    // digest of the work done (AppOptions.Work dependent)
	GeneratedAt string          `json:"generated_at"` // the only field that differs between identical requests
}

// BidForm is the body of POST /bid on the app and web tiers (JSON, or a
// form with the same field names). Amount is in cents; 0 means the least
// acceptable bid, the current price plus the increment.
type BidForm struct {
	ItemID int64 `json:"item_id"`
	UserID int64 `json:"user_id"`
	Amount int64 `json:"amount,omitempty"`
}

// AppOptions configures an [AppServer].
type AppOptions struct {
	// Work scales the CPU work per request: DefaultWork (1) is the
	// calibrated default of about 2–5 ms per request, 0 does no synthetic
	// work (rendering and JSON remain), 2 doubles it.
	Work float64
	// Client calls the data tier; nil means NewClient(DefaultTimeout).
	Client *http.Client
	// Logger receives errors; nil discards them.
	Logger *slog.Logger
	// Now stamps Page.GeneratedAt; nil means time.Now.
	Now func() time.Time
}

// AppServer is the application tier: for each request it calls the data
// tier over HTTP, then does CPU work proportional to the request type
// (ranking search results, a fraud score for bids, rendering rows) and
// answers with a JSON [Page]. Paths:
//
//	GET  /                      categories (home page)
//	GET  /browse?category=&page= items of a category, PageSize a page
//	GET  /item/{id}             an item, its seller and top bids
//	GET  /item/{id}/bids        an item's bid history
//	GET  /search?q=&page=       items matching q, ranked
//	POST /bid                   BidForm -> 201, or 409 when too low or the auction has closed
//	POST /sell                  SellRequest -> 201
//	GET  /healthz
//
// The work is CPU-bound in the serving goroutine, so the response time
// follows the CPU share the process gets.
type AppServer struct {
	data   *url.URL
	client *http.Client
	work   float64
	log    *slog.Logger
	now    func() time.Time
	mux    *http.ServeMux
}

var _ http.Handler = (*AppServer)(nil)

// NewAppServer returns the app tier calling the data tier at dataURL (or an
// out-proxy standing in for it).
func NewAppServer(dataURL string, opts AppOptions) (*AppServer, error) {
	u, err := url.Parse(dataURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("new app tier: data URL %q: want http://host:port", dataURL)
	}
	if opts.Work < 0 || math.IsNaN(opts.Work) || math.IsInf(opts.Work, 0) {
		return nil, fmt.Errorf("new app tier: work %v: want >= 0", opts.Work)
	}
	a := &AppServer{data: u, client: opts.Client, work: opts.Work, log: opts.Logger, now: opts.Now}
	if a.client == nil {
		a.client = NewClient(DefaultTimeout)
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", handleHealthz)
	mux.HandleFunc("GET /{$}", a.handleHome)
	mux.HandleFunc("GET /browse", a.handleBrowse)
	mux.HandleFunc("GET /item/{id}", a.handleItem)
	mux.HandleFunc("GET /item/{id}/bids", a.handleBids)
	mux.HandleFunc("GET /search", a.handleSearch)
	mux.HandleFunc("POST /bid", a.handleBid)
	mux.HandleFunc("POST /sell", a.handleSell)
	a.mux = mux
	return a, nil
}

// ServeHTTP serves the app tier.
func (a *AppServer) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Close closes idle connections to the data tier.
func (a *AppServer) Close() error {
	a.client.CloseIdleConnections()
	return nil
}

// dataURL is the data tier's URL for path and query.
func (a *AppServer) dataURL(path string, q url.Values) string {
	u := *a.data
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = q.Encode() // sorted keys: the same request always asks the same URL
	return u.String()
}

func (a *AppServer) get(ctx context.Context, path string, q url.Values, out any) error {
	return call(ctx, a.client, http.MethodGet, a.dataURL(path, q), nil, out)
}

// render executes a fragment template and writes the page.
func (a *AppServer) render(w http.ResponseWriter, status int, kind, title string, m *meter, data any) {
	var buf bytes.Buffer
	if err := appTemplates.ExecuteTemplate(&buf, kind, data); err != nil {
		a.log.Error("render page", "kind", kind, "err", err)
		writeError(w, http.StatusInternalServerError, "render %s: %v", kind, err)
		return
	}
	raw, err := json.Marshal(data)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode %s: %v", kind, err)
		return
	}
	writeJSON(w, status, Page{
		Kind: kind, Title: title, HTML: buf.String(), Data: raw,
		Signature: m.signature(), GeneratedAt: a.now().UTC().Format(time.RFC3339Nano),
	})
}

// downstream answers for a failed data-tier call: its 4xx passes through,
// anything else is 502.
func (a *AppServer) downstream(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	status := statusOf(err)
	if status == http.StatusBadGateway {
		a.log.Error("data tier call failed", "path", r.URL.Path, "err", err)
	}
	writeError(w, status, "data tier: %v", err)
}

// row is a rendered item row, with the digest of the work done for it.
type row struct {
	Item
	Price string `json:"price"` // current price, formatted
	Score int    `json:"score,omitempty"`
	Sig   string `json:"sig"`
}

func (a *AppServer) rows(m *meter, items []Item, units float64) []row {
	rows := make([]row, len(items))
	for i, it := range items {
		h := m.burn(hashOf(it.ID, it.Name, it.Description, it.MaxBid, it.NumBids), units)
		rows[i] = row{Item: it, Price: dollars(currentPrice(it)), Sig: strconv.FormatUint(h&0xffffffff, 16)}
	}
	return rows
}

func (a *AppServer) handleHome(w http.ResponseWriter, r *http.Request) {
	var res struct {
		Categories []Category `json:"categories"`
	}
	if err := a.get(r.Context(), "/categories", nil, &res); err != nil {
		a.downstream(w, r, err)
		return
	}
	m := &meter{work: a.work}
	type catRow struct {
		Category
		Sig string `json:"sig"`
	}
	rows := make([]catRow, len(res.Categories))
	for i, c := range res.Categories {
		h := m.burn(hashOf(c.ID, c.Name, c.Items), homeUnitsPerCategory)
		rows[i] = catRow{Category: c, Sig: strconv.FormatUint(h&0xffffffff, 16)}
	}
	a.render(w, http.StatusOK, "home", "Categories", m, map[string]any{"categories": rows})
}

func (a *AppServer) handleBrowse(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cat, err := intParam(q, "category", 0, 1, len(Categories))
	if err == nil && cat == 0 {
		err = fmt.Errorf("category: missing")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	page, err := intParam(q, "page", 0, 0, 10000)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var list ItemList
	dq := url.Values{"category": {strconv.Itoa(cat)}, "offset": {strconv.Itoa(page * PageSize)}, "limit": {strconv.Itoa(PageSize)}}
	if err := a.get(r.Context(), "/items", dq, &list); err != nil {
		a.downstream(w, r, err)
		return
	}
	m := &meter{work: a.work}
	rows := a.rows(m, list.Items, browseUnitsPerRow)
	a.render(w, http.StatusOK, "browse", Categories[cat-1], m, map[string]any{
		"category": cat, "category_name": Categories[cat-1], "page": page, "total": list.Total,
		"rows": rows, "next": nextPage(page, list.Total),
	})
}

// nextPage is the next page number, or -1 on the last page.
func nextPage(page, total int) int {
	if (page+1)*PageSize < total {
		return page + 1
	}
	return -1
}

func (a *AppServer) handleItem(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	var it Item
	if err := a.get(ctx, "/items/"+strconv.FormatInt(id, 10), nil, &it); err != nil {
		a.downstream(w, r, err)
		return
	}
	var seller User
	if err := a.get(ctx, "/users/"+strconv.FormatInt(it.SellerID, 10), nil, &seller); err != nil {
		a.downstream(w, r, err)
		return
	}
	var bids BidList
	if err := a.get(ctx, "/items/"+strconv.FormatInt(id, 10)+"/bids", url.Values{"limit": {"5"}}, &bids); err != nil {
		a.downstream(w, r, err)
		return
	}
	m := &meter{work: a.work}
	m.burn(hashOf(it.ID, it.Name, it.Description, seller.Nickname, seller.Rating), itemUnits)
	for _, b := range bids.Bids {
		m.burn(hashOf(b.ID, b.UserID, b.Amount), itemUnitsPerBid)
	}
	a.render(w, http.StatusOK, "item", it.Name, m, map[string]any{
		"item": it, "seller": seller, "bids": bidRows(bids.Bids), "price": dollars(currentPrice(it)),
		"min_next_bid": MinNextBid(it), "min_next_bid_text": dollars(MinNextBid(it)),
	})
}

// bidRow is a rendered bid.
type bidRow struct {
	Bid
	Text string `json:"text"` // amount, formatted
}

func bidRows(bids []Bid) []bidRow {
	out := make([]bidRow, len(bids))
	for i, b := range bids {
		out[i] = bidRow{Bid: b, Text: dollars(b.Amount)}
	}
	return out
}

func (a *AppServer) handleBids(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	var it Item
	if err := a.get(ctx, "/items/"+strconv.FormatInt(id, 10), nil, &it); err != nil {
		a.downstream(w, r, err)
		return
	}
	var bids BidList
	if err := a.get(ctx, "/items/"+strconv.FormatInt(id, 10)+"/bids", url.Values{"limit": {"50"}}, &bids); err != nil {
		a.downstream(w, r, err)
		return
	}
	m := &meter{work: a.work}
	m.burn(hashOf(it.ID, it.Name), bidsUnits)
	for _, b := range bids.Bids {
		m.burn(hashOf(b.ID, b.UserID, b.Amount, b.CreatedAt), bidsUnitsPerRow)
	}
	a.render(w, http.StatusOK, "bids", "Bids on "+it.Name, m, map[string]any{
		"item": it, "bids": bidRows(bids.Bids), "price": dollars(currentPrice(it)),
	})
}

func (a *AppServer) handleSearch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	words := keywords(q.Get("q"))
	if len(words) == 0 {
		writeError(w, http.StatusBadRequest, "q: missing")
		return
	}
	page, err := intParam(q, "page", 0, 0, searchCandidates/PageSize)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	query := strings.Join(words, " ")
	var list ItemList
	dq := url.Values{"q": {query}, "limit": {strconv.Itoa(searchCandidates)}}
	if err := a.get(r.Context(), "/items", dq, &list); err != nil {
		a.downstream(w, r, err)
		return
	}
	// Rank: text relevance (name hits count more), then a per-item
	// "popularity" score that stands for the expensive part of a real
	// ranker, then id.
	m := &meter{work: a.work}
	rows := make([]row, len(list.Items))
	for i, it := range list.Items {
		name, desc := strings.ToLower(it.Name), strings.ToLower(it.Description)
		score := 0
		for _, kw := range words {
			score += 30*strings.Count(name, kw) + 10*strings.Count(desc, kw)
		}
		h := m.burn(hashOf(query, it.ID, it.Name, it.NumBids), searchUnitsPerHit)
		score += int(h%10) + min(it.NumBids, 5)
		rows[i] = row{Item: it, Price: dollars(currentPrice(it)), Score: score, Sig: strconv.FormatUint(h&0xffffffff, 16)}
	}
	slices.SortStableFunc(rows, func(x, y row) int {
		if x.Score != y.Score {
			return y.Score - x.Score
		}
		return int(x.ID - y.ID)
	})
	from := min(page*PageSize, len(rows))
	to := min(from+PageSize, len(rows))
	a.render(w, http.StatusOK, "search", "Search: "+query, m, map[string]any{
		"q": query, "page": page, "matches": list.Total, "ranked": len(rows),
		"rows": rows[from:to], "next": nextPage(page, len(rows)),
	})
}

func (a *AppServer) handleBid(w http.ResponseWriter, r *http.Request) {
	var f BidForm
	if !readForm(w, r, &f) {
		return
	}
	if f.ItemID <= 0 || f.UserID <= 0 || f.Amount < 0 {
		writeError(w, http.StatusBadRequest, "bid: want item_id > 0, user_id > 0, amount >= 0; got %d, %d, %d", f.ItemID, f.UserID, f.Amount)
		return
	}
	ctx := r.Context()
	var it Item
	if err := a.get(ctx, "/items/"+strconv.FormatInt(f.ItemID, 10), nil, &it); err != nil {
		a.downstream(w, r, err)
		return
	}
	amount, minBid := f.Amount, MinNextBid(it)
	if amount == 0 {
		amount = minBid
	}
	if it.ClosedAt != "" {
		a.render(w, http.StatusConflict, "bid", "Auction closed", &meter{work: a.work}, map[string]any{
			"item": it, "user_id": f.UserID, "amount": amount, "amount_text": dollars(amount), "accepted": false})
		return
	}
	// The fraud score stands for the checks a real site runs on a bid
	// (velocity, history, device); it is reported, never acted on.
	m := &meter{work: a.work}
	fraud := int(m.burn(hashOf(f.ItemID, f.UserID, amount, it.MaxBid), bidFraudUnits) % 100)
	data := map[string]any{
		"item": it, "user_id": f.UserID, "amount": amount, "amount_text": dollars(amount),
		"min_bid": minBid, "min_bid_text": dollars(minBid), "fraud_score": fraud,
	}
	if amount < minBid {
		data["accepted"] = false
		a.render(w, http.StatusConflict, "bid", "Bid too low", m, data)
		return
	}
	var bid Bid
	err := call(ctx, a.client, http.MethodPost, a.dataURL("/items/"+strconv.FormatInt(f.ItemID, 10)+"/bids", nil),
		BidRequest{UserID: f.UserID, Amount: amount}, &bid)
	if se, ok := errors.AsType[*StatusError](err); ok && se.Status == http.StatusConflict {
		var rej BidRejection
		_ = json.Unmarshal(se.Body, &rej)
		data["accepted"], data["min_bid"], data["min_bid_text"] = false, rej.MinBid, dollars(rej.MinBid)
		a.render(w, http.StatusConflict, "bid", "Bid too low", m, data)
		return
	}
	if err != nil {
		a.downstream(w, r, err)
		return
	}
	data["accepted"], data["bid"] = true, bid
	a.render(w, http.StatusCreated, "bid", "Bid placed", m, data)
}

func (a *AppServer) handleSell(w http.ResponseWriter, r *http.Request) {
	var s SellRequest
	if !readForm(w, r, &s) {
		return
	}
	s.Name = strings.Join(strings.Fields(s.Name), " ")
	s.Description = strings.Join(strings.Fields(s.Description), " ")
	if err := s.validate(); err != nil {
		writeError(w, http.StatusBadRequest, "sell: %v", err)
		return
	}
	// Listing checks: a quality score over the listing's words.
	m := &meter{work: a.work}
	quality := int(m.burn(hashOf(s.SellerID, s.Name, s.Description, s.Category, s.StartPrice), sellUnits) % 100)
	var it Item
	if err := call(r.Context(), a.client, http.MethodPost, a.dataURL("/items", nil), s, &it); err != nil {
		a.downstream(w, r, err)
		return
	}
	a.render(w, http.StatusCreated, "sell", "Listed "+it.Name, m, map[string]any{
		"item": it, "price": dollars(it.StartPrice), "quality": quality, "category_name": Categories[it.Category-1],
	})
}

// readForm decodes a JSON body, or a URL-encoded form with the JSON field
// names, into a *BidForm or *SellRequest; it answers 400 when it cannot.
func readForm(w http.ResponseWriter, r *http.Request, v any) bool {
	ct := r.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/x-www-form-urlencoded") && !strings.HasPrefix(ct, "multipart/form-data") {
		return readJSON(w, r, v)
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "bad form: %v", err)
		return false
	}
	var bad []string
	num := func(name string) int64 {
		s := strings.TrimSpace(r.PostForm.Get(name))
		if s == "" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			bad = append(bad, name)
		}
		return n
	}
	switch v := v.(type) {
	case *BidForm:
		*v = BidForm{ItemID: num("item_id"), UserID: num("user_id"), Amount: num("amount")}
	case *SellRequest:
		*v = SellRequest{SellerID: num("seller_id"), Name: r.PostForm.Get("name"), Description: r.PostForm.Get("description"),
			Category: int(num("category")), StartPrice: num("start_price")}
	default:
		panic(fmt.Sprintf("readForm: unsupported %T", v))
	}
	if len(bad) > 0 {
		writeError(w, http.StatusBadRequest, "bad form: %s: want integers", strings.Join(bad, ", "))
		return false
	}
	return true
}

// dollars formats cents as "$1,234.50".
func dollars(cents int64) string {
	neg := cents < 0
	if neg {
		cents = -cents
	}
	s := strconv.FormatInt(cents/100, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	s = fmt.Sprintf("$%s.%02d", s, cents%100)
	if neg {
		s = "-" + s
	}
	return s
}

var appTemplates = template.Must(template.New("").Parse(`
{{define "home"}}<h1>Categories</h1>
<ul class="categories">{{range .categories}}
<li data-sig="{{.Sig}}"><a href="/browse?category={{.ID}}">{{.Name}}</a> ({{.Items}} items)</li>{{end}}
</ul>{{end}}

{{define "rows"}}<table class="items">
<tr><th>Item</th><th>Price</th><th>Bids</th><th>Listed</th></tr>{{range .}}
<tr data-sig="{{.Sig}}"><td><a href="/item/{{.ID}}">{{.Name}}</a></td><td>{{.Price}}</td><td>{{.NumBids}}</td><td>{{.CreatedAt}}</td></tr>{{end}}
</table>{{end}}

{{define "browse"}}<h1>{{.category_name}}</h1>
<p>{{.total}} items, page {{.page}}</p>
{{template "rows" .rows}}
{{if ge .next 0}}<p><a href="/browse?category={{.category}}&amp;page={{.next}}">next page</a></p>{{end}}{{end}}

{{define "search"}}<h1>Search: {{.q}}</h1>
<p>{{.matches}} matches, best {{.ranked}} ranked, page {{.page}}</p>
{{template "rows" .rows}}
{{if ge .next 0}}<p><a href="/search?q={{.q}}&amp;page={{.next}}">next page</a></p>{{end}}{{end}}

{{define "bidtable"}}<table class="bids">
<tr><th>Bid</th><th>Bidder</th><th>When</th></tr>{{range .}}
<tr><td>{{.Text}}</td><td>user{{.UserID}}</td><td>{{.CreatedAt}}</td></tr>{{end}}
</table>{{end}}

{{define "item"}}<h1>{{.item.Name}}</h1>
<p class="desc">{{.item.Description}}</p>
<p>Current price {{.price}} after {{.item.NumBids}} bids; listed {{.item.CreatedAt}} by
{{.seller.Nickname}} ({{.seller.Region}}, rating {{.seller.Rating}}).</p>
{{template "bidtable" .bids}}
<p><a href="/item/{{.item.ID}}/bids">bid history</a></p>
{{if .item.ClosedAt}}<p>The auction closed at {{.item.ClosedAt}}.</p>
{{else}}<form method="post" action="/bid"><input type="hidden" name="item_id" value="{{.item.ID}}">
user id <input name="user_id" size="6"> amount in cents (at least {{.min_next_bid}}, {{.min_next_bid_text}})
<input name="amount" size="10" value="{{.min_next_bid}}"> <button>Bid</button></form>{{end}}{{end}}

{{define "bids"}}<h1>Bids on <a href="/item/{{.item.ID}}">{{.item.Name}}</a></h1>
<p>Current price {{.price}}, {{.item.NumBids}} bids.</p>
{{template "bidtable" .bids}}{{end}}

{{define "bid"}}{{if .accepted}}<h1>Bid placed</h1>
<p>Your bid of {{.amount_text}} on <a href="/item/{{.item.ID}}">{{.item.Name}}</a> is the highest.</p>
{{else if .item.ClosedAt}}<h1>Auction closed</h1>
<p>The auction of <a href="/item/{{.item.ID}}">{{.item.Name}}</a> closed at {{.item.ClosedAt}}.</p>
{{else}}<h1>Bid too low</h1>
<p>A bid of {{.amount_text}} on <a href="/item/{{.item.ID}}">{{.item.Name}}</a> must be at least {{.min_bid_text}}.</p>
{{end}}{{if not .item.ClosedAt}}<p class="fraud">fraud score {{.fraud_score}}</p>{{end}}{{end}}

{{define "sell"}}<h1>Listed</h1>
<p><a href="/item/{{.item.ID}}">{{.item.Name}}</a> in {{.category_name}}, starting at {{.price}}
(listing quality {{.quality}}).</p>{{end}}
`))
