package manager_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/internal/testutil/sitetest"
	"github.com/justrunit/justrunit/manager"
)

// TestEvaluateUpgrade compares two emulated hardware classes for the
// auction's app tier under live load: the faster class answers faster.
func TestEvaluateUpgrade(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs a site and two experiments")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := sitetest.Up(t, ctx, sitetest.Config{
		Addrs: []string{"appIn", "app", "dataOut", "data"},
		File:  sitetest.ClassesFile})
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + s.Addr["appIn"], Rate: 40, Mix: loadgen.Browsing, Seed: 3, Timeout: 5 * time.Second})

	rep, err := manager.EvaluateUpgrade(ctx, s.Site, "app0", nil, 2*time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Render(&out)
	t.Logf("\n%s", out.String())
	if len(rep.Options) != 2 {
		t.Fatalf("%d options, want 2", len(rep.Options))
	}
	old, nw := rep.Options[0], rep.Options[1]
	if old.Class != "old" {
		old, nw = nw, old
	}
	if !old.Emulated || !nw.Emulated || !strings.Contains(out.String(), "(emulated)") {
		t.Errorf("emulated frequency not stated: %+v %+v", old, nw)
	}
	if nw.Observation.RT.Mean >= old.Observation.RT.Mean {
		t.Errorf("mean response time on the 2 GHz class %.1f ms ≥ %.1f ms on the 1.2 GHz class", nw.Observation.RT.Mean, old.Observation.RT.Mean)
	}
	if rep.Recommended == "" || old.Observation.Energy.Source == "" {
		t.Errorf("report = %+v", rep)
	}
}
