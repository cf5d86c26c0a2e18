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
	"path/filepath"
	"strings"
	"sync/atomic"
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

// categoryError is a message of its own that errors.Is finds in a
// category (justrunit.ErrInvalid, ErrNotFound...) without saying its name.
type categoryError struct {
	msg      string
	category error
}

// categoryf returns a categoryError with the formatted message.
func categoryf(category error, format string, args ...any) error {
	return &categoryError{msg: fmt.Sprintf(format, args...), category: category}
}

func (e *categoryError) Error() string { return e.msg }
func (e *categoryError) Unwrap() error { return e.category }

// interrupted calls cancel on the first SIGINT or SIGTERM, so that the
// command stops and removes what it made (clones, cgroups, namespaces), and
// says so on w; a second signal then ends the process at once, as signals
// do by default, for a user who will not wait, and the message names the
// command that then removes what is left (see setCleanupHint).
func interrupted(cancel func(), w io.Writer) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(w, "\n%v: stopping and cleaning up; the same signal again quits at once (then %s)\n", s, cleanupHintText())
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		cancel()
	}()
}

// cleanupHint is the command that removes what the running command leaves
// on the platform when it is killed; empty until a command that brings a
// platform up says which (setCleanupHint).
var cleanupHint atomic.Pointer[string]

// setCleanupHint records cmd as the command that cleans up after the
// running one; an empty cmd restores the general hint.
func setCleanupHint(cmd string) { cleanupHint.Store(&cmd) }

// cleanupHintText is the interrupt message's clause on cleaning up.
func cleanupHintText() string {
	if h := cleanupHint.Load(); h != nil && *h != "" {
		return `"` + *h + `" removes what is left`
	}
	return genericCleanupHint
}

// genericCleanupHint covers both platforms, for when the command did not
// say which it runs.
const genericCleanupHint = `"justrunit platform gc --all" removes what a run on the local platform left, ` +
	`"justrunit platform gc --platform qemu" what one on the qemu platform left`

// gcCommand returns the command that removes what a run of platform with
// its state in stateDir leaves when it is killed. "platform gc" cleans the
// platform's state directory under the data directory (so the command
// names --data-dir unless it is the default one); a local platform with a
// state directory elsewhere (the demos' <out>/platform) is found by
// "platform gc --all", which cleans every local scope no live process
// holds; any other platform elsewhere has no command (the general hint).
func gcCommand(g *globals, platform, stateDir string) string {
	global := ""
	if filepath.Clean(g.dataDir) != filepath.Clean(defaultDataDir()) {
		dir := g.dataDir
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		global = " --data-dir " + shellQuote(dir)
	}
	underData := filepath.Clean(stateDir) == filepath.Clean(platformStateDir(g, platform))
	switch {
	case underData && platform == "local":
		return "justrunit" + global + " platform gc"
	case underData:
		return "justrunit" + global + " platform gc --platform " + shellQuote(platform)
	case platform == "local":
		return "justrunit platform gc --all"
	}
	return ""
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=+,@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
