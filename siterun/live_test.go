package siterun_test

import (
	"context"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

// TestLiveCloneStudy runs a short study of the auction's app tier where the
// platform clones live (criu): every experiment's clone was restored with
// the app tier's memory state, answered the copies of the live requests,
// and its next-tier calls were answered from the out-proxy's record (the
// restored tier's connections come back closed and it dials again).
// internal/v2guest runs it in a guest where criu works.
func TestLiveCloneStudy(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs a 3-tier site and a study")
	}
	testutil.NeedLiveClones(t, local.LiveClones())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A clone lag keeps the clone behind the on-line instance, so that the
	// out-proxy holds the on-line calls before the clone makes them even
	// when the machine (a TCG guest, under load) slows the on-line tier
	// more than the clone.
	lag := justrunit.Duration(2 * time.Second)
	s, webAddr, _ := upAuction(t, ctx, siterun.Options{}, func(f *site.Site) {
		f.Clones = site.ClonesLive
		f.Services[0].Tiers[1].Instances[0].InProxy.CloneLag = &lag
	})
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + webAddr, Rate: 8, Mix: loadgen.Browsing, Seed: 3, Timeout: 10 * time.Second})

	cpu, _ := justrunit.ParseParameter("cpu=50..100 step 50")
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean, justrunit.Throughput}, WarmUp: justrunit.Duration(3 * time.Second),
		Window: justrunit.Duration(5 * time.Second), TimeBound: justrunit.Duration(2 * time.Minute), Slots: 1,
		Strategy: "grid", Interpolator: "linear", CheckThreshold: 0.1}
	m, err := s.RunStudy(ctx, st, siterun.StudyOptions{MinSamples: 10})
	if err != nil {
		t.Fatalf("study: %v", err)
	}
	rows := m.Measured()
	if len(rows) != 2 {
		t.Fatalf("%d points measured, want 2", len(rows))
	}
	for _, i := range rows {
		o := m.Rows[i].Observation
		t.Logf("cpu=%v: clone %s, %d samples, %d errors, mean %.1f ms, %.1f req/s, match rate %.2f",
			o.Point, o.Clone, o.Samples, o.Errors, o.RT.Mean, o.Throughput, o.MatchRate)
		if o.Clone != justrunit.CloneLive {
			t.Errorf("cpu=%v measured on a %q clone, want live", o.Point, o.Clone)
		}
		if o.Samples < 10 || o.Errors*10 > o.Samples {
			t.Errorf("cpu=%v: %d samples, %d errors; want the clone to answer its copies", o.Point, o.Samples, o.Errors)
		}
		if o.MatchRate < 0.9 {
			t.Errorf("cpu=%v: match rate %.2f, want the clone's next-tier calls answered from the record", o.Point, o.MatchRate)
		}
	}
}
