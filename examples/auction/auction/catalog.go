package auction

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Category is one of the site's fixed item categories. Categories are
// numbered from 1 in the order of [Categories].
type Category struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Items int    `json:"items"` // items listed in the category (data tier answers only)
}

// Item is an item for sale. Prices are in cents.
type Item struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	Category    int    `json:"category"`
	SellerID    int64  `json:"seller_id"`
	StartPrice  int64  `json:"start_price"`
	MaxBid      int64  `json:"max_bid"` // 0 when nobody has bid
	NumBids     int    `json:"num_bids"`
	CreatedAt   string `json:"created_at"`          // RFC 3339, UTC
	ClosedAt    string `json:"closed_at,omitempty"` // when its auction closed; "" while open
}

// Bid is a bid on an item. Amount is in cents.
type Bid struct {
	ID        int64  `json:"id"`
	ItemID    int64  `json:"item_id"`
	UserID    int64  `json:"user_id"`
	Amount    int64  `json:"amount"`
	CreatedAt string `json:"created_at"` // RFC 3339, UTC
}

// User is a registered buyer or seller.
type User struct {
	ID        int64  `json:"id"`
	Nickname  string `json:"nickname"`
	Region    string `json:"region"`
	Rating    int    `json:"rating"`
	CreatedAt string `json:"created_at"` // RFC 3339, UTC
}

// Categories are the names of the site's categories; category i+1 is
// Categories[i].
var Categories = []string{
	"Antiques & Art", "Books", "Business & Industrial", "Cameras & Photo",
	"Cars & Motorcycles", "Clothing & Accessories", "Coins & Stamps",
	"Collectibles", "Computers", "Consumer Electronics", "Dolls & Bears",
	"Home & Garden", "Jewelry & Watches", "Movies & Television", "Music",
	"Musical Instruments", "Pottery & Glass", "Sports", "Tickets & Travel",
	"Toys & Hobbies",
}

// Words is the vocabulary seeded item names and descriptions are made of;
// a load generator draws search keywords from it so searches find items.
var Words = []string{
	"vintage", "antique", "classic", "rare", "signed", "original", "mint",
	"boxed", "sealed", "used", "restored", "limited", "edition", "handmade",
	"wooden", "brass", "silver", "golden", "leather", "ceramic", "glass",
	"electric", "acoustic", "digital", "analog", "portable", "compact",
	"camera", "lens", "guitar", "piano", "violin", "record", "vinyl",
	"watch", "clock", "lamp", "chair", "table", "mirror", "poster", "print",
	"painting", "sculpture", "coin", "stamp", "medal", "map", "book", "novel",
	"comic", "figure", "doll", "train", "model", "kit", "radio", "console",
	"laptop", "phone", "bicycle", "helmet", "jacket", "boots", "scarf",
	"ring", "necklace", "bracelet", "vase", "teapot", "bowl", "plate",
	"ticket", "concert", "racket", "ball", "puzzle", "game", "robot", "drone",
}

// regions are where users live.
var regions = []string{
	"Alabama", "Alaska", "Arizona", "Bretagne", "Catalunya", "Bavaria",
	"Lombardia", "Ontario", "Quebec", "Queensland", "Tasmania", "Wales",
}

// seedEpoch is the creation time of the first seeded row; seeded rows are
// one minute apart, so a seeded database is the same on every machine.
var seedEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// timeFormat is how the data tier stores and returns times.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// catalog generates the deterministic seed data.
type catalog struct {
	rng *rand.Rand
}

func newCatalog(seed uint64) *catalog {
	return &catalog{rng: rand.New(rand.NewPCG(seed, 0x5eed))}
}

func (c *catalog) word() string { return Words[c.rng.IntN(len(Words))] }

func (c *catalog) user(id int64) User {
	return User{
		ID:        id,
		Nickname:  fmt.Sprintf("user%d", id),
		Region:    regions[c.rng.IntN(len(regions))],
		Rating:    c.rng.IntN(200) - 20,
		CreatedAt: seedEpoch.Add(time.Duration(id) * time.Minute).Format(timeFormat),
	}
}

func (c *catalog) item(id int64, users int) Item {
	name := make([]string, 3)
	for i := range name {
		name[i] = c.word()
	}
	desc := make([]string, 12+c.rng.IntN(12))
	for i := range desc {
		desc[i] = c.word()
	}
	return Item{
		ID:          id,
		Name:        strings.Join(name, " "),
		Description: strings.Join(desc, " "),
		Category:    1 + c.rng.IntN(len(Categories)),
		SellerID:    1 + c.rng.Int64N(int64(users)),
		StartPrice:  100 * (1 + c.rng.Int64N(500)),
		CreatedAt:   seedEpoch.Add(time.Duration(id) * time.Minute).Format(timeFormat),
	}
}

// bidIncrement is the least amount, in cents, by which a bid must beat the
// current price of an item.
func bidIncrement(price int64) int64 {
	switch {
	case price < 1000:
		return 50
	case price < 10000:
		return 100
	default:
		return 500
	}
}

// currentPrice is what the next bid on it must beat: the highest bid, or the
// start price when there is none.
func currentPrice(it Item) int64 {
	if it.NumBids == 0 {
		return it.StartPrice
	}
	return it.MaxBid
}

// MinNextBid is the least amount, in cents, that a new bid on it must offer.
func MinNextBid(it Item) int64 {
	p := currentPrice(it)
	return p + bidIncrement(p)
}
