package justrunit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testMatrix(t *testing.T) *Matrix {
	t.Helper()
	cpu, _ := ParseParameter("cpu=60..100 step 10")
	s, _ := NewSpace(cpu)
	m, err := NewMatrix(s, []Metric{RTP95, Throughput})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMatrixProvenance(t *testing.T) {
	m := testMatrix(t)
	obs := Observation{Point: Point{60}, Window: Duration(time.Second), Samples: 100, Throughput: 100, RT: ResponseTime{P95: 48}}
	if err := m.Record(obs); err != nil {
		t.Fatal(err)
	}
	c, _ := m.Cell(Point{60}, RTP95)
	if c.Prov != Measured || c.Value != 48 {
		t.Fatalf("Cell(60, p95) = %+v, want 48 X", c)
	}
	if _, err := m.Use(Point{70}, RTP95); err == nil {
		t.Fatal("Use of an empty cell: no error")
	}
	m.Rows[1].Cells[0] = Cell{Value: 40, Prov: Interpolated, Uncertainty: 2}
	if c, err := m.Use(Point{70}, RTP95); err != nil || c.Prov != Used {
		t.Fatalf("Use(70) = %+v, %v; want T", c, err)
	}
	if c, _ := m.Use(Point{60}, RTP95); c.Prov != Measured {
		t.Fatalf("Use of a measured cell changed it to %v", c.Prov)
	}
	v, err := m.Verify(Observation{Point: Point{70}, Throughput: 100, RT: ResponseTime{P95: 44}}, RTP95)
	if err != nil || v.Prov != Verified || v.Value != 44 || v.Predicted != 40 {
		t.Fatalf("Verify = %+v, %v; want 44 V predicted 40", v, err)
	}
	if c, _ := m.Cell(Point{70}, Throughput); c.Prov != Measured {
		t.Errorf("other metric of a verified point = %v, want X", c.Prov)
	}
	if _, err := m.Verify(Observation{Point: Point{80}}, RTP95); err == nil {
		t.Error("Verify of a non-T cell: no error")
	}
	counts := m.Counts()
	if counts[Measured] != 3 || counts[Verified] != 1 || counts[Empty] != 6 {
		t.Errorf("Counts() = %v", counts)
	}
}

func TestMatrixJSONRoundTrip(t *testing.T) {
	m := testMatrix(t)
	_ = m.Record(Observation{Point: Point{80}, Samples: 10, RT: ResponseTime{P95: 30}, Energy: Energy{Source: EnergyModel}})
	m.Rows[0].Cells[0] = Cell{Value: 55, Prov: Interpolated, Uncertainty: 3}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"prov":"X"`) || !strings.Contains(string(b), `"prov":"I"`) {
		t.Fatalf("JSON lacks provenance letters: %s", b)
	}
	var back Matrix
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(&back)
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the matrix:\n%s\n%s", b, b2)
	}
	var out bytes.Buffer
	if err := back.Render(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"30.00 X", "55.00±3.00 I", "2 X measured, 1 I interpolated"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Render output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestMatrixRejectsNonFinite: Record and Verify both refuse an observation
// with a value that is not a finite number, with a FieldError naming the
// metric, and change nothing, not even the cells of metrics before it.
func TestMatrixRejectsNonFinite(t *testing.T) {
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		for _, tc := range []struct {
			name  string
			apply func(m *Matrix, o Observation) error
		}{
			{"Record", func(m *Matrix, o Observation) error { return m.Record(o) }},
			{"Verify", func(m *Matrix, o Observation) error { _, err := m.Verify(o, RTP95); return err }},
		} {
			t.Run(fmt.Sprintf("%s/%g", tc.name, bad), func(t *testing.T) {
				m := testMatrix(t)
				// A T cell at 70, so that Verify gets past its provenance
				// check; throughput, after rt_p95, is the bad value.
				m.Rows[1].Cells[0] = Cell{Value: 40, Prov: Used, Uncertainty: 2}
				before := m.Clone()
				o := Observation{Point: Point{70}, Samples: 10, Throughput: bad, RT: ResponseTime{P95: 44}}
				err := tc.apply(m, o)
				var fe *FieldError
				if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "observation.throughput" {
					t.Fatalf("%s(throughput %g) error = %v, want a FieldError for observation.throughput wrapping ErrInvalid", tc.name, bad, err)
				}
				if !reflect.DeepEqual(m, before) {
					t.Errorf("%s(throughput %g) changed the matrix:\n got %+v\nwant %+v", tc.name, bad, m.Rows[1], before.Rows[1])
				}
			})
		}
	}
}

// TestMarkUnmeasurable checks that a point whose experiment measured nothing
// is marked with its reason and empty cells, survives a copy and JSON,
// shows in the rendering, and that a later measurement replaces the mark.
func TestMarkUnmeasurable(t *testing.T) {
	m := testMatrix(t)
	m.Rows[0].Cells[0] = Cell{Value: 40, Prov: Interpolated, Uncertainty: 2}
	if err := m.MarkUnmeasurable(Point{60}, "0 successful responses in the full window"); err != nil {
		t.Fatal(err)
	}
	if c, _ := m.Cell(Point{60}, RTP95); c.Prov != Empty {
		t.Errorf("cell of an unmeasurable point = %+v, want empty", c)
	}
	var buf bytes.Buffer
	if err := m.Render(&buf); err != nil || !strings.Contains(buf.String(), "unmeasurable at cpu=60: 0 successful responses") {
		t.Errorf("Render = %q, %v; want the unmeasurable point and why", buf.String(), err)
	}
	b, _ := json.Marshal(m.Clone())
	var back Matrix
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Unmeasurable(), []int{0}) {
		t.Errorf("after Clone and JSON: unmeasurable %v, %v; want [0]", back.Unmeasurable(), err)
	}
	if err := m.Record(Observation{Point: Point{60}, Samples: 100, Throughput: 90, RT: ResponseTime{P95: 70}}); err != nil {
		t.Fatal(err)
	}
	if len(m.Unmeasurable()) != 0 {
		t.Error("a measurement did not replace the unmeasurable mark")
	}
	for _, c := range []struct {
		name string
		p    Point
		why  string
	}{
		{"measured", Point{60}, "too few"},
		{"no reason", Point{70}, " "},
		{"not in the space", Point{65}, "too few"},
	} {
		if err := m.MarkUnmeasurable(c.p, c.why); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: MarkUnmeasurable = %v, want invalid", c.name, err)
		}
	}
	m.Rows[1].Cells[0] = Cell{Value: 40, Prov: Interpolated}
	if _, err := m.Use(Point{70}, RTP95); err != nil {
		t.Fatal(err)
	}
	if err := m.MarkUnmeasurable(Point{70}, "too few"); !errors.Is(err, ErrInvalid) {
		t.Errorf("MarkUnmeasurable of a used point = %v, want invalid", err)
	}
}

// TestSaturated checks when a window counts as saturated, which figures a
// saturated observation understates, and that the rendering says so.
func TestSaturated(t *testing.T) {
	for _, c := range []struct {
		answered, sent int64
		want           bool
	}{
		{95, 100, false},
		{90, 100, false},
		{89, 100, true},
		{0, 19, false}, // too few sent to tell
		{0, 20, true},
		{1000, 900, false}, // more answered than sent: in flight at the start
	} {
		if got := IsSaturated(c.answered, c.sent); got != c.want {
			t.Errorf("IsSaturated(%d, %d) = %v, want %v", c.answered, c.sent, got, c.want)
		}
	}
	o := &Observation{Saturated: true}
	for _, mt := range AllMetrics {
		want := mt == RTMean || mt == RTP50 || mt == RTP95 || mt == RTP99
		if got := o.Understates(mt); got != want {
			t.Errorf("saturated: Understates(%s) = %v, want %v", mt, got, want)
		}
		if (&Observation{}).Understates(mt) || (*Observation)(nil).Understates(mt) {
			t.Errorf("Understates(%s) true without saturation", mt)
		}
	}
	m := testMatrix(t)
	if err := m.Record(Observation{Point: Point{60}, Samples: 100, Throughput: 8, Offered: 12, Saturated: true, RT: ResponseTime{P95: 70}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := m.Render(&buf); err != nil || !strings.Contains(buf.String(), "saturated at cpu=60: 8.0 req/s answered of 12.0 offered") {
		t.Errorf("Render = %q, %v; want the saturated point", buf.String(), err)
	}
}

// TestVerifyUnmeasurable checks that the checker's finding that a used
// point cannot be measured marks it unmeasurable, its cells empty with the
// predictions kept, shown in the rendering, and that only a point with a T
// cell can be marked so.
func TestVerifyUnmeasurable(t *testing.T) {
	m := testMatrix(t)
	m.Rows[1].Cells[0] = Cell{Value: 40, Prov: Interpolated, Uncertainty: 2}
	m.Rows[1].Cells[1] = Cell{Value: 90, Prov: Interpolated}
	if _, err := m.Use(Point{70}, RTP95); err != nil {
		t.Fatal(err)
	}
	if err := m.VerifyUnmeasurable(Point{70}, "0 successful responses in the full window"); err != nil {
		t.Fatal(err)
	}
	row := m.Rows[1]
	if row.Unmeasurable == "" || row.Cells[0] != (Cell{Prov: Empty, Predicted: 40}) || row.Cells[1] != (Cell{Prov: Empty}) {
		t.Errorf("row after VerifyUnmeasurable = %+v, want unmeasurable, the T cell empty with its prediction, the I cell empty", row)
	}
	var buf bytes.Buffer
	if err := m.Render(&buf); err != nil || !strings.Contains(buf.String(), ". (was 40.00)") || !strings.Contains(buf.String(), "unmeasurable at cpu=70") {
		t.Errorf("Render = %q, %v; want the prediction and the unmeasurable point", buf.String(), err)
	}
	b, _ := json.Marshal(m.Clone())
	var back Matrix
	if err := json.Unmarshal(b, &back); err != nil || back.Rows[1].Cells[0].Predicted != 40 {
		t.Errorf("after Clone and JSON: %+v, %v; want the prediction kept", back.Rows[1], err)
	}
	if err := m.Record(Observation{Point: Point{60}, Samples: 100, Throughput: 90, RT: ResponseTime{P95: 70}}); err != nil {
		t.Fatal(err)
	}
	m.Rows[2].Cells[0] = Cell{Value: 40, Prov: Interpolated}
	for _, c := range []struct {
		name string
		p    Point
		why  string
	}{
		{"measured", Point{60}, "too few"},
		{"no cell used", Point{80}, "too few"},
		{"already unmeasurable", Point{70}, "too few"},
		{"not in the space", Point{65}, "too few"},
	} {
		if err := m.VerifyUnmeasurable(c.p, c.why); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: VerifyUnmeasurable = %v, want invalid", c.name, err)
		}
	}
	if _, err := m.Use(Point{80}, RTP95); err != nil {
		t.Fatal(err)
	}
	if err := m.VerifyUnmeasurable(Point{80}, " "); !errors.Is(err, ErrInvalid) || m.Rows[2].Cells[0].Prov != Used {
		t.Errorf("VerifyUnmeasurable without a reason = %v (cell %+v), want invalid and nothing changed", err, m.Rows[2].Cells[0])
	}
}

// TestRowPredicted: a row has a prediction when every cell has a value,
// and none when it is unmeasurable or a cell is empty.
func TestRowPredicted(t *testing.T) {
	full := Row{Cells: []Cell{{Value: 1, Prov: Measured}, {Value: 2, Prov: Interpolated}}}
	for _, tt := range []struct {
		name string
		row  Row
		want bool
	}{
		{"measured and interpolated", full, true},
		{"a cell empty", Row{Cells: []Cell{{Value: 1, Prov: Measured}, {Prov: Empty}}}, false},
		{"a cell NaN", Row{Cells: []Cell{{Value: math.NaN(), Prov: Measured}}}, false},
		{"unmeasurable", Row{Cells: full.Cells, Unmeasurable: "too few responses"}, false},
	} {
		if got := tt.row.Predicted(); got != tt.want {
			t.Errorf("%s: Predicted() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
