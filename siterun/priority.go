package siterun

import (
	"log/slog"
	"sync"

	"github.com/justrunit/justrunit/internal/prio"
)

// ProxyNice is the nice value the site runtime gives its own process. The
// proxies in this process carry on-line requests, and the platform gives
// instances a high CPU weight (so an allocation is measured, not the
// neighbours); without a matching priority, a busy clone or on-line tier
// would starve the proxies and slow the on-line path the study must not
// touch. Measured on a 2-core machine with the auction example: on-line
// p95 during a study 2.1x without it, 1.1x with it.
//
// A thread's nice value counts only within its scheduling group, though;
// where the process's group is its session's autogroup, the autogroup gets
// AutogroupNice (raiseGroup).
const ProxyNice = -15

// AutogroupNice is the nice value the site runtime gives its session's
// autogroup, where its process is scheduled in one: the highest weight
// there is (88761, against the 8192 of the local platform's /justrunit),
// because at the root of each CPU's scheduler a group's weight is shared
// out over the CPUs in proportion to what it runs on each, and the proxies
// run little on the sandbox's CPUs, where a clone may run a lot.
const AutogroupNice = -20

// autogroup counts the sites up in this process that raised its autogroup,
// and keeps the nice value it had before the first.
var autogroup struct {
	sync.Mutex
	sites int
	old   int
}

// raiseGroup gives the process's scheduling group the weight of nice
// AutogroupNice where it is the session's autogroup, and returns what undoes
// that when the last site goes. The kernel weighs a thread against a task
// of another group only through their groups, at the root of the CPU's
// scheduler: there the autogroup weighed one ordinary task, whatever its
// threads' nice values, and the local platform's /justrunit cgroup eight
// (its instances and clones below it). On a CPU where a clone or an
// on-line tier was running, a proxy thread that woke waited for its slice
// and the next scheduler tick: on this project's 2-CPU machine (4 ms ticks)
// a thread that woke every half millisecond on a CPU where a task of a
// cgroup of that weight ran waited up to 16 ms, 4.5 ms at p99.9, and under
// 0.6 ms with its autogroup at nice −15 or more; a study's cost to the on-line p95
// was 1.06–1.12 times (see docs/MEASUREMENTS.md). Elsewhere (a service
// manager's cgroup, or no autogroups) the process's cgroup weight is what
// counts, and the log says so.
func raiseGroup(log *slog.Logger) (undo func()) {
	undo = func() {}
	in, nice, err := prio.Autogroup()
	if err != nil {
		log.Warn("cannot read the proxies' scheduling group; clones and on-line tiers may delay the on-line path", "err", err)
		return undo
	}
	if !in {
		if g, err := prio.CPUCgroup(); err == nil && g != "/" {
			log.Info("the proxies' process is in a cgroup of its own: its CPU weight, not its nice value, is what the proxies carrying on-line requests get against the platform's instances and clones; give it at least theirs (cgroup v2 cpu.weight 800, v1 cpu.shares 8192; systemd: CPUWeight=800)", "cgroup", g)
		}
		return undo
	}
	autogroup.Lock()
	defer autogroup.Unlock()
	if autogroup.sites == 0 {
		if nice <= AutogroupNice {
			return undo
		}
		if err := prio.SetAutogroupNice(AutogroupNice); err != nil {
			log.Warn("cannot raise the priority of the proxies' autogroup; clones and on-line tiers may delay the on-line path", "err", err)
			return undo
		}
		autogroup.old = nice
	}
	autogroup.sites++
	var once sync.Once
	return func() {
		once.Do(func() {
			autogroup.Lock()
			defer autogroup.Unlock()
			if autogroup.sites--; autogroup.sites == 0 {
				if err := prio.SetAutogroupNice(autogroup.old); err != nil {
					log.Warn("cannot give the proxies' autogroup its nice value back", "err", err)
				}
			}
		})
	}
}
