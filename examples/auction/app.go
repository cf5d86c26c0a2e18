package main

import (
	"context"
	"io"
	"time"

	"github.com/justrunit/justrunit/examples/auction/auction"
)

func runApp(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("app", stderr)
	listen := fs.String("listen", defaultAppAddr, "address to listen on")
	data := fs.String("data", "http://"+defaultDataAddr, "base URL of the data tier, or of an out-proxy in front of it")
	work := fs.Float64("work", auction.DefaultWork, "CPU work factor: 1 is about 2-5 ms of CPU per request, 0 none")
	timeout := fs.Duration("timeout", auction.DefaultTimeout, "timeout of a call to the data tier")
	level := logLevel(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkURL("data", *data); err != nil {
		return err
	}
	log := newLogger(stderr, *level, "app")
	a, err := auction.NewAppServer(*data, auction.AppOptions{Work: *work, Client: auction.NewClient(*timeout), Logger: log})
	if err != nil {
		return err
	}
	defer a.Close()
	log.Info("app tier", "data", *data, "work", *work, "timeout", timeout.Round(time.Millisecond).String())
	return serve(ctx, *listen, a, log)
}
