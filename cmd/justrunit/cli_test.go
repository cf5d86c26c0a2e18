package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/store/sqlite"
	"github.com/justrunit/justrunit/study"
)

// run executes the CLI with args and returns its standard output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// storedStudy puts a finished study with a measured and interpolated matrix
// into a store under dir and returns its ID.
func storedStudy(t *testing.T, dir string) string {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(dir, "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cpu, _ := justrunit.ParseParameter("cpu=60..100 step 10")
	st := &justrunit.Study{Target: "auction0/app", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean, justrunit.Throughput}, Window: justrunit.Duration(time.Minute),
		TimeBound: justrunit.Duration(3 * time.Minute), Slots: 1, Strategy: "grid", Interpolator: "linear",
		CheckThreshold: 0.1, State: justrunit.StudyDone}
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, _ := justrunit.NewMatrix(st.Space, st.Metrics)
	for _, p := range []struct{ cpu, rt float64 }{{60, 48}, {80, 40}, {100, 37}} {
		o := justrunit.Observation{Point: justrunit.Point{p.cpu}, Samples: 6000, Throughput: 100, RT: justrunit.ResponseTime{Mean: p.rt}}
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
		if err := s.AddObservation(ctx, st.ID, o); err != nil {
			t.Fatal(err)
		}
	}
	in, _ := interp.New("linear")
	if err := in.Interpolate(m); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
		t.Fatal(err)
	}
	return st.ID
}

func TestStudyCommands(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)

	out, err := run(t, "--data-dir", dir, "study", "list")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "auction0/app") {
		t.Fatalf("study list = %q, %v", out, err)
	}
	out, err = run(t, "--data-dir", dir, "study", "show", id)
	if err != nil || !strings.Contains(out, "48.00 X") || !strings.Contains(out, "44.00±") || !strings.Contains(out, "6 X measured, 4 I interpolated") {
		t.Fatalf("study show = %q, %v", out, err)
	}
	file := filepath.Join(dir, "export.json")
	if _, err := run(t, "--data-dir", dir, "study", "export", id, "-o", file); err != nil {
		t.Fatal(err)
	}
	var exp studyExport
	b, _ := os.ReadFile(file)
	if err := json.Unmarshal(b, &exp); err != nil || len(exp.Observations) != 3 || exp.Matrix == nil {
		t.Fatalf("export = %s, %v", b, err)
	}
	// The exported file renders with "matrix show", as a bare matrix too.
	out, err = run(t, "matrix", "show", file)
	if err != nil || !strings.Contains(out, "37.00 X") || !strings.Contains(out, "I") {
		t.Fatalf("matrix show = %q, %v", out, err)
	}
	bare := filepath.Join(dir, "matrix.json")
	mb, _ := json.Marshal(exp.Matrix)
	os.WriteFile(bare, mb, 0o600)
	if out2, err := run(t, "matrix", "show", bare); err != nil || out2 != out {
		t.Fatalf("matrix show of the bare matrix = %q, %v; want %q", out2, err, out)
	}

	if _, err := run(t, "--data-dir", dir, "study", "show", "s-nope"); !errors.Is(err, justrunit.ErrNotFound) || strings.Count(err.Error(), "s-nope") != 1 {
		t.Errorf("show of an unknown study: %v, want ErrNotFound naming the study once", err)
	}
}

func TestMatrixShowErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"space":{"parameters":[{"name":"cpu","values":[20,10]}]},"metrics":["rt_p95"],"rows":[]}`), 0o600)
	// The export of a study still pending has no matrix.
	pending := filepath.Join(dir, "pending.json")
	os.WriteFile(pending, []byte(`{"study":{"id":"s-1","state":"pending"},"observations":[],"checks":[],"events":[]}`), 0o600)
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, []byte(`{}`), 0o600)
	for _, tt := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.json"), "no such file"},
		{bad, "values must increase"},
		{pending, "export of study s-1 (pending) has no matrix (yet)"},
		{empty, "holds no matrix"},
	} {
		if _, err := run(t, "matrix", "show", tt.file); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("matrix show %s: error %v, want %q", tt.file, err, tt.want)
		}
	}
}

// TestPlatformCheckCommand runs `platform check --json` on the local
// platform: as root every required check passes here; without root the
// root check fails and the command says so.
func TestPlatformCheckCommand(t *testing.T) {
	dir := t.TempDir()
	out, err := run(t, "--data-dir", dir, "platform", "check", "--json")
	var res struct {
		Platform string            `json:"platform"`
		OK       bool              `json:"ok"`
		Checks   []justrunit.Check `json:"checks"`
	}
	if jerr := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &res); jerr != nil {
		t.Fatalf("platform check --json printed %q: %v", out, jerr)
	}
	if res.Platform != "local" || len(res.Checks) == 0 || res.Checks[0].Name != "root" {
		t.Fatalf("platform check --json = %+v", res)
	}
	if os.Geteuid() == 0 {
		if err != nil || !res.OK {
			t.Errorf("as root: platform check = %v, %+v; want every required check passed", err, res.Checks)
		}
	} else if err == nil || res.OK || !strings.Contains(err.Error(), "root") {
		t.Errorf("without root: platform check = %v, ok=%v; want it to fail naming root", err, res.OK)
	}
	if _, err := run(t, "--data-dir", dir, "platform", "check", "--platform", "xen"); err == nil || !strings.Contains(err.Error(), "platform") {
		t.Errorf("platform check --platform xen = %v, want an error naming the flag", err)
	}
}

// TestPrintProgress checks the study run's progress line: what is being
// measured, how much time is left, and the last observation with the load
// it was offered and its match rate.
func TestPrintProgress(t *testing.T) {
	st := &justrunit.Study{TimeBound: justrunit.Duration(2 * time.Minute)}
	cpu, err := justrunit.ParseParameter("cpu=20..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	st.Space = justrunit.Space{Params: []justrunit.Parameter{cpu}}
	last := &justrunit.Observation{Point: justrunit.Point{30}, Throughput: 38, Offered: 40, MatchRate: 0.97, Samples: 380, Stop: "window",
		RT: justrunit.ResponseTime{P95: 42.5, Mean: 20.25}}
	var b bytes.Buffer
	printProgress(&b, study.Progress{Study: st, Done: 2, Planned: 5, Running: []justrunit.Point{{60}}, TimeLeft: 75 * time.Second, Last: last})
	want := "[2/5 done] measuring cpu=60; 1m15s of 2m0s left; last cpu=30: p95 42.5 ms, mean 20.2 ms, 38.0 req/s of 40.0 offered, match rate 0.97, 380 samples (window)\n"
	if b.String() != want {
		t.Errorf("progress line\n%q, want\n%q", b.String(), want)
	}
	// Past the bound, within its grace: how long the last experiments may
	// still run, not "0s left".
	b.Reset()
	printProgress(&b, study.Progress{Study: st, Done: 4, Planned: 5, Running: []justrunit.Point{{60}}, GraceLeft: 7 * time.Second})
	if want := "[4/5 done] measuring cpu=60; past the 2m0s bound: the last experiments end within 7s\n"; b.String() != want {
		t.Errorf("progress line in the grace\n%q, want\n%q", b.String(), want)
	}
}

// TestStudyValidateStrategy: "study validate" names the strategy the study
// will run: sla when the file has an SLA and names none, as the daemon and
// the site runtime choose.
func TestStudyValidateStrategy(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ extra, want string }{
		{"sla: rt_p95<=50\n", "strategy:    sla, interpolator linear"},
		{"", "strategy:    adaptive, interpolator linear"},
		{"sla: rt_p95<=50\nstrategy: grid\ninterpolator: gp\n", "strategy:    grid, interpolator gp"},
	} {
		file := filepath.Join(dir, "study.yaml")
		os.WriteFile(file, []byte("target: app0\nparameters: [\"cpu=20..100 step 10\"]\ntime_bound: 5m\n"+tt.extra), 0o600)
		out, err := run(t, "study", "validate", file)
		if err != nil || !strings.Contains(out, tt.want) {
			t.Errorf("study validate of a file with %q = %v\n%s\nwant %q", tt.extra, err, out, tt.want)
		}
	}
}

// fakeStudyDaemon answers "study run" as a daemon whose study runs until
// cancelled: it notes each call, holds what hold names until the call's
// context ends (or a moment passes, for a post), and counts cancels.
type fakeStudyDaemon struct {
	hold    string // "post" or "poll"
	holding chan struct{}
	once    sync.Once
	cancels atomic.Int32
}

func (f *fakeStudyDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := map[string]any{"id": "s-1", "target": "app0", "state": "running"}
	switch {
	case r.Method == "POST" && r.URL.Path == api.Prefix+"/studies":
		if f.hold == "post" {
			f.once.Do(func() { close(f.holding) })
			time.Sleep(300 * time.Millisecond) // Ctrl-C comes meanwhile
		}
		w.WriteHeader(http.StatusCreated)
	case r.Method == "GET" && r.URL.Path == api.Prefix+"/studies/s-1":
		if f.hold == "poll" {
			f.once.Do(func() { close(f.holding) })
			<-r.Context().Done()
			return
		}
	case r.Method == "POST" && r.URL.Path == api.Prefix+"/studies/s-1/cancel":
		f.cancels.Add(1)
		w.WriteHeader(http.StatusAccepted)
		st = map[string]any{"id": "s-1", "status": "cancelling"}
	default:
		http.NotFound(w, r)
		return
	}
	json.NewEncoder(w).Encode(st)
}

// TestStudyRunOnDaemonCancels: Ctrl-C during "study run" against a daemon
// cancels the study there, whenever it comes: while the study is being
// posted, or while its state is being polled.
func TestStudyRunOnDaemonCancels(t *testing.T) {
	for _, hold := range []string{"post", "poll"} {
		t.Run(hold, func(t *testing.T) {
			fake := &fakeStudyDaemon{hold: hold, holding: make(chan struct{})}
			hs := httptest.NewServer(fake)
			defer hs.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := &cobra.Command{}
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetContext(ctx)
			go func() {
				<-fake.holding
				cancel() // Ctrl-C
			}()
			done := make(chan error, 1)
			go func() {
				done <- runStudyOnDaemon(cmd, api.NewClient(hs.URL, "tok"), &studyFile{Target: "app0", Parameters: []string{"cpu=20..100 step 10"}, TimeBound: "1m"})
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("study run did not return after Ctrl-C")
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("study run after Ctrl-C during the %s = %v, want context.Canceled", hold, err)
			}
			if n := fake.cancels.Load(); n != 1 {
				t.Errorf("Ctrl-C during the %s: %d cancels reached the daemon, want 1\n%s", hold, n, out.String())
			}
			if !strings.Contains(out.String(), "Study s-1 cancelled.") {
				t.Errorf("output lacks the cancellation:\n%s", out.String())
			}
		})
	}
}
