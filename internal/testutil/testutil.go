// Package testutil holds helpers the integration tests share: the gate for
// tests that need root, and building the auction example they run.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// NeedRoot skips a test that needs root, or fails it under CI=true (CI runs
// as root, so a missing capability there is a setup error).
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (cgroups, network namespaces); CI runs as root, so this is a setup error")
	}
	t.Skip("needs root (cgroups, network namespaces); run as root")
}

// BuildAuction builds the auction example's static binary into a temporary
// directory and returns its path.
//
// $JRI_AUCTION names a prebuilt one instead, where there is no Go toolchain
// (the guest internal/v2guest runs tests in).
func BuildAuction(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("JRI_AUCTION"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "auction")
	build := exec.Command("go", "build", "-o", bin, "github.com/justrunit/justrunit/examples/auction")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the auction example: %v\n%s", err, out)
	}
	return bin
}

// NeedLiveClones skips a test that needs live clones when why (from
// local.LiveClones) says they are not available here, or fails it where they
// must be: under CI=true (.ci/run installs a criu that works, with
// scripts/install-criu) and in the guest internal/v2guest sets up for them.
func NeedLiveClones(t testing.TB, why error) {
	t.Helper()
	if why == nil {
		return
	}
	if os.Getenv("JRI_V2GUEST") != "" {
		t.Fatalf("no live clones in the guest internal/v2guest sets up for them: %v", why)
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no live clones: %v; .ci/run installs a criu that works (scripts/install-criu), so this is a setup error", why)
	}
	t.Skipf("live clones need a criu that passes criu check: %v", why)
}
