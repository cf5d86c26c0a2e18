package api

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
)

// chromium finds the system Chromium: $CHROMIUM, else Debian's
// /usr/bin/chromium, else one on PATH. It skips the test when there is none,
// and fails it under CI=true, where .ci/run installs it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("CHROMIUM"), "/usr/bin/chromium"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	msg := "needs Chromium for the dashboard test; install it: apt-get install -y chromium chromium-driver (or set CHROMIUM)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func browser(t *testing.T, exe string) (context.Context, context.CancelFunc) {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium keeps its singleton socket in a directory of its own
		// under $TMPDIR and leaves it there when it is killed.
		chromedp.Env("TMPDIR=" + t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	ctx, cancelTimeout := context.WithTimeout(ctx, 45*time.Second)
	return ctx, func() { cancelTimeout(); cancelCtx(); cancelAlloc() }
}

// TestDashboard loads a stored study in headless Chromium: the heatmap shows
// as many X, I and T cells as the matrix holds, the curve has the SLA line,
// and a new measurement recorded in the store shows up without a reload
// (live updates). It writes a screenshot under the test's temp dir (and into
// $JUSTRUNIT_SCREENSHOT_DIR when set, to look at).
func TestDashboard(t *testing.T) {
	exe := chromium(t)
	d := newDaemon(t, daemonOpts{noRunner: true})
	st, m := seedStudy(t, d.store)
	want := m.Counts()
	ctx, cancel := browser(t, exe)
	defer cancel()

	count := func(prov justrunit.Provenance) string {
		return fmt.Sprintf(`document.querySelectorAll('#heatmap g.cell[data-prov="%s"]').length`, prov)
	}
	err := chromedp.Do(ctx,
		chromedp.Navigate(d.hs.URL+"/#token="+testToken),
		chromedp.WaitVisible(chromedp.CSS(`#studies`)),
		chromedp.Click(chromedp.CSS(`#studies a`)),
		chromedp.WaitVisible(chromedp.CSS(`#heatmap svg`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	num := func(expr string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return n
	}
	x, i, tc := num(count(justrunit.Measured)), num(count(justrunit.Interpolated)), num(count(justrunit.Used))
	if x != want[justrunit.Measured] || i != want[justrunit.Interpolated] || tc != want[justrunit.Used] {
		t.Errorf("heatmap cells X=%d I=%d T=%d, want X=%d I=%d T=%d", x, i, tc, want[justrunit.Measured], want[justrunit.Interpolated], want[justrunit.Used])
	}
	slaLines, pts := num(`document.querySelectorAll('#curve line.sla').length`), num(`document.querySelectorAll('#curve circle.pt').length`)
	page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('main').dataset.page`))
	if page != "study" || slaLines != 1 || pts != len(m.Rows) {
		t.Errorf("study page %q: %d SLA lines (want 1), %d curve points (want %d)", page, slaLines, pts, len(m.Rows))
	}
	countsText, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#counts`)))
	t.Logf("counts shown: %s", countsText)

	shot(t, ctx, "dashboard.png")

	// Live update: measure the point at 80 (an I cell) and record it as the
	// engine would; the page redraws from the event stream.
	bg := context.Background()
	o := justrunit.Observation{Point: justrunit.Point{80}, Samples: 5000, Throughput: 98, RT: justrunit.ResponseTime{P95: 41, Mean: 30}}
	if err := m.Record(o); err != nil {
		t.Fatal(err)
	}
	if err := interp.NewLinear().Interpolate(m); err != nil {
		t.Fatal(err)
	}
	if err := d.store.SaveMatrix(bg, st.ID, m); err != nil {
		t.Fatal(err)
	}
	if err := d.store.AddEvent(bg, &justrunit.Event{StudyID: st.ID, Kind: justrunit.EventExperimentDone, Level: "info", Message: "measured cpu=80"}); err != nil {
		t.Fatal(err)
	}
	wantX := m.Counts()[justrunit.Measured]
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf("%s === %d", count(justrunit.Measured), wantX), chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		t.Errorf("heatmap did not update to %d X cells after a new measurement: %v", wantX, err)
	}

	// The site and timeline pages say there is nothing to show yet.
	err = chromedp.Do(ctx,
		chromedp.Navigate(d.hs.URL+"/#/site"),
		chromedp.WaitVisible(chromedp.CSS(`#nosite`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	noSite, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#nosite`)))
	if err := chromedp.Do(ctx, chromedp.Navigate(d.hs.URL+"/#/timeline"), chromedp.WaitVisible(chromedp.CSS(`#nosamples`))); err != nil {
		t.Fatal(err)
	}
	noSamples, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#nosamples`)))
	if noSite == "" || noSamples == "" {
		t.Errorf("site page %q, timeline page %q: want notices", noSite, noSamples)
	}
}

// samplingSite is a test double for the site runtime with the manager's
// monitor (outside the unit under test): two hosts, instances of two
// services, and each service's response time per minute, service 0's load
// rising in minute 2 as in the paper's Figure 3.
type samplingSite struct{ staticSite }

func (samplingSite) ServiceSamples(ctx context.Context, since time.Time) ([]ServiceSample, error) {
	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Minute)
	sla := &justrunit.SLA{Metric: justrunit.RTMean, Max: 50}
	var out []ServiceSample
	for m := 0; m < 10; m++ {
		rt0 := 40.0
		switch {
		case m == 2:
			rt0 = 58
		case m >= 3 && m < 7:
			rt0 = 62
		}
		for s, rt := range []float64{rt0, 39 + float64(m%3)} {
			out = append(out, ServiceSample{Service: fmt.Sprintf("auction%d", s), Start: t0.Add(time.Duration(m) * time.Minute),
				Interval: justrunit.Duration(time.Minute), RTMean: rt, Requests: 60000, SLA: sla})
		}
	}
	return out, nil
}

func TestDashboardSiteAndTimeline(t *testing.T) {
	exe := chromium(t)
	d := newDaemon(t, daemonOpts{noRunner: true, site: samplingSite{}})
	ctx, cancel := browser(t, exe)
	defer cancel()
	bg := context.Background()
	start := time.Now().Add(-7 * time.Minute)
	for _, e := range []*justrunit.Event{
		{Time: start, Kind: "manager.sla_violated", Level: "warn", Message: "auction0 rt_mean 58 ms > 50 ms"},
		{Time: start.Add(3 * time.Minute), Kind: "manager.expand", Level: "info", Message: "power on pm1, migrate 2 instances"},
	} {
		if err := d.store.AddEvent(bg, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(d.hs.URL+"/#token="+testToken),
		chromedp.Navigate(d.hs.URL+"/#/site"), chromedp.WaitVisible(chromedp.CSS(`.host`))); err != nil {
		t.Fatal(err)
	}
	hosts, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('.host').length`))
	off, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('.host.off').length`))
	if hosts != 2 || off != 1 {
		t.Errorf("site page: %d hosts, %d off; want 2 and 1", hosts, off)
	}
	shot(t, ctx, "site.png")
	if err := chromedp.Do(ctx, chromedp.Navigate(d.hs.URL+"/#/timeline"), chromedp.WaitVisible(chromedp.CSS(`svg.timeline`))); err != nil {
		t.Fatal(err)
	}
	markers, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('svg.timeline line.action').length`))
	if markers != 2 {
		t.Errorf("timeline: %d action markers, want 2", markers)
	}
	shot(t, ctx, "timeline.png")
}

// shot writes a screenshot of the page under the test's temp dir, and into
// $JUSTRUNIT_SCREENSHOT_DIR when set.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if dir := os.Getenv("JUSTRUNIT_SCREENSHOT_DIR"); dir != "" {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
}

// TestDashboardStudyFromAPI runs a two-parameter study created through the
// API (the engine with the curve double) and checks the page shows its
// matrix cell for cell.
func TestDashboardStudyFromAPI(t *testing.T) {
	exe := chromium(t)
	d := newDaemon(t, daemonOpts{hold: 5 * time.Millisecond})
	bg := context.Background()
	st, err := d.client().CreateStudy(bg, StudyRequest{Target: "auction0/app", Parameters: []string{"cpu=20..100 step 10", "freq=1.2,2.4"},
		SLA: "rt_p95<=50", TimeBound: "30s", WarmUp: "0s", Window: "5ms", Strategy: "sla", Metrics: []justrunit.Metric{justrunit.RTP95, justrunit.Throughput}})
	if err != nil {
		t.Fatal(err)
	}
	d.waitState(st.ID, justrunit.StudyDone)
	m, err := d.client().Matrix(bg, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := m.Counts()
	if want[justrunit.Measured] == 0 || want[justrunit.Interpolated] == 0 {
		t.Fatalf("sla study measured %d and interpolated %d cells; want both", want[justrunit.Measured], want[justrunit.Interpolated])
	}
	ctx, cancel := browser(t, exe)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(d.hs.URL+"/#token="+testToken),
		chromedp.Navigate(d.hs.URL+"/#/studies/"+st.ID), chromedp.WaitVisible(chromedp.CSS(`#heatmap svg`))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []justrunit.Provenance{justrunit.Measured, justrunit.Interpolated} {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll('#heatmap g.cell[data-prov="%s"]').length`, p)))
		if err != nil || n != want[p] {
			t.Errorf("heatmap %s cells = %d, %v; want %d", p, n, err, want[p])
		}
	}
	series, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#curve polyline').length`))
	if series != 2 {
		t.Errorf("curves = %d, want one per freq value (2)", series)
	}
	shot(t, ctx, "study2d.png")
}
