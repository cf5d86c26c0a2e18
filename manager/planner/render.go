package planner

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Summary is one line saying what the plan does.
func (pl Plan) Summary() string {
	opt := ""
	if pl.Optimal {
		opt = ", optimal"
	}
	staging := 0
	for _, s := range pl.Steps {
		if s.Staging {
			staging++
		}
	}
	st := ""
	if staging > 0 {
		st = fmt.Sprintf(" (+%d staging)", staging)
	}
	return fmt.Sprintf("plan (%s%s): %d hosts powered (lower bound %d), %d migrations%s, %d allocation changes, %d power-on, %d power-off, %d steps",
		pl.Solver, opt, pl.HostsUsed, pl.LowerBound, len(pl.Moves), st, len(pl.Allocations), len(pl.PowerOn), len(pl.PowerOff), len(pl.Steps))
}

// String is the dry-run display of the plan: Render's output.
func (pl Plan) String() string {
	var b strings.Builder
	_ = pl.Render(&b)
	return b.String()
}

// Render writes the dry-run display of the plan to w: the summary, the
// hosts that are used or change power state with their planned load, and
// the numbered steps.
func (pl Plan) Render(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, pl.Summary())
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "HOST\tCLASS\tPOWER\tINSTANCES\tCPU\tCAPACITY\tUSE")
	for _, h := range pl.Hosts {
		if h.Instances == 0 && h.WasOn == h.On {
			continue
		}
		power := onOff(h.On)
		if h.WasOn != h.On {
			power = onOff(h.WasOn) + "→" + onOff(h.On)
		}
		use := "-"
		if h.Capacity > 0 {
			use = fmt.Sprintf("%.0f%%", 100*h.CPU/h.Capacity)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%g%%\t%g%%\t%s\n", h.Name, dash(h.Class), power, h.Instances, round2(h.CPU), h.Capacity, use)
	}
	fmt.Fprintln(tw)
	if len(pl.Steps) == 0 {
		fmt.Fprintln(tw, "no steps: the site already matches the plan")
		return tw.Flush()
	}
	fmt.Fprintln(tw, "#\tSTEP\tINSTANCE\tHOST\tDETAIL")
	for i, s := range pl.Steps {
		detail, where := "", s.Host
		switch s.Kind {
		case SetAllocation:
			if s.Alloc != nil {
				detail = s.Alloc.String()
			}
			if s.Was != nil {
				detail += " (was " + s.Was.String() + ")"
			}
		case Migrate:
			where = s.From + " → " + s.Host
			if s.Staging {
				detail = "staging: breaks a cycle of moves"
			}
		case PowerOn, PowerOff:
			if s.Staging {
				detail = "staging only"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, s.Kind, dash(s.Instance), where, detail)
	}
	return tw.Flush()
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func round2(v float64) float64 {
	return float64(int64(v*100+0.5)) / 100
}
