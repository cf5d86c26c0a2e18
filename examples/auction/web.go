package main

import (
	"context"
	"io"

	"github.com/justrunit/justrunit/examples/auction/auction"
)

func runWeb(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("web", stderr)
	listen := fs.String("listen", defaultWebAddr, "address to listen on")
	app := fs.String("app", "http://"+defaultAppAddr, "base URL of the app tier, or of an in-proxy in front of it")
	timeout := fs.Duration("timeout", auction.DefaultTimeout, "timeout of a call to the app tier")
	level := logLevel(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkURL("app", *app); err != nil {
		return err
	}
	log := newLogger(stderr, *level, "web")
	s, err := auction.NewWebServer(*app, auction.WebOptions{Client: auction.NewClient(*timeout), Logger: log})
	if err != nil {
		return err
	}
	defer s.Close()
	return serve(ctx, *listen, s, log)
}
