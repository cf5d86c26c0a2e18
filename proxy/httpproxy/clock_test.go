package httpproxy

import (
	"context"
	"testing"
	"time"
)

// TestSleeperUnbiased checks that the sleeper's waits end on their
// deadlines on average, where plain timers end late: waits of 0.2–3 ms,
// the next-tier latencies replays wait out.
func TestSleeperUnbiased(t *testing.T) {
	waits := []time.Duration{200 * time.Microsecond, 700 * time.Microsecond, 1300 * time.Microsecond, 2700 * time.Microsecond}
	const rounds = 60
	var s sleeper
	var plain, calibrated time.Duration
	for i := range rounds * len(waits) {
		d := waits[i%len(waits)]
		start := time.Now()
		tm := time.NewTimer(d)
		<-tm.C
		plain += time.Since(start) - d
		start = time.Now()
		if err := s.until(context.Background(), start.Add(d)); err != nil {
			t.Fatal(err)
		}
		if i >= len(waits)*4 { // after the average has settled
			calibrated += time.Since(start) - d
		}
	}
	plainMean := plain / time.Duration(rounds*len(waits))
	calMean := calibrated / time.Duration((rounds-4)*len(waits))
	t.Logf("mean lateness: plain timer %v, sleeper %v (correcting %v)", plainMean, calMean, time.Duration(s.late.Load()))
	if calMean.Abs() > 300*time.Microsecond || calMean.Abs() > plainMean.Abs() {
		t.Errorf("sleeper's mean lateness %v: want within ±300µs and less than a plain timer's %v", calMean, plainMean)
	}
}

func TestSleeperCancel(t *testing.T) {
	var s sleeper
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.until(ctx, time.Now().Add(time.Hour)); err == nil {
		t.Error("until with a cancelled context: no error")
	}
	if err := s.until(context.Background(), time.Now().Add(-time.Second)); err != nil {
		t.Errorf("until a past deadline: %v", err)
	}
}

// TestSleeperRecovers checks that one stall does not leave the sleeper
// aiming so early that it stops waiting: its correction is capped per
// sample and decays while it overshoots the waits asked for.
func TestSleeperRecovers(t *testing.T) {
	var s sleeper
	s.late.Store(int64(20 * time.Millisecond)) // as after a long stall
	const d = time.Millisecond
	for i := range 200 {
		start := time.Now()
		if err := s.until(context.Background(), start.Add(d)); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) >= d/2 {
			t.Logf("waiting again after %d calls (correcting %v)", i+1, time.Duration(s.late.Load()))
			return
		}
	}
	t.Errorf("after 200 calls of 1 ms the sleeper still returns at once (correcting %v)", time.Duration(s.late.Load()))
}
