package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/platform/qemu"
	"github.com/justrunit/justrunit/proxy/cloneside"
)

func init() { addCommand(newPlatformCmd) }

// platformStateDir is where platform name keeps its files under the data dir.
func platformStateDir(g *globals, name string) string {
	return filepath.Join(g.dataDir, "platform", name)
}

// openPlatform makes the named platform with its state under the data dir.
func openPlatform(g *globals, name string) (justrunit.Platform, error) {
	return justrunit.NewPlatform(name, justrunit.PlatformConfig{Logger: g.logger, StateDir: platformStateDir(g, name)})
}

func closePlatform(p justrunit.Platform) error {
	if c, ok := p.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}

func newPlatformCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "platform",
		Short: "Inspect the platform and remove what a crashed run left behind",
		Long: `Commands about the platform instances run on. The local platform keeps its
state under <data-dir>/platform/local and names everything it creates after that
state directory (its scope): cgroups /justrunit/<scope>/..., network namespaces
jri-<scope>-..., veths jri... aliased justrunit:<scope>:..., nftables tables
justrunit-<scope>-....`,
	}
	cmd.AddCommand(newPlatformCheckCmd(g), newPlatformGCCmd(g), newPlatformHostsCmd(g))
	return cmd
}

func newPlatformCheckCmd(g *globals) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that this machine can run the platform, and say what to fix",
		Long: `Try on this machine what the platform needs, the way it does it, and list each
check with what was found and, where one fails, what to do.

local: root; cgroups (v1 or v2: the controllers, then a group made with a CPU
quota, a cpuset and a memory limit, frozen, thawed and removed); cpu time
(cpuacct on v1); memory limits (optional: the memory controller on v1); hosts
(CPUs); overlayfs under the data directory (optional: without it each clone
gets a full copy of the state directory, and keeps its writes to /tmp,
/var/tmp and /dev/shm, overlays on the host's, in memory); a clone's network (namespace, veth pair, routes
and nftables NAT, made and removed); the clone mode; energy (RAPL, or the host
classes' power models).

qemu: root; the Debian packages; the accelerator (KVM, or TCG where /dev/kvm
cannot boot stock kernels); the clone mode; cgroups; the guest image.

Everything a check makes is removed. The command fails when a check that is not
optional fails.`,
		Example: `  justrunit platform check
  justrunit platform check --platform qemu --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var checks []justrunit.Check
			switch name {
			case "local":
				checks = local.Check(cmd.Context(), platformStateDir(g, ""))
			case "qemu":
				image := qemuImageLink(g)
				if d := os.Getenv("JUSTRUNIT_QEMU_IMAGE"); d != "" {
					image = d
				}
				checks = qemu.Check(cmd.Context(), platformStateDir(g, ""), image)
			default:
				return justrunit.Invalid("platform", name, "want local or qemu")
			}
			var failed []string
			for _, c := range checks {
				if !c.OK && !c.Optional {
					failed = append(failed, c.Name)
				}
			}
			if asJSON {
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"platform": name, "ok": len(failed) == 0, "checks": checks}); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
				for _, c := range checks {
					result := "ok"
					switch {
					case !c.OK && c.Optional:
						result = "without"
					case !c.OK:
						result = "FAILED"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, result, c.Detail)
					if c.Fix != "" {
						fmt.Fprintf(tw, "\t\t→ %s\n", c.Fix)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("platform %s cannot run here: failed %s", name, strings.Join(failed, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "platform", "local", "platform to check: local or qemu")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return cmd
}

func newPlatformGCCmd(g *globals) *cobra.Command {
	var name string
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove what a crashed run left behind (processes, cgroups, namespaces, veths, NAT rules, mounts, clone dirs)",
		Long: `Remove the objects a crashed or killed run of the platform left on this machine:
processes and their cgroups, network namespaces, veth pairs, nftables tables,
mounts and clone directories of the platform's scope, and nothing else. Clone
sides (the helper process a study feeds its clones from) whose site is gone are
killed too, whatever the platform.

Every run of a site (study run, serve --site, manager run, the demos) does the same
for its state directory when it starts. gc refuses to run while another process
(a running daemon or study) holds the platform's state directory.

