package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit/proxy/cloneside"
)

func init() { addCommand(newCloneSideCmd) }

// newCloneSideCmd is the hidden helper process the site starts per study
// for the clone side of a target's proxies (cloneside.Start); of no use
// on its own: it needs the sockets and configuration Start hands it.
func newCloneSideCmd(g *globals) *cobra.Command {
	var name string
	var site int
	cmd := &cobra.Command{
		Use:    cloneside.Subcommand,
		Short:  "Run the clone side of a target's proxies (started by the site, not by hand)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Stop cleanly on SIGTERM (the site's Close) or SIGINT; the
			// site closing the control socket stops it too.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return cloneside.Main(ctx, cmd.InOrStdin(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the clone side's name (for ps and logs; the configuration on stdin has it too)")
	cmd.Flags().IntVar(&site, "site", 0, "the pid of the site that started it (for \"platform gc\", which reaps a clone side whose site is gone)")
	return cmd
}
