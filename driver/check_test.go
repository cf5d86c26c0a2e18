package driver

import (
	"errors"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

func TestNameFor(t *testing.T) {
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	for _, c := range []struct {
		st   justrunit.Study
		want string
	}{
		{justrunit.Study{}, NameAdaptive},
		{justrunit.Study{SLA: sla}, NameSLA},
		{justrunit.Study{SLA: sla, Strategy: NameGrid}, NameGrid},
	} {
		if got := NameFor(&c.st); got != c.want {
			t.Errorf("NameFor(strategy %q, sla %v) = %q, want %q", c.st.Strategy, c.st.SLA, got, c.want)
		}
	}
}

// TestCheckStudy checks that a study the sla strategy cannot run is refused
// naming the field, and that the others pass.
func TestCheckStudy(t *testing.T) {
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	host := justrunit.Parameter{Name: "hostclass", Values: []float64{0, 1}, Labels: []string{"std", "fast"}}
	study := func(f func(*justrunit.Study)) *justrunit.Study {
		st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
			SLA: &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}}
		f(st)
		st.FillMetrics()
		return st
	}
	for _, c := range []struct {
		name string
		st   *justrunit.Study
		want string // "" for none
	}{
		{"sla", study(func(*justrunit.Study) {}), ""},
		{"throughput floor", study(func(s *justrunit.Study) { s.SLA = &justrunit.SLA{Metric: justrunit.Throughput, Min: 900} }), ""},
		{"adaptive without sla", study(func(s *justrunit.Study) { s.SLA = nil }), ""},
		{"grid on power", study(func(s *justrunit.Study) {
			s.Strategy, s.SLA = NameGrid, &justrunit.SLA{Metric: justrunit.Power, Max: 90}
		}), ""},
		{"unknown strategy", study(func(s *justrunit.Study) { s.Strategy = "greedy" }), "strategy"},
		{"sla without one", study(func(s *justrunit.Study) { s.Strategy, s.SLA = NameSLA, nil }), "sla"},
		{"sla on power", study(func(s *justrunit.Study) { s.SLA = &justrunit.SLA{Metric: justrunit.Power, Max: 90} }), "sla.metric"},
		{"sla on energy", study(func(s *justrunit.Study) { s.SLA = &justrunit.SLA{Metric: justrunit.EnergyPerRequest, Max: 2} }), "sla.metric"},
		{"metric not recorded", func() *justrunit.Study {
			st := study(func(*justrunit.Study) {})
			st.Metrics = []justrunit.Metric{justrunit.Throughput}
			return st
		}(), "metrics"},
		{"no numeric axis", study(func(s *justrunit.Study) { s.Space = justrunit.Space{Params: []justrunit.Parameter{host}} }), "axis"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckStudy(c.st)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("CheckStudy: %v", err)
			case c.want != "" && (!errors.Is(err, justrunit.ErrInvalid) || !strings.HasPrefix(fieldOf(err), c.want)):
				t.Errorf("CheckStudy error = %v, want an invalid %s", err, c.want)
			}
		})
	}
}
