package siterun

import (
	"context"
	"fmt"
	"slices"

	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/proxy/cloneside"
)

// The clone side of an experiment runs in a process of its own (package
// cloneside), on the CPUs of the sandbox hosts the experiment claimed:
// the target's on-line proxies, in the site's process, hand each copy and
// each recorded exchange over to it and do nothing more for the clones,
// so the threads that carry the on-line requests do the same work with
// an experiment and without one (docs/MEASUREMENTS.md, "Where the
// process's time goes during an experiment").

// startCloneSide starts the clone side of an experiment on instance id,
// whose sandbox hosts cfg names and the caller claimed, and makes it cfg's
// Feed and Replay. stop ends it; call it once the experiment's runner is
// closed.
func (s *Site) startCloneSide(ctx context.Context, id string, cfg *experiment.Config) (stop func(), err error) {
	feed, ok := s.InProxy(id)
	if !ok {
		return nil, fmt.Errorf("instance %s has no in-proxy", id)
	}
	cs := cloneside.Config{
		Name:   "clone-side-" + id,
		In:     feed.Config(),
		Logger: s.log.With("clone_side", id),
	}
	cs.CPUs, err = s.sandboxCPUs(sandboxNames(*cfg))
	if err != nil {
		return nil, err
	}
	out, hasOut := s.OutProxy(id)
	if hasOut {
		oc := out.Config()
		cs.Out = &oc
	}
	side, err := cloneside.Start(ctx, cs, feed, out)
	if err != nil {
		return nil, fmt.Errorf("start the clone side of %s: %w", id, err)
	}
	cfg.Feed = side
	if hasOut {
		cfg.Replay = side
	}
	return func() {
		if err := side.Close(); err != nil {
			s.log.Warn("clone side did not stop cleanly", "instance", id, "err", err)
		}
	}, nil
}

// sandboxCPUs returns the CPUs of the sandbox hosts names (see
// cpuLists), for the clone side to run on; nil (anywhere) when one of
// them has none.
func (s *Site) sandboxCPUs(names []string) ([]int, error) {
	lists := s.cpuLists()
	var cpus []int
	for _, n := range names {
		if lists[n] == "" {
			return nil, nil
		}
		set, err := hostlayout.ParseCPUList(lists[n])
		if err != nil {
			return nil, fmt.Errorf("host %s: cpus: %w", n, err)
		}
		cpus = append(cpus, set...)
	}
	slices.Sort(cpus)
	return slices.Compact(cpus), nil
}
