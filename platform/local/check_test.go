package local

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
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
	for _, want := range []string{"root", "cgroups", "cpu time", "memory limits", "hosts", "overlayfs", "clone network", "clone NAT", "clone mode", "energy"} {
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

// TestCheckWithoutCPUAcct: where cgroup v1's cpuacct hierarchy is not
// mounted, the check fails up front (every experiment's energy needs an
// instance's CPU time, which Usage cannot read then), naming what to
// mount; a missing memory hierarchy is reported as optional.
func TestCheckWithoutCPUAcct(t *testing.T) {
	needRoot(t)
	if v, _ := cgroup.Detect(); v != cgroup.V1 {
		t.Skip("cgroup v1 only: v2 reads CPU time from cpu.stat, which every group has")
	}
	cgroupControllers = func(v cgroup.Version) ([]string, error) {
		have, err := cgroup.Controllers(v)
		return slices.DeleteFunc(have, func(c string) bool { return c == "memory" || c == "cpuacct" }), err
	}
	t.Cleanup(func() { cgroupControllers = cgroup.Controllers })
	checks := Check(context.Background(), t.TempDir())
	var cpu, mem *justrunit.Check
	for i, c := range checks {
		t.Logf("%-14s ok=%-5v optional=%-5v %s (fix: %s)", c.Name, c.OK, c.Optional, c.Detail, c.Fix)
		if strings.Contains(c.Fix, "-o cpuacct") {
			cpu = &checks[i]
		}
		if strings.Contains(c.Fix, "-o memory") {
			mem = &checks[i]
		}
	}
	switch {
	case cpu == nil:
		t.Errorf("no check names cpuacct, want one failed")
	case cpu.OK || cpu.Optional:
		t.Errorf("check %s: ok=%v optional=%v, want failed and required", cpu.Name, cpu.OK, cpu.Optional)
	case !strings.Contains(cpu.Fix, "mount -t cgroup -o cpuacct cgroup /sys/fs/cgroup/cpuacct"):
		t.Errorf("check %s's fix %q does not say what to mount", cpu.Name, cpu.Fix)
	}
	if mem == nil || mem.OK || !mem.Optional {
		t.Errorf("check of the memory controller = %+v, want failed, optional, saying what to mount", mem)
	}
}
