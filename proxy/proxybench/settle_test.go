package proxybench

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"
)

// fakeTimes is a machine whose CPUs are busy at the fractions given, one a
// sample, then at the last one.
type fakeTimes struct {
	mu          sync.Mutex
	busy        []float64
	b, t        float64
	calls       int
	failOnCallN int // fail the nth call (1-based); 0: never
}

func (f *fakeTimes) times() (float64, float64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls == f.failOnCallN {
		return 0, 0, errors.New("no /proc/stat")
	}
	if f.calls > 1 { // the first call is the baseline
		frac := f.busy[min(f.calls-2, len(f.busy)-1)]
		f.b += 2 * frac // two CPUs, a second each
		f.t += 2
	}
	return f.b, f.t, nil
}

func TestWaitQuiet(t *testing.T) {
	for _, c := range []struct {
		name      string
		busy      []float64
		fail      int
		max       time.Duration
		quiet     bool
		samples   int     // samples taken (calls after the baseline)
		lastBusy  float64 // Busy reported
		minWaited time.Duration
	}{
		{name: "quiet at once", busy: []float64{0.02}, max: 10 * time.Second, quiet: true, samples: 2, lastBusy: 0.02},
		// A quiet sample between busy ones is not enough.
		{name: "busy, then quiet", busy: []float64{0.5, 0.05, 0.4, 0.05, 0.01}, max: 10 * time.Second, quiet: true, samples: 5, lastBusy: 0.01},
		{name: "busy to the end", busy: []float64{0.6}, max: 2 * quietSample, quiet: false, samples: 2, lastBusy: 0.6, minWaited: 2 * quietSample},
		{name: "unreadable", busy: []float64{0}, fail: 1, max: 10 * time.Second, quiet: false, samples: 0, lastBusy: -1},
		{name: "unreadable later", busy: []float64{0.5}, fail: 3, max: 10 * time.Second, quiet: false, samples: 2, lastBusy: -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeTimes{busy: c.busy, failOnCallN: c.fail}
			s := waitQuiet(context.Background(), f.times, c.max)
			if s.Quiet != c.quiet || math.Abs(s.Busy-c.lastBusy) > 1e-9 {
				t.Errorf("got quiet %v busy %v, want %v %v", s.Quiet, s.Busy, c.quiet, c.lastBusy)
			}
			if got := f.calls - 1; got != c.samples {
				t.Errorf("%d samples, want %d", got, c.samples)
			}
			if s.Waited < c.minWaited {
				t.Errorf("waited %v, want at least %v", s.Waited, c.minWaited)
			}
		})
	}
	t.Run("context ends the wait", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*quietSample/2)
		defer cancel()
		f := &fakeTimes{busy: []float64{0.9}}
		s := waitQuiet(ctx, f.times, time.Minute)
		if s.Quiet || s.Waited >= time.Minute/2 {
			t.Errorf("got %+v, want a short wait that is not quiet", s)
		}
	})
}

// TestProcCPUTimes reads this machine's CPU times before and after waitQuiet
// samples them: they count up, and the busy share sampled is a fraction.
func TestProcCPUTimes(t *testing.T) {
	b0, t0, err := procCPUTimes()
	if err != nil {
		t.Skipf("no /proc/stat here: %v", err)
	}
	s := waitQuiet(context.Background(), procCPUTimes, quietSample)
	b1, t1, err := procCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	if b1 < b0 || t1 <= t0 || b1 > t1 || s.Busy < 0 || s.Busy > 1 {
		t.Errorf("busy %v → %v of total %v → %v, a sample %.2f busy: want counts that grow, busy within total", b0, b1, t0, t1, s.Busy)
	}
}
