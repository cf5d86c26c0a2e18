package httpproxy

import (
	"context"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// sleeper waits until deadlines more exactly than a plain runtime timer.
//
// Go's timers fire late by a fraction of a millisecond and more for short
// waits: the runtime sleeps in the network poller with a millisecond
// timeout, rounded down and at least 1 ms, so a 0.2 ms timer fires after
// about 1 ms and a 2.7 ms one after about 3 ms. Replaying a next-tier
// latency of a millisecond or two with such a timer adds that lateness to
// every call a clone makes, which shows as a clone slower than the on-line
// instance it predicts. So a sleeper waits out the last preciseSpan before
// a deadline in the kernel's high-resolution timer (a nanosleep, which
// holds its thread; at most maxPrecise at once, the others take the
// runtime's timer), and aims early by the lateness it has seen (a moving
// average: the kernel's timer slack, the thread's wake-up), so that the
// waits it ends are right on average; one whose aim is already past
// returns at once. It never spins: a spin would take CPU from the on-line
// instances the proxy serves.
type sleeper struct {
	late    atomic.Int64 // moving average of the lateness, ns
	precise atomic.Int32 // nanosleeps under way
}

// sleeperGain is the weight of the newest lateness in the average (1/16).
const sleeperGain = 16

// maxLateness caps one lateness sample: a stall (a GC pause, a descheduled
// thread) says nothing about the timer, and would otherwise lift the aim
// above the waits themselves.
const maxLateness = 2 * time.Millisecond

// preciseSpan is the end of a wait spent in a nanosleep: more than a
// runtime timer's lateness, so that the runtime timer before it ends
// before the deadline.
const preciseSpan = 2 * time.Millisecond

// maxPrecise bounds the threads nanosleeps hold at once.
const maxPrecise = 32

// until waits until deadline (early by the mean lateness) or until ctx
// ends, and reports whether it was ctx. A ctx ending in the last
// preciseSpan is noticed at the deadline.
func (s *sleeper) until(ctx context.Context, deadline time.Time) error {
	if wait := time.Until(deadline) - preciseSpan; wait > 0 {
		if err := timerWait(ctx, wait); err != nil {
			return err
		}
	}
	aim := deadline.Add(-time.Duration(s.late.Load()))
	wait := time.Until(aim)
	if wait <= 0 {
		if time.Until(deadline) > 0 {
			// Aiming past a deadline still ahead: the correction is larger
			// than this wait, and no timer will tell whether it should
			// be. Let it decay, so that it cannot stick above the waits.
			s.update(0)
		}
		return ctx.Err()
	}
	if s.precise.Add(1) <= maxPrecise {
		ts := unix.NsecToTimespec(int64(wait))
		for unix.Nanosleep(&ts, &ts) == unix.EINTR {
		}
		s.precise.Add(-1)
	} else {
		s.precise.Add(-1)
		if err := timerWait(ctx, wait); err != nil {
			return err
		}
	}
	s.update(min(time.Since(aim), maxLateness))
	return ctx.Err()
}

// timerWait waits d on a runtime timer, or until ctx ends.
func timerWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
