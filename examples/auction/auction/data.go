package auction

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite driver, so the tier builds with CGO_ENABLED=0
)

// Defaults for [DataOptions].
const (
	// DefaultSeedItems is how many items a new database is seeded with.
	DefaultSeedItems = 1000
	// DefaultSeedUsers is how many users a new database is seeded with.
	DefaultSeedUsers = 1000
	// DefaultSeed seeds the generator of the seed data.
	DefaultSeed = 1
	// DBFile is the name of the database file in the state directory.
	DBFile = "auction.db"
	// MaxListLimit is the most items GET /items returns at once.
	MaxListLimit = 500
	// DefaultAuctionLength is how long an item put up for sale stays open.
	DefaultAuctionLength = time.Minute
)

// DataOptions configures a [DataServer]. The zero value means the defaults.
type DataOptions struct {
	// SeedItems is how many items a new database is seeded with
	// (DefaultSeedItems when 0). An existing database is never re-seeded.
	SeedItems int
	// SeedUsers is how many users a new database is seeded with
	// (DefaultSeedUsers when 0).
	SeedUsers int
	// Seed seeds the generator of the seed data (DefaultSeed when 0); the
	// same seed gives the same database.
	Seed uint64
	// AuctionLength is how long an item put up for sale (POST /items)
	// stays open (DefaultAuctionLength when 0; negative: for ever). Then
	// its auction closes: the item moves out of the catalogue that lists,
	// searches and category counts read, and takes no more bids. (A sale
	// or bid closes the auctions due in its transaction; with neither, a
	// closer does every second.) The seeded items are the stock the load
	// generator browses and bids on; their auctions never close. So under a steady load the catalogue
	// stays the same size rather than grow with every sale, and so does
	// the cost of a search.
	AuctionLength time.Duration
	// Clock is the data tier's time (for tests); nil is time.Now.
	Clock func() time.Time
	// Logger receives errors; nil discards them.
	Logger *slog.Logger
}

// DataServer is the data tier: an HTTP JSON API over an SQLite database kept
// in a state directory, which is the only place it writes to.
//
//	GET  /healthz                      {"status":"ok"}
//	GET  /categories                   {"categories":[Category...]}
//	GET  /items?category=&q=&offset=&limit=
//	                                   {"items":[Item...],"total":N}, ordered by id;
//	                                   q matches items whose name or description
//	                                   contains any of its words
//	GET  /items/{id}                   Item (with closed_at once its auction has
//	                                   closed; see DataOptions.AuctionLength)
//	GET  /items/{id}/bids?limit=       {"item_id":id,"bids":[Bid...]}, highest first
//	POST /items/{id}/bids              {"user_id":u,"amount":cents} -> 201 Bid,
//	                                   409 {"error":..,"min_bid":cents} when it does not
//	                                   beat the current price by the increment,
//	                                   410 when its auction has closed
//	POST /items                        {"seller_id","name","description","category",
//	                                   "start_price"} -> 201 Item
//	GET  /users/{id}                   User
//
// Errors are {"error":"..."} with status 400, 404, 409 or 500. DataServer is
// safe for concurrent use; writes are serialised on one connection.
type DataServer struct {
	rd, wr *sql.DB
	mux    *http.ServeMux
	log    *slog.Logger
	now    func() time.Time
	// seeded is the highest seeded item id: items above it were put up
	// for sale and close after length (never when length < 0).
	seeded int64
	length time.Duration
	// stop ends the closer (see closer); closed when it has returned.
	stop, closed chan struct{}
	closeOnce    sync.Once
}

var _ http.Handler = (*DataServer)(nil)

// itemTable is the columns of items, and of old_items before its closed_at.
const itemTable = `
	id INTEGER PRIMARY KEY,
	name TEXT NOT NULL,
	description TEXT NOT NULL,
	category INTEGER NOT NULL,
	seller_id INTEGER NOT NULL REFERENCES users(id),
	start_price INTEGER NOT NULL,
	max_bid INTEGER NOT NULL DEFAULT 0,
	nb_bids INTEGER NOT NULL DEFAULT 0,
	created_at TEXT NOT NULL`

