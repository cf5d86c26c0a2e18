package proxybench

import (
	"context"
	"time"

	"github.com/prometheus/procfs"
)

// Before each case is measured, the benchmark waits for the machine's
// CPUs to be quiet, so that no case pays for what the one before it left
// running. Measured on a 2-CPU machine: once the hung clone's connections
// are dropped after nginx's mirror case, nginx's workers finish thousands
// of cut-off mirror subrequests for a second or two (40% and 33% of a
// CPU); the case after it had an open-loop p99 of 48-139 ms in four rounds
// of five, where the same case first in a round had 3.4 ms.

// Quiet: the machine's CPUs busy below quietBusy over quietSamples
// consecutive samples of quietSample each.
const (
	quietBusy    = 0.10
	quietSample  = 250 * time.Millisecond
	quietSamples = 2
)

// cpuTimes returns the CPU time this machine has spent busy, and in all,
// since it booted (seconds, summed over its CPUs). Time stolen by a
// hypervisor counts as not busy: waiting does not end it.
type cpuTimes func() (busy, total float64, err error)

// procCPUTimes reads /proc/stat.
func procCPUTimes() (busy, total float64, err error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, 0, err
	}
	st, err := fs.Stat()
	if err != nil {
		return 0, 0, err
	}
	c := st.CPUTotal
	busy = c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ
	return busy, busy + c.Idle + c.Iowait + c.Steal, nil
}

// settle is how long waitQuiet waited, and how busy the machine was over
// its last sample (a fraction of all its CPUs).
type settle struct {
	Waited time.Duration
	Busy   float64
	Quiet  bool
}

// waitQuiet waits until the machine's CPUs are quiet, or limit has passed,
// or ctx ends. Where the CPU times cannot be read it returns at once, with
// Quiet false and Busy -1.
func waitQuiet(ctx context.Context, times cpuTimes, limit time.Duration) settle {
	start := time.Now()
	busy0, total0, err := times()
	if err != nil {
		return settle{Busy: -1}
	}
	t := time.NewTicker(quietSample)
	defer t.Stop()
	s, run := settle{}, 0
	for {
		select {
		case <-ctx.Done():
			s.Waited = time.Since(start)
			return s
		case <-t.C:
		}
		busy, total, err := times()
		if err != nil {
			return settle{Waited: time.Since(start), Busy: -1}
		}
		if d := total - total0; d > 0 {
			s.Busy = (busy - busy0) / d
		}
		busy0, total0 = busy, total
		if s.Busy < quietBusy {
			run++
		} else {
			run = 0
		}
		s.Waited = time.Since(start)
		if run >= quietSamples {
			s.Quiet = true
			return s
		}
		if s.Waited >= limit {
			return s
		}
	}
}
