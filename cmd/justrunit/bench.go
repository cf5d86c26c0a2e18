package main

import "github.com/spf13/cobra"

func init() { addCommand(newBenchCmd) }

// benchCommands are the "justrunit bench" subcommands, registered by init
// functions in their own files.
var benchCommands []func(*globals) *cobra.Command

func addBenchCommand(f func(*globals) *cobra.Command) { benchCommands = append(benchCommands, f) }

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run benchmarks that print ratios measured in one run",
		Long: `Run JustRunIt's benchmarks. Each compares alternatives measured in the same run
on this machine (e.g. through the in-proxy vs direct) and prints the ratios;
--json prints one JSON object for scripts.`,
	}
	for _, f := range benchCommands {
		cmd.AddCommand(f(g))
	}
	return cmd
}
