package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
)

// Report lists, per kind, the objects of one scope: what is left over, or
// what Collect removed.
type Report struct {
	Scope   string   `json:"scope"`
	Cgroups []string `json:"cgroups"`
	Netns   []string `json:"netns"`
	Links   []string `json:"links"`
	Tables  []string `json:"nft_tables"`
	Mounts  []string `json:"mounts"`
	Dirs    []string `json:"dirs"`
}

// Total is the number of objects in r.
func (r Report) Total() int {
	return len(r.Cgroups) + len(r.Netns) + len(r.Links) + len(r.Tables) + len(r.Mounts) + len(r.Dirs)
}

// String summarises r as counts per kind.
func (r Report) String() string {
	return fmt.Sprintf("%d cgroups, %d namespaces, %d veths, %d nft tables, %d mounts, %d dirs",
		len(r.Cgroups), len(r.Netns), len(r.Links), len(r.Tables), len(r.Mounts), len(r.Dirs))
}

// Leftovers lists every object of scope on this machine, and the clone
// directories and mounts under stateDir (may be empty). It needs no platform,
// so a test or a benchmark can check that nothing is left after Close.
func Leftovers(scope, stateDir string) (Report, error) {
	r, _, err := scan(scope, stateDir)
	return r, err
}

// scan lists the scope's objects and, per object, the instance id it
// belongs to.
func scan(scope, stateDir string) (Report, map[string]bool, error) {
	r := Report{Scope: scope}
	ids := map[string]bool{}
	var errs []error
	if v, err := cgroup.Detect(); err == nil {
		names, err := cgroup.Children(v, "/justrunit/"+scope)
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range names {
			r.Cgroups = append(r.Cgroups, "/justrunit/"+scope+"/"+n)
			ids[n] = true
		}
		for _, d := range cgroup.Dirs(v, "/justrunit/"+scope) {
			if _, err := os.Stat(d); err == nil {
				r.Cgroups = append(r.Cgroups, d)
			}
		}
	}
	nsPrefix := netnsPrefix + scope + "-"
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), nsPrefix) {
				r.Netns = append(r.Netns, e.Name())
				ids[strings.TrimPrefix(e.Name(), nsPrefix)] = true
			}
		}
	}
	aPrefix := aliasPrefix + scope + ":"
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if a := l.Attrs(); strings.HasPrefix(a.Name, linkPrefix) && strings.HasPrefix(a.Alias, aPrefix) {
				r.Links = append(r.Links, a.Name)
				ids[strings.TrimPrefix(a.Alias, aPrefix)] = true
			}
		}
	} else {
		errs = append(errs, err)
	}
	tPrefix := tablePrefix + scope + "-"
	if c, err := nftables.New(); err == nil {
		ts, err := listTables(c, tPrefix)
		if err != nil {
			errs = append(errs, err)
		}
		for _, t := range ts {
			r.Tables = append(r.Tables, t)
			ids[strings.TrimPrefix(t, tPrefix)] = true
		}
	} else {
		errs = append(errs, err)
	}
	if stateDir != "" {
		if abs, err := filepath.Abs(stateDir); err == nil {
			stateDir = abs
		}
		r.Mounts = mountsUnder(stateDir)
		if ents, err := os.ReadDir(filepath.Join(stateDir, "clones")); err == nil {
			for _, e := range ents {
				if !strings.HasPrefix(e.Name(), ".") {
					r.Dirs = append(r.Dirs, filepath.Join(stateDir, "clones", e.Name()))
					ids[e.Name()] = true
				}
			}
		}
	}
	return r, ids, errors.Join(errs...)
}

// mountsUnder lists mount points at or below dir in this mount namespace.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && (fs[4] == dir || strings.HasPrefix(fs[4], dir+"/")) {
			out = append(out, fs[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out))) // deepest first
	return out
}

// Cleanup removes what a crashed run of this platform's scope left behind:
// processes and cgroups, namespaces, veths, nftables tables, mounts and clone
// directories that belong to no instance this platform is running.
func (p *Platform) Cleanup(ctx context.Context) error {
	_, err := p.Collect(ctx)
	return err
}

