package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/cgroup"
)

func TestIsScope(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{Scope("/var/lib/justrunit"), true},
		{Scope(t.TempDir()), true},
		{"0123abcd", true},
		{"qemu", false}, // the qemu platform's root group
		{"0123ABCD", false},
		{"0123abc", false},
		{"0123abcde", false},
		{"0123abcg", false},
		{"", false},
	} {
		if got := isScope(tc.name); got != tc.want {
			t.Errorf("isScope(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestScopesSkipOtherGroups checks that "platform gc --all" leaves alone a
// group under /justrunit that is not a local platform's scope (as
// /justrunit/qemu, where the qemu platform's VMs run): a process in it
// survives CollectStale.
func TestScopesSkipOtherGroups(t *testing.T) {
	needRoot(t)
	v, err := cgroup.Detect()
	if err != nil {
		t.Skipf("no cgroups: %v", err)
	}
	other := fmt.Sprintf("notascope%d", os.Getpid())
	path := "/justrunit/" + other + "/vm-1"
	g, err := cgroup.New(v, path, cgroup.Limits{})
	if err != nil {
		t.Fatalf("cgroup.New(%s): %v", path, err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cgroup.RemoveTree(v, "/justrunit/"+other)
	})
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}

	if s := scopes(); slices.Contains(s, other) {
		t.Errorf("scopes() = %v, includes the non-scope group %s", s, other)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := collectStale(ctx, nil, func(s string) bool { return s == other }); err != nil {
		t.Errorf("collectStale: %v", err)
	}
	select {
	case <-done:
		t.Fatalf("collectStale killed the process in /justrunit/%s, which is not a local platform's scope", other)
	case <-time.After(50 * time.Millisecond):
	}
	if procs := cgroup.TreeProcs(v, path); !slices.Contains(procs, cmd.Process.Pid) {
		t.Errorf("TreeProcs(%s) = %v after collectStale, want pid %d still there", path, procs, cmd.Process.Pid)
	}
}
