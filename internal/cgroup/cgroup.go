// Package cgroup is the local platform's thin layer over
// github.com/containerd/cgroups/v3: one Group type for cgroup v1 (the
// controllers mounted one per directory under /sys/fs/cgroup, as on this
// project's machines) and cgroup v2 (the unified hierarchy most users have),
// with only the knobs JustRunIt varies — CFS bandwidth, cpuset, memory limit —
// plus freezing, usage and killing.
//
// Paths are absolute within the hierarchy ("/justrunit/<scope>/<id>"); the
// package never touches a group outside the prefix it is given.
//
// Every limit is written on the group itself, where its processes are,
// never on an ancestor: no limit here depends on an ancestor's being
// enforced on its children. That is why cgroup v1's memory.use_hierarchy
// needs no check. Kernels before 5.11 could have it 0 on an ancestor, which
// stops that ancestor's memory limit and usage from covering its children;
// since 5.11 it is always 1 and writing 0 fails with EINVAL. It would only
// matter for groups a workload made below its own group: on such a kernel
// they escape its memory limit and are missing from Usage().Memory, while
// Procs and Kill include them.
package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/justrunit/justrunit"
)

// Root is where cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// Version is the cgroup version a Group uses.
type Version int

// Cgroup versions.
const (
	V1 Version = 1
	V2 Version = 2
)

// String returns "v1" or "v2".
func (v Version) String() string { return fmt.Sprintf("v%d", int(v)) }

// Detect returns the version the machine's resource controllers live in:
// V2 on a unified hierarchy, V1 on legacy and hybrid ones (hybrid machines
// mount the controllers JustRunIt needs under v1).
func Detect() (Version, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return V2, nil
	case cgroups.Legacy, cgroups.Hybrid:
		return V1, nil
	}
	return 0, errors.New("cgroup: no cgroup hierarchy mounted under " + Root)
}

// v1Controllers are the v1 hierarchies a group is created in. Others
// (devices, blkio, net_cls...) are left alone so that nothing JustRunIt does
// not use is created or has to be cleaned up.
var v1Controllers = []cgroup1.Name{cgroup1.Freezer, cgroup1.Pids, cgroup1.Cpuset, cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Memory}

func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all := []cgroup1.Subsystem{
		cgroup1.NewFreezer(Root), cgroup1.NewPids(Root), cgroup1.NewCpuset(Root),
		cgroup1.NewCpu(Root), cgroup1.NewCpuacct(Root), cgroup1.NewMemory(Root),
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		if _, err := os.Stat(filepath.Join(Root, string(s.Name()))); err == nil {
			out = append(out, s)
		}
	}
	for _, need := range []cgroup1.Name{cgroup1.Freezer, cgroup1.Cpu, cgroup1.Cpuset} {
		found := false
		for _, s := range out {
			found = found || s.Name() == need
		}
		if !found {
			return nil, fmt.Errorf("cgroup v1 controller %s is not mounted under %s", need, Root)
		}
	}
	return out, nil
}

// Dirs returns every directory a group with the given path occupies (one per
// v1 controller, one for v2), whether or not it exists.
func Dirs(v Version, path string) []string {
	if v == V2 {
		return []string{filepath.Join(Root, path)}
	}
	var out []string
	for _, n := range v1Controllers {
		if _, err := os.Stat(filepath.Join(Root, string(n))); err == nil {
			out = append(out, filepath.Join(Root, string(n), path))
		}
	}
	return out
}

// Group is one cgroup. Its methods are safe for concurrent use.
type Group struct {
	v    Version
	path string
	c1   cgroup1.Cgroup
	c2   *cgroup2.Manager

	// freezeMu serialises Freeze and Thaw, so that one caller's thaw (or
	// a timed-out freeze thawing again) cannot undo the freeze another
	// caller was told had succeeded. It is never held between calls.
	freezeMu sync.Mutex
	// holds counts the Freeze calls not yet matched by a Thaw, under
	// freezeMu; the group is thawed when the last one is.
	holds int
}

