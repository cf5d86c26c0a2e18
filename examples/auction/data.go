package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/justrunit/justrunit/examples/auction/auction"
)

func runData(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("data", stderr)
	listen := fs.String("listen", defaultDataAddr, "address to listen on")
	dir := fs.String("state-dir", "", "directory for the database (required); the tier writes nowhere else")
	items := fs.Int("seed-items", auction.DefaultSeedItems, "items to seed a new database with")
	users := fs.Int("seed-users", auction.DefaultSeedUsers, "users to seed a new database with")
	seed := fs.Uint64("seed", auction.DefaultSeed, "seed of the generated seed data")
	length := fs.Duration("auction-length", auction.DefaultAuctionLength,
		"how long an item put up for sale stays listed before its auction closes (0: for ever); the seeded items never close")
	level := logLevel(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--state-dir is required")
	}
	if *length < 0 {
		return fmt.Errorf("--auction-length %v: want a duration >= 0 (0: auctions never close)", *length)
	}
	if *length == 0 {
		*length = -1 // DataOptions' "for ever"
	}
	log := newLogger(stderr, *level, "data")
	d, err := auction.NewDataServer(*dir, auction.DataOptions{SeedItems: *items, SeedUsers: *users, Seed: *seed, AuctionLength: *length, Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()
	return serve(ctx, *listen, d, log)
}
