package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/store/sqlite"
)

func init() { addCommand(newStudyCmd) }

func newStudyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "study",
		Short: "Plan, run and inspect studies",
		Long: `A study runs experiments on a clone of one instance at some points of a parameter
space within a time bound, interpolates the rest and stores the matrix.`,
	}
	cmd.AddCommand(newStudyValidateCmd(g), newStudyRunCmd(g), newStudyListCmd(g), newStudyShowCmd(g), newStudyExportCmd(g))
	return cmd
}

func newStudyValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE.yaml",
		Short: "Check a study file and show what it would run",
		Example: `  justrunit study validate study.yaml
  # study.yaml:
  #   target: auction0/app
  #   parameters: ["cpu=20..100 step 10"]
  #   sla: rt_p95<=50
  #   time_bound: 5m
  #   warm_up: 5s
  #   window: 20s
  #   strategy: sla`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, yf, err := loadStudyFile(args[0])
			if err != nil {
				return err
			}
			st, err := f.study(yf)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "target:      %s\n", st.Target)
			for _, p := range st.Space.Params {
				vals := make([]string, len(p.Values))
				for i, v := range p.Values {
					vals[i] = p.Format(v)
				}
				fmt.Fprintf(w, "parameter:   %s = %s %s\n", p.Name, strings.Join(vals, ","), p.Unit)
			}
			fmt.Fprintf(w, "points:      %d\n", st.Space.Size())
			fmt.Fprintf(w, "experiment:  %v warm-up + %v window\n", st.WarmUp, st.Window)
			budget := justrunit.PlanState{TimeLeft: time.Duration(st.TimeBound), ExperimentLength: st.ExperimentLength(), Slots: st.Slots}.Budget()
			fmt.Fprintf(w, "time bound:  %v, %d slot(s): room for at most %d experiments\n", st.TimeBound, st.Slots, budget)
			if st.SLA != nil {
				fmt.Fprintf(w, "sla:         %s\n", st.SLA)
			}
			fmt.Fprintf(w, "strategy:    %s, interpolator %s, check threshold %g\n", orDefault(st.Strategy, "adaptive"), orDefault(st.Interpolator, "linear"), st.CheckThreshold)
			return nil
		},
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func newStudyRunCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run a study on a live instance (not yet)",
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("study run: %w: it needs the experimenter (clone, proxies, measurement on a platform); "+
				"today the study engine runs from Go code with a Runner of your own (see package study)", justrunit.ErrNotImplemented)
		},
	}
}

// openStore opens the study store in the data directory and marks studies
// whose process died as interrupted, so they are not shown as running.
func openStore(ctx context.Context, g *globals) (*sqlite.Store, error) {
	s, err := sqlite.Open(ctx, filepath.Join(g.dataDir, "justrunit.db"))
	if err != nil {
		return nil, err
	}
	if _, err := s.RecoverInterrupted(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func newStudyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List stored studies, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer s.Close()
			studies, err := s.Studies(cmd.Context())
			if err != nil {
				return err
			}
			if len(studies) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "No studies.")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTARGET\tSTATE\tPOINTS\tEXPERIMENTS\tSTRATEGY\tCREATED")
			for _, st := range studies {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", st.ID, st.Target, st.State, st.Space.Size(), st.Experiments,
					st.Strategy, st.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func newStudyShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a study: its settings, matrix (X/I/T/V) and checks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer s.Close()
			e, err := loadExport(cmd.Context(), s, args[0])
			if err != nil {
				return err
			}
			return e.render(cmd.OutOrStdout())
		},
	}
}

func newStudyExportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export ID",
		Short: "Write a study with its matrix, observations, checks and events as JSON",
		Long: `Write a study as one JSON document: the study, its matrix, every observation,
check result and event. "justrunit matrix show FILE" renders the file's matrix.`,
		Example: `  justrunit study export s-20261125-130501-ab12 -o study.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer s.Close()
			e, err := loadExport(cmd.Context(), s, args[0])
			if err != nil {
				return err
			}
			var w io.Writer = cmd.OutOrStdout()
			if out != "" && out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(e)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "-", "file to write, - for standard output")
	return cmd
}

// studyExport is the JSON document "study export" writes.
type studyExport struct {
	Study        *justrunit.Study        `json:"study"`
	Matrix       *justrunit.Matrix       `json:"matrix,omitempty"`
	Observations []justrunit.Observation `json:"observations"`
	Checks       []justrunit.CheckResult `json:"checks"`
	Events       []justrunit.Event       `json:"events"`
}

func loadExport(ctx context.Context, s justrunit.Store, id string) (*studyExport, error) {
	st, err := s.Study(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("study %s: %w (see \"justrunit study list\")", id, err)
	}
	e := &studyExport{Study: st}
	if e.Matrix, err = s.Matrix(ctx, id); err != nil && !isNotFound(err) {
		return nil, err
	}
	if e.Observations, err = s.Observations(ctx, id); err != nil {
		return nil, err
	}
	if e.Checks, err = s.Checks(ctx, id); err != nil {
		return nil, err
	}
	if e.Events, err = s.Events(ctx, justrunit.EventFilter{StudyID: id}); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *studyExport) render(w io.Writer) error {
	st := e.Study
	fmt.Fprintf(w, "Study %s on %s: %s", st.ID, st.Target, st.State)
	if st.Error != "" {
		fmt.Fprintf(w, " (%s)", st.Error)
	}
	fmt.Fprintf(w, "\n  strategy %s, interpolator %s, time bound %v, experiment %v+%v, %d slot(s), %d experiments\n",
		st.Strategy, st.Interpolator, st.TimeBound, st.WarmUp, st.Window, st.Slots, st.Experiments)
	if st.SLA != nil {
		fmt.Fprintf(w, "  sla %s\n", st.SLA)
	}
	fmt.Fprintln(w)
	if e.Matrix == nil {
		fmt.Fprintln(w, "No matrix yet.")
	} else if err := e.Matrix.Render(w); err != nil {
		return err
	}
	if len(e.Checks) > 0 {
		fmt.Fprintln(w, "\nChecks:")
		for _, c := range e.Checks {
			verdict := "passed"
			if !c.Passed {
				verdict = "FAILED"
			}
			fmt.Fprintf(w, "  %s %s: predicted %.3g, measured %.3g, error %.1f%% (threshold %.1f%%) %s\n",
				e.Study.Space.Format(c.Point), c.Metric, c.Predicted, c.Measured, 100*c.RelError, 100*c.Threshold, verdict)
		}
	}
	return nil
}
