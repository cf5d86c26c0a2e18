package siterun

import (
	"maps"
	"slices"
	"sync"

	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/platform/local"
)

// The proxies' CPUs. The proxies in the site runtime's process carry the
// on-line requests, and they run where the on-line tiers do: on the CPUs
// of the hosts the site's instances start on, never on a sandbox host's,
// where a study's clones and its clone side (the process that feeds
// them, see cloneside.go) run. An on-line request crosses the process at
// every proxy hop, each time a thread woken by the kernel; let loose on
// every CPU, those threads woke on the sandbox's while it was idle and,
// once a clone kept it busy, had to wait for it or take an on-line host's
// CPU. On this project's 2-CPU machine, with the clone side in its own
// process, an experiment cost the on-line app tier 7.5% at the median
// p95 with the process on every CPU (its waits for a CPU per on-line
// response doubled), and nothing (0.985) with it on the on-line host's
// CPU, where it waited the same with and without a clone ("justrunit
// bench online"; docs/MEASUREMENTS.md, "The clone side in a process of
// its own"). The price is that the proxies share the on-line hosts' CPUs
// with the on-line tiers, as a real previous tier's would.
//
// Programs the process starts inherit its CPUs until the platform places
// them: the local platform's instances and clones start on their host's
// CPUs, a QEMU VM's are set by its cgroup's cpuset, a clone side is
// started on the sandbox's. The process is pinned only where the on-line
// hosts and the sandboxes share no CPU, so that neither a clone nor a VM
// of a sandbox can be held to a part of its own.

// pinned keeps, while sites are up, the CPUs the process had before the
// first pinned it, and each site's on-line CPUs; the process runs on
// their union (within the CPUs it had).
var pinned struct {
	sync.Mutex
	orig  []int
	sites map[*Site][]int
}

// pinProxies runs the process on the site's on-line CPUs, if the site
// gives them (onlineCPUs), together with those of the other sites up.
func (s *Site) pinProxies() {
	cpus, why := s.onlineCPUs()
	if cpus == nil {
		s.log.Debug("the proxies run on every CPU", "why", why)
		return
	}
	pinned.Lock()
	defer pinned.Unlock()
	if len(pinned.sites) == 0 {
		orig, err := prio.Affinity(0)
		if err != nil {
			s.log.Warn("the proxies run on every CPU", "err", err)
			return
		}
		pinned.orig, pinned.sites = orig, map[*Site][]int{}
	}
	pinned.sites[s] = cpus
	if err := applyPinned(); err != nil {
		delete(pinned.sites, s)
		s.log.Warn("cannot run the proxies on the on-line hosts' CPUs; a clone's work may slow the on-line path", "cpus", cpus, "err", err)
		return
	}
	s.log.Info("the proxies run on the on-line hosts' CPUs", "cpus", cpus)
}

// unpinProxies takes the site's CPUs out of the process's; the last site
// to go gives the process back the CPUs it had.
func (s *Site) unpinProxies() {
	pinned.Lock()
	defer pinned.Unlock()
	if _, ok := pinned.sites[s]; !ok {
		return
	}
	delete(pinned.sites, s)
	if err := applyPinned(); err != nil {
		s.log.Warn("cannot give the process back its CPUs", "err", err)
	}
}

// applyPinned sets the process's CPUs from pinned; the caller holds it.
func applyPinned() error {
	if len(pinned.sites) == 0 {
		return prio.SetAffinity(pinned.orig)
	}
	var want []int
	for _, cpus := range pinned.sites {
		want = append(want, cpus...)
	}
	slices.Sort(want)
	want = slices.Compact(want)
	var cpus []int
	for _, c := range want {
		if slices.Contains(pinned.orig, c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 { // none of them is the process's to run on
		cpus = pinned.orig
	}
	return prio.SetAffinity(cpus)
}

// onlineCPUs returns the CPUs of the hosts the site's instances start on,
// sorted; nil, and why, where the site does not give the CPUs of every
// such host and of every sandbox host, where it has no sandbox host, or
// where a sandbox host shares a CPU with one of those.
func (s *Site) onlineCPUs() ([]int, string) {
	lists := s.cpuLists()
	parse := func(host string) map[int]bool {
		l, err := hostlayout.ParseCPUList(lists[host])
		if err != nil || len(l) == 0 {
			return nil
		}
		set := map[int]bool{}
		for _, c := range l {
			set[c] = true
		}
		return set
	}
	sandbox := map[int]bool{}
	for _, h := range s.File.Hosts {
		if !h.Sandbox {
			continue
		}
		set := parse(h.Name)
		if set == nil {
			return nil, "sandbox host " + h.Name + " has no cpuset"
		}
		maps.Copy(sandbox, set)
	}
	if len(sandbox) == 0 {
		return nil, "no sandbox host"
	}
	online := map[int]bool{}
	for _, svc := range s.File.Services {
		for _, tier := range svc.Tiers {
			for _, in := range tier.Instances {
				set := parse(in.Host)
				if set == nil {
					return nil, "host " + in.Host + " has no cpuset"
				}
				for c := range set {
					if sandbox[c] {
						return nil, "host " + in.Host + " shares CPUs with a sandbox host"
					}
					online[c] = true
				}
			}
		}
	}
	if len(online) == 0 {
		return nil, "no instance"
	}
	return slices.Sorted(maps.Keys(online)), ""
}

// cpuLists returns the CPU list of each host of the site, by name: the
// site file's, or the local platform's layout of the hosts it leaves
// unsaid; "" where none is known.
func (s *Site) cpuLists() map[string]string {
	lists := map[string]string{}
	for _, h := range s.File.Hosts {
		lists[h.Name] = h.CPUs
	}
	if p, ok := s.Platform.(*local.Platform); ok { // it lays out hosts the site leaves unsaid
		for _, h := range p.HostConfigs() {
			lists[h.Name] = h.CPUs
		}
	}
	return lists
}
