package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit/proxy/proxybench"
)

func init() { addBenchCommand(newBenchUpstreamCmd) }

// newBenchUpstreamCmd is the clone server "bench proxy" runs in its own
// process (proxybench.Options.UpstreamCommand); hidden, as it is of no use
// on its own.
func newBenchUpstreamCmd(g *globals) *cobra.Command {
	var (
		delay time.Duration
		body  int
		nice  int
		idle  bool
	)
	cmd := &cobra.Command{
		Use:    "upstream",
		Short:  "Serve bench proxy's upstream (answers every request after --delay with --body bytes) until SIGTERM",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := proxybench.ServeUpstream(cmd.Context(), delay, body, idle, nice, cmd.OutOrStdout()); err != nil {
				return fmt.Errorf("bench upstream: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&delay, "delay", time.Millisecond, "time before each answer")
	f.IntVar(&body, "body", 1024, "answer body size in bytes")
	f.IntVar(&nice, "nice", 0, "nice value of this process (higher: lower CPU priority)")
	f.BoolVar(&idle, "idle", false, "run in the idle scheduling class (SCHED_IDLE), as the local platform runs a clone")
	return cmd
}
