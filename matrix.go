package justrunit

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Provenance says how a matrix cell got its value (the paper's Figure 2).
type Provenance byte

// Cell provenances.
const (
	Empty        Provenance = '.' // no value yet
	Measured     Provenance = 'X' // an experiment measured it
	Interpolated Provenance = 'I' // the interpolator filled it
	Used         Provenance = 'T' // interpolated, and a decision used it
	Verified     Provenance = 'V' // a T cell the checker re-measured; Value is now measured
)

func (p Provenance) String() string { return string(rune(p)) }

// MarshalText implements encoding.TextMarshaler.
func (p Provenance) MarshalText() ([]byte, error) { return []byte{byte(p)}, nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Provenance) UnmarshalText(b []byte) error {
	if len(b) == 1 {
		switch q := Provenance(b[0]); q {
		case Empty, Measured, Interpolated, Used, Verified:
			*p = q
			return nil
		}
	}
	return Invalid("provenance", string(b), "want one of X, I, T, V, .")
}

// HasMeasurement reports whether the cell's value came from an experiment.
func (p Provenance) HasMeasurement() bool { return p == Measured || p == Verified }

// Cell is one value of the matrix and where it came from.
type Cell struct {
	Value float64    `json:"value"`
	Prov  Provenance `json:"prov"`
	// Uncertainty is the interpolator's estimate of the absolute error of an
	// I or T cell, in the metric's unit; 0 for measured cells.
	Uncertainty float64 `json:"uncertainty,omitempty"`
	// Predicted is, for a V cell, the interpolated value the checker tested;
	// for an empty cell of a point the checker found unmeasurable (see
	// VerifyUnmeasurable), the value a decision used and the checker could
	// not confirm.
	Predicted float64 `json:"predicted,omitempty"`
}

// Row is one point of the matrix: a cell per metric, and the observation
// behind its measured cells.
type Row struct {
	Point       Point        `json:"point"`
	Cells       []Cell       `json:"cells"`
	Observation *Observation `json:"observation,omitempty"`
	// Unmeasurable says why an experiment at this point ran its whole
	// window yet measured nothing (too few responses: the clone was
	// saturated there, or got no traffic). Its cells stay empty: no
	// interpolator fills them, no strategy runs the point again, and the
	// sla strategy counts it as missing the SLA. See MarkUnmeasurable.
	Unmeasurable string `json:"unmeasurable,omitempty"`
}

// Predicted reports whether every cell of r has a value (measured or
// interpolated): a fidelity check has something to compare with there.
func (r Row) Predicted() bool {
	if r.Unmeasurable != "" {
		return false
	}
	for _, c := range r.Cells {
		if c.Prov == Empty || math.IsNaN(c.Value) {
			return false
		}
	}
	return true
}

// Matrix holds a value per point and metric. Rows are in the space's flat
// order. A Matrix is not safe for concurrent mutation; the study engine owns it.
type Matrix struct {
	Space   Space    `json:"space"`
	Metrics []Metric `json:"metrics"`
	Rows    []Row    `json:"rows"`
}

// NewMatrix returns an empty matrix over s for metrics.
func NewMatrix(s Space, metrics []Metric) (*Matrix, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if len(metrics) == 0 {
		return nil, Invalid("metrics", nil, "need at least one metric; known: %v", AllMetrics)
	}
	seen := map[Metric]bool{}
	for _, m := range metrics {
		if _, err := ParseMetric(string(m)); err != nil {
			return nil, err
		}
		if seen[m] {
			return nil, Invalid("metrics", string(m), "listed twice")
		}
		seen[m] = true
	}
	m := &Matrix{Space: s, Metrics: append([]Metric(nil), metrics...), Rows: make([]Row, s.Size())}
	for i := range m.Rows {
		m.Rows[i].Point = s.At(i)
		m.Rows[i].Cells = make([]Cell, len(metrics))
		for j := range m.Rows[i].Cells {
			m.Rows[i].Cells[j].Prov = Empty
		}
	}
	return m, nil
}

// Validate checks the matrix's shape against its space, e.g. after reading
// one from a file.
func (m *Matrix) Validate() error {
	if err := m.Space.Validate(); err != nil {
		return err
	}
	if len(m.Rows) != m.Space.Size() {
		return Invalid("rows", len(m.Rows), "want one row per point of the space (%d)", m.Space.Size())
	}
	for i, r := range m.Rows {
		if len(r.Cells) != len(m.Metrics) {
			return Invalid(fmt.Sprintf("rows[%d].cells", i), len(r.Cells), "want one cell per metric (%d)", len(m.Metrics))
		}
		if !r.Point.Equal(m.Space.At(i)) {
			return Invalid(fmt.Sprintf("rows[%d].point", i), m.Space.Format(r.Point), "rows must follow the space's order; want %s", m.Space.Format(m.Space.At(i)))
		}
	}
	return nil
}

// MetricIndex returns the column of metric mt, or -1.
func (m *Matrix) MetricIndex(mt Metric) int {
	for i, x := range m.Metrics {
		if x == mt {
			return i
		}
	}
	return -1
}

// Cell returns the cell at point p for metric mt.
func (m *Matrix) Cell(p Point, mt Metric) (Cell, error) {
	i, j, err := m.locate(p, mt)
	if err != nil {
		return Cell{}, err
	}
	return m.Rows[i].Cells[j], nil
}

func (m *Matrix) locate(p Point, mt Metric) (int, int, error) {
	i, err := m.Space.IndexOf(p)
	if err != nil {
		return 0, 0, err
	}
	j := m.MetricIndex(mt)
	if j < 0 {
		return 0, 0, Invalid("metric", string(mt), "not recorded by this matrix (%v)", m.Metrics)
	}
	return i, j, nil
}

// Record stores an observation as the measured (X) cells of its point. A
// point that held a T cell keeps the check's trail: use Verify for that. An
// observation with a value that is not a finite number is an error wrapping
// ErrInvalid and changes nothing.
func (m *Matrix) Record(o Observation) error {
	i, err := m.Space.IndexOf(o.Point)
	if err != nil {
		return err
	}
	vs, err := m.values(&o)
	if err != nil {
		return err
	}
	row := &m.Rows[i]
	for j, v := range vs {
		row.Cells[j] = Cell{Value: v, Prov: Measured}
	}
	row.Observation, row.Unmeasurable = &o, ""
	return nil
}

// MarkUnmeasurable records that an experiment at p measured nothing, and
// why (see Row.Unmeasurable): the point's cells become empty. A measured
// point cannot be marked, nor one whose cell a decision used (T): the
// checker's finding there is VerifyUnmeasurable.
func (m *Matrix) MarkUnmeasurable(p Point, why string) error {
	row, err := m.unmeasurableRow(p, why)
	if err != nil {
		return err
	}
	for j, c := range row.Cells {
		if c.Prov == Used {
			return Invalid("point", m.Space.Format(p), "its %s cell is used by a decision (T); the checker marks it with VerifyUnmeasurable", m.Metrics[j])
		}
	}
	for j := range row.Cells {
		row.Cells[j] = Cell{Prov: Empty}
	}
	row.Unmeasurable = why
	return nil
}

// VerifyUnmeasurable stores the checker's finding that the experiment at
// p, a point with a cell a decision used (T), measured nothing, and why:
// the point is marked unmeasurable (see Row.Unmeasurable) and its cells
// become empty, the T cells keeping the value the decision used in
// Cell.Predicted. A decision can use the point no more, and no
// interpolator fills it. A point without a T cell is an error wrapping
// ErrInvalid (MarkUnmeasurable marks those), as is an empty reason; on
// error nothing changes.
func (m *Matrix) VerifyUnmeasurable(p Point, why string) error {
	row, err := m.unmeasurableRow(p, why)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(row.Cells, func(c Cell) bool { return c.Prov == Used }) {
		return Invalid("point", m.Space.Format(p), "no cell of it is used by a decision (T): nothing to verify")
	}
	for j, c := range row.Cells {
		predicted := 0.0
		if c.Prov == Used {
			predicted = c.Value
		}
		row.Cells[j] = Cell{Prov: Empty, Predicted: predicted}
	}
	row.Unmeasurable = why
	return nil
}

// unmeasurableRow returns p's row, to be marked unmeasurable for why: an
// error when why is empty or the point was measured.
func (m *Matrix) unmeasurableRow(p Point, why string) (*Row, error) {
	i, err := m.Space.IndexOf(p)
	if err != nil {
		return nil, err
	}
	row := &m.Rows[i]
	switch {
	case strings.TrimSpace(why) == "":
		return nil, Invalid("unmeasurable", why, "say why the point measured nothing")
	case row.Observation != nil:
		return nil, Invalid("point", m.Space.Format(p), "was measured; a measurement is not undone")
	}
	return row, nil
}

// Unmeasurable returns the flat indexes of the points marked unmeasurable.
func (m *Matrix) Unmeasurable() []int {
	var idx []int
	for i, r := range m.Rows {
		if r.Unmeasurable != "" {
			idx = append(idx, i)
		}
	}
	return idx
}

// values returns o's value for each of m's metrics, in column order. A
// value that is not a finite number is an error wrapping ErrInvalid: a NaN
// or an infinity in a measured cell says nothing about the point, and every
// cell interpolated from it would be poisoned. Record and Verify check the
// whole observation before they change a cell, so on error m is untouched.
func (m *Matrix) values(o *Observation) ([]float64, error) {
	vs := make([]float64, len(m.Metrics))
	for j, mt := range m.Metrics {
		v, err := o.Value(mt)
		if err != nil {
			return nil, err
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, Invalid("observation."+string(mt), v, "must be a finite number (at %s)", m.Space.Format(o.Point))
		}
		vs[j] = v
	}
	return vs, nil
}

// Use marks an interpolated cell as used by a decision (I → T) and returns it.
// Using a measured cell is allowed and changes nothing; using an empty cell
// is an error.
func (m *Matrix) Use(p Point, mt Metric) (Cell, error) {
	i, j, err := m.locate(p, mt)
	if err != nil {
		return Cell{}, err
	}
	c := &m.Rows[i].Cells[j]
	switch c.Prov {
	case Empty:
		why := "interpolate first"
		if u := m.Rows[i].Unmeasurable; u != "" {
			why = "the point was found unmeasurable (" + u + ")"
		}
		return Cell{}, fmt.Errorf("use cell %s %s: %w: it has no value; %s", m.Space.Format(p), mt, ErrInvalid, why)
	case Interpolated:
		c.Prov = Used
	}
	return *c, nil
}

// Verify stores the checker's measurement of a T cell: the observation
// becomes the point's observation, the checked metric's cell becomes V with
// the measured value and remembers the prediction; other metrics of the
// point that were not measured become X. Like Record, it rejects an
// observation with a value that is not a finite number and then changes
// nothing.
func (m *Matrix) Verify(o Observation, mt Metric) (Cell, error) {
	i, j, err := m.locate(o.Point, mt)
	if err != nil {
		return Cell{}, err
	}
	row := &m.Rows[i]
	predicted := row.Cells[j]
	if predicted.Prov != Used {
		return Cell{}, fmt.Errorf("verify cell %s %s: %w: provenance %s, want T", m.Space.Format(o.Point), mt, ErrInvalid, predicted.Prov)
	}
	vs, err := m.values(&o)
	if err != nil {
		return Cell{}, err
	}
	for k, v := range vs {
		switch {
		case k == j:
			row.Cells[k] = Cell{Value: v, Prov: Verified, Predicted: predicted.Value}
		case row.Cells[k].Prov == Used:
			row.Cells[k] = Cell{Value: v, Prov: Verified, Predicted: row.Cells[k].Value}
		case !row.Cells[k].Prov.HasMeasurement():
			row.Cells[k] = Cell{Value: v, Prov: Measured}
		}
	}
	row.Observation = &o
	return row.Cells[j], nil
}

// Measured returns the flat indexes of points that have an observation.
func (m *Matrix) Measured() []int {
	var idx []int
	for i, r := range m.Rows {
		if r.Observation != nil {
			idx = append(idx, i)
		}
	}
	return idx
}

// Counts returns how many cells of each provenance the matrix holds.
func (m *Matrix) Counts() map[Provenance]int {
	c := map[Provenance]int{}
	for _, r := range m.Rows {
		for _, cell := range r.Cells {
			c[cell.Prov]++
		}
	}
	return c
}

// Clone returns a deep copy of m.
func (m *Matrix) Clone() *Matrix {
	c := &Matrix{Space: m.Space, Metrics: append([]Metric(nil), m.Metrics...), Rows: make([]Row, len(m.Rows))}
	for i, r := range m.Rows {
		c.Rows[i] = Row{Point: append(Point(nil), r.Point...), Cells: append([]Cell(nil), r.Cells...), Unmeasurable: r.Unmeasurable}
		if r.Observation != nil {
			o := *r.Observation
			c.Rows[i].Observation = &o
		}
	}
	return c
}

// Render writes m as a table: one line per point, one column per metric,
// each value followed by its provenance letter (X, I, T, V), like the paper's
// Figure 2. Interpolated cells show ±uncertainty when known.
func (m *Matrix) Render(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	var hdr []string
	for _, p := range m.Space.Params {
		h := p.Name
		if p.Unit != "" {
			h += " (" + p.Unit + ")"
		}
		hdr = append(hdr, h)
	}
	for _, mt := range m.Metrics {
		hdr = append(hdr, fmt.Sprintf("%s (%s)", mt, mt.Unit()))
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\t")
	for _, r := range m.Rows {
		var cols []string
		for d, v := range r.Point {
			cols = append(cols, m.Space.Params[d].Format(v))
		}
		for _, c := range r.Cells {
			cols = append(cols, formatCell(c))
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c := m.Counts()
	if _, err := fmt.Fprintf(w, "cells: %d X measured, %d I interpolated, %d T used by a decision, %d V verified, %d empty\n",
		c[Measured], c[Interpolated], c[Used], c[Verified], c[Empty]); err != nil {
		return err
	}
	for _, i := range m.Unmeasurable() {
		if _, err := fmt.Fprintf(w, "unmeasurable at %s: %s\n", m.Space.Format(m.Rows[i].Point), m.Rows[i].Unmeasurable); err != nil {
			return err
		}
	}
	for _, r := range m.Rows {
		if o := r.Observation; o != nil && o.Saturated {
			if _, err := fmt.Fprintf(w, "saturated at %s: %.1f req/s answered of %.1f offered; its response times understate what clients would see\n",
				m.Space.Format(r.Point), o.Throughput, o.Offered); err != nil {
				return err
			}
		}
	}
	return nil
}

func formatCell(c Cell) string {
	if c.Prov == Empty {
		if c.Predicted != 0 { // a used point the checker could not measure
			return ". (was " + formatValue(c.Predicted) + ")"
		}
		return "."
	}
	s := formatValue(c.Value) + " " + c.Prov.String()
	if (c.Prov == Interpolated || c.Prov == Used) && c.Uncertainty > 0 {
		s = formatValue(c.Value) + "±" + formatValue(c.Uncertainty) + " " + c.Prov.String()
	}
	if c.Prov == Verified {
		s = formatValue(c.Value) + " (was " + formatValue(c.Predicted) + ") V"
	}
	return s
}

func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