// Limits are the resources New and Set apply.
type Limits struct {
	// Cpus is the cpuset ("0-1"). Empty gives the group its parent's
	// CPUs, also on a Set after one that named some: on v2 cpuset.cpus is
	// emptied, so that the group follows its parent's cpuset.cpus.effective
	// from then on; on v1, which has no such inheritance, the parent's
	// cpuset.cpus as it is at the time of the Set is copied. (A kernel
	// that refuses to empty the cpuset of a v2 group with processes, with
	// ENOSPC as kernels long did, gets a copy of the parent's
	// cpuset.cpus.effective instead, as on v1.)
	Cpus string
	// QuotaUS and PeriodUS are the CFS bandwidth; QuotaUS ≤ 0 is unlimited.
	QuotaUS  int64
	PeriodUS uint64
	// MemoryBytes is the memory limit, set on the group itself (see the
	// package comment on memory.use_hierarchy); ≤ 0 is unlimited.
	MemoryBytes int64
	// Shares is the CPU weight in cgroup v1 units (1024 = a default
	// process); v2 converts it to cpu.weight. 0 leaves it alone.
	Shares uint64
}

// New creates (or reuses) the group at path in version v and applies l.
func New(v Version, path string, l Limits) (*Group, error) {
	if !strings.HasPrefix(path, "/") || strings.Contains(path, "..") {
		return nil, fmt.Errorf("cgroup: bad path %q", path)
	}
	g := &Group{v: v, path: path}
	switch v {
	case V1:
		c, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{}, cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			// It made the group in the hierarchies before the one that
			// failed; an existing group loses its empty directories only.
			return nil, errors.Join(fmt.Errorf("create cgroup %s: %w", path, err), removeEmpty(V1, path))
		}
		g.c1 = c
	case V2:
		m, err := cgroup2.NewManager(Root, path, &cgroup2.Resources{CPU: &cgroup2.CPU{}, Memory: &cgroup2.Memory{}, Pids: &cgroup2.Pids{}})
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", path, err)
		}
		// The cpuset controller has to be enabled on the way down before
		// cpuset.cpus can be written.
		if err := enableV2(path, "cpuset"); err != nil {
			_ = m.Delete()
			return nil, fmt.Errorf("create cgroup %s: %w", path, err)
		}
		g.c2 = m
	default:
		return nil, fmt.Errorf("cgroup: unknown version %d", v)
	}
	if err := g.Set(l); err != nil {
		_ = g.Delete()
		return nil, err
	}
	return g, nil
}

// enableV2 enables controller in the subtree_control of every ancestor of path.
func enableV2(path, controller string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	dir := Root
	for _, p := range parts {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		if err != nil {
			return err
		}
		if !strings.Contains(" "+string(b)+" ", " "+controller+" ") {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+controller), 0); err != nil {
				return fmt.Errorf("enable %s in %s: %w", controller, dir, err)
			}
		}
		dir = filepath.Join(dir, p)
	}
	return nil
}

// Load opens an existing group; it returns an error wrapping os.ErrNotExist
// when the group is gone.
func Load(v Version, path string) (*Group, error) {
	g := &Group{v: v, path: path}
	switch v {
	case V1:
		c, err := cgroup1.Load(cgroup1.StaticPath(path), cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			if errors.Is(err, cgroup1.ErrCgroupDeleted) {
				return nil, fmt.Errorf("cgroup %s: %w", path, os.ErrNotExist)
			}
			return nil, err
		}
		g.c1 = c
	case V2:
		if _, err := os.Stat(filepath.Join(Root, path)); err != nil {
			return nil, err
		}
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, err
		}
		g.c2 = m
	}
	return g, nil
}

// Path is the group's path within the hierarchy.
func (g *Group) Path() string { return g.path }

// Version is the group's cgroup version.
func (g *Group) Version() Version { return g.v }

// The kernel's bounds on CFS bandwidth.
const (
	minQuotaUS  = 1000
	minPeriodUS = 1000
	maxPeriodUS = 1000000
)

