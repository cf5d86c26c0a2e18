package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGroup exercises a group on whichever cgroup version this machine
// has: v1 on this project's machines, v2 on most users'.
func TestGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root; CI runs as root, so this is a setup error")
		}
		t.Skip("needs root; run as root")
	}
	v, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/justrunit/cgtest%d/g", os.Getpid())
	g, err := New(v, path, Limits{QuotaUS: 5000, PeriodUS: 20000, MemoryBytes: 64 << 20, Shares: 2048})
	if err != nil {
		t.Fatalf("New(%s, %s) error: %v", v, path, err)
	}
	t.Cleanup(func() {
		_ = g.Kill(time.Now().Add(5 * time.Second))
		_ = g.Delete()
		_ = RemoveTree(v, filepath.Dir(path))
		for _, d := range Dirs(v, filepath.Dir(path)) {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("%s left behind", d)
			}
		}
	})
	quotaFile, want := filepath.Join(Root, "cpu", path, "cpu.cfs_quota_us"), "5000"
	if v == V2 {
		quotaFile, want = filepath.Join(Root, path, "cpu.max"), "5000 20000"
	}
	if b, err := os.ReadFile(quotaFile); err != nil || strings.TrimSpace(string(b)) != want {
		t.Errorf("%s = %q (%v), want %q", quotaFile, b, err, want)
	}

	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		t.Fatalf("AddProc error: %v", err)
	}
	if ps, err := g.Procs(); err != nil || len(ps) != 1 || ps[0] != cmd.Process.Pid {
		t.Errorf("Procs() = %v, %v; want [%d]", ps, err, cmd.Process.Pid)
	}
	time.Sleep(100 * time.Millisecond)
	u1, err := g.Usage()
	if err != nil || u1.CPU <= 0 {
		t.Fatalf("Usage() = %+v, %v; want CPU time > 0", u1, err)
	}
	// A quarter of a core over 100 ms is about 25 ms; allow for scheduling.
	if u1.CPU > 80*time.Millisecond {
		t.Errorf("Usage().CPU = %v after 100ms at a 25%% quota", u1.CPU)
	}
	if err := g.Freeze(time.Second); err != nil {
		t.Fatalf("Freeze() error: %v", err)
	}
	u2, _ := g.Usage()
	time.Sleep(100 * time.Millisecond)
	u3, _ := g.Usage()
	// Running at its 25% quota it would use about 25 ms in 100 ms; frozen,
	// nothing, though the kernel may account the last slice before the
	// freeze a little late (seen: 0.9 ms under emulation).
	if d := u3.CPU - u2.CPU; d > 3*time.Millisecond {
		t.Errorf("frozen group used CPU: %v then %v", u2.CPU, u3.CPU)
	}
	if err := g.Thaw(); err != nil {
		t.Fatalf("Thaw() error: %v", err)
	}
	if err := g.Set(Limits{PeriodUS: 20000}); err != nil {
		t.Fatalf("Set(unlimited) error: %v", err)
	}
	if err := g.Kill(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatalf("Kill() error: %v", err)
	}
	if ps := TreeProcs(v, path); len(ps) != 0 {
		t.Errorf("after Kill, processes %v remain", ps)
	}
	if err := g.Delete(); err != nil {
		t.Fatalf("Delete() error: %v", err)
	}
	if _, err := Load(v, path); err == nil {
		t.Errorf("Load(deleted group) succeeded")
	}
}