--all (local platform) cleans every scope on this machine whose platform is not
running: scopes whose state directory is locked by a live platform are skipped;
scopes whose state directory is gone (a killed test's temporary directory) lose
their processes, cgroups, namespaces, veths and nftables tables.`,
		Example: `  justrunit platform gc
  justrunit platform gc --json
  justrunit --data-dir /var/lib/justrunit platform gc
  justrunit platform gc --all     # every crashed run on this machine`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// A clone side outlives its site only if it hung (it ends with
			// its site's control socket): whatever the platform, none of
			// them is anybody's any more.
			if pids, err := cloneside.ReapOrphans(); err != nil {
				return fmt.Errorf("platform gc: %w", err)
			} else if len(pids) > 0 {
				g.logger.Warn("killed clone sides whose site is gone", "pids", pids)
			}
			if all {
				if name != "local" {
					return fmt.Errorf("platform gc --all: platform %s: %w", name, justrunit.ErrUnsupported)
				}
				rs, err := local.CollectStale(cmd.Context(), g.logger)
				if asJSON {
					if rs == nil {
						rs = []local.Report{}
					}
					if jerr := json.NewEncoder(cmd.OutOrStdout()).Encode(rs); jerr != nil {
						return jerr
					}
				} else {
					for _, r := range rs {
						fmt.Fprintf(cmd.OutOrStdout(), "scope %s: removed %s\n", r.Scope, r)
					}
					if len(rs) == 0 {
						fmt.Fprintln(cmd.OutOrStdout(), "no stale scope")
					}
				}
				if err != nil {
					return fmt.Errorf("platform gc --all: %w", err)
				}
				return nil
			}
			p, err := openPlatform(g, name)
			if err != nil {
				if errors.Is(err, justrunit.ErrExists) {
					return fmt.Errorf("platform gc: %w (a running daemon removes its own leftovers)", err)
				}
				return fmt.Errorf("platform gc: %w", err)
			}
			defer closePlatform(p)
			ctx := cmd.Context()
			if lp, ok := p.(*local.Platform); ok {
				r, err := lp.Collect(ctx)
				if err != nil {
					return fmt.Errorf("platform gc: %w", err)
				}
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "scope %s: removed %s\n", lp.Scope(), r)
				return nil
			}
			c, ok := p.(justrunit.Cleaner)
			if !ok {
				return fmt.Errorf("platform gc: platform %s: %w: it keeps no state to clean", name, justrunit.ErrUnsupported)
			}
			if err := c.Cleanup(ctx); err != nil {
				return fmt.Errorf("platform gc: %w", err)
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]string{"platform": name, "result": "clean"})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "platform %s: clean\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "platform", "local", "platform to clean")
	cmd.Flags().BoolVar(&all, "all", false, "clean every scope on this machine whose platform is not running (local)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was removed as JSON")
	return cmd
}

func newPlatformHostsCmd(g *globals) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List the platform's hosts (on local: CPU partitions of this machine)",
		Example: `  justrunit platform hosts
  justrunit platform hosts --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := openPlatform(g, name)
			if err != nil {
				return fmt.Errorf("platform hosts: %w", err)
			}
			defer closePlatform(p)
			return printHosts(cmd, p, asJSON)
		},
	}
	cmd.Flags().StringVar(&name, "platform", "local", "platform to list")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printHosts(cmd *cobra.Command, p justrunit.Platform, asJSON bool) error {
	hosts, err := p.Hosts(context.Background())
	if err != nil {
		return err
	}
	cpus := map[string]string{}
	if lp, ok := p.(*local.Platform); ok {
		for _, h := range lp.HostConfigs() {
			cpus[h.Name] = h.CPUs
		}
	}
	if asJSON {
		type row struct {
			justrunit.Host
			CPUs string `json:"cpus,omitempty"`
		}
		var rows []row
		for _, h := range hosts {
			rows = append(rows, row{h, cpus[h.Name]})
		}
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"platform": p.Name(), "hosts": rows, "capabilities": p.Capabilities()})
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCLASS\tCORES\tCPUS\tROLE\tPOWER\tMODEL")
	for _, h := range hosts {
		role, power := "on-line", "off"
		if h.Sandbox {
			role = "sandbox"
		}
		if h.On {
			power = "on"
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%s\t%s\t%s\t%s\n", h.Name, h.Class, h.Cores, cpus[h.Name], role, power, h.Power)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout())
	for _, c := range p.Capabilities() {
		em := ""
		if c.Emulated {
			em = " (emulated)"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%-9s %s%s\n", c.Param, c.How, em)
	}
	return nil
}
