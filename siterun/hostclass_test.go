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
		File: `platform: local
classes:
  std: {idle_watts: 100, max_watts: 200}
  old: {idle_watts: 90, max_watts: 160, freq_ghz: 1.2}
  new: {idle_watts: 100, max_watts: 200, freq_ghz: 2.4}
hosts:
  - {name: pm1, class: std, cores: 1, cpus: "0"}
  - {name: sb-old, class: old, cores: 1, cpus: "1", sandbox: true}
  - {name: sb-new, class: new, cores: 1, cpus: "1", sandbox: true}
services:
  - name: s
    tiers:
      - name: app
        instances:
          - {id: app0, host: pm1, addr: "{{.Addr.app}}", allocation: {cpu: 60}, in_proxy: {listen: "{{.Addr.appIn}}"},
             out_proxy: {listen: "{{.Addr.dataOut}}", next: "{{.Addr.data}}", pass_through: [GET]},
             command: [{{.Bin}}, app, --listen, "{{.Addr.app}}", --data, "http://{{.Addr.dataOut}}", --work, "2"]}
      - name: data
        instances:
          - {id: data0, host: pm1, addr: "{{.Addr.data}}", allocation: {cpu: 20}, state_dir: "{{.Data}}",
             command: [{{.Bin}}, data, --listen, "{{.Addr.data}}", --state-dir, "{{.Data}}"]}
`})
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
		t.Errorf("mean response time at cpu=100%% on the 2.4 GHz class %.1f ms ≥ %.1f ms on the 1.2 GHz class", mean["new"], mean["old"])
	}
	insts, _ := s.Site.Platform.Instances(ctx)
	for _, in := range insts {
		if in.Origin != "" {
			t.Errorf("clone %s still there after the study", in.ID)
		}
	}

	_, err = s.Site.Verify(ctx, st, m, justrunit.Point{60, 1}, siterun.VerifyOptions{Paired: true,
		Window: measure.WindowConfig{WarmUp: time.Second, Max: 2 * time.Second}})
	if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "of class std") {
		t.Errorf("Verify at hostclass=new of an instance on a std host = %v, want a refusal naming its class", err)
	}
}
