package httpproxy

import (
	"context"
	"sync/atomic"
	"time"
)

// sleeper waits until deadlines more exactly than a plain runtime timer.
//
// Go's timers fire late by a fraction of a millisecond and more for short
// waits: the runtime sleeps in the network poller with a millisecond
// timeout, rounded down and at least 1 ms, so a 0.2 ms timer fires after
// about 1 ms and a 2.7 ms one after about 3 ms. Replaying a next-tier
// latency of a millisecond or two with such a timer adds that lateness to
// every call a clone makes, which shows as a clone slower than the on-line
// instance it predicts. A sleeper aims early by the lateness it has seen
// (a moving average), so that the waits it ends are right on average;
// one whose aim is already past returns at once. It never spins: a spin
// would take CPU from the on-line instances the proxy serves.
type sleeper struct {
	late atomic.Int64 // moving average of the timer's lateness, ns
}

// sleeperGain is the weight of the newest lateness in the average (1/16).
const sleeperGain = 16

// maxLateness caps one lateness sample: a stall (a GC pause, a descheduled
// thread) says nothing about the timer, and would otherwise lift the aim
// above the waits themselves.
const maxLateness = 2 * time.Millisecond

// until waits until deadline (early by the timer's mean lateness) or until
// ctx ends, and reports whether it was ctx.
func (s *sleeper) until(ctx context.Context, deadline time.Time) error {
	aim := deadline.Add(-time.Duration(s.late.Load()))
	wait := time.Until(aim)
	if wait <= 0 {
		if time.Until(deadline) > 0 {
			// Aiming past a deadline still ahead: the correction is larger
			// than this wait, and no timer will tell whether it should
			// be. Let it decay, so that it cannot stick above the waits.
			s.update(0)
		}
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.update(min(time.Since(aim), maxLateness))
	return nil
}

// update moves the average lateness towards late.
func (s *sleeper) update(late time.Duration) {
	for {
		old := s.late.Load()
		if s.late.CompareAndSwap(old, old+(int64(late)-old)/sleeperGain) {
			return
		}
	}
}
