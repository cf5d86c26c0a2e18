package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/checker"
	"github.com/justrunit/justrunit/measure"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/store/sqlite"
)

// onlineDouble stands in for the on-line instance (siterun.Site.Verify
// needs a running site, outside the unit under test): its mean response
// time is 20% above the matrix's, its throughput as predicted. Measuring
// blocks while hold is open, and fails with fail.
type onlineDouble struct {
	hold    chan struct{}
	started chan justrunit.Point
	fail    error
	// after is returned with a point's measurement (as a failed restore
	// after the window is).
	after error

	mu     sync.Mutex
	wins   []measure.WindowConfig
	paired []bool
}

// lastPaired reports whether the last measurement asked for a paired check.
func (o *onlineDouble) lastPaired() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.paired) > 0 && o.paired[len(o.paired)-1]
}

// windows returns the windows measured so far.
func (o *onlineDouble) windows() []measure.WindowConfig {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]measure.WindowConfig(nil), o.wins...)
}

func (o *onlineDouble) measure(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, opts siterun.VerifyOptions) (siterun.Verification, error) {
	win := opts.Window
	o.mu.Lock()
	o.wins = append(o.wins, win)
	o.paired = append(o.paired, opts.Paired)
	o.mu.Unlock()
	if o.started != nil {
		o.started <- p
	}
	if o.hold != nil {
		select {
		case <-o.hold:
		case <-ctx.Done():
			return siterun.Verification{}, ctx.Err()
		}
	}
	if o.fail != nil {
		return siterun.Verification{}, o.fail
	}
	rt, _ := m.Cell(p, justrunit.RTMean)
	tp, _ := m.Cell(p, justrunit.Throughput)
	v := siterun.Verification{Point: p, Metrics: m.Metrics, Measured: justrunit.Observation{Point: p, Samples: 500, Window: justrunit.Duration(win.Max),
		Throughput: tp.Value, RT: justrunit.ResponseTime{Mean: rt.Value * 1.2}, Source: "on-line " + st.Target}}
	if opts.Paired { // a clone 10% faster than the on-line instance
		sb := v.Measured
		sb.RT.Mean, sb.Source = v.Measured.RT.Mean/1.1, "local clone c1"
		v.Sandbox = &sb
	}
	for _, mt := range m.Metrics {
		c, _ := m.Cell(p, mt)
		got, _ := v.Measured.Value(mt)
		v.Predicted = append(v.Predicted, c)
		v.RelError = append(v.RelError, checker.RelError(got, c.Value))
		if v.Sandbox != nil {
			sb, _ := v.Sandbox.Value(mt)
			v.SandboxRelError = append(v.SandboxRelError, checker.RelError(got, sb))
		}
	}
	return v, o.after
}

// testVerifier is a siteVerifier over the store in dir, for the study's
// target auction0/app.
func testVerifier(t *testing.T, dir string, o *onlineDouble) (*siteVerifier, *sqlite.Store) {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	v := &siteVerifier{store: s, measure: o.measure, log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: time.Now, studies: map[string]bool{},
		target: func(id string) error {
			if id != "auction0/app" {
				return justrunit.ErrNotFound
			}
			return nil
		}}
	return v, s
}

