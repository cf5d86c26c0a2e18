package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
)

func init() { addCommand(newDemoCmd) }

func newDemoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the paper's server-expansion case on this machine",
		Long: `Run the paper's server-expansion case (its Figure 3) scaled to this machine:
several auction services on several hosts, the load of one rises, its SLA is
violated, the manager runs a study, picks the least passing allocation,
powers on a host, migrates instances to make room, and every SLA is met again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("demo: %w: it needs the local platform, the proxies, the experimenter and the manager; "+
				"what exists today is the study engine (see README, \"What works today\")", justrunit.ErrNotImplemented)
		},
	}
}
