package monitor

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
)

// script is a response-time source that plays back one mean per interval
// (0 requests when the mean is negative).
type script struct {
	means []float64
	i     int
}

func (s *script) Reset() measure.Summary {
	if s.i >= len(s.means) {
		return measure.Summary{}
	}
	m := s.means[s.i]
	s.i++
	if m < 0 {
		return measure.Summary{Count: 3}
	}
	return measure.Summary{Count: 1000, RT: justrunit.ResponseTime{Mean: m, P95: 2 * m}}
}

func TestHysteresis(t *testing.T) {
	tests := []struct {
		name        string
		means       []float64
		enter       int
		leave       int
		wantState   []bool
		wantChanges []string
	}{
		{"steady", []float64{40, 42, 41}, 0, 0, []bool{false, false, false}, nil},
		{"rise and recover", []float64{40, 60, 55, 45, 44, 43}, 0, 0,
			[]bool{false, true, true, true, false, false}, []string{EventViolated, EventCleared}},
		{"one good interval does not end it", []float64{60, 45, 60, 45, 45}, 0, 0,
			[]bool{true, true, true, true, false}, []string{EventViolated, EventCleared}},
		{"enter after two", []float64{60, 45, 60, 60, 40}, 2, 1,
			[]bool{false, false, false, true, false}, []string{EventViolated, EventCleared}},
		{"quiet intervals are not judged", []float64{60, -1, -1, 40, 40}, 0, 0,
			[]bool{true, true, true, true, false}, []string{EventViolated, EventCleared}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var changes []string
			m := &Monitor{
				Services: []Service{{Name: "s0", SLA: justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, Window: &script{means: tt.means}}},
				Interval: time.Minute, Enter: tt.enter, Leave: tt.leave,
				OnChange: func(c Change) { changes = append(changes, c.Kind) },
			}
			if err := m.Validate(); err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.wantState {
				smp := m.Tick()[0]
				if smp.Violated != want || m.Violated("s0") != want {
					t.Fatalf("interval %d (mean %v): violated = %v, want %v", i+1, tt.means[i], smp.Violated, want)
				}
				if smp.Interval != i+1 || smp.SLA != 50 {
					t.Errorf("sample %+v", smp)
				}
			}
			if len(changes) != len(tt.wantChanges) {
				t.Fatalf("changes = %v, want %v", changes, tt.wantChanges)
			}
			for i := range changes {
				if changes[i] != tt.wantChanges[i] {
					t.Errorf("changes = %v, want %v", changes, tt.wantChanges)
				}
			}
		})
	}
}

// summaries plays back one summary per interval.
type summaries []measure.Summary

func (s *summaries) Reset() measure.Summary {
	if len(*s) == 0 {
		return measure.Summary{}
	}
	sum := (*s)[0]
	*s = (*s)[1:]
	return sum
}

// TestFailingServiceIsJudged checks that an interval whose requests
// (almost) all failed is judged — it misses an error-rate SLA and a
// response-time one — rather than taken as too quiet.
func TestFailingServiceIsJudged(t *testing.T) {
	failing := measure.Summary{Count: 5, Errors: 5000, RT: justrunit.ResponseTime{Mean: 2, P95: 3}}
	for _, sla := range []justrunit.SLA{{Metric: justrunit.ErrorRate, Max: 0.05}, {Metric: justrunit.RTMean, Max: 50}} {
		src := summaries{failing}
		m := &Monitor{Services: []Service{{Name: "s", SLA: sla, Window: &src}}, Interval: time.Second}
		if smp := m.Tick()[0]; !smp.Over || !smp.Violated {
			t.Errorf("%s: all-failing interval = %+v, want over and violated", sla, smp)
		}
	}
	quiet := summaries{{Count: 3, Errors: 3}}
	m := &Monitor{Services: []Service{{Name: "s", SLA: justrunit.SLA{Metric: justrunit.ErrorRate, Max: 0.05}, Window: &quiet}}, Interval: time.Second}
	if smp := m.Tick()[0]; smp.Violated {
		t.Errorf("6 requests = %+v, want too quiet to judge", smp)
	}
}

