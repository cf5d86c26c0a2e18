// Command auction runs one tier of the auction example, or its load
// generator:
//
//	auction data --listen 127.0.0.1:8082 --state-dir /tmp/auction
//	auction app  --listen 127.0.0.1:8081 --data http://127.0.0.1:8082 --work 1
//	auction web  --listen 127.0.0.1:8080 --app http://127.0.0.1:8081
//	auction load --target http://127.0.0.1:8080 --rate 50 --duration 60s
//
// See README.md beside this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/justrunit/justrunit/examples/auction/auction"
)

// Default addresses of the tiers.
const (
	defaultWebAddr  = "127.0.0.1:8080"
	defaultAppAddr  = "127.0.0.1:8081"
	defaultDataAddr = "127.0.0.1:8082"
)

var commands = []struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}{
	{"data", "run the data tier (SQLite behind an HTTP JSON API)", runData},
	{"app", "run the app tier (the CPU-heavy one)", runApp},
	{"web", "run the web tier (the front end)", runWeb},
	{"load", "run the open-loop load generator", runLoad},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "auction:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		for _, c := range commands {
			if c.name == args[0] {
				return c.run(ctx, args[1:], stdout, stderr)
			}
		}
	}
	fmt.Fprintln(stderr, "usage: auction <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(stderr, "  %-5s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(stderr, "\nRun 'auction <command> -h' for its flags.")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		return flag.ErrHelp
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// newFlagSet returns a flag set for a command that reports errors to
// stderr and returns them rather than exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("auction "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// logLevel adds the --log-level flag.
func logLevel(fs *flag.FlagSet) *slog.Level {
	var l slog.Level
	fs.TextVar(&l, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return &l
}

func newLogger(w io.Writer, level slog.Level, tier string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("tier", tier)
}

// serve listens on addr and serves h until ctx is done. It logs the address
// it listens on, which tells the port when addr ends in :0.
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	// Plain TCP, not the MPTCP Go listens with by default where the kernel
	// has it: criu (3.17 and 4.2 alike) cannot dump an MPTCP socket, and
	// JustRunIt's local platform clones a tier live with criu where it can.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	log.Info("listening", "addr", ln.Addr().String(), "url", "http://"+ln.Addr().String())
	err = auction.Serve(ctx, ln, h, log)
	log.Info("stopped")
	return err
}

// checkURL checks a flag holding a tier's base URL.
func checkURL(flagName, u string) error {
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return fmt.Errorf("--%s %q: want http://host:port", flagName, u)
	}
	return nil
}
