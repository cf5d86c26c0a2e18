package justrunit

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseParameter(t *testing.T) {
	tests := []struct {
		in     string
		values []float64
		labels []string
		unit   string
	}{
		{"cpu=20..100 step 10", []float64{20, 30, 40, 50, 60, 70, 80, 90, 100}, nil, "%"},
		{"freq=1.2,1.8,2.4", []float64{1.2, 1.8, 2.4}, nil, "GHz"},
		{"mem=0.1..0.3 step 0.1", []float64{0.1, 0.2, 0.3}, nil, "MiB"},
		{"hostclass=old,new", []float64{0, 1}, []string{"old", "new"}, ""},
		{"cpu=50..50 step 10", []float64{50}, nil, "%"},
		{"cpu = 20..45 step 10", []float64{20, 30, 40}, nil, "%"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParseParameter(tt.in)
			if err != nil {
				t.Fatalf("ParseParameter(%q) error: %v", tt.in, err)
			}
			if len(p.Values) != len(tt.values) {
				t.Fatalf("ParseParameter(%q).Values = %v, want %v", tt.in, p.Values, tt.values)
			}
			for i := range p.Values {
				if p.Values[i] != tt.values[i] {
					t.Fatalf("ParseParameter(%q).Values = %v, want %v", tt.in, p.Values, tt.values)
				}
			}
			if strings.Join(p.Labels, ",") != strings.Join(tt.labels, ",") || p.Unit != tt.unit {
				t.Errorf("ParseParameter(%q) = labels %v unit %q, want %v %q", tt.in, p.Labels, p.Unit, tt.labels, tt.unit)
			}
		})
	}
}

// TestBadInput checks that each bad input names its field and wraps ErrInvalid.
func TestBadInput(t *testing.T) {
	cpu, _ := ParseParameter("cpu=20..100 step 10")
	space, _ := NewSpace(cpu)
	okStudy := func() *Study {
		return &Study{Target: "app", Space: space, Window: Duration(10 * time.Second), WarmUp: Duration(5 * time.Second),
			TimeBound: Duration(time.Minute), Slots: 1, CheckThreshold: 0.1}
	}
	if err := okStudy().Validate(); err != nil {
		t.Fatalf("valid study: %v", err)
	}
	tests := []struct {
		name  string
		err   func() error
		field string
	}{
		{"empty range", func() error { _, err := ParseParameter("cpu="); return err }, "parameter cpu"},
		{"reversed range", func() error { _, err := ParseParameter("cpu=100..20 step 10"); return err }, "parameter cpu.to"},
		{"step 0", func() error { _, err := ParseParameter("cpu=20..100 step 0"); return err }, "parameter cpu.step"},
		{"negative step", func() error { _, err := ParseParameter("cpu=20..100 step -5"); return err }, "parameter cpu.step"},
		{"no step", func() error { _, err := ParseParameter("cpu=20..100"); return err }, "parameter cpu.step"},
		// Ranges whose value count does not fit an int, or is not a number:
		// errors, not a makeslice panic.
		{"range of 1e300 values", func() error { _, err := ParseParameter("cpu=0..1e300 step 1"); return err }, "parameter cpu.step"},
		{"range span overflows", func() error { _, err := ParseParameter("cpu=-1e308..1e308 step 1e300"); return err }, "parameter cpu.step"},
		{"range to inf", func() error { _, err := ParseParameter("cpu=0..inf step 1"); return err }, "parameter cpu.to"},
		{"range from -inf", func() error { _, err := ParseParameter("cpu=-inf..10 step 1"); return err }, "parameter cpu.from"},
		{"range from nan", func() error { _, err := ParseParameter("cpu=nan..10 step 1"); return err }, "parameter cpu.from"},
		{"range to nan", func() error { _, err := ParseParameter("cpu=0..NaN step 1"); return err }, "parameter cpu.to"},
		{"step nan", func() error { _, err := ParseParameter("cpu=0..10 step nan"); return err }, "parameter cpu.step"},
		{"step inf", func() error { _, err := ParseParameter("cpu=0..10 step +Inf"); return err }, "parameter cpu.step"},
		{"one value too many", func() error { _, err := ParseParameter("cpu=0..10000 step 1"); return err }, "parameter cpu.step"},
		{"not increasing", func() error { _, err := ParseParameter("freq=1.8,1.2"); return err }, "parameter freq.values[1]"},
		{"point outside", func() error { _, err := space.IndexOf(Point{25}); return err }, "point.cpu"},
		{"point unknown param", func() error { _, err := space.ParsePoint("mem=10"); return err }, "point.mem"},
		{"point twice", func() error { _, err := space.ParsePoint("cpu=20 cpu=30"); return err }, "point.cpu"},
		{"label twice", func() error { _, err := ParseParameter("hostclass=a,a"); return err }, "parameter hostclass.labels[1]"},
		{"empty label", func() error { _, err := ParseParameter("hostclass=a,,b"); return err }, "parameter hostclass.labels[1]"},
		{"label with a space", func() error { _, err := ParseParameter("hostclass=old gen,new"); return err }, "parameter hostclass.labels[0]"},
		{"label values not indexes", func() error {
			return Parameter{Name: "hostclass", Values: []float64{5, 7}, Labels: []string{"a", "b"}}.Validate()
		}, "parameter hostclass.values[0]"},
		{"threshold inf", func() error { s := okStudy(); s.CheckThreshold = math.Inf(1); return s.Validate() }, "check_threshold"},
		{"threshold 0", func() error { s := okStudy(); s.CheckThreshold = 0; return s.Validate() }, "check_threshold"},
		{"threshold negative", func() error { s := okStudy(); s.CheckThreshold = -1; return s.Validate() }, "check_threshold"},
		{"time bound short", func() error { s := okStudy(); s.TimeBound = Duration(14 * time.Second); return s.Validate() }, "time_bound"},
		{"no slots", func() error { s := okStudy(); s.Slots = 0; return s.Validate() }, "slots"},
		{"empty space", func() error { s := okStudy(); s.Space = Space{}; return s.Validate() }, "parameters"},
		{"duplicate parameter", func() error { _, err := NewSpace(cpu, cpu); return err }, "parameters[1].name"},
		{"bad sla", func() error { _, err := ParseSLA("rt_p95<=0"); return err }, "sla.max"},
		{"unknown metric", func() error { _, err := ParseMetric("latency"); return err }, "metric"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err()
			if err == nil {
				t.Fatal("no error")
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not a FieldError wrapping ErrInvalid", err)
			}
			if fe.Field != tt.field {
				t.Errorf("field = %q, want %q (error: %v)", fe.Field, tt.field, err)
			}
		})
	}
}