func TestP95SLA(t *testing.T) {
	m := &Monitor{Services: []Service{{Name: "s", SLA: justrunit.SLA{Metric: justrunit.RTP95, Max: 50}, Window: &script{means: []float64{30}}}}, Interval: time.Second}
	if smp := m.Tick()[0]; smp.Value != 60 || !smp.Over {
		t.Errorf("p95 sample = %+v, want value 60 over the SLA", smp)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		m     *Monitor
		field string
	}{
		{&Monitor{Interval: time.Second}, "services"},
		{&Monitor{Services: []Service{{Name: "s", SLA: justrunit.SLA{Metric: justrunit.RTMean, Max: 1}, Window: &script{}}}}, "interval"},
		{&Monitor{Interval: time.Second, Services: []Service{{Name: "s", SLA: justrunit.SLA{Metric: justrunit.Throughput, Max: 1}, Window: &script{}}}}, "services[0].sla"},
	} {
		err := tt.m.Validate()
		fe, ok := err.(*justrunit.FieldError)
		if !ok || fe.Field != tt.field {
			t.Errorf("Validate() = %v, want an error naming %s", err, tt.field)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := &Monitor{Interval: time.Second}
	if err := m.Run(ctx); err == nil {
		t.Error("Run of an invalid monitor: no error")
	}
}

// TestStillViolated checks the re-trigger of a violation that lasts: after
// Again intervals over the SLA, and counted anew after Rearm.
func TestStillViolated(t *testing.T) {
	var changes []string
	var stillAt []int
	means := []float64{60, 60, 60, 45, 60, 60, 60, 60, 60, 40, 40}
	m := &Monitor{
		Services: []Service{{Name: "s0", SLA: justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, Window: &script{means: means}}},
		Interval: time.Minute, Again: 3,
		OnChange: func(c Change) {
			changes = append(changes, c.Kind)
			if c.Kind == EventStillViolated {
				stillAt = append(stillAt, c.Samples[len(c.Samples)-1].Interval)
			}
		},
	}
	for i := range means {
		m.Tick()
		if i == 5 {
			m.Rearm("s0") // a response was applied after interval 6
		}
	}
	// 1: violated; 2, 3, (4 under), 5: the third interval over → still;
	// 6 (then re-armed), 7, 8, 9: still again; 10, 11 under: cleared.
	want := []string{EventViolated, EventStillViolated, EventStillViolated, EventCleared}
	if len(changes) != len(want) {
		t.Fatalf("changes = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("changes = %v, want %v", changes, want)
		}
	}
	if !slices.Equal(stillAt, []int{5, 9}) {
		t.Errorf("still violated at intervals %v, want [5 9] (counted anew after the re-arm at 6)", stillAt)
	}
}

// TestRearmAfter checks a per-service wait before EventStillViolated.
func TestRearmAfter(t *testing.T) {
	var changes []int // intervals of the EventStillViolated reports
	means := make([]float64, 12)
	for i := range means {
		means[i] = 60 // over the SLA throughout
	}
	m := &Monitor{
		Services: []Service{{Name: "s0", SLA: justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, Window: &script{means: means}}},
		Interval: time.Minute, Again: 2,
		OnChange: func(c Change) {
			if c.Kind == EventStillViolated {
				changes = append(changes, c.Samples[len(c.Samples)-1].Interval)
			}
		},
	}
	for i := range means {
		m.Tick()
		if i == 0 {
			m.RearmAfter("s0", 5) // after interval 1 (the violation): wait 5
		}
	}
	// Interval 1 enters violation; 2..6 are five more: still at 6; then
	// the override stays: 7..11, still at 11.
	want := []int{6, 11}
	if !slices.Equal(changes, want) {
		t.Errorf("EventStillViolated at intervals %v, want %v", changes, want)
	}
}
