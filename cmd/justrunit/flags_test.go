package main

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/site"
)

// wantFlagError checks that err is a justrunit.FieldError naming flag and,
// when want is not empty, that its message holds want.
func wantFlagError(t *testing.T, args []string, err error, flag, want string) {
	t.Helper()
	var fe *justrunit.FieldError
	if !errors.As(err, &fe) || fe.Field != flag {
		t.Errorf("%s = %v, want an error naming %s", strings.Join(args, " "), err, flag)
		return
	}
	if want != "" && !strings.Contains(err.Error(), want) {
		t.Errorf("%s = %v, want it to say %q", strings.Join(args, " "), err, want)
	}
}

// TestDemoFlags: the demos (and bench online, which runs the study demo's
// site) check their flags, each error naming its flag, before they need
// root or build anything (so this runs without root too).
func TestDemoFlags(t *testing.T) {
	out := t.TempDir()
	for _, tt := range []struct {
		args []string
		flag string
	}{
		{[]string{"demo", "--interval", "1s"}, "--interval"},
		{[]string{"demo", "--rate", "0"}, "--rate"},
		{[]string{"demo", "--rate", "-3"}, "--rate"},
		{[]string{"demo", "--rate", "NaN"}, "--rate"},
		{[]string{"demo", "--rise", "1"}, "--rise"},
		{[]string{"demo", "--rise", "NaN"}, "--rise"},
		{[]string{"demo", "--intervals", "1"}, "--intervals"},
		{[]string{"demo", "--rise-at", "14"}, "--rise-at"},
		{[]string{"demo", "--work", "-1"}, "--work"},
		{[]string{"demo", "study", "--rate", "-5"}, "--rate"},
		{[]string{"demo", "study", "--rate", "0"}, "--rate"},
		{[]string{"demo", "study", "--rate", "+Inf"}, "--rate"},
		{[]string{"demo", "study", "--window", "1s"}, "--window"},
		{[]string{"demo", "study", "--online-window", "1s"}, "--online-window"},
		{[]string{"demo", "study", "--arrival", "bursty"}, "--arrival"},
		{[]string{"demo", "study", "--settle", "-1s"}, "--settle"},
		{[]string{"bench", "online", "--cycles", "0"}, "--cycles"},
		{[]string{"bench", "online", "--cpu", "0"}, "--cpu"},
		{[]string{"bench", "online", "--cpu", "101"}, "--cpu"},
		{[]string{"bench", "online", "--cpu", "NaN"}, "--cpu"},
		{[]string{"bench", "online", "--window", "1s"}, "--window"},
		{[]string{"bench", "online", "--rate", "0"}, "--rate"},
		{[]string{"bench", "online", "--arrival", "bursty"}, "--arrival"},
		{[]string{"bench", "online", "--settle", "-1s"}, "--settle"},
	} {
		args := append(append([]string{}, tt.args...), "--out", out)
		_, err := run(t, args...)
		wantFlagError(t, args, err, tt.flag, "")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a demo with a bad flag wrote %d files to --out", len(entries))
	}
}