// schema is the database's. A bid's item_id names an item in items or,
// once its auction has closed, in old_items; the handlers check what a
// write refers to in its transaction, and foreign keys are not enforced
// (an enforced items(id) reference made an item with bids impossible to
// close).
const schema = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
	id INTEGER PRIMARY KEY,
	nickname TEXT NOT NULL UNIQUE,
	region TEXT NOT NULL,
	rating INTEGER NOT NULL DEFAULT 0,
	created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (` + itemTable + `
);
CREATE INDEX IF NOT EXISTS items_category ON items(category, id);
CREATE TABLE IF NOT EXISTS old_items (` + itemTable + `,
	closed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bids (
	id INTEGER PRIMARY KEY,
	item_id INTEGER NOT NULL,
	user_id INTEGER NOT NULL REFERENCES users(id),
	amount INTEGER NOT NULL,
	created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bids_item ON bids(item_id, amount DESC, id);
`

// NewDataServer opens (creating if needed) the database in dir, seeds it on
// first use and returns the data tier. Close it to close the database.
func NewDataServer(dir string, opts DataOptions) (*DataServer, error) {
	if dir == "" {
		return nil, errors.New("open data tier: empty state directory")
	}
	if opts.SeedItems == 0 {
		opts.SeedItems = DefaultSeedItems
	}
	if opts.SeedUsers == 0 {
		opts.SeedUsers = DefaultSeedUsers
	}
	if opts.Seed == 0 {
		opts.Seed = DefaultSeed
	}
	if opts.AuctionLength == 0 {
		opts.AuctionLength = DefaultAuctionLength
	}
	if opts.SeedItems < 0 || opts.SeedUsers < 1 {
		return nil, fmt.Errorf("open data tier: seed items %d, users %d: want items >= 0, users >= 1", opts.SeedItems, opts.SeedUsers)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open data tier: %w", err)
	}
	path := filepath.Join(dir, DBFile)
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	wr, err := sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open data tier: %w", err)
	}
	wr.SetMaxOpenConns(1)
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	d := &DataServer{wr: wr, log: opts.Logger, now: opts.Clock, length: opts.AuctionLength,
		stop: make(chan struct{}), closed: make(chan struct{})}
	if _, err := wr.Exec(schema); err != nil {
		wr.Close()
		return nil, fmt.Errorf("open data tier: create schema in %s: %w", path, err)
	}
	if err := d.seed(opts); err != nil {
		wr.Close()
		return nil, fmt.Errorf("open data tier: seed %s: %w", path, err)
	}
	if d.seeded, err = seededItems(wr); err != nil {
		wr.Close()
		return nil, fmt.Errorf("open data tier: %s: %w", path, err)
	}
	rd, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		wr.Close()
		return nil, fmt.Errorf("open data tier: %w", err)
	}
	rd.SetMaxOpenConns(8)
	rd.SetMaxIdleConns(8)
	d.rd = rd

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", handleHealthz)
	mux.HandleFunc("GET /categories", d.handleCategories)
	mux.HandleFunc("GET /items", d.handleListItems)
	mux.HandleFunc("GET /items/{id}", d.handleGetItem)
	mux.HandleFunc("GET /items/{id}/bids", d.handleListBids)
	mux.HandleFunc("POST /items/{id}/bids", d.handlePostBid)
	mux.HandleFunc("POST /items", d.handlePostItem)
	mux.HandleFunc("GET /users/{id}", d.handleGetUser)
	d.mux = mux
	go d.closer()
	return d, nil
}

// closerEvery is how often the closer closes the auctions due.
const closerEvery = time.Second

// closer closes the auctions due every closerEvery until Close, so that a
// site with no sales or bids (whose transactions close them too, to the
// instant) stops listing its items within a second of their end.
func (d *DataServer) closer() {
	defer close(d.closed)
	if d.length < 0 {
		return
	}
	t := time.NewTicker(closerEvery)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		if err := d.closeDue(); err != nil {
			d.log.Error("close auctions", "err", err)
		}
	}
}

// closeDue closes the auctions due, in a transaction of its own.
func (d *DataServer) closeDue() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := d.wr.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := d.closeAuctions(ctx, tx, d.now()); err != nil {
		return err
	}
	return tx.Commit()
}

// ServeHTTP serves the data tier's API.
func (d *DataServer) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.mux.ServeHTTP(w, r) }

// Close stops closing auctions and closes the database.
func (d *DataServer) Close() error {
	var err error
	d.closeOnce.Do(func() {
		close(d.stop)
		<-d.closed
		err = errors.Join(d.rd.Close(), d.wr.Close())
	})
	return err
}

// seed fills an empty database with deterministic users, items and bids.
func (d *DataServer) seed(opts DataOptions) error {
	var seeded string
	err := d.wr.QueryRow(`SELECT value FROM meta WHERE key = 'seeded'`).Scan(&seeded)
	if err == nil {
		return nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	tx, err := d.wr.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	cat := newCatalog(opts.Seed)
	for id := int64(1); id <= int64(opts.SeedUsers); id++ {
		u := cat.user(id)
		if _, err := tx.Exec(`INSERT INTO users (id, nickname, region, rating, created_at) VALUES (?, ?, ?, ?, ?)`,
			u.ID, u.Nickname, u.Region, u.Rating, u.CreatedAt); err != nil {
			return err
		}
	}
	var bidID int64
	for id := int64(1); id <= int64(opts.SeedItems); id++ {
		it := cat.item(id, opts.SeedUsers)
		created, _ := time.Parse(timeFormat, it.CreatedAt)
		nb := cat.rng.IntN(5)
		bids := make([]Bid, nb)
		for k := range bids {
			amount := MinNextBid(it) + 100*cat.rng.Int64N(5)
			bidID++
			bids[k] = Bid{ID: bidID, ItemID: id, UserID: 1 + cat.rng.Int64N(int64(opts.SeedUsers)), Amount: amount,
				CreatedAt: created.Add(time.Duration(k+1) * time.Second).Format(timeFormat)}
			it.MaxBid, it.NumBids = amount, it.NumBids+1
		}
		if _, err := tx.Exec(`INSERT INTO items (id, name, description, category, seller_id, start_price, max_bid, nb_bids, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			it.ID, it.Name, it.Description, it.Category, it.SellerID, it.StartPrice, it.MaxBid, it.NumBids, it.CreatedAt); err != nil {
			return err
		}
		for _, b := range bids {
			if _, err := tx.Exec(`INSERT INTO bids (id, item_id, user_id, amount, created_at) VALUES (?, ?, ?, ?, ?)`,
				b.ID, b.ItemID, b.UserID, b.Amount, b.CreatedAt); err != nil {
				return err
			}
		}
	}
	if _, err := tx.Exec(`INSERT INTO meta (key, value) VALUES ('seeded', ?)`,
		fmt.Sprintf("items=%d users=%d seed=%d", opts.SeedItems, opts.SeedUsers, opts.Seed)); err != nil {
		return err
	}
	return tx.Commit()
}

