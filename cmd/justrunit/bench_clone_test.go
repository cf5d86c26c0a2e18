package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/proxy/cloneside"
)

// TestMain lets this test binary be the justrunit command: with JRI_AS_CLI=1
// it runs its arguments as the CLI does (bench clone launches "justrunit
// bench testserver" from its own executable).
func TestMain(m *testing.M) {
	cloneside.RunIfHelper() // the clone side of the studies the tests run
	if os.Getenv("JRI_AS_CLI") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBenchCloneCommand runs "bench clone --json" once: the report has the
// contract's keys, the clone answers, nothing is left, and where clones are
// live the same run measures cold clones too and gives the ratios.
func TestBenchCloneCommand(t *testing.T) {
	testutil.NeedRoot(t)
	t.Setenv("JRI_AS_CLI", "1") // for the test server it launches
	cmd := newRootCmd()
	var out, progress bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&progress)
	cmd.SetArgs([]string{"--data-dir", t.TempDir(), "bench", "clone", "--runs", "1", "--state-mib", "1", "--json"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("bench clone: %v\n%s", err, progress.String())
	}
	var rep cloneBenchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("bench clone --json: %v\n%s", err, out.String())
	}
	t.Logf("mode %s, clone %.3f s, pause %.1f ms, live/cold %v", rep.Mode, rep.CloneS, rep.PauseMS, rep.LiveVsCold)
	if rep.Platform != "local" || len(rep.Runs) != 1 || !(rep.CloneS > 0) || !(rep.PauseMS > 0) || rep.Leftovers != 0 || rep.OriginalErrors != 0 {
		t.Errorf("report %+v, want one run measured, no error and nothing left", rep)
	}
	want := justrunit.CloneCold
	if local.LiveClones() == nil {
		want = justrunit.CloneLive
	}
	if rep.Mode != want {
		t.Errorf("mode %q, want %q", rep.Mode, want)
	}
	switch {
	case want == justrunit.CloneLive && (rep.Cold == nil || rep.Cold.Mode != justrunit.CloneCold || !(rep.LiveVsCold["pause_ms"] > 0)):
		t.Errorf("live clones without the cold comparison: cold %+v, ratios %v", rep.Cold, rep.LiveVsCold)
	case want == justrunit.CloneCold && rep.Cold != nil:
		t.Errorf("cold clones compared with cold ones: %+v", rep.Cold)
	}
}
