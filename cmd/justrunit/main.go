// Command justrunit answers what-if questions about a running multi-tier
// service by experiment: it clones an instance into a sandbox, feeds it a copy
// of the live traffic, runs it at several resource settings, interpolates the
// rest and re-checks what a decision used.
//
// Each subcommand lives in its own file and registers itself with
// addCommand, so this file only wires logging and the root command.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
)

// commands are the subcommand constructors registered by init functions.
var commands []func(*globals) *cobra.Command

// addCommand registers a subcommand constructor.
func addCommand(f func(*globals) *cobra.Command) { commands = append(commands, f) }

// globals are the flags every subcommand shares and what main builds from them.
type globals struct {
	logLevel  string
	logFormat string
	dataDir   string
	logger    *slog.Logger
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "justrunit",
		Short: "Experiment-based management of data centres",
		Long: `justrunit answers what-if questions about a live multi-tier service by experiment,
not by a model: it clones one instance into a sandbox, feeds the clone a copy of
the live traffic, runs it at several resource settings, measures throughput,
response time and energy, interpolates the settings it did not run, and
re-checks every interpolated value a decision used.

 Find more information in README.md.`,
		Example: `  # Render a matrix exported from a study
  justrunit matrix show study.json

  # Run the paper's server-expansion case on this machine
  justrunit demo`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			l, err := newLogger(g.logLevel, g.logFormat)
			if err != nil {
				return err
			}
			g.logger = l
			slog.SetDefault(l)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", defaultDataDir(), "directory for the study store and platform state")
	for _, f := range commands {
		root.AddCommand(f(g))
	}
	return root
}

func defaultDataDir() string {
	if d := os.Getenv("JUSTRUNIT_DATA_DIR"); d != "" {
		return d
	}
	if d, err := os.UserHomeDir(); err == nil {
		return d + "/.justrunit"
	}
	return ".justrunit"
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, justrunit.Invalid("--log-level", level, "want debug, info, warn or error")
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, justrunit.Invalid("--log-format", format, "want text or json")
}

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	interrupted(cancel, os.Stderr)
	err := newRootCmd().ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func isNotFound(err error) bool { return errors.Is(err, justrunit.ErrNotFound) }

// interrupted calls cancel on the first SIGINT or SIGTERM, so that the
// command stops and removes what it made (clones, cgroups, namespaces), and
// says so on w; a second signal then ends the process at once, as signals
// do by default, for a user who will not wait (platform gc removes what is
// left).
func interrupted(cancel func(), w io.Writer) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(w, "\n%v: stopping and cleaning up; the same signal again quits at once (then \"justrunit platform gc\" removes what is left)\n", s)
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		cancel()
	}()
}
