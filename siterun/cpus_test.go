package siterun_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/internal/testutil/sitetest"
	"github.com/justrunit/justrunit/site"
)

// TestInstancesOnTheirHostsCPUs: the local platform starts an instance on
// its host's CPUs, whatever CPUs the process that starts it may run on
// (Linux would keep the instance within its parent's where its cpuset
// allows): with this process on CPU 0 alone, the on-line app tier on a
// host of CPUs 0-1 runs on both.
func TestInstancesOnTheirHostsCPUs(t *testing.T) {
	testutil.NeedRoot(t)
	before := allowedCPUs(t, 0)
	if !slices.Contains(before, 0) || !slices.Contains(before, 1) {
		t.Skipf("needs CPUs 0 and 1; this process may run on %v", before)
	}
	if err := prio.SetAffinity([]int{0}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := prio.SetAffinity(before); err != nil {
			t.Errorf("give this process its CPUs back: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := sitetest.Up(t, ctx, sitetest.Config{
		Addrs: []string{"web", "appIn", "app", "dataOut", "data"},
		File:  auctionFile,
		Edit:  func(f *site.Site) { f.Hosts[0].CPUs = "0-1" },
	})
	pid := instancePID(t, up.Addr["app"])
	if got := allowedCPUs(t, pid); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("the on-line app tier (pid %d, host CPUs 0-1) may run on %v; want [0 1]", pid, got)
	}
}

// allowedCPUs reads the CPUs process (or thread) pid may run on.
func allowedCPUs(t *testing.T, pid int) []int {
	t.Helper()
	cpus, err := prio.Affinity(pid)
	if err != nil {
		t.Fatal(err)
	}
	return cpus
}

// instancePID finds the process listening on addr by its command line
// (--listen addr).
func instancePID(t *testing.T, addr string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if i := slices.Index(args, "--listen"); i >= 0 && i+1 < len(args) && args[i+1] == addr {
			return pid
		}
	}
	t.Fatalf("no process listens on %s", addr)
	return 0
}