// seededItems reads how many items the database was seeded with (the
// seeded items are ids 1..n) from what seed wrote.
func seededItems(db *sql.DB) (int64, error) {
	var v string
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'seeded'`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read the seeded item count: %w", err)
	}
	var n int64
	if _, err := fmt.Sscanf(v, "items=%d", &n); err != nil {
		return 0, fmt.Errorf("read the seeded item count from meta's %q: %w", v, err)
	}
	return n, nil
}

const itemColumns = `id, name, description, category, seller_id, start_price, max_bid, nb_bids, created_at`

// getItem reads an item, open or closed (then with ClosedAt), from q.
func getItem(ctx context.Context, q querier, id int64) (Item, error) {
	it, err := scanItem(q.QueryRowContext(ctx, `SELECT `+itemColumns+` FROM items WHERE id = ?`, id))
	if !errors.Is(err, sql.ErrNoRows) {
		return it, err
	}
	row := q.QueryRowContext(ctx, `SELECT `+itemColumns+`, closed_at FROM old_items WHERE id = ?`, id)
	err = row.Scan(&it.ID, &it.Name, &it.Description, &it.Category, &it.SellerID, &it.StartPrice, &it.MaxBid, &it.NumBids, &it.CreatedAt, &it.ClosedAt)
	return it, err
}

// querier is what getItem reads with: the database or a transaction.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// closeAuctions closes the auctions of items put up for sale before
// d.length ago: it moves them to old_items, in tx.
func (d *DataServer) closeAuctions(ctx context.Context, tx *sql.Tx, now time.Time) error {
	if d.length < 0 {
		return nil
	}
	before := now.Add(-d.length).UTC().Format(timeFormat)
	if _, err := tx.ExecContext(ctx, `INSERT INTO old_items (`+itemColumns+`, closed_at)
		SELECT `+itemColumns+`, ? FROM items WHERE id > ? AND created_at < ?`,
		now.UTC().Format(timeFormat), d.seeded, before); err != nil {
		return fmt.Errorf("close auctions: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM items WHERE id > ? AND created_at < ?`, d.seeded, before); err != nil {
		return fmt.Errorf("close auctions: %w", err)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanItem(s scanner) (Item, error) {
	var it Item
	err := s.Scan(&it.ID, &it.Name, &it.Description, &it.Category, &it.SellerID, &it.StartPrice, &it.MaxBid, &it.NumBids, &it.CreatedAt)
	return it, err
}

func (d *DataServer) handleCategories(w http.ResponseWriter, r *http.Request) {
	counts := make([]int, len(Categories)+1)
	rows, err := d.rd.QueryContext(r.Context(), `SELECT category, COUNT(*) FROM items GROUP BY category`)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var c, n int
		if err := rows.Scan(&c, &n); err != nil {
			d.fail(w, r, err)
			return
		}
		if c >= 1 && c <= len(Categories) {
			counts[c] = n
		}
	}
	if err := rows.Err(); err != nil {
		d.fail(w, r, err)
		return
	}
	out := make([]Category, len(Categories))
	for i, name := range Categories {
		out[i] = Category{ID: i + 1, Name: name, Items: counts[i+1]}
	}
	writeJSON(w, http.StatusOK, map[string]any{"categories": out})
}