// Set applies l. Lowering the memory limit below what the group uses
// fails if the kernel cannot reclaim enough, on v2 as on v1 (v1 refuses
// with EBUSY; v2 would take the limit and kill the group's processes).
func (g *Group) Set(l Limits) error {
	quota := l.QuotaUS
	if quota <= 0 {
		quota = -1
	}
	period := l.PeriodUS
	if period == 0 {
		period = 100000
	}
	mem := l.MemoryBytes
	if mem <= 0 {
		mem = -1
	}
	switch {
	case period < minPeriodUS || period > maxPeriodUS:
		return fmt.Errorf("set cgroup %s: CFS period %d µs: the kernel takes %d to %d", g.path, period, minPeriodUS, maxPeriodUS)
	case quota > 0 && quota < minQuotaUS:
		return fmt.Errorf("set cgroup %s: CFS quota %d µs: the kernel takes at least %d", g.path, quota, minQuotaUS)
	}
	switch g.v {
	case V1:
		cpus := l.Cpus
		if cpus == "" {
			// containerd leaves cpuset.cpus alone when Cpus is empty,
			// which would keep the cpuset of an earlier Set.
			var err error
			if cpus, err = g.parentCpusV1(); err != nil {
				return err
			}
		}
		r := &specs.LinuxResources{
			CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period, Cpus: cpus, Shares: nonZero(l.Shares)},
			Memory: &specs.LinuxMemory{Limit: &mem},
		}
		if err := g.c1.Update(r); err != nil {
			return fmt.Errorf("set cgroup %s (cpus %q, quota %d µs per %d µs, memory %d bytes): %w", g.path, cpus, quota, period, mem, err)
		}
	case V2:
		max := cgroup2.NewCPUMax(&quota, &period)
		if quota < 0 {
			max = cgroup2.CPUMax(fmt.Sprintf("max %d", period))
		}
		var weight *uint64
		if l.Shares > 0 {
			w := weightOf(l.Shares)
			weight = &w
		}
		r := &cgroup2.Resources{CPU: &cgroup2.CPU{Max: max, Cpus: l.Cpus, Weight: weight}}
		if mem > 0 {
			if err := g.reclaimV2(mem); err != nil {
				return err
			}
			r.Memory = &cgroup2.Memory{Max: &mem}
		}
		if err := g.c2.Update(r); err != nil {
			return fmt.Errorf("set cgroup %s (cpus %q, cpu.max %q, memory %d bytes): %w", g.path, l.Cpus, max, mem, err)
		}
		// cgroup2 writes a Max of -1 as "-1", which memory.max refuses:
		// unlimited is "max".
		if mem < 0 {
			if err := os.WriteFile(filepath.Join(Root, g.path, "memory.max"), []byte("max"), 0); err != nil {
				return fmt.Errorf("set cgroup %s: memory.max: %w", g.path, err)
			}
		}
		// cgroup2, too, skips an empty Cpus.
		if l.Cpus == "" {
			if err := g.inheritCpusV2(); err != nil {
				return err
			}
		}
	}
	return nil
}

// parentCpusV1 reads the cpuset.cpus of g's parent in v1's cpuset
// hierarchy.
func (g *Group) parentCpusV1() (string, error) {
	f := filepath.Join(Root, "cpuset", filepath.Dir(g.path), "cpuset.cpus")
	b, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("set cgroup %s: empty cpus means the parent's: %w", g.path, err)
	}
	cpus := strings.TrimSpace(string(b))
	if cpus == "" {
		return "", fmt.Errorf("set cgroup %s: empty cpus means the parent's, and %s is empty: name the CPUs in Limits.Cpus", g.path, f)
	}
	return cpus, nil
}

