package manager

import (
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
)

// TestRecommendSkipsSaturated: a class whose clone was saturated is not
// recommended, with or without an SLA (its response times understate and
// it did not keep up), and the report says so.
func TestRecommendSkipsSaturated(t *testing.T) {
	opt := func(class string, jPerReq float64, saturated bool) UpgradeOption {
		o := justrunit.Observation{Saturated: saturated}
		o.Energy.PerRequest = jPerReq
		return UpgradeOption{Class: class, Observation: o, MeetsSLA: true}
	}
	sla := &justrunit.SLA{Metric: justrunit.ErrorRate, Max: 0.01} // not understated by saturation
	for _, c := range []struct {
		name    string
		sla     *justrunit.SLA
		options []UpgradeOption
		want    string // recommended class, "" for none
		why     string
	}{
		{"no SLA", nil, []UpgradeOption{opt("fast", 2, false), opt("slow", 1, true)}, "fast", "least energy"},
		{"error-rate SLA", sla, []UpgradeOption{opt("fast", 2, false), opt("slow", 1, true)}, "fast", "meeting error_rate"},
		{"all saturated", nil, []UpgradeOption{opt("fast", 2, true), opt("slow", 1, true)}, "", "every clone was saturated"},
		{"the rest miss", sla, []UpgradeOption{{Class: "fast"}, opt("slow", 1, true)}, "", "(1 saturated)"},
	} {
		r := &UpgradeReport{Target: "app0", SLA: c.sla, Options: c.options}
		r.recommend()
		if r.Recommended != c.want || !strings.Contains(r.Why, c.why) {
			t.Errorf("%s: recommended %q (%s), want %q (%s)", c.name, r.Recommended, r.Why, c.want, c.why)
		}
		var b strings.Builder
		if err := r.Render(&b); err != nil {
			t.Fatal(err)
		}
		if c.options[1].Observation.Saturated && !strings.Contains(b.String(), "saturated: it did not keep up") {
			t.Errorf("%s: the table does not say which clone was saturated:\n%s", c.name, b.String())
		}
	}
}