func TestSpaceIndexing(t *testing.T) {
	cpu, _ := ParseParameter("cpu=20..100 step 20")
	freq, _ := ParseParameter("freq=1.2,1.8,2.4")
	class, _ := ParseParameter("hostclass=std,fast")
	s, err := NewSpace(cpu, freq, class)
	if err != nil {
		t.Fatal(err)
	}
	if s.Size() != 30 {
		t.Fatalf("Size() = %d, want 30", s.Size())
	}
	for i := 0; i < s.Size(); i++ {
		p := s.At(i)
		j, err := s.IndexOf(p)
		if err != nil || j != i {
			t.Fatalf("IndexOf(At(%d)=%v) = %d, %v", i, p, j, err)
		}
		q, err := s.ParsePoint(strings.ReplaceAll(s.Format(p), " ", ","))
		if err != nil || !q.Equal(p) {
			t.Fatalf("ParsePoint(Format(%v)) = %v, %v", p, q, err)
		}
	}
	if got := s.Format(Point{40, 1.8, 1}); got != "cpu=40 freq=1.8 hostclass=fast" {
		t.Errorf("Format = %q", got)
	}
}

// TestParseParameterLargestRange: the value-count limit is inclusive.
func TestParseParameterLargestRange(t *testing.T) {
	p, err := ParseParameter("cpu=1..10000 step 1")
	if err != nil {
		t.Fatalf("ParseParameter: %v", err)
	}
	if len(p.Values) != MaxValuesPerParameter || p.Values[0] != 1 || p.Values[len(p.Values)-1] != 10000 {
		t.Errorf("ParseParameter = %d values %g..%g, want %d values 1..10000", len(p.Values), p.Values[0], p.Values[len(p.Values)-1], MaxValuesPerParameter)
	}
}