func TestSiteVerifier(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)
	o := &onlineDouble{}
	v, store := testVerifier(t, dir, o)
	ctx := context.Background()
	st, _ := store.Study(ctx, id)
	m, _ := store.Matrix(ctx, id)

	spec := api.VerifySpec{Points: []justrunit.Point{{70}, {80}}, WarmUp: time.Second, Window: 3 * time.Second}
	vs, err := v.Verify(ctx, st, m, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 4 {
		t.Fatalf("Verify = %d verifications, want 4 (2 points x 2 metrics)", len(vs))
	}
	// cpu=70 rt_mean is interpolated (44), the on-line instance shows 52.8.
	if x := vs[0]; x.Label != "cpu=70" || x.Metric != justrunit.RTMean || x.Provenance != justrunit.Interpolated ||
		x.Predicted != 44 || x.Measured != 44*1.2 || x.Within || x.Threshold != 0.1 || x.Samples != 500 {
		t.Errorf("cpu=70 rt_mean = %+v, want I 44 against 52.8, outside 10%%", x)
	}
	if x := vs[3]; x.Label != "cpu=80" || x.Metric != justrunit.Throughput || x.Provenance != justrunit.Measured || !x.Within {
		t.Errorf("cpu=80 throughput = %+v, want X within the threshold", x)
	}
	if w := o.windows()[0]; w.WarmUp != time.Second || w.Max != 3*time.Second || w.RelCI != siterun.DefaultRelCI {
		t.Errorf("window = %+v, want the experiments' rule over 1s + 3s", w)
	}
	evs, _ := store.Events(ctx, justrunit.EventFilter{StudyID: id, Kind: justrunit.EventVerifyDone})
	if len(evs) != 2 || evs[0].Level != "warn" || !strings.Contains(evs[0].Message, "1 of 2 outside the 10% check threshold") {
		t.Fatalf("verify.done events = %+v, want 2, the first a warning", evs)
	}
	if got := eventVerifications(evs); len(got) != 4 || got[0].Measured != vs[0].Measured {
		t.Errorf("verifications read back from the events = %+v", got)
	}

	// "study show" lists them.
	out, err := run(t, "--data-dir", dir, "study", "show", id)
	if err != nil || !strings.Contains(out, "On-line verifications") || !strings.Contains(out, "44±0.625 (I)") || !strings.Contains(out, "2 of 4 values within") {
		t.Errorf("study show = %q, %v", out, err)
	}

	// A paired check: each verification carries the clone's value and the
	// sandbox's own error, the event says so, the table shows them.
	paired := spec
	paired.Paired, paired.Points = true, []justrunit.Point{{80}}
	vs, err = v.Verify(ctx, st, m, paired)
	if err != nil || len(vs) != 2 || !o.lastPaired() {
		t.Fatalf("paired Verify = %+v, %v; measure asked paired: %v", vs, err, o.lastPaired())
	}
	if x := vs[0]; x.Sandbox == nil || x.SandboxRelError == nil || math.Abs(*x.Sandbox-x.Measured/1.1) > 1e-9 || math.Abs(*x.SandboxRelError-(1-1/1.1)) > 1e-9 {
		t.Errorf("paired cpu=80 rt_mean = %+v, want the clone's value (on-line / 1.1) and its 9.1%% error", x)
	}
	evs, _ = store.Events(ctx, justrunit.EventFilter{StudyID: id, Kind: justrunit.EventVerifyDone})
	if msg := evs[len(evs)-1].Message; !strings.Contains(msg, "on a clone over the same requests (9.1%)") {
		t.Errorf("paired verify.done message = %q, want the clone's figure", msg)
	}
	var table strings.Builder
	if err := renderVerifications(&table, vs); err != nil || !strings.Contains(table.String(), "SANDBOX (ERROR)") || !strings.Contains(table.String(), "(9.1%)") {
		t.Errorf("paired table = %q, %v", table.String(), err)
	}

	// A failed measurement is recorded and returns what was measured.
	o.fail = errors.New("no live traffic")
	vs, err = v.Verify(ctx, st, m, spec)
	if err == nil || !strings.Contains(err.Error(), "0 of 2 points done") || len(vs) != 0 {
		t.Errorf("Verify with a failing measurement = %d, %v", len(vs), err)
	}
	if evs, _ := store.Events(ctx, justrunit.EventFilter{StudyID: id, Kind: justrunit.EventVerifyFailed}); len(evs) != 1 || evs[0].Level != "error" {
		t.Errorf("verify.failed events = %+v, want 1", evs)
	}
	o.fail = nil

	// A point measured, then not restored: its measurement is kept with
	// the error.
	o.after = fmt.Errorf("restore: %w", justrunit.ErrNotRestored)
	vs, err = v.Verify(ctx, st, m, spec)
	if !errors.Is(err, justrunit.ErrNotRestored) || len(vs) != 2 || vs[0].Label != "cpu=70" || vs[0].Measured != 44*1.2 {
		t.Errorf("Verify with a failed restore = %+v, %v; want cpu=70's 2 verifications and ErrNotRestored", vs, err)
	}
	o.after = nil

	// A target not on the site is refused before anything is measured.
	n := len(o.windows())
	other := *st
	other.Target = "auction9/app"
	if _, err := v.Verify(ctx, &other, m, spec); !errors.Is(err, justrunit.ErrNotFound) || len(o.windows()) != n {
		t.Errorf("Verify of a target not on the site = %v, want ErrNotFound and no measurement", err)
	}
}