// ItemList is the data tier's answer to GET /items.
type ItemList struct {
	Items []Item `json:"items"`
	Total int    `json:"total"` // items matching, across all pages
}

// BidList is the data tier's answer to GET /items/{id}/bids.
type BidList struct {
	ItemID int64 `json:"item_id"`
	Bids   []Bid `json:"bids"`
}

func (d *DataServer) handleListItems(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var where []string
	var args []any
	if s := q.Get("category"); s != "" {
		c, err := strconv.Atoi(s)
		if err != nil || c < 1 || c > len(Categories) {
			writeError(w, http.StatusBadRequest, "bad category %q", s)
			return
		}
		where = append(where, "category = ?")
		args = append(args, c)
	}
	if words := keywords(q.Get("q")); len(words) > 0 {
		var ors []string
		for _, kw := range words {
			ors = append(ors, `(name LIKE ? ESCAPE '\' OR description LIKE ? ESCAPE '\')`)
			pat := "%" + likeEscaper.Replace(kw) + "%"
			args = append(args, pat, pat)
		}
		where = append(where, "("+strings.Join(ors, " OR ")+")")
	}
	offset, err := intParam(q, "offset", 0, 0, 1<<31)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	limit, err := intParam(q, "limit", 25, 1, MaxListLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	var list ItemList
	if err := d.rd.QueryRowContext(r.Context(), `SELECT COUNT(*) FROM items`+cond, args...).Scan(&list.Total); err != nil {
		d.fail(w, r, err)
		return
	}
	rows, err := d.rd.QueryContext(r.Context(), `SELECT `+itemColumns+` FROM items`+cond+` ORDER BY id LIMIT ? OFFSET ?`,
		append(args, limit, offset)...)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer rows.Close()
	list.Items = []Item{}
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		list.Items = append(list.Items, it)
	}
	if err := rows.Err(); err != nil {
		d.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// keywords splits a search query into at most 5 lower-case words.
func keywords(q string) []string {
	words := strings.Fields(strings.ToLower(q))
	if len(words) > 5 {
		words = words[:5]
	}
	return words
}

func (d *DataServer) handleGetItem(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	it, err := getItem(r.Context(), d.rd, id)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, "no item %d", id)
		return
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, it)
}

