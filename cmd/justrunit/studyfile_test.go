package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
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
