package loadgen

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"

	"github.com/justrunit/justrunit/examples/auction/auction"
)

// Kind is a request type of the auction site.
type Kind string

// The request types, in the order summaries list them.
const (
	Home   Kind = "home"   // GET /
	Browse Kind = "browse" // GET /browse?category=C&page=P
	View   Kind = "item"   // GET /item/{id}
	Bids   Kind = "bids"   // GET /item/{id}/bids
	Search Kind = "search" // GET /search?q=...&page=P
	Bid    Kind = "bid"    // POST /bid {"item_id","user_id"}: the least acceptable bid
	Sell   Kind = "sell"   // POST /sell {"seller_id","name","description","category","start_price"}
)

// Kinds lists every request type.
var Kinds = []Kind{Home, Browse, View, Bids, Search, Bid, Sell}

// Mix is a request mix: each request's type is drawn with these weights.
type Mix struct {
	Name    string
	Weights map[Kind]int // relative weights; they need not sum to 100
}

// The shipped mixes, in percent. RUBiS's own "bidding" mix has about 15%
// read-write interactions spread over many small pages; this one keeps its
// character — mostly browsing, viewing and searching, some bids, few sells
// — with fewer, fatter request types.
var (
	// RUBiS is the default mix: 91% reads, 7% bids, 2% sells.
	RUBiS = Mix{Name: "rubis", Weights: map[Kind]int{
		Home: 5, Browse: 30, View: 30, Bids: 8, Search: 18, Bid: 7, Sell: 2,
	}}
	// Browsing is read-only, like RUBiS's browsing mix.
	Browsing = Mix{Name: "browse", Weights: map[Kind]int{
		Home: 5, Browse: 40, View: 35, Bids: 5, Search: 15,
	}}
)

// MixByName returns the mix called name: "rubis" or "browse".
func MixByName(name string) (Mix, error) {
	switch name {
	case RUBiS.Name:
		return RUBiS, nil
	case Browsing.Name:
		return Browsing, nil
	}
	return Mix{}, fmt.Errorf("mix %q: want rubis or browse", name)
}

// request is one generated request.
type request struct {
	kind   Kind
	method string
	path   string // with query
	body   []byte // JSON, for POST
}

// chooser draws requests of a mix from a deterministic random source: the
// same seed gives the same sequence of requests.
type chooser struct {
	rng          *rand.Rand
	kinds        []Kind
	cum          []int // cumulative weights
	items, users int
}

func newChooser(m Mix, seed uint64, items, users int) (*chooser, error) {
	c := &chooser{rng: rand.New(rand.NewPCG(seed, 1)), items: items, users: users}
	total := 0
	for _, k := range Kinds { // fixed order: map iteration order must not matter
		w := m.Weights[k]
		if w < 0 {
			return nil, fmt.Errorf("mix %s: weight of %s is %d", m.Name, k, w)
		}
		if w == 0 {
			continue
		}
		total += w
		c.kinds = append(c.kinds, k)
		c.cum = append(c.cum, total)
	}
	if total == 0 {
		return nil, fmt.Errorf("mix %s: no request type has a weight", m.Name)
	}
	return c, nil
}

func (c *chooser) next() request {
	n := c.rng.IntN(c.cum[len(c.cum)-1])
	k := c.kinds[len(c.kinds)-1]
	for i, cum := range c.cum {
		if n < cum {
			k = c.kinds[i]
			break
		}
	}
	r := request{kind: k, method: "GET"}
	item := func() string { return strconv.Itoa(1 + c.rng.IntN(c.items)) }
	page := func() int { // most visitors look at the first page only
		switch p := c.rng.IntN(100); {
		case p < 80:
			return 0
		case p < 95:
			return 1
		default:
			return 2
		}
	}
	switch k {
	case Home:
		r.path = "/"
	case Browse:
		r.path = fmt.Sprintf("/browse?category=%d&page=%d", 1+c.rng.IntN(len(auction.Categories)), page())
	case View:
		r.path = "/item/" + item()
	case Bids:
		r.path = "/item/" + item() + "/bids"
	case Search:
		words := []string{c.word()}
		if c.rng.IntN(3) == 0 {
			words = append(words, c.word())
		}
		r.path = "/search?" + url.Values{"q": {strings.Join(words, " ")}}.Encode() + "&page=" + strconv.Itoa(min(page(), 1))
	case Bid:
		r.method, r.path = "POST", "/bid"
		r.body, _ = json.Marshal(auction.BidForm{ItemID: int64(1 + c.rng.IntN(c.items)), UserID: int64(1 + c.rng.IntN(c.users))})
	case Sell:
		r.method, r.path = "POST", "/sell"
		desc := make([]string, 10+c.rng.IntN(10))
		for i := range desc {
			desc[i] = c.word()
		}
		r.body, _ = json.Marshal(auction.SellRequest{
			SellerID:    int64(1 + c.rng.IntN(c.users)),
			Name:        c.word() + " " + c.word() + " " + c.word(),
			Description: strings.Join(desc, " "),
			Category:    1 + c.rng.IntN(len(auction.Categories)),
			StartPrice:  100 * (1 + c.rng.Int64N(500)),
		})
	}
	return r
}

func (c *chooser) word() string { return auction.Words[c.rng.IntN(len(auction.Words))] }
