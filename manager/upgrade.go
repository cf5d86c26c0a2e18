package manager

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/siterun"
)

// UpgradeOption is the target measured on one class of hardware.
type UpgradeOption struct {
	Host    string  `json:"host"`
	Class   string  `json:"class"`
	FreqGHz float64 `json:"freq_ghz,omitempty"`
	// Emulated is true when the platform imitates the class's frequency
	// (on the local platform: by scaling CPU bandwidth).
	Emulated    bool                  `json:"emulated"`
	Observation justrunit.Observation `json:"observation"`
	// MeetsSLA is whether the observation meets the SLA, when one is given:
	// never when the clone was saturated and the SLA is on a response time,
	// which its figures then understate (Saturated in the observation).
	MeetsSLA bool `json:"meets_sla"`
}

// meetsSLA reports whether o meets sla (nil: there is none to meet). A
// saturated clone's response times are those of the requests that got
// through: they meet no SLA on a response time, as the sla strategy and
// the manager's choice read them.
func meetsSLA(sla *justrunit.SLA, o *justrunit.Observation) bool {
	if sla == nil {
		return true
	}
	if o.Understates(sla.Metric) {
		return false
	}
	v, err := o.Value(sla.Metric)
	return err == nil && sla.Met(v)
}

// UpgradeReport compares the hardware classes of the sandbox for one
// instance under the live load.
type UpgradeReport struct {
	Target     string               `json:"target"`
	Allocation justrunit.Allocation `json:"allocation"`
	SLA        *justrunit.SLA       `json:"sla,omitempty"`
	Options    []UpgradeOption      `json:"options"`
	// Recommended is the host class to run the target on, and Why says why.
	Recommended string `json:"recommended"`
	Why         string `json:"why"`
}

// EvaluateUpgrade runs the same experiment — the target at its current
// allocation, under a copy of its live load — on a clone on every powered
// sandbox host, each of its own class (a class's frequency from the site
// file is set on the clone, emulated where the platform says so), and
// recommends the class with the least energy per request among those that
// meet the SLA (or, without an SLA, among all).
func EvaluateUpgrade(ctx context.Context, s *siterun.Site, target string, sla *justrunit.SLA, warmUp, window time.Duration) (*UpgradeReport, error) {
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return nil, err
	}
	cur := instance(insts, target)
	if cur == nil {
		return nil, justrunit.Invalid("target", target, "no such on-line instance")
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	emulated := slices.ContainsFunc(s.Platform.Capabilities(), func(c justrunit.Capability) bool { return c.Param == "freq" && c.Emulated })
	rep := &UpgradeReport{Target: target, Allocation: cur.Alloc, SLA: sla}
	for _, h := range hosts {
		if !h.Sandbox || !h.On {
			continue
		}
		freq := s.File.Classes[h.Class].FreqGHz
		params := []string{fmt.Sprintf("cpu=%g", max(cur.Alloc.CPU, 0))}
		if cur.Alloc.CPU == 0 {
			params[0] = fmt.Sprintf("cpu=%g", h.Cores*100)
		}
		if freq > 0 {
			params = append(params, fmt.Sprintf("freq=%g", freq))
		}
		var space justrunit.Space
		for _, p := range params {
			par, err := justrunit.ParseParameter(p)
			if err != nil {
				return nil, err
			}
			space.Params = append(space.Params, par)
		}
		st := &justrunit.Study{
			Name: "upgrade " + target + " on " + h.Class, Target: target, Space: space,
			Metrics: []justrunit.Metric{justrunit.Throughput, justrunit.RTMean, justrunit.RTP95, justrunit.EnergyPerRequest},
			WarmUp:  justrunit.Duration(warmUp), Window: justrunit.Duration(window),
			TimeBound: justrunit.Duration(2 * (warmUp + window)), Slots: 1, Strategy: "grid", Interpolator: "linear", CheckThreshold: 0.1,
		}
		m, err := s.RunStudy(ctx, st, siterun.StudyOptions{Sandbox: h.Name})
		if err != nil {
			return nil, fmt.Errorf("experiment on %s (class %s): %w", h.Name, h.Class, err)
		}
		o := m.Rows[0].Observation
		if o == nil {
			return nil, fmt.Errorf("experiment on %s (class %s) measured nothing within its time bound", h.Name, h.Class)
		}
		opt := UpgradeOption{Host: h.Name, Class: h.Class, FreqGHz: freq, Emulated: emulated && freq > 0, Observation: *o, MeetsSLA: meetsSLA(sla, o)}
		rep.Options = append(rep.Options, opt)
	}
	if len(rep.Options) == 0 {
		return nil, justrunit.Invalid("hosts", nil, "no powered-on sandbox host to run the comparison on")
	}
	rep.recommend()
	return rep, nil
}

// recommend picks the class with the least energy per request among those
// that meet the SLA (all, without one), and says why.
func (r *UpgradeReport) recommend() {
	// A class whose clone was saturated could not keep up with today's
	// load: it is no upgrade, whatever the SLA (or none) says of its
	// understated figures, and its energy per request is that of a
	// machine running flat out.
	best, saturated := -1, 0
	for i, o := range r.Options {
		if o.Observation.Saturated {
			saturated++
			continue
		}
		if !o.MeetsSLA {
			continue
		}
		if best < 0 || o.Observation.Energy.PerRequest < r.Options[best].Observation.Energy.PerRequest {
			best = i
		}
	}
	switch {
	case best < 0 && saturated == len(r.Options):
		r.Why = fmt.Sprintf("no class keeps up with the load at %s (every clone was saturated)", r.Allocation)
		return
	case best < 0:
		r.Why = fmt.Sprintf("no class meets %s at %s", r.SLA, r.Allocation)
		if saturated > 0 {
			r.Why += fmt.Sprintf(" (%d saturated)", saturated)
		}
		return
	}
	b := r.Options[best]
	r.Recommended = b.Class
	r.Why = fmt.Sprintf("least energy per request (%.3g J) with p95 %.1f ms", b.Observation.Energy.PerRequest, b.Observation.RT.P95)
	if r.SLA != nil {
		r.Why += " meeting " + r.SLA.String()
	}
}

// Render writes the comparison side by side.
func (r *UpgradeReport) Render(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "CLASS\tHOST\tFREQ\tTHROUGHPUT\tMEAN\tP95\tENERGY/REQ\tENERGY SOURCE\tSLA\n")
	for _, o := range r.Options {
		freq := "native"
		if o.FreqGHz > 0 {
			freq = fmt.Sprintf("%g GHz", o.FreqGHz)
			if o.Emulated {
				freq += " (emulated)"
			}
		}
		meets := "-"
		if r.SLA != nil {
			meets = map[bool]string{true: "met", false: "MISSED"}[o.MeetsSLA]
		}
		if o.Observation.Saturated {
			meets = strings.TrimPrefix(meets+" (saturated: it did not keep up, and its response times understate)", "- ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f req/s\t%.1f ms\t%.1f ms\t%.3g J\t%s\t%s\n", o.Class, o.Host, freq,
			o.Observation.Throughput, o.Observation.RT.Mean, o.Observation.RT.P95, o.Observation.Energy.PerRequest,
			strings.TrimSpace(o.Observation.Energy.Source+" "+o.Observation.Energy.Model), meets)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Recommended != "" {
		_, err := fmt.Fprintf(w, "Recommendation: run %s on class %s: %s.\n", r.Target, r.Recommended, r.Why)
		return err
	}
	_, err := fmt.Fprintf(w, "No recommendation: %s.\n", r.Why)
	return err
}
