package siterun_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/internal/testutil/sitetest"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/siterun"
)

// TestHostClassStudy studies the auction's app tier over cpu × hostclass:
// each class's experiments run on a clone on the sandbox host of that
// class (its frequency emulated), the faster class answers faster, and the
// fidelity check refuses a point of a class the on-line instance does not
// run on, before it touches anything.
func TestHostClassStudy(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs a site and four experiments")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := sitetest.Up(t, ctx, sitetest.Config{
		Addrs: []string{"appIn", "app", "dataOut", "data"},
		File:  sitetest.ClassesFile})
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + s.Addr["appIn"], Rate: 40, Mix: loadgen.Browsing, Seed: 3, Timeout: 5 * time.Second})

	var space justrunit.Space
	for _, p := range []string{"cpu=60,100", "hostclass=old,new"} {
		par, err := justrunit.ParseParameter(p)
		if err != nil {
			t.Fatal(err)
		}
		space.Params = append(space.Params, par)
	}
	st := &justrunit.Study{
		Target: "app0", Space: space, Metrics: []justrunit.Metric{justrunit.RTP95, justrunit.RTMean, justrunit.EnergyPerRequest},
		WarmUp: justrunit.Duration(2 * time.Second), Window: justrunit.Duration(5 * time.Second),
		TimeBound: justrunit.Duration(40 * time.Second), Slots: 1, Strategy: "grid", Interpolator: "linear", CheckThreshold: 0.1,
	}
	m, err := s.Site.RunStudy(ctx, st, siterun.StudyOptions{MinSamples: 50})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	m.Render(&out)
	t.Logf("\n%s", out.String())
	if got := len(m.Measured()); got != 4 {
		t.Fatalf("%d points measured, want all 4", got)
	}
	mean := map[string]float64{}
	for _, i := range m.Measured() {
		o := m.Rows[i].Observation
		class := space.Params[1].Format(o.Point[1])
		if !strings.Contains(o.Energy.Model, "host class "+class) {
			t.Errorf("observation at %s metered as %q, want its class's host", space.Format(o.Point), o.Energy.Model)
		}
		if o.Point[0] == 100 {
			mean[class] = o.RT.Mean
		}
	}
	if mean["new"] >= mean["old"] {
		t.Errorf("mean response time at cpu=100%% on the 2 GHz class %.1f ms ≥ %.1f ms on the 1.2 GHz class", mean["new"], mean["old"])
	}
	insts, _ := s.Site.Platform.Instances(ctx)
	for _, in := range insts {
		if in.Origin != "" {
			t.Errorf("clone %s still there after the study", in.ID)
		}
	}

	win := siterun.VerifyOptions{Paired: true, Window: measure.WindowConfig{WarmUp: time.Second, Max: 3 * time.Second, MinSamples: 20}}
	_, err = s.Site.Verify(ctx, st, m, justrunit.Point{60, 1}, win)
	if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "of class old") {
		t.Errorf("Verify at hostclass=new of an instance on an old host = %v, want a refusal naming its class", err)
	}
	v, err := s.Site.Verify(ctx, st, m, justrunit.Point{60, 0}, win)
	if err != nil {
		t.Fatalf("Verify at hostclass=old, paired: %v", err)
	}
	if v.Sandbox == nil || v.Sandbox.Point[1] != 0 || !strings.Contains(v.Sandbox.Energy.Model, "host class old") || v.Sandbox.Samples < 20 {
		t.Errorf("paired clone at hostclass=old: %+v", v.Sandbox)
	}
}

// TestOnClass: the points of a fidelity check of a study over hostclass
// are those of the on-line host's class: chosen ones of another class are
// refused, defaulted ones moved to it.
func TestOnClass(t *testing.T) {
	var space justrunit.Space
	for _, p := range []string{"cpu=20..100 step 10", "hostclass=old,new"} {
		par, err := justrunit.ParseParameter(p)
		if err != nil {
			t.Fatal(err)
		}
		space.Params = append(space.Params, par)
	}
	pts := []justrunit.Point{{40, 0}, {60, 1}, {80, 1}, {40, 1}}
	got, err := siterun.OnClass(space, pts, "new", true)
	if err != nil || len(got) != 3 || got[0][1] != 1 || got[0][0] != 40 || got[1][0] != 60 || got[2][0] != 80 {
		t.Errorf("defaulted points on class new = %v, %v; want cpu 40, 60, 80 at new", got, err)
	}
	if _, err := siterun.OnClass(space, pts, "new", false); err == nil || !strings.Contains(err.Error(), "points[0]") {
		t.Errorf("named points with one of another class = %v, want points[0] refused", err)
	}
	if _, err := siterun.OnClass(space, pts, "std", true); err == nil || !strings.Contains(err.Error(), "class std") {
		t.Errorf("an on-line class the study did not vary = %v, want a refusal naming it", err)
	}
	cpu := justrunit.Space{Params: space.Params[:1]}
	if got, err := siterun.OnClass(cpu, []justrunit.Point{{40}}, "std", false); err != nil || len(got) != 1 {
		t.Errorf("a space without hostclass = %v, %v; want the points as they are", got, err)
	}
}
