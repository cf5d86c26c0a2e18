package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
)

// TestServeManage runs the daemon on the demo's site with the manager: the
// API shows the site's hosts, the monitor's samples, and makes and applies
// placement plans.
// serveDemoSite starts the daemon with the demo's site (two auction
// services) and args, and returns its site directory, data directory,
// the services' front addresses, a client and the daemon's stop.
func serveDemoSite(t *testing.T, args ...string) (dir, data string, fronts map[string]string, c *api.Client, stop func() error) {
	t.Helper()
	testutil.NeedRoot(t)
	dir = t.TempDir()
	bin := testutil.BuildAuction(t)
	_, fronts, err := demoSite(dir, bin, 1)
	if err != nil {
		t.Fatal(err)
	}
	data = t.TempDir()
	_, stop = startServe(t, data, append([]string{"--site", filepath.Join(dir, "site.yaml")}, args...)...)
	c, err = api.Discover(context.Background(), api.DiscoverOptions{DataDir: data, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return dir, data, fronts, c, stop
}

func TestServeManage(t *testing.T) {
	dir, data, fronts, c, stop := serveDemoSite(t, "--manage", "2s")
	ctx := context.Background()
	in, err := c.Info(ctx)
	if err != nil || !in.Manager || !in.Site || !in.Samples || in.Verify {
		t.Fatalf("info = %+v, %v; want a site, samples and a manager, and no verify (the manager acts on the on-line instances)", in, err)
	}
	hosts, err := c.Hosts(ctx)
	if err != nil || len(hosts) != 3 {
		t.Errorf("hosts = %+v, %v", hosts, err)
	}
	// A study of an instance the site does not have is refused before
	// anything is stored.
	_, err = c.CreateStudy(ctx, api.StudyRequest{Target: "auction9-app", Parameters: []string{"cpu=30..40 step 10"}, TimeBound: "40s", WarmUp: "2s", Window: "4s"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Field != "target" || !strings.Contains(ae.Message, "auction9-app") {
		t.Errorf("POST /studies with an unknown target = %v, want 400 naming it", err)
	}
	// So are studies the site could never run: a parameter the
	// experimenter cannot set, more clones than the sandbox holds.
	for _, q := range []api.StudyRequest{
		{Target: "auction0-app", Parameters: []string{"disk=1,2"}, TimeBound: "40s", WarmUp: "2s", Window: "4s"},
		{Target: "auction0-app", Parameters: []string{"cpu=30..40 step 10"}, TimeBound: "40s", WarmUp: "2s", Window: "4s", Slots: 3},
	} {
		_, err = c.CreateStudy(ctx, q)
		if !errors.As(err, &ae) || ae.Status != 400 || (ae.Field != "parameters[0]" && ae.Field != "slots") {
			t.Errorf("POST /studies of %v on %d slot(s) = %v, want 400 naming the parameter or the slots", q.Parameters, q.Slots, err)
		}
	}
	if studies, err := c.Studies(ctx); err != nil || len(studies) != 0 {
		t.Errorf("studies after refused ones = %d, %v; want none", len(studies), err)
	}
	// The site is feasible as it runs: the plan changes nothing.
	rec, err := c.CreatePlan(ctx)
	if err != nil || rec.ID == "" || rec.Summary == "" {
		t.Fatalf("create plan = %+v, %v", rec, err)
	}
	if _, err := c.ApplyPlan(ctx, rec.ID); err != nil {
		t.Errorf("apply %s: %v", rec.ID, err)
	}
	if _, err := c.ApplyPlan(ctx, rec.ID); !errors.Is(err, api.ErrConflict) {
		t.Errorf("apply %s again = %v, want a conflict", rec.ID, err)
	}
	if _, err := c.ApplyPlan(ctx, "p99"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("apply p99 = %v, want ErrNotFound", err)
	}
	if plans, err := c.Plans(ctx); err != nil || len(plans) != 1 || plans[0].Applied.IsZero() || plans[0].State != api.PlanApplied {
		t.Errorf("plans = %+v, %v", plans, err)
	}
	// The monitor's intervals reach the API (no load: 0 requests each).
	deadline := time.Now().Add(15 * time.Second)
	for {
		samples, err := c.ServiceSamples(ctx, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) >= 2 {
			if samples[0].SLA == nil || samples[0].SLA.Max != 50 {
				t.Errorf("sample %+v lacks the service's SLA", samples[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d samples after 15 s of 2 s intervals", len(samples))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// "study run" without --site runs the study in the daemon, under live
	// load on auction0.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + fronts["auction0"], Rate: 30, Mix: loadgen.Browsing, Seed: 5, Timeout: 5 * time.Second})
	studyFile := filepath.Join(dir, "study.yaml")
	os.WriteFile(studyFile, []byte("target: auction0-app\nparameters: [\"cpu=30..40 step 10\"]\nmetrics: [rt_mean, throughput]\n"+
		"time_bound: 40s\nwarm_up: 2s\nwindow: 4s\nstrategy: grid\n"), 0o600)
	out, err := run(t, "--data-dir", data, "study", "run", "--study", studyFile)
	if err != nil {
		t.Fatalf("study run in the daemon: %v\n%s", err, out)
	}
	if !strings.Contains(out, "posted to the daemon") || !strings.Contains(out, "4 X measured") {
		t.Errorf("study run output:\n%s", out)
	}
	// "study verify" is refused while the daemon runs the manager (it
	// would set the on-line app tier the manager acts on), and records
	// nothing. The check itself is tested through the API and the command
	// (TestStudyVerifyCommand) and on a real site (siterun's TestAuctionStudy
	// verifies three points).
	// The manager's own studies share the store: take the one posted.
	var id string
	if _, err := fmt.Sscanf(out[strings.Index(out, "Study "):], "Study %s posted", &id); err != nil {
		t.Fatalf("no study ID in the output (%v):\n%s", err, out)
	}
	out, err = run(t, "--data-dir", data, "study", "verify", id, "--at", "cpu=30", "--warm-up", "1s", "--window", "3s")
	if err == nil || !strings.Contains(err.Error(), "--manage") {
		t.Errorf("study verify in a managed daemon: %v, want a conflict naming --manage\n%s", err, out)
	}
	if evs, err := c.Events(ctx, justrunit.EventFilter{StudyID: id, Kind: justrunit.EventVerifyDone}); err != nil || len(evs) != 0 {
		t.Errorf("verify.done events = %+v, %v; want none", evs, err)
	}
	stopLoad()
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
}

// TestServeSitePairedVerify runs a paired fidelity check through the
// daemon on a real site: the daemon clones the studied tier into the
// sandbox, measures the clone and the on-line instance at the same point
// over the same live requests, reports both, and removes the clone.
func TestServeSitePairedVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-tier site, a study and a paired check")
	}
	dir, data, fronts, c, stop := serveDemoSite(t)
	ctx := context.Background()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + fronts["auction0"], Rate: 30, Mix: loadgen.Browsing, Seed: 5, Timeout: 5 * time.Second})
	studyFile := filepath.Join(dir, "study.yaml")
	os.WriteFile(studyFile, []byte("target: auction0-app\nparameters: [\"cpu=20..30 step 10\"]\nmetrics: [rt_mean, rt_p95]\n"+
		"time_bound: 40s\nwarm_up: 2s\nwindow: 4s\nstrategy: grid\n"), 0o600)
	if out, err := run(t, "--data-dir", data, "study", "run", "--study", studyFile); err != nil {
		t.Fatalf("study run in the daemon: %v\n%s", err, out)
	}
	studies, err := c.Studies(ctx)
	if err != nil || len(studies) != 1 {
		t.Fatalf("studies = %v, %v", studies, err)
	}
	// Below the 25% the app tier has: the demo's site fills pm1.
	out, err := run(t, "--data-dir", data, "study", "verify", studies[0].ID, "--at", "cpu=20", "--warm-up", "2s", "--window", "4s", "--paired", "--json")
	if err != nil {
		t.Fatalf("study verify --paired: %v\n%s", err, out)
	}
	var vs []api.Verification
	if i := strings.Index(out, "["); i < 0 || json.Unmarshal([]byte(out[i:]), &vs) != nil {
		t.Fatalf("study verify --paired --json printed:\n%s", out)
	}
	if len(vs) != 2 {
		t.Fatalf("verifications = %+v, want rt_mean and rt_p95 at cpu=20", vs)
	}
	for _, v := range vs {
		t.Logf("%s %s: predicted %.2f, on-line %.2f, clone %v (%d samples)", v.Label, v.Metric, v.Predicted, v.Measured, deref(v.Sandbox), v.Samples)
		if v.Label != "cpu=20" || v.Measured <= 0 || v.Samples == 0 || v.Sandbox == nil || *v.Sandbox <= 0 || v.SandboxRelError == nil {
			t.Errorf("verification %+v: want the on-line and the clone's figures", v)
		}
	}
	insts, err := c.Instances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		if in.Origin != "" {
			t.Errorf("clone %s left after the paired check", in.ID)
		}
		if in.ID == "auction0-app" && in.Alloc.CPU != 25 {
			t.Errorf("on-line app tier at cpu=%g after the check, want its own 25 back", in.Alloc.CPU)
		}
	}
	stopLoad()
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
