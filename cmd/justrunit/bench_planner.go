package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/manager/planner"
)

func init() { addBenchCommand(newBenchPlannerCmd) }

func newBenchPlannerCmd(g *globals) *cobra.Command {
	var instances, hosts int
	var seed uint64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "planner",
		Short: "Time the placement heuristic on a random large site and compare it with the lower bound",
		Long: `Make a random site (seeded): hosts of 4 cores, all powered on, and instances each
requiring 5..120% of a core, placed on random hosts; then plan it with the
heuristic and print the time, the hosts used and the lower bound
ceil(total demand / host capacity).`,
		Example: `  justrunit bench planner --json
  justrunit bench planner --instances 1000 --hosts 200`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if instances < 1 {
				return justrunit.Invalid("--instances", instances, "must be ≥ 1")
			}
			if hosts < 1 {
				return justrunit.Invalid("--hosts", hosts, "must be ≥ 1")
			}
			in := randomSite(instances, hosts, seed)
			start := time.Now()
			plan, err := planner.Heuristic(in)
			took := time.Since(start)
			if err != nil {
				return fmt.Errorf("bench planner: %w", err)
			}
			res := struct {
				Instances  int     `json:"instances"`
				Hosts      int     `json:"hosts"`
				PlanS      float64 `json:"plan_s"`
				HostsUsed  int     `json:"hosts_used"`
				LowerBound int     `json:"lower_bound"`
				Ratio      float64 `json:"hosts_per_lower_bound"`
				Migrations int     `json:"migrations"`
			}{instances, hosts, took.Seconds(), plan.HostsUsed, plan.LowerBound, float64(plan.HostsUsed) / float64(max(plan.LowerBound, 1)), len(plan.Moves)}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d instances on %d hosts: planned in %.3f s, %d hosts used, lower bound %d (%.4fx), %d migrations\n",
				res.Instances, res.Hosts, res.PlanS, res.HostsUsed, res.LowerBound, res.Ratio, res.Migrations)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&instances, "instances", 10000, "instances on the random site")
	f.IntVar(&hosts, "hosts", 2000, "hosts on the random site")
	f.Uint64Var(&seed, "seed", 1, "random seed")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// randomSite makes the benchmark's site: n instances of 5..120% of a core
// on random hosts among m hosts of 4 cores.
func randomSite(n, m int, seed uint64) planner.Input {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	in := planner.Input{}
	for i := range m {
		in.Hosts = append(in.Hosts, justrunit.Host{Name: fmt.Sprintf("h%d", i), Class: "std", Cores: 4, On: true,
			Power: justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}})
	}
	for i := range n {
		cpu := 5 + float64(r.IntN(116))
		in.Instances = append(in.Instances, planner.Demand{ID: fmt.Sprintf("i%d", i), Host: in.Hosts[r.IntN(m)].Name, CPU: cpu,
			Current: justrunit.Allocation{CPU: cpu}})
	}
	return in
}