// inheritCpusV2 empties g's cpuset.cpus, which makes it follow its
// parent's CPUs. Kernels that refuse that for a group with processes
// (ENOSPC) get a copy of the parent's cpuset.cpus.effective instead.
func (g *Group) inheritCpusV2() error {
	f := filepath.Join(Root, g.path, "cpuset.cpus")
	err := os.WriteFile(f, []byte("\n"), 0)
	if !errors.Is(err, syscall.ENOSPC) {
		if err != nil {
			return fmt.Errorf("set cgroup %s: empty %s: %w", g.path, f, err)
		}
		return nil
	}
	pf := filepath.Join(Root, filepath.Dir(g.path), "cpuset.cpus.effective")
	b, err := os.ReadFile(pf)
	if err != nil {
		return fmt.Errorf("set cgroup %s: empty cpus means the parent's: %w", g.path, err)
	}
	if err := os.WriteFile(f, b, 0); err != nil {
		return fmt.Errorf("set cgroup %s: copy %s (%q) to %s: %w", g.path, pf, strings.TrimSpace(string(b)), f, err)
	}
	return nil
}

// reclaimTimeout bounds reclaimV2's wait for the group's usage to fall.
const reclaimTimeout = time.Second

// reclaimV2 readies a v2 group for a memory.max of limit: when it uses
// more, memory.high is set to limit first, which makes the kernel reclaim
// (and throttle) rather than kill, and the usage is given reclaimTimeout
// to fall under limit; if it does not, memory.high is lifted again and
// the limit refused, as v1 refuses it.
func (g *Group) reclaimV2(limit int64) error {
	dir := filepath.Join(Root, g.path)
	current := func() (int64, error) {
		b, err := os.ReadFile(filepath.Join(dir, "memory.current"))
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	used, err := current()
	if err != nil || used <= limit {
		return nil // a group without the file takes no limit either: Update says so
	}
	high := filepath.Join(dir, "memory.high")
	if err := os.WriteFile(high, []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		return fmt.Errorf("set cgroup %s: memory.high: %w", g.path, err)
	}
	defer os.WriteFile(high, []byte("max"), 0)
	for deadline := time.Now().Add(reclaimTimeout); ; {
		if used, err = current(); err != nil || used <= limit {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("set cgroup %s: memory limit %d bytes: the group still uses %d after reclaim: %w", g.path, limit, used, syscall.EBUSY)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// weightOf converts a CPU weight in v1 shares (1024 = a default process)
// to v2's cpu.weight (100 = a default process) in proportion, so that the
// ratio of two groups' weights is the same on both versions. (The
// conversion runc and containerd use is not proportional: it gives 8192
// shares 532, not 800.)
func weightOf(shares uint64) uint64 {
	return min(max(uint64(math.Round(float64(shares)*100/1024)), 1), 10000)
}

func nonZero(v uint64) *uint64 {
	if v == 0 {
		return nil
	}
	return &v
}

// SetShares sets the CPU weight (v1 units) of the existing group at path.
func SetShares(v Version, path string, shares uint64) error {
	f, val := filepath.Join(Root, "cpu", path, "cpu.shares"), strconv.FormatUint(shares, 10)
	if v == V2 {
		f, val = filepath.Join(Root, path, "cpu.weight"), strconv.FormatUint(weightOf(shares), 10)
	}
	if err := os.WriteFile(f, []byte(val), 0); err != nil {
		return fmt.Errorf("set cpu weight of %s: %w", path, err)
	}
	return nil
}

// AddProc moves process pid (and, for new children, its descendants) into g.
func (g *Group) AddProc(pid int) error {
	var err error
	if g.v == V1 {
		err = g.c1.AddProc(uint64(pid))
	} else {
		err = g.c2.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, err)
	}
	return nil
}

// Freeze stops every process of g until Thaw. It waits at most timeout for
// the kernel to report the group frozen (a concurrent Freeze or Thaw of g
// finishing first counts against it); past that it fails, and thaws the
// group again unless another caller holds it frozen, so that an on-line
// instance is never left half-frozen.
//
// Freezes nest: each Freeze that succeeds is a hold on the group, which a
// Thaw releases, and the group thaws only when the last hold is released.
// Two clones' snapshots of the same instance can so overlap without one
// thawing the group under the other; only Kill thaws it under a hold.
// Holds are counted per Group: two Groups loaded for the same path, or
// FreezeTree, do not see each other's.
func (g *Group) Freeze(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	g.freezeMu.Lock()
	defer g.freezeMu.Unlock()
	// Even under a hold the state is written and checked: something
	// outside this Group (FreezeTree, another process) may have thawed it.
	file, want, thawed := freezerFile(g.v, g.path)
	for {
		if err := os.WriteFile(file, []byte(want), 0); err != nil {
			g.thawIfUnheld(file, thawed)
			return fmt.Errorf("freeze cgroup %s: %w", g.path, err)
		}
		frozen, err := g.frozen()
		if err != nil {
			g.thawIfUnheld(file, thawed)
			return fmt.Errorf("freeze cgroup %s: %w", g.path, err)
		}
		if frozen {
			g.holds++
			return nil
		}
		if time.Now().After(deadline) {
			g.thawIfUnheld(file, thawed)
			return fmt.Errorf("freeze cgroup %s: not frozen after %v", g.path, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// thawIfUnheld undoes a failed Freeze's write unless another caller holds
// the group frozen. The caller holds freezeMu.
func (g *Group) thawIfUnheld(file, thawed string) {
	if g.holds == 0 {
		_ = os.WriteFile(file, []byte(thawed), 0)
	}
}

// freezerFile returns the file that freezes the group at path and the
// values that freeze and thaw it.
func freezerFile(v Version, path string) (file, frozen, thawed string) {
	if v == V2 {
		return filepath.Join(Root, path, "cgroup.freeze"), "1", "0"
	}
	return filepath.Join(Root, "freezer", path, "freezer.state"), "FROZEN", "THAWED"
}

// frozen reports whether the kernel has g frozen: all its processes
// stopped, by its own freeze or an ancestor's.
func (g *Group) frozen() (bool, error) {
	if g.v == V1 {
		b, err := os.ReadFile(filepath.Join(Root, "freezer", g.path, "freezer.state"))
		return strings.TrimSpace(string(b)) == "FROZEN", err
	}
	b, err := os.ReadFile(filepath.Join(Root, g.path, "cgroup.events"))
	return strings.Contains(string(b), "frozen 1"), err
}

// thawTimeout bounds Thaw's wait for the kernel to report the group
// thawed; a thaw takes effect at once, unless an ancestor is frozen,
// which Thaw checks first as no wait would cure it.
const thawTimeout = time.Second

// Thaw releases a hold Freeze took; the last one resumes the processes.
// A Thaw with no hold (the group frozen by FreezeTree or a crashed run)
// thaws the group. It fails, naming the ancestor to thaw, when the group
// stays frozen because an ancestor is.
func (g *Group) Thaw() error {
	g.freezeMu.Lock()
	defer g.freezeMu.Unlock()
	if g.holds > 1 {
		g.holds--
		return nil
	}
	return g.thawLocked()
}

// thawLocked thaws the group whatever holds it, and drops them all; the
// caller holds freezeMu.
func (g *Group) thawLocked() error {
	g.holds = 0
	file, _, thawed := freezerFile(g.v, g.path)
	deadline := time.Now().Add(thawTimeout)
	for {
		if err := os.WriteFile(file, []byte(thawed), 0); err != nil {
			return fmt.Errorf("thaw cgroup %s: %w", g.path, err)
		}
		if f, v := g.frozenAncestor(); f != "" {
			return fmt.Errorf("thaw cgroup %s: an ancestor is frozen: write %s to %s", g.path, v, f)
		}
		ok, err := g.thawed()
		if err != nil {
			return fmt.Errorf("thaw cgroup %s: %w", g.path, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("thaw cgroup %s: still frozen after %v", g.path, thawTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// thawed reports whether the kernel has g running: not frozen, nor on its
// way to it (v1's FREEZING).
func (g *Group) thawed() (bool, error) {
	if g.v == V1 {
		b, err := os.ReadFile(filepath.Join(Root, "freezer", g.path, "freezer.state"))
		return strings.TrimSpace(string(b)) == "THAWED", err
	}
	b, err := os.ReadFile(filepath.Join(Root, g.path, "cgroup.events"))
	return strings.Contains(string(b), "frozen 0"), err
}

// frozenAncestor returns the freezer file of the nearest ancestor of g
// frozen in its own right, and the value that thaws it; "" if none is.
// (The root group cannot be frozen.)
func (g *Group) frozenAncestor() (file, thawed string) {
	for p := filepath.Dir(g.path); p != "/" && p != "."; p = filepath.Dir(p) {
		f, _, t := freezerFile(g.v, p)
		// v2's cgroup.freeze is the group's own request; v1's
		// freezer.state also says FROZEN when only an ancestor is.
		self := f
		if g.v == V1 {
			self = filepath.Join(filepath.Dir(f), "freezer.self_freezing")
		}
		if b, err := os.ReadFile(self); err == nil && strings.TrimSpace(string(b)) == "1" {
			return f, t
		}
	}
	return "", ""
}

// Usage is the CPU time and memory the group's processes used.
type Usage struct {
	CPU    time.Duration
	Memory int64
}

// Usage reads cpuacct.usage and memory.usage_in_bytes (v1) or cpu.stat
// usage_usec and memory.current (v2).
func (g *Group) Usage() (Usage, error) {
	var u Usage
	if g.v == V1 {
		m, err := g.c1.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return u, fmt.Errorf("usage of cgroup %s: %w", g.path, err)
		}
		// Rather than 0 CPU time, which an energy model would take for
		// an idle group.
		if m.CPU == nil || m.CPU.Usage == nil {
			return u, fmt.Errorf("usage of cgroup %s: its CPU time cannot be read: %s: %s", g.path, NotMountedV1("cpuacct"), MountFixV1("cpuacct"))
		}
		u.CPU = time.Duration(m.CPU.Usage.Total)
		if m.Memory != nil && m.Memory.Usage != nil {
			u.Memory = int64(m.Memory.Usage.Usage)
		}
		return u, nil
	}
	m, err := g.c2.StatFiltered(cgroup2.StatCPU | cgroup2.StatMemory)
	if err != nil {
		return u, fmt.Errorf("usage of cgroup %s: %w", g.path, err)
	}
	if m.CPU != nil {
		u.CPU = time.Duration(m.CPU.UsageUsec) * time.Microsecond
	}
	if m.Memory != nil {
		u.Memory = int64(m.Memory.Usage)
	}
	return u, nil
}

// Procs lists the process ids in g and its descendants.
func (g *Group) Procs() ([]int, error) { return g.ids(false) }

// Threads lists the thread ids in g and its descendants.
func (g *Group) Threads() ([]int, error) { return g.ids(true) }

// ids lists the process ids (cgroup.procs) or, with threads, the thread
// ids (tasks, cgroup.threads) in g and its descendants.
func (g *Group) ids(threads bool) ([]int, error) {
	var out []int
	if g.v == V1 {
		list := g.c1.Processes
		if threads {
			list = g.c1.Tasks
		}
		ps, err := list(cgroup1.Freezer, true)
		if err != nil {
			return nil, fmt.Errorf("list cgroup %s: %w", g.path, err)
		}
		for _, p := range ps {
			out = append(out, p.Pid)
		}
		return out, nil
	}
	list := g.c2.Procs
	if threads {
		list = g.c2.Threads
	}
	ps, err := list(true)
	if err != nil {
		return nil, fmt.Errorf("list cgroup %s: %w", g.path, err)
	}
	for _, p := range ps {
		out = append(out, int(p))
	}
	return out, nil
}

// Kill sends SIGKILL to every process in g until none is left or the
// deadline passes. On v1 it freezes the group first so that no process
// forks behind the kill, then thaws it so that they die, dropping every
// hold (see Freeze): a caller holding the group frozen, a clone's
// snapshot, finds its processes gone, and its Thaw does no harm.
func (g *Group) Kill(deadline time.Time) error {
	var thawErr error
	if g.v == V2 {
		if err := g.c2.Kill(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kill cgroup %s: %w", g.path, err)
		}
	} else {
		_ = g.Freeze(time.Second)
		ps, _ := g.Procs()
		for _, p := range ps {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		// Killed tasks die only once thawed: thaw the group even while
		// another caller holds it frozen (a clone's snapshot of processes
		// being killed is lost anyway), rather than wait for it.
		g.freezeMu.Lock()
		thawErr = g.thawLocked()
		g.freezeMu.Unlock()
	}
	for {
		ps, err := g.Procs()
		switch {
		case errors.Is(err, os.ErrNotExist) || err == nil && len(ps) == 0:
			return nil
		case err != nil: // its processes cannot be told dead
			return fmt.Errorf("kill cgroup %s: %w", g.path, err)
		}
		if time.Now().After(deadline) {
			if thawErr != nil {
				return fmt.Errorf("kill cgroup %s: %d processes still alive: %w", g.path, len(ps), thawErr)
			}
			return fmt.Errorf("kill cgroup %s: %d processes still alive", g.path, len(ps))
		}
		for _, p := range ps {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Delete removes the (empty) group from every hierarchy. A missing group is
// not an error.
func (g *Group) Delete() error {
	var err error
	if g.v == V1 {
		err = g.c1.Delete()
	} else {
		err = g.c2.Delete()
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete cgroup %s: %w", g.path, err)
	}
	return nil
}

// RemoveTree removes the directories of path and everything below it, deepest
// first, in every hierarchy of version v. Groups must be empty of processes.
// A missing tree is not an error.
func RemoveTree(v Version, path string) error {
	var errs []error
	for _, root := range Dirs(v, path) {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := rmdirRetry(dirs[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeEmpty removes the group's directory in each hierarchy where it is
// empty (no processes, no children); it leaves the others.
func removeEmpty(v Version, path string) error {
	var errs []error
	for _, dir := range Dirs(v, path) {
		if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(dir string) error {
	var err error
	for i := 0; i < 20; i++ {
		err = syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// Children lists the names of the groups directly below path, in any
// hierarchy of version v.
func Children(v Version, path string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, dir := range Dirs(v, path) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, e := range ents {
			if e.IsDir() && !seen[e.Name()] {
				seen[e.Name()] = true
				out = append(out, e.Name())
			}
		}
	}
	return out, nil
}

// TreeProcs lists the processes in path and below, in any hierarchy.
func TreeProcs(v Version, path string) []int {
	seen := map[int]bool{}
	var out []int
	for _, root := range Dirs(v, path) {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// FreezeTree freezes (or thaws) every group at and below path in v1's
// freezer hierarchy or v2's cgroup.freeze; used by cleanup to stop a crashed
// run's processes from forking while they are killed.
func FreezeTree(v Version, path string, freeze bool) {
	file, frozen, thawed := freezerFile(v, path)
	val := thawed
	if freeze {
		val = frozen
	}
	_ = os.WriteFile(file, []byte(val), 0)
}

// Controllers lists the resource controllers version v offers here: the
// mounted v1 hierarchies, or the v2 root's cgroup.controllers.
func Controllers(v Version) ([]string, error) {
	if v == V2 {
		b, err := os.ReadFile(filepath.Join(Root, "cgroup.controllers"))
		if err != nil {
			return nil, err
		}
		return strings.Fields(string(b)), nil
	}
	var out []string
	for _, n := range v1Controllers {
		if _, err := os.Stat(filepath.Join(Root, string(n))); err == nil {
			out = append(out, string(n))
		}
	}
	return out, nil
}

// NotMountedV1 says that cgroup v1's hierarchy of controller is not
// mounted here.
func NotMountedV1(controller string) string {
	return fmt.Sprintf("cgroup v1's %s controller is not mounted at %s", controller, filepath.Join(Root, controller))
}

// MountFixV1 says how to mount cgroup v1's hierarchy of controller.
func MountFixV1(controller string) string {
	dir := filepath.Join(Root, controller)
	return fmt.Sprintf("enable it on the kernel command line "+
		"(no cgroup_disable=%s; cgroup_enable=%s where the kernel leaves it off, as Raspberry Pi OS's does memory), reboot, "+
		"and mount it (mount -t cgroup -o %s cgroup %s)", controller, controller, controller, dir)
}

// CPUTimeCheck says whether a platform on version v reads an instance's
// CPU time (its Usage, which every experiment's energy is computed from):
// on v2 from cpu.stat, which Probe covers (probed is its verdict); on v1
// it needs the cpuacct hierarchy, which Probe does not (a group is made
// without it; noCPUAcct says it is not mounted). subject names the
// platform's instance ("an instance", "a VM").
func CPUTimeCheck(v Version, probed, noCPUAcct bool, subject string) justrunit.Check {
	if v == V2 {
		c := justrunit.Check{Name: "cpu time", OK: probed, Detail: "cgroup v2 cpu.stat"}
		if !probed {
			c.Detail += ": not tried, the cgroups check failed"
			c.Fix = "see the cgroups check"
		}
		return c
	}
	c := justrunit.Check{Name: "cpu time", OK: !noCPUAcct, Detail: "cgroup v1 cpuacct"}
	if noCPUAcct {
		c.Detail = NotMountedV1("cpuacct") + ": " + subject + "'s CPU time cannot be read, and every experiment's energy is computed from it"
		c.Fix = MountFixV1("cpuacct")
	}
	return c
}

// required are the controllers a group cannot do without, per version
// (v2 writes memory.max and pids with every group; v1 skips hierarchies
// that are not mounted, except these).
var required = map[Version][]string{
	V1: {"freezer", "cpu", "cpuset"},
	V2: {"cpu", "cpuset", "memory", "pids"},
}

// ProbeFix is what to do when Probe fails.
const ProbeFix = "mount the cgroup controllers: v2 with cpu, cpuset, memory and pids enabled at the root, or v1's freezer, cpu and cpuset hierarchies under " + Root

// Probe checks that groups can be made and limited here, as the platforms
// make them: it detects the version, checks the controllers, then creates
// a group at path with a CPU quota on cpus and a memory limit, freezes and
// thaws it, and removes it. It returns what it found ("v2: cpu cpuset
// memory pids ...") and the first thing that failed.
func Probe(path, cpus string) (string, error) {
	v, err := Detect()
	if err != nil {
		return "", err
	}
	have, err := Controllers(v)
	if err != nil {
		return v.String(), fmt.Errorf("list cgroup %s controllers: %w", v, err)
	}
	found := v.String() + ": " + strings.Join(have, " ")
	var missing []string
	for _, c := range required[v] {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return found, fmt.Errorf("cgroup %s controllers missing: %s", v, strings.Join(missing, " "))
	}
	g, err := New(v, path, Limits{Cpus: cpus, QuotaUS: 10000, PeriodUS: 100000, MemoryBytes: 64 << 20})
	if err != nil {
		return found, err
	}
	defer func() { _ = RemoveTree(v, path) }()
	if err := g.Freeze(time.Second); err != nil {
		_ = g.Delete()
		return found, err
	}
	if err := g.Thaw(); err != nil {
		_ = g.Delete()
		return found, fmt.Errorf("thaw cgroup %s: %w", path, err)
	}
	if err := g.Delete(); err != nil {
		return found, err
	}
	return found, nil
}

// FreezerDir is the directory of the group at path that holds its freezer:
// v1's freezer hierarchy, or the group itself on v2.
func FreezerDir(v Version, path string) string {
	if v == V2 {
		return filepath.Join(Root, path)
	}
	return filepath.Join(Root, "freezer", path)
}
