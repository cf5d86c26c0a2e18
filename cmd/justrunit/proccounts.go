package main

import (
	"fmt"

	"github.com/justrunit/justrunit/internal/prio"
)

// procCounts reads the scheduler's counts of JustRunIt's own process at
// the edges of a demo's or benchmark's windows. Its proxies carry the
// on-line requests, so what the process waits for a CPU the on-line path
// waits too. After the first failed reading (a kernel without scheduler
// statistics) it reads nothing more, and note says why.
type procCounts struct {
	failed bool
	note   string
}

// read returns the process's counts now; zero once a reading failed.
func (p *procCounts) read() prio.Sched {
	if p.failed {
		return prio.Sched{}
	}
	s, err := prio.ReadSched("self")
	if err != nil {
		p.failed, p.note = true, fmt.Sprintf("no figures of JustRunIt's process: %v", err)
	}
	return s
}

// ok says whether every reading so far succeeded.
func (p *procCounts) ok() bool { return !p.failed }

// procPerResponse is what the process spent over a window per on-line
// response: CPU time and time waiting for a CPU in µs, and times a thread
// was put on a CPU.
type procPerResponse struct {
	CPUUs  float64 `json:"cpu_us"`
	WaitUs float64 `json:"wait_us"`
	Runs   float64 `json:"runs"`
}

// perResponse divides d, the counts over a window, by the window's n
// on-line responses; zero for none.
func perResponse(d prio.Sched, n int64) procPerResponse {
	if n <= 0 {
		return procPerResponse{}
	}
	k := float64(n)
	return procPerResponse{CPUUs: float64(d.CPU.Microseconds()) / k, WaitUs: float64(d.Wait.Microseconds()) / k, Runs: float64(d.Slices) / k}
}
