package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
)

func init() { addCommand(newMatrixCmd) }

func newMatrixCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "matrix",
		Short: "Inspect experiment matrices",
	}
	show := &cobra.Command{
		Use:   "show FILE.json",
		Short: "Render a matrix file as a table with X/I/T/V provenance",
		Long: `Render a matrix, as written by "justrunit study export", as a table: one line
per point, one column per metric, each value followed by how it was obtained:
X measured, I interpolated, T interpolated and used by a decision, V a T cell
the checker re-measured.`,
		Example: `  justrunit matrix show study.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := readMatrix(args[0])
			if err != nil {
				return err
			}
			return m.Render(cmd.OutOrStdout())
		},
	}
	cmd.AddCommand(show)
	return cmd
}

// readMatrix reads a matrix file: either a bare matrix or an export with a
// "matrix" field.
func readMatrix(path string) (*justrunit.Matrix, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var wrapped struct {
		Study  *struct{ ID, State string } `json:"study"`
		Matrix *justrunit.Matrix           `json:"matrix"`
	}
	if err := json.Unmarshal(b, &wrapped); err != nil {
		return nil, fmt.Errorf("%s: not a JSON matrix: %w", path, err)
	}
	m := wrapped.Matrix
	if m == nil && wrapped.Study != nil {
		return nil, categoryf(justrunit.ErrNotFound, "%s: the export of study %s (%s) has no matrix (yet)", path, wrapped.Study.ID, wrapped.Study.State)
	}
	if m == nil {
		m = new(justrunit.Matrix)
		if err := json.Unmarshal(b, m); err != nil {
			return nil, fmt.Errorf("%s: not a JSON matrix: %w", path, err)
		}
		if len(m.Space.Params) == 0 && len(m.Metrics) == 0 && len(m.Rows) == 0 {
			return nil, categoryf(justrunit.ErrInvalid, "%s: holds no matrix: want a matrix (space, metrics, rows) or a study export with one", path)
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}
