package local

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/justrunit/justrunit/internal/cgroup"
)

// TestCheck runs the platform check: on a machine that runs the platform's
// other tests every required check passes, and the check leaves nothing
// behind (no state directory, cgroup, namespace or link of its own).
func TestCheck(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	v, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	groups := func() []string { c, _ := cgroup.Children(v, "/justrunit"); return c }
	netns := func() []string {
		var out []string
		ents, _ := os.ReadDir(netnsDir)
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	groupsBefore, nsBefore := groups(), netns()

	checks := Check(context.Background(), dir)
	var names []string
	for _, c := range checks {
		names = append(names, c.Name)
		t.Logf("%-14s ok=%-5v optional=%-5v %s", c.Name, c.OK, c.Optional, c.Detail)
		if !c.OK && !c.Optional {
			t.Errorf("check %s failed: %s (fix: %s)", c.Name, c.Detail, c.Fix)
		}
		if !c.OK && c.Fix == "" {
			t.Errorf("check %s failed without saying what to do", c.Name)
		}
	}
	for _, want := range []string{"root", "cgroups", "hosts", "overlayfs", "clone network", "clone NAT", "clone mode", "energy"} {
		if !slices.Contains(names, want) {
			t.Errorf("checks %v lack %q", names, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the check left %d entries in its directory", len(ents))
	}
	for _, g := range groups() {
		if !slices.Contains(groupsBefore, g) {
			t.Errorf("the check left cgroup /justrunit/%s", g)
		}
	}
	for _, n := range netns() {
		if !slices.Contains(nsBefore, n) {
			t.Errorf("the check left network namespace %s", n)
		}
	}
}
