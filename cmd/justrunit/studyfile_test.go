package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/study"
)

func TestStudyFile(t *testing.T) {
	f, root, err := loadStudyFile("testdata/study.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.study(root)
	if err != nil {
		t.Fatal(err)
	}
	if st.Space.Size() != 9 || st.SLA == nil || st.SLA.Max != 50 || time.Duration(st.TimeBound) != 5*time.Minute ||
		st.Strategy != "sla" || st.CheckThreshold != 0.15 || len(st.Metrics) != 3 || st.MinSamples != 60 {
		t.Errorf("study = %+v", st)
	}
}

// TestStudyFileErrors checks that bad study files name the line and field.
func TestStudyFileErrors(t *testing.T) {
	good, err := os.ReadFile("testdata/study.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, from, to string
		want           []string
	}{
		{"step 0", "step 10", "step 0", []string{":4:", "parameters[0]", "step", "> 0"}},
		{"empty range", "cpu=20..100 step 10", "cpu=", []string{":4:", "empty range"}},
		{"threshold", "check_threshold: 0.15", "check_threshold: -1", []string{":13:", "check_threshold", "> 0"}},
		{"time bound", "time_bound: 5m", "time_bound: 10s", []string{":7:", "time_bound", "shorter than one experiment"}},
		{"bad duration", "window: 20s", "window: twenty", []string{":9:", "window", "not a duration"}},
		{"unknown field", "slots: 1", "slot: 1", []string{"field slot not found"}},
		{"unknown metric", "rt_mean,", "latency,", []string{":5:", "metrics[1]"}},
		{"bad sla", "rt_p95<=50", "rt_p95<50", []string{":6:", "sla"}},
		{"too few samples", "min_samples: 60", "min_samples: 59", []string{":14:", "min_samples", "at least 60"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "study.yaml")
			bad := strings.Replace(string(good), tt.from, tt.to, 1)
			if bad == string(good) {
				t.Fatalf("test did not change the file (%q)", tt.from)
			}
			if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			f, root, err := loadStudyFile(path)
			if err == nil {
				_, err = f.study(root)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(tt.name, "unknown field") {
				return
			}
			if !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

// TestStudyValidateTimeBound: "study validate" says how many experiments
// the time bound holds and how far past its bound the study may run, and
// the study engine does so: with an experimenter whose experiments take a
// little over their warm-up and window (on synctest's clock), it runs that
// many within that time.
func TestStudyValidateTimeBound(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		bound, warmUp, window string
		slots, n              int
		over                  time.Duration
		want                  []string
	}{
		{"5m", "10s", "50s", 1, 5, 2 * time.Second, []string{
			"time bound:  5m0s, 1 slot(s): room for 5 experiments of 1m0s (more where windows end early)",
			"up to 30s past its bound"}},
		{"4m59s", "10s", "50s", 1, 4, time.Second, []string{"room for 4 experiments of 1m0s", "up to 29.9s past its bound"}},
		{"100s", "0s", "10s", 2, 20, 300 * time.Millisecond, []string{
			"time bound:  1m40s, 2 slot(s): room for 20 experiments of 10s", "up to 10s past its bound"}},
	} {
		t.Run(tt.bound, func(t *testing.T) {
			file := filepath.Join(dir, "study.yaml")
			os.WriteFile(file, []byte(fmt.Sprintf("target: app0\nparameters: [\"cpu=1..100 step 1\"]\nstrategy: grid\n"+
				"time_bound: %s\nwarm_up: %s\nwindow: %s\nslots: %d\n", tt.bound, tt.warmUp, tt.window, tt.slots)), 0o600)
			out, err := run(t, "study", "validate", file)
			if err != nil {
				t.Fatalf("study validate: %v\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("study validate said\n%s\nwant %q", out, w)
				}
			}
			f, yf, err := loadStudyFile(file)
			if err != nil {
				t.Fatal(err)
			}
			st, err := f.study(yf)
			if err != nil {
				t.Fatal(err)
			}
			synctest.Test(t, func(t *testing.T) {
				in, _ := interp.New("linear")
				strat, err := driver.New("grid", driver.Options{Interpolator: in})
				if err != nil {
					t.Fatal(err)
				}
				l := st.ExperimentLength()
				runner := runnerFunc(func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
					select {
					case <-time.After(l + tt.over):
					case <-ctx.Done():
						return justrunit.Observation{}, ctx.Err()
					}
					return justrunit.Observation{Point: p, Samples: 1000, Throughput: 100, RT: justrunit.ResponseTime{Mean: 7, P50: 6, P95: 10, P99: 13}}, nil
				})
				e := &study.Engine{Runner: runner, Strategy: strat, Interpolator: in, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
				start := time.Now()
				if _, err := e.Run(context.Background(), st); err != nil {
					t.Fatal(err)
				}
				if st.Experiments != tt.n {
					t.Errorf("the engine ran %d experiments, want %d", st.Experiments, tt.n)
				}
				if past := time.Since(start) - time.Duration(st.TimeBound); past > study.Grace(st) {
					t.Errorf("the engine ran %v past the bound, more than the %v validate said", past, study.Grace(st))
				}
			})
		})
	}
}

// runnerFunc is a justrunit.Runner made of a function.
type runnerFunc func(ctx context.Context, p justrunit.Point) (justrunit.Observation, error)

func (f runnerFunc) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	return f(ctx, p)
}

// TestStudyValidateBoundBeyondSpace: a bound with room for more
// experiments than the space has points says it does not limit the study.
func TestStudyValidateBoundBeyondSpace(t *testing.T) {
	file := filepath.Join(t.TempDir(), "study.yaml")
	if err := os.WriteFile(file, []byte("target: app0\nparameters: [\"cpu=10..30 step 10\"]\nstrategy: grid\ntime_bound: 5m\nwarm_up: 10s\nwindow: 50s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "study", "validate", file)
	if err != nil {
		t.Fatalf("study validate: %v\n%s", err, out)
	}
	if want := "room for 5 experiments of 1m0s (as many as the space's 3 points: the bound does not limit the study)"; !strings.Contains(out, want) {
		t.Errorf("study validate said\n%s\nwant %q", out, want)
	}
}