func (d *DataServer) handleListBids(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	limit, err := intParam(r.URL.Query(), "limit", 20, 1, MaxListLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var one int
	err = d.rd.QueryRowContext(r.Context(), `SELECT 1 FROM items WHERE id = ? UNION ALL SELECT 1 FROM old_items WHERE id = ?`, id, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, "no item %d", id)
		return
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	rows, err := d.rd.QueryContext(r.Context(),
		`SELECT id, item_id, user_id, amount, created_at FROM bids WHERE item_id = ? ORDER BY amount DESC, id LIMIT ?`, id, limit)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer rows.Close()
	list := BidList{ItemID: id, Bids: []Bid{}}
	for rows.Next() {
		var b Bid
		if err := rows.Scan(&b.ID, &b.ItemID, &b.UserID, &b.Amount, &b.CreatedAt); err != nil {
			d.fail(w, r, err)
			return
		}
		list.Bids = append(list.Bids, b)
	}
	if err := rows.Err(); err != nil {
		d.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// BidRequest is the body of POST /items/{id}/bids on the data tier.
type BidRequest struct {
	UserID int64 `json:"user_id"`
	Amount int64 `json:"amount"` // cents
}

// BidRejection is the body of a 409 answer to a bid that is too low.
type BidRejection struct {
	Error  string `json:"error"`
	MinBid int64  `json:"min_bid"` // the least amount that would have been accepted, cents
}

// MaxBid is the largest bid accepted, in cents (ten billion dollars).
const MaxBid = 1e12

func (d *DataServer) handlePostBid(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req BidRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Amount <= 0 || req.Amount > MaxBid {
		// The cap keeps MinNextBid from overflowing past a huge bid.
		writeError(w, http.StatusBadRequest, "bad amount %d: want 1..%d cents", req.Amount, int64(MaxBid))
		return
	}
	bid, status, err := d.placeBid(r.Context(), id, req)
	switch {
	case err != nil:
		d.fail(w, r, err)
	case status == http.StatusConflict:
		writeJSON(w, status, BidRejection{Error: "bid too low", MinBid: bid.Amount})
	case status == http.StatusGone:
		writeError(w, status, "the auction of item %d closed at %s", id, bid.CreatedAt)
	case status != http.StatusCreated:
		writeError(w, status, "no such item %d or user %d", id, req.UserID)
	default:
		writeJSON(w, status, bid)
	}
}

// placeBid records a bid in one transaction if it beats the current price.
// It returns the bid and 201, or the least acceptable amount (in Bid.Amount)
// and 409, or when the item's auction has closed (in Bid.CreatedAt) and
// 410, or 404.
func (d *DataServer) placeBid(ctx context.Context, itemID int64, req BidRequest) (Bid, int, error) {
	tx, err := d.wr.BeginTx(ctx, nil)
	if err != nil {
		return Bid{}, 0, err
	}
	defer tx.Rollback()
	// An auction past its end closes first: a bid never lands after it.
	now := d.now()
	if err := d.closeAuctions(ctx, tx, now); err != nil {
		return Bid{}, 0, err
	}
	it, err := getItem(ctx, tx, itemID)
	if errors.Is(err, sql.ErrNoRows) {
		return Bid{}, http.StatusNotFound, nil
	}
	if err != nil {
		return Bid{}, 0, err
	}
	if it.ClosedAt != "" {
		return Bid{CreatedAt: it.ClosedAt}, http.StatusGone, nil
	}
	var one int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM users WHERE id = ?`, req.UserID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return Bid{}, http.StatusNotFound, nil
	}
	if err != nil {
		return Bid{}, 0, err
	}
	if minBid := MinNextBid(it); req.Amount < minBid {
		return Bid{Amount: minBid}, http.StatusConflict, nil
	}
	b := Bid{ItemID: itemID, UserID: req.UserID, Amount: req.Amount, CreatedAt: now.UTC().Format(timeFormat)}
	res, err := tx.ExecContext(ctx, `INSERT INTO bids (item_id, user_id, amount, created_at) VALUES (?, ?, ?, ?)`,
		b.ItemID, b.UserID, b.Amount, b.CreatedAt)
	if err != nil {
		return Bid{}, 0, err
	}
	if b.ID, err = res.LastInsertId(); err != nil {
		return Bid{}, 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE items SET max_bid = ?, nb_bids = nb_bids + 1 WHERE id = ?`, b.Amount, itemID); err != nil {
		return Bid{}, 0, err
	}
	if err := tx.Commit(); err != nil {
		return Bid{}, 0, err
	}
	return b, http.StatusCreated, nil
}

// SellRequest is the body of POST /items on the data tier and of POST /sell
// on the app and web tiers. StartPrice is in cents.
type SellRequest struct {
	SellerID    int64  `json:"seller_id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	Category    int    `json:"category"`
	StartPrice  int64  `json:"start_price"`
}

// validate checks a sell request's fields; the error names the field.
func (s SellRequest) validate() error {
	switch {
	case s.SellerID <= 0:
		return fmt.Errorf("seller_id: %d is not a user id", s.SellerID)
	case strings.TrimSpace(s.Name) == "" || len(s.Name) > 200:
		return fmt.Errorf("name: want 1..200 bytes, got %d", len(s.Name))
	case len(s.Description) > 4000:
		return fmt.Errorf("description: want at most 4000 bytes, got %d", len(s.Description))
	case s.Category < 1 || s.Category > len(Categories):
		return fmt.Errorf("category: want 1..%d, got %d", len(Categories), s.Category)
	case s.StartPrice <= 0 || s.StartPrice > 1e9:
		return fmt.Errorf("start_price: want 1..1e9 cents, got %d", s.StartPrice)
	}
	return nil
}

func (d *DataServer) handlePostItem(w http.ResponseWriter, r *http.Request) {
	var req SellRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := req.validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	now := d.now()
	it := Item{Name: req.Name, Description: req.Description, Category: req.Category, SellerID: req.SellerID,
		StartPrice: req.StartPrice, CreatedAt: now.UTC().Format(timeFormat)}
	tx, err := d.wr.BeginTx(r.Context(), nil)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer tx.Rollback()
	var one int
	err = tx.QueryRowContext(r.Context(), `SELECT 1 FROM users WHERE id = ?`, req.SellerID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, "no user %d", req.SellerID)
		return
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if err := d.closeAuctions(r.Context(), tx, now); err != nil {
		d.fail(w, r, err)
		return
	}
	// A new item's id is past every item's, open or closed: an id is
	// never given twice, though the newest items may have moved out.
	res, err := tx.ExecContext(r.Context(), `INSERT INTO items (id, name, description, category, seller_id, start_price, created_at)
		VALUES (1 + MAX(COALESCE((SELECT MAX(id) FROM items), 0), COALESCE((SELECT MAX(id) FROM old_items), 0)), ?, ?, ?, ?, ?, ?)`,
		it.Name, it.Description, it.Category, it.SellerID, it.StartPrice, it.CreatedAt)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if it.ID, err = res.LastInsertId(); err != nil {
		d.fail(w, r, err)
		return
	}
	if err := tx.Commit(); err != nil {
		d.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, it)
}

func (d *DataServer) handleGetUser(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var u User
	err := d.rd.QueryRowContext(r.Context(), `SELECT id, nickname, region, rating, created_at FROM users WHERE id = ?`, id).
		Scan(&u.ID, &u.Nickname, &u.Region, &u.Rating, &u.CreatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, "no user %d", id)
		return
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

// fail answers 500 and logs the error, unless the client went away.
func (d *DataServer) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	d.log.Error("data request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}