// TestSuperviseLoad: the demo study stops, with the load generator's
// error, when the load generator stops on its own, and not when the demo
// stops it.
func TestSuperviseLoad(t *testing.T) {
	boom := errors.New("boom")
	for _, tt := range []struct {
		name string
		run  func(context.Context) error
		want string // in the cause; empty: no failure
	}{
		{"fails", func(context.Context) error { return boom }, "boom"},
		{"stops early", func(context.Context) error { return nil }, "stopped before the demo ended"},
		{"stopped by the demo", func(ctx context.Context) error { <-ctx.Done(); return nil }, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, fail := context.WithCancelCause(context.Background())
			defer fail(nil)
			loadCtx, stopLoad := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				superviseLoad(loadCtx, tt.run, fail)
			}()
			if tt.want == "" {
				stopLoad()
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("superviseLoad did not return")
			}
			stopLoad()
			cause := context.Cause(ctx)
			switch {
			case tt.want == "" && cause != nil:
				t.Errorf("the demo was failed with %v after it stopped the load itself", cause)
			case tt.want != "" && (cause == nil || !strings.Contains(cause.Error(), tt.want) || !strings.Contains(cause.Error(), "load generator")):
				t.Errorf("cause = %v, want the load generator's %q", cause, tt.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		err  string // in the error; empty: none
	}{
		{"1048576", 1 << 20, ""},
		{"512KiB", 512 << 10, ""},
		{"64M", 64 << 20, ""},
		{"8589934591G", math.MaxInt64 - (1<<30 - 1), ""},
		{"8589934592G", 0, "too large"},
		{"17179869184G", 0, "too large"}, // 2^64: wrapped to 0 once
		{"9223372036854775808", 0, "too large"},
		{"0", 0, "> 0"},
		{"0MiB", 0, "> 0"},
		{"-1", 0, "want a size"},
		{"lots", 0, "want a size"},
	} {
		got, err := parseBytes("--max-body", tt.in)
		if tt.err == "" {
			if err != nil || got != tt.want {
				t.Errorf("parseBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
			continue
		}
		wantFlagError(t, []string{"--max-body", tt.in}, err, "--max-body", tt.err)
	}
}

// TestProxyFlags: "proxy in" and "proxy out" refuse bad limits naming the
// flag, before they listen anywhere.
func TestProxyFlags(t *testing.T) {
	in := []string{"proxy", "in", "--listen", "127.0.0.1:0", "--online", "http://127.0.0.1:1"}
	out := []string{"proxy", "out", "--listen", "127.0.0.1:0", "--clone-listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1"}
	for _, tt := range []struct {
		base  []string
		extra []string
		flag  string
		want  string
	}{
		{in, []string{"--copy-timeout", "-1s"}, "--copy-timeout", "negative"},
		{in, []string{"--copy-timeout", "0s"}, "--copy-timeout", "> 0"},
		{in, []string{"--max-copy-body", "17179869184G"}, "--max-copy-body", "too large"},
		{in, []string{"--max-clone-bytes", "0"}, "--max-clone-bytes", "> 0"},
		{in, []string{"--max-in-flight", "-1"}, "--max-in-flight", ""},
		{in, []string{"--max-in-flight", "0"}, "--max-in-flight", ""},
		{in, []string{"--clone-lag", "-1s"}, "--clone-lag", "negative"},
		{in, []string{"--clone-lag", "1h"}, "--clone-lag", ""},
		{in, []string{"--stats-interval", "-1s"}, "--stats-interval", "negative"},
		{out, []string{"--window", "-1s"}, "--window", "negative"},
		{out, []string{"--window", "0s"}, "--window", "> 0"},
		{out, []string{"--max-record-bytes", "17179869184G"}, "--max-record-bytes", "too large"},
		{out, []string{"--max-body", "-5"}, "--max-body", ""},
		{out, []string{"--fallback-status", "0"}, "--fallback-status", ""},
		{out, []string{"--fallback-status", "600"}, "--fallback-status", ""},
		{out, []string{"--stats-interval", "-1s"}, "--stats-interval", "negative"},
		{out, []string{"--clone-listen", ""}, "--clone-listen", "host:port"},
	} {
		args := append(append([]string{"--log-level", "error"}, tt.base...), tt.extra...)
		_, err := run(t, args...)
		wantFlagError(t, args, err, tt.flag, tt.want)
	}
}

// TestManagerRunFlags: "manager run" and "manager upgrade" check every
// flag before they read the site (the site file here does not exist, so an
// error about it means a flag was let through).
func TestManagerRunFlags(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	for _, tt := range []struct {
		args []string
		flag string
	}{
		{[]string{"run", "--experiments", "-1"}, "--experiments"},
		{[]string{"run", "--warm-up", "-5s"}, "--warm-up"},
		{[]string{"run", "--window", "0s"}, "--window"},
		{[]string{"run", "--interval", "0s"}, "--interval"},
		{[]string{"run", "--interval", "-1m"}, "--interval"},
		{[]string{"run", "--headroom", "1"}, "--headroom"},
		{[]string{"run", "--headroom", "NaN"}, "--headroom"},
		{[]string{"run", "--timeline", filepath.Join(dir, "no", "such", "dir", "t.svg")}, "--timeline"},
		{[]string{"upgrade", "--target", "app0", "--warm-up", "-1s"}, "--warm-up"},
		{[]string{"upgrade", "--target", "app0", "--window", "0s"}, "--window"},
		{[]string{"upgrade", "--target", "app0", "--wait-traffic", "0s"}, "--wait-traffic"},
	} {
		args := append([]string{"--data-dir", dir, "manager"}, append(tt.args, "--site", missing)...)
		_, err := run(t, args...)
		wantFlagError(t, args, err, tt.flag, "")
	}
	// Good flags get as far as the missing site file.
	if _, err := run(t, "--data-dir", dir, "manager", "run", "--site", missing, "--experiments", "0", "--headroom", "-1", "--reconsider", "-1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("manager run with good flags and a missing site = %v, want the site file not found", err)
	}

	// The help says what 0 means, as manager.New takes it.
	for _, c := range newManagerCmd(&globals{}).Commands() {
		if c.Name() != "run" {
			continue
		}
		for flag, want := range map[string]string{"headroom": "0 takes the default 0.1", "reconsider": "0 takes the default 3", "experiments": "0 takes the default 3"} {
			if u := c.Flags().Lookup(flag).Usage; !strings.Contains(u, want) {
				t.Errorf("--%s help %q lacks %q", flag, u, want)
			}
		}
	}
}

// TestCheckManagerWarmUp: a --warm-up shorter than the clone lag of an
// instance the manager would study is refused before the site comes up.
func TestCheckManagerWarmUp(t *testing.T) {
	lag := justrunit.Duration(time.Second)
	f := &site.Site{Services: []site.Service{
		{Name: "nosla", Tiers: []site.Tier{{Name: "app", Instances: []site.Instance{{ID: "x", InProxy: &site.InProxy{CloneLag: &lag}}}}}},
		{Name: "auction0", SLA: "rt_mean<=50", Tiers: []site.Tier{
			{Name: "web", Instances: []site.Instance{{ID: "web0", InProxy: &site.InProxy{CloneLag: &lag}}}},
			{Name: "app", Instances: []site.Instance{{ID: "app0", InProxy: &site.InProxy{CloneLag: &lag}}}},
		}},
	}}
	err := checkManagerWarmUp(f, 500*time.Millisecond)
	wantFlagError(t, []string{"--warm-up", "500ms"}, err, "--warm-up", "app0")
	if err := checkManagerWarmUp(f, time.Second); err != nil {
		t.Errorf("--warm-up equal to the clone lag: %v", err)
	}
	// With the web tier named the bottleneck, its instance is studied.
	f.Services[1].Bottleneck = "web"
	err = checkManagerWarmUp(f, 0)
	wantFlagError(t, []string{"--warm-up", "0s"}, err, "--warm-up", "web0")
	// A service whose SLA the manager could not act on is refused too.
	f.Services[1].Bottleneck = ""
	f.Services[1].Tiers[1].Instances[0].InProxy = nil
	err = checkManagerWarmUp(f, time.Second)
	wantFlagError(t, nil, err, "services.auction0.bottleneck", "in_proxy")
}

// TestGCCommand: the command that cleans up after a run names the data
// directory and platform it used, or --all for a local state directory of
// its own.
func TestGCCommand(t *testing.T) {
	t.Setenv("JUSTRUNIT_DATA_DIR", "/var/lib/justrunit")
	def := &globals{dataDir: "/var/lib/justrunit"}
	other := &globals{dataDir: "/srv/jr data"}
	for _, tt := range []struct {
		g                  *globals
		platform, stateDir string
		want               string
	}{
		{def, "local", "/var/lib/justrunit/platform/local", "justrunit platform gc"},
		{def, "qemu", "/var/lib/justrunit/platform/qemu", "justrunit platform gc --platform qemu"},
		{other, "local", "/srv/jr data/platform/local", "justrunit --data-dir '/srv/jr data' platform gc"},
		{other, "qemu", "/srv/jr data/platform/qemu", "justrunit --data-dir '/srv/jr data' platform gc --platform qemu"},
		{def, "local", "/home/me/justrunit-demo/platform", "justrunit platform gc --all"},
		{def, "qemu", "/tmp/bench", ""},
	} {
		if got := gcCommand(tt.g, tt.platform, tt.stateDir); got != tt.want {
			t.Errorf("gcCommand(%s, %s, %s) = %q, want %q", tt.g.dataDir, tt.platform, tt.stateDir, got, tt.want)
		}
	}
	dir := t.TempDir()
	qsite := filepath.Join(dir, "site.yaml")
	os.WriteFile(qsite, []byte("platform: qemu\nhosts: []\n"), 0o600)
	if got, want := siteGCCommand(def, qsite), "justrunit platform gc --platform qemu"; got != want {
		t.Errorf("siteGCCommand of a qemu site = %q, want %q", got, want)
	}
	if got, want := siteGCCommand(def, filepath.Join(dir, "missing.yaml")), "justrunit platform gc"; got != want {
		t.Errorf("siteGCCommand of a missing site = %q, want %q", got, want)
	}
}

// TestStudyValidateExample: the study file in "study validate"'s example
// is valid, and its target is an instance ID of the auction example's site.
func TestStudyValidateExample(t *testing.T) {
	var validate *cobra.Command
	for _, c := range newStudyCmd(&globals{}).Commands() {
		if c.Name() == "validate" {
			validate = c
		}
	}
	var b strings.Builder
	for _, line := range strings.Split(validate.Example, "\n") {
		if rest, ok := strings.CutPrefix(line, "  #   "); ok {
			b.WriteString(rest + "\n")
		}
	}
	file := filepath.Join(t.TempDir(), "study.yaml")
	os.WriteFile(file, []byte(b.String()), 0o600)
	out, err := run(t, "study", "validate", file)
	if err != nil {
		t.Fatalf("study validate of the example %q: %v", b.String(), err)
	}
	f, _, err := loadStudyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sf, err := site.Load("../../examples/auction/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := sf.Instance(f.Target); err != nil {
		t.Errorf("the example's target %q is not an instance of examples/auction/site.yaml (%v): %v\n%s", f.Target, sf.InstanceIDs(), err, out)
	}
}

// TestEmptyStudyFile: an empty study file (or one of comments only) is
// refused naming the file and saying it is empty.
func TestEmptyStudyFile(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"empty.yaml": "", "comments.yaml": "# nothing yet\n"} {
		file := filepath.Join(dir, name)
		os.WriteFile(file, []byte(body), 0o600)
		_, err := run(t, "study", "validate", file)
		if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "empty") || !errors.Is(err, justrunit.ErrInvalid) {
			t.Errorf("study validate %s = %v, want an error naming the file and saying it is empty", name, err)
		}
	}
}

// pollingDaemon answers "study run" as a daemon whose study-state reads
// fail (with fail's status) while failing is set, and otherwise answer
// state.
type pollingDaemon struct {
	failing atomic.Bool
	fail    int // the status of a failed read
	state   atomic.Value
	polls   atomic.Int32
}

func (d *pollingDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, api.Prefix)
	switch {
	case r.Method == "POST" && p == "/studies":
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{"id": "s-1", "target": "app0", "state": "pending"})
	case r.Method == "GET" && p == "/studies/s-1":
		d.polls.Add(1)
		if d.failing.Load() {
			code := map[int]string{404: api.CodeNotFound, 503: api.CodeUnavailable}[d.fail]
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(d.fail)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: &api.Error{Code: code, Message: "study s-1: unavailable"}})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"id": "s-1", "target": "app0", "state": d.state.Load()})
	case r.Method == "GET" && (p == "/studies/s-1/observations" || p == "/studies/s-1/checks" || p == "/events"):
		w.Write([]byte("[]"))
	case r.Method == "GET" && p == "/studies/s-1/export":
		json.NewEncoder(w).Encode(map[string]any{"study": map[string]any{"id": "s-1", "target": "app0", "state": d.state.Load()},
			"observations": []any{}, "checks": []any{}, "events": []any{}})
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: &api.Error{Code: api.CodeNotFound, Message: "not found"}})
	}
}