// Collect is Cleanup that reports what it removed.
func (p *Platform) Collect(ctx context.Context) (Report, error) {
	before, ids, err := scan(p.scope, p.cfg.StateDir)
	if err != nil {
		return Report{}, fmt.Errorf("gc: %w", err)
	}
	p.mu.Lock()
	owned := map[string]bool{}
	for id := range p.insts {
		owned[id] = true
	}
	p.mu.Unlock()
	var errs []error
	for _, mp := range before.Mounts {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	for id := range ids {
		if owned[id] {
			continue
		}
		if _, err := p.removeLeftovers(id); err != nil {
			errs = append(errs, err)
		}
	}
	p.mu.Lock()
	if len(p.insts) == 0 {
		p.removeScopeIfEmpty()
		// The shared parent goes too when no other scope uses it; if one
		// does, rmdir fails and nothing happens.
		for _, d := range cgroup.Dirs(p.cg, "/justrunit") {
			_ = syscall.Rmdir(d)
		}
	}
	p.mu.Unlock()
	after, _, _ := scan(p.scope, p.cfg.StateDir)
	removed := diff(before, after)
	if removed.Total() > 0 {
		p.log.Info("gc removed leftovers", "scope", p.scope, "removed", removed.String())
	}
	return removed, errors.Join(errs...)
}

// removeLeftovers removes the objects of instance id that no running
// instance owns, and says how many kinds of object it found.
func (p *Platform) removeLeftovers(id string) (int, error) {
	var errs []error
	n := 0
	path := p.cgPath(id)
	if len(cgroup.TreeProcs(p.cg, path)) > 0 || dirExists(cgroup.Dirs(p.cg, path)) {
		n++
		if g, err := cgroup.Load(p.cg, path); err == nil {
			if err := g.Kill(time.Now().Add(DefaultKillTimeout)); err != nil {
				errs = append(errs, err)
			}
		}
		for _, pid := range cgroup.TreeProcs(p.cg, path) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		cgroup.FreezeTree(p.cg, path, false)
		deadline := time.Now().Add(DefaultKillTimeout)
		for len(cgroup.TreeProcs(p.cg, path)) > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if err := cgroup.RemoveTree(p.cg, path); err != nil {
			errs = append(errs, err)
		}
	}
	cn := &cloneNet{Netns: netnsName(p.scope, id), Table: cloneTable(p.scope, id)}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if l.Attrs().Alias == linkAlias(p.scope, id) && strings.HasPrefix(l.Attrs().Name, linkPrefix) {
				cn.HostVeth = l.Attrs().Name
			}
		}
	}
	if _, err := os.Lstat(filepath.Join(netnsDir, cn.Netns)); err == nil || cn.HostVeth != "" {
		n++
	}
	if c, err := nftables.New(); err == nil {
		if ok, _ := hasTable(c, cn.Table); ok {
			n++
		}
	}
	if err := p.teardownNet(cn); err != nil {
		errs = append(errs, err)
	}
	dir := filepath.Join(p.cfg.StateDir, "clones", id)
	if p.cfg.StateDir == "" {
		dir = ""
	}
	if _, err := os.Stat(dir); dir != "" && err == nil {
		n++
		for _, mp := range mountsUnder(dir) {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// leftOver reports whether an object of instance id is on this machine:
// its cgroup, network namespace, nftables table, host-side veth or clone
// directory. For an ID no instance of this platform has, that is what a
// crashed run left.
func (p *Platform) leftOver(id string) bool {
	if dirExists(cgroup.Dirs(p.cg, p.cgPath(id))) {
		return true
	}
	if _, err := os.Lstat(filepath.Join(netnsDir, netnsName(p.scope, id))); err == nil {
		return true
	}
	if p.cfg.StateDir != "" {
		if _, err := os.Lstat(filepath.Join(p.cfg.StateDir, "clones", id)); err == nil {
			return true
		}
	}
	if c, err := nftables.New(); err == nil {
		if ok, _ := hasTable(c, cloneTable(p.scope, id)); ok {
			return true
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if a := l.Attrs(); a.Alias == linkAlias(p.scope, id) && strings.HasPrefix(a.Name, linkPrefix) {
				return true
			}
		}
	}
	return false
}

func dirExists(ds []string) bool {
	for _, d := range ds {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}

func diff(before, after Report) Report {
	minus := func(a, b []string) []string {
		in := map[string]bool{}
		for _, x := range b {
			in[x] = true
		}
		var out []string
		for _, x := range a {
			if !in[x] {
				out = append(out, x)
			}
		}
		return out
	}
	return Report{
		Scope:   before.Scope,
		Cgroups: minus(before.Cgroups, after.Cgroups),
		Netns:   minus(before.Netns, after.Netns),
		Links:   minus(before.Links, after.Links),
		Tables:  minus(before.Tables, after.Tables),
		Mounts:  minus(before.Mounts, after.Mounts),
		Dirs:    minus(before.Dirs, after.Dirs),
	}
}

// scopesDir records, per scope, the state directory that owns it, so that
// CollectStale can tell a crashed run's scope from a running one's.
const scopesDir = runDir + "/scopes"

func registerScope(scope, stateDir string) {
	if os.MkdirAll(scopesDir, 0o755) == nil {
		_ = os.WriteFile(filepath.Join(scopesDir, scope), []byte(stateDir), 0o644)
	}
}

func unregisterScope(scope string) { _ = os.Remove(filepath.Join(scopesDir, scope)) }

// isScope says whether name has the form of a scope (see Scope): 8
// lowercase hex digits. Other names under /justrunit belong to someone else
// — /justrunit/qemu is the qemu platform's, whose VMs run below it — and
// must never be taken for a crashed run's scope.
func isScope(name string) bool {
	if len(name) != 8 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// scopes lists every scope that has an object or a record on this machine.
func scopes() []string {
	seen := map[string]bool{}
	if ents, err := os.ReadDir(scopesDir); err == nil {
		for _, e := range ents {
			seen[e.Name()] = true
		}
	}
	if v, err := cgroup.Detect(); err == nil {
		names, _ := cgroup.Children(v, "/justrunit")
		for _, n := range names {
			seen[n] = true
		}
	}
	// Names carry the scope right after their prefix.
	take := func(name, prefix string) {
		if rest, ok := strings.CutPrefix(name, prefix); ok && len(rest) > 8 {
			seen[rest[:8]] = true
		}
	}
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			take(e.Name(), netnsPrefix)
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, linkPrefix) {
				take(l.Attrs().Alias, aliasPrefix)
			}
		}
	}
	if c, err := nftables.New(); err == nil {
		ts, _ := listTables(c, tablePrefix)
		for _, t := range ts {
			take(t, tablePrefix)
		}
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		if isScope(s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// CollectStale cleans every scope on this machine whose platform is not
// running: a scope whose state directory is locked by a live platform is
// skipped; one whose state directory is free is cleaned as Collect would;
// one whose state directory is gone (a test's temporary directory, say) or
// unknown has its processes, cgroups, namespaces, veths and nftables tables
// removed. It returns what it removed, per scope.
func CollectStale(ctx context.Context, log *slog.Logger) ([]Report, error) {
	return collectStale(ctx, log, nil)
}

// collectStale is CollectStale restricted to the scopes only accepts (nil:
// all), so that tests never touch another run's objects.
func collectStale(ctx context.Context, log *slog.Logger, only func(scope string) bool) ([]Report, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v, err := cgroup.Detect()
	if err != nil {
		return nil, err
	}
	var out []Report
	var errs []error
	for _, scope := range scopes() {
		if only != nil && !only(scope) {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(scopesDir, scope))
		sd := strings.TrimSpace(string(b))
		if sd != "" && Scope(sd) == scope {
			if _, err := os.Stat(sd); err == nil {
				p, err := New(Config{Logger: log, StateDir: sd})
				if errors.Is(err, justrunit.ErrExists) {
					log.Info("scope in use; skipped", "scope", scope, "state_dir", sd)
					continue
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				r, err := p.Collect(ctx)
				if err != nil {
					errs = append(errs, err)
				}
				if err := p.Close(); err != nil {
					errs = append(errs, err)
				}
				out = append(out, r)
				continue
			}
		}
		// No state directory to lock: nobody can be running this scope.
		p := &Platform{log: log, cg: v, scope: scope, insts: map[string]*inst{}, destroyed: map[string]bool{}}
		before, ids, _ := scan(scope, "")
		for id := range ids {
			if _, err := p.removeLeftovers(id); err != nil {
				errs = append(errs, err)
			}
		}
		p.removeScopeIfEmpty()
		after, _, _ := scan(scope, "")
		if after.Total() == 0 {
			unregisterScope(scope)
		}
		out = append(out, diff(before, after))
	}
	for _, d := range cgroup.Dirs(v, "/justrunit") {
		_ = syscall.Rmdir(d)
	}
	return out, errors.Join(errs...)
}
