package manager

import (
	"testing"

	"github.com/justrunit/justrunit/manager/monitor"
)

// TestTimelineIsBounded checks that a timeline keeps the latest samples
// and drops the oldest, within a quarter more than its bound.
func TestTimelineIsBounded(t *testing.T) {
	var tl Timeline
	n := MaxTimelineSamples*2 + 7
	for i := range n {
		tl.AddSample(monitor.Sample{Service: "s", Interval: i + 1})
	}
	if got := len(tl.Samples); got < MaxTimelineSamples || got > MaxTimelineSamples+MaxTimelineSamples/4 {
		t.Fatalf("%d samples kept, want %d to %d", got, MaxTimelineSamples, MaxTimelineSamples+MaxTimelineSamples/4)
	}
	if last := tl.Samples[len(tl.Samples)-1].Interval; last != n {
		t.Errorf("last sample kept is interval %d, want %d", last, n)
	}
	for i := 1; i < len(tl.Samples); i++ {
		if tl.Samples[i].Interval != tl.Samples[i-1].Interval+1 {
			t.Fatalf("samples out of order at %d", i)
		}
	}
}
