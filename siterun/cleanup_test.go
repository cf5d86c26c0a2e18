package siterun_test

import (
	"context"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/siterun"
)

// TestUpRemovesLeftovers checks that a site coming up first removes what a
// crashed run of its state directory left: here an instance process still
// running in its cgroup.
func TestUpRemovesLeftovers(t *testing.T) {
	testutil.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	scope := "/justrunit/" + local.Scope(state)
	g, err := cgroup.New(v, scope+"/old0", cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("sleep", "600")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = orphan.Wait(); close(exited) }()
	t.Cleanup(func() { _ = orphan.Process.Kill(); <-exited; _ = cgroup.RemoveTree(v, scope+"/old0") })
	if err := g.AddProc(orphan.Process.Pid); err != nil {
		t.Fatal(err)
	}

	upAuction(t, ctx, siterun.Options{StateDir: state})
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the crashed run's instance still runs after the site came up")
	}
	if kids, _ := cgroup.Children(v, scope); slices.Contains(kids, "old0") {
		t.Errorf("the crashed run's cgroup is still there: %v", kids)
	}
}