// TestStudyRunOnDaemonRetries: "study run" keeps following its study
// through failed reads for a while; past that bound, or at once when the
// study is gone, it stops saying the study may still be running and how
// to follow and cancel it.
func TestStudyRunOnDaemonRetries(t *testing.T) {
	oldInterval, oldGiveUp := daemonPollInterval, daemonPollGiveUp
	t.Cleanup(func() { daemonPollInterval, daemonPollGiveUp = oldInterval, oldGiveUp })
	daemonPollInterval, daemonPollGiveUp = 10*time.Millisecond, 500*time.Millisecond
	file := &studyFile{Target: "app0", Parameters: []string{"cpu=20..100 step 10"}, TimeBound: "1m"}
	follow := func(d *pollingDaemon) (string, error) {
		hs := httptest.NewServer(d)
		defer hs.Close()
		cmd := &cobra.Command{}
		var out lockedBuffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetContext(context.Background())
		err := runStudyOnDaemon(cmd, api.NewClient(hs.URL, "tok"), file)
		return out.String(), err
	}

	t.Run("transient", func(t *testing.T) {
		d := &pollingDaemon{fail: 503}
		d.state.Store("running")
		d.failing.Store(true)
		go func() {
			time.Sleep(200 * time.Millisecond) // under the bound
			d.state.Store("done")
			d.failing.Store(false)
		}()
		out, err := follow(d)
		if err != nil {
			t.Fatalf("study run through failed reads = %v\n%s", err, out)
		}
		if !strings.Contains(out, "trying again") || !strings.Contains(out, "read again") {
			t.Errorf("output does not say the reads failed and recovered:\n%s", out)
		}
	})
	t.Run("outlasting", func(t *testing.T) {
		d := &pollingDaemon{fail: 503}
		d.state.Store("running")
		d.failing.Store(true)
		start := time.Now()
		out, err := follow(d)
		if took := time.Since(start); took < daemonPollGiveUp || took > daemonPollGiveUp+5*time.Second {
			t.Errorf("gave up after %v, want about %v", took, daemonPollGiveUp)
		}
		if err == nil || !strings.Contains(err.Error(), "may still be running") || !strings.Contains(err.Error(), `"justrunit study show s-1"`) ||
			!strings.Contains(err.Error(), "/studies/s-1/cancel") {
			t.Errorf("study run after reads failed past the bound = %v, want how to follow and cancel it\n%s", err, out)
		}
		if n := d.polls.Load(); n < 3 {
			t.Errorf("%d reads, want it to have tried again", n)
		}
	})
	t.Run("gone", func(t *testing.T) {
		d := &pollingDaemon{fail: 404}
		d.state.Store("running")
		d.failing.Store(true)
		_, err := follow(d)
		if !errors.Is(err, justrunit.ErrNotFound) || d.polls.Load() != 1 {
			t.Errorf("study run when the study is gone = %v after %d reads, want ErrNotFound after 1", err, d.polls.Load())
		}
	})
}