func TestSiteVerifierExcludes(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)
	o := &onlineDouble{hold: make(chan struct{}), started: make(chan justrunit.Point, 1)}
	v, store := testVerifier(t, dir, o)
	ctx := context.Background()
	st, _ := store.Study(ctx, id)
	m, _ := store.Matrix(ctx, id)
	spec := api.VerifySpec{Points: []justrunit.Point{{70}}, Window: time.Second}

	done := make(chan error, 1)
	go func() { _, err := v.Verify(ctx, st, m, spec); done <- err }()
	<-o.started
	// While the on-line instance is being verified, another verification
	// is refused and a study waits.
	if _, err := v.Verify(ctx, st, m, spec); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "being verified") {
		t.Errorf("second Verify = %v, want a conflict", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := v.studyStarted(cctx, "s-study"); !errors.Is(err, context.Canceled) {
		t.Errorf("studyStarted during a verification = %v, want it to wait (until its context ends)", err)
	}
	close(o.hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A study of the daemon's runner holds the site.
	if err := v.studyStarted(ctx, "s-study"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, st, m, spec); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "s-study is running") {
		t.Errorf("Verify during a study = %v, want a conflict naming it", err)
	}
	v.studyEnded("s-study")
	o.started = nil
	if _, err := v.Verify(ctx, st, m, spec); err != nil {
		t.Errorf("Verify after the study = %v", err)
	}
	// So does a study running in the store on one of the site's instances
	// (the manager's, another process's).
	running := &justrunit.Study{Target: "auction0/app", Space: st.Space, Window: st.Window, TimeBound: st.TimeBound, Slots: 1,
		CheckThreshold: 0.1, State: justrunit.StudyRunning, Owner: "1@elsewhere"}
	if err := store.CreateStudy(ctx, running); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, st, m, spec); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), running.ID) {
		t.Errorf("Verify while %s runs in the store = %v, want a conflict naming it", running.ID, err)
	}
}

