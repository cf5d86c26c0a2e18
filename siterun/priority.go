package siterun

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ProxyNice is the nice value the site runtime gives its own process. The
// proxies in this process carry on-line requests, and the platform gives
// instances a high CPU weight (so an allocation is measured, not the
// neighbours); without a matching priority, a busy clone or on-line tier
// would starve the proxies and slow the on-line path the study must not
// touch. Measured on a 2-core machine with the auction example: on-line
// p95 during a study 2.1x without it, 1.1x with it.
const ProxyNice = -15

// raisePriority sets every thread of this process to nice (threads created
// later inherit it from the thread that creates them). It needs root (or
// CAP_SYS_NICE); without it, it returns an error the caller logs.
func raisePriority(nice int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("set nice %d on thread %d: %w", nice, tid, err)
		}
	}
	return nil
}
