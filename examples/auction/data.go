package main

import (
	"context"
	"errors"
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
	level := logLevel(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--state-dir is required")
	}
	log := newLogger(stderr, *level, "data")
	d, err := auction.NewDataServer(*dir, auction.DataOptions{SeedItems: *items, SeedUsers: *users, Seed: *seed, Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()
	return serve(ctx, *listen, d, log)
}