// TestStudyVerifyCommand runs "study verify" against a daemon (an API
// server on loopback whose site is a siteVerifier over the double).
func TestStudyVerifyCommand(t *testing.T) {
	t.Setenv(api.EnvServer, "")
	t.Setenv(api.EnvToken, "")
	t.Setenv(api.EnvTokenFile, "")
	dir := t.TempDir()
	id := storedStudy(t, dir)
	o := &onlineDouble{}
	v, store := testVerifier(t, dir, o)
	const token = "test-token-0123456789"
	srv, err := api.New(api.Config{Store: store, Token: token, Logger: v.log,
		Site: struct {
			api.SiteView
			*siteVerifier
		}{nil, v}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte(token), 0o600)
	if _, err := api.WriteState(dir, api.DaemonState{URL: hs.URL, PID: os.Getpid(), TokenFile: tokFile}); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, err := runSplit(t, "--data-dir", dir, "study", "verify", id, "--at", "cpu=70", "--at", "cpu=80", "--window", "2s")
	if err != nil {
		t.Fatalf("study verify: %v\n%s", err, stderr)
	}
	for _, want := range []string{"POINT", "cpu=70", "44±0.625 (I)", "52.8", "16.7%", "NO (10%)", "500 (2s)", "2 point(s) on the on-line auction0/app: 2 of 4 values within the study's 10% check threshold; largest error 16.7% (rt_mean at cpu="} {
		if !strings.Contains(stdout, want) {
			t.Errorf("study verify output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "Verifying cpu=80 on the on-line auction0/app (0s warm-up + 2s window)...") {
		t.Errorf("progress = %q", stderr)
	}
	// --paired goes through the API to the site's verifier, and the table
	// gains the clone's column.
	stdout, stderr, err = runSplit(t, "--data-dir", dir, "study", "verify", id, "--at", "cpu=80", "--window", "1s", "--paired")
	if err != nil || !strings.Contains(stdout, "SANDBOX (ERROR)") || !strings.Contains(stdout, "(9.1%)") ||
		!strings.Contains(stderr, "1s window, paired with a clone") || !o.lastPaired() {
		t.Errorf("study verify --paired = %v\n%s\n%s", err, stdout, stderr)
	}
	// Without --at: three points spread over cpu=60..100, as JSON.
	stdout, _, err = runSplit(t, "--data-dir", dir, "study", "verify", id, "--window", "1s", "--json")
	var vs []api.Verification
	if err != nil || json.Unmarshal([]byte(stdout), &vs) != nil || len(vs) != 6 || vs[0].Label != "cpu=70" || vs[4].Label != "cpu=90" {
		t.Errorf("study verify --json = %s, %v; want cpu=70, 80, 90 x 2 metrics", stdout, err)
	}
	// Flags are checked before anything is measured.
	n := len(o.windows())
	for _, tt := range []struct {
		args  []string
		field string
	}{
		{[]string{"--at", "cpu=65"}, "--at"},
		{[]string{"--at", "mem=1"}, "--at"},
		{[]string{"--window", "0s"}, "--window"},
		{[]string{"--warm-up", "-1s"}, "--warm-up"},
	} {
		_, _, err := runSplit(t, append([]string{"--data-dir", dir, "study", "verify", id}, tt.args...)...)
		var fe *justrunit.FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("study verify %v = %v, want an error naming %s", tt.args, err, tt.field)
		}
	}
	if got := len(o.windows()); got != n {
		t.Errorf("bad flags measured %d points", got-n)
	}
	if _, _, err := runSplit(t, "--data-dir", dir, "study", "verify", "s-nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("study verify of an unknown study = %v, want ErrNotFound", err)
	}
	// An on-line instance the check could not set back: said loudly,
	// with how to set it back.
	o.fail = fmt.Errorf("restore the on-line auction0/app after the check (5 attempts): busy; %w: it is left at cpu=70%% and should have cpu=100%%", justrunit.ErrNotRestored)
	_, stderr, err = runSplit(t, "--data-dir", dir, "study", "verify", id, "--at", "cpu=70", "--window", "1s")
	if !errors.Is(err, justrunit.ErrNotRestored) || !strings.Contains(err.Error(), "should have cpu=100%") {
		t.Errorf("study verify with a failed restore = %v, want ErrNotRestored naming the allocation", err)
	}
	for _, want := range []string{"WARNING: the on-line auction0/app is NOT at its allocation", "justrunit study verify " + id + " --at cpu=70", "restart the daemon"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("study verify with a failed restore printed %q, want it to say %q", stderr, want)
		}
	}
}

func TestStudyVerifyWithoutSite(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)
	// No daemon at all.
	t.Setenv(api.EnvServer, "")
	if _, err := run(t, "--data-dir", dir, "study", "verify", id); err == nil || !strings.Contains(err.Error(), "no --site and no daemon") {
		t.Errorf("study verify without a daemon = %v", err)
	}
	// A daemon that runs no site says so.
	startServe(t, dir)
	_, err := run(t, "--data-dir", dir, "study", "verify", id, "--at", "cpu=70")
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "runs no site") {
		t.Errorf("study verify on a daemon without a site = %v, want 503 saying it runs no site", err)
	}
}

// runSplit executes the CLI with args and returns its standard output and
// error output apart.
func runSplit(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// TestSiteVerifierRefusedWhenManaged checks that a daemon running the
// manager refuses fidelity checks (409) without touching the instance: the
// manager acts on the on-line instances, and a check would undo its work.
func TestSiteVerifierRefusedWhenManaged(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)
	o := &onlineDouble{}
	v, store := testVerifier(t, dir, o)
	v.managed = true
	ctx := context.Background()
	st, _ := store.Study(ctx, id)
	m, _ := store.Matrix(ctx, id)
	_, err := v.Verify(ctx, st, m, api.VerifySpec{Points: []justrunit.Point{{70}}, WarmUp: time.Second, Window: 3 * time.Second})
	if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "--manage") {
		t.Errorf("Verify on a managed daemon: %v, want a conflict naming --manage", err)
	}
	if n := len(o.windows()); n != 0 {
		t.Errorf("the on-line instance was measured %d times, want 0", n)
	}
}
