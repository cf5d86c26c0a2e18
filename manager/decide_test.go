package manager

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/siterun"
	"github.com/justrunit/justrunit/study"
)

// lineRunner is a test double for the experimenter: rt_mean falls on a
// line from 100 ms at cpu 30% to 20 ms at 100%, and the points of
// unmeasurable measure too few responses.
type lineRunner struct {
	unmeasurable map[float64]bool
	runs         []float64
}

func (r *lineRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.runs = append(r.runs, p[0])
	if r.unmeasurable[p[0]] {
		return justrunit.Observation{}, fmt.Errorf("measure window: 0 successful responses in the full window: %w", justrunit.ErrTooFewSamples)
	}
	rt := 100 - 80*(p[0]-30)/70
	return justrunit.Observation{Point: p, Samples: 1000, Throughput: 50, RT: justrunit.ResponseTime{Mean: rt}}, nil
}

// TestDecideMovesOnFromAnUnmeasurablePoint: the allocation a decision
// rests on is interpolated, and its check finds it cannot even be measured
// (the clone saturated there): the decision moves on to the next
// allocation, checked in its turn, rather than failing.
func TestDecideMovesOnFromAnUnmeasurablePoint(t *testing.T) {
	ctx := context.Background()
	cpu, err := justrunit.ParseParameter("cpu=30..100 step 10")
	if err != nil {
		t.Fatal(err)
	}
	st := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean}, SLA: &justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, CheckThreshold: 0.1}
	in, err := interp.New("linear")
	if err != nil {
		t.Fatal(err)
	}
	r := &lineRunner{unmeasurable: map[float64]bool{80: true}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x := &siterun.Study{Engine: &study.Engine{Runner: r, Interpolator: in, Logger: log}}
	mat, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []float64{30, 100} {
		o, _ := r.Run(ctx, justrunit.Point{c})
		if err := mat.Record(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Interpolate(mat); err != nil {
		t.Fatal(err)
	}
	var events []Event
	m := &Manager{cfg: Config{Headroom: 0.1, CheckThreshold: 0.1, OnEvent: func(e Event) { events = append(events, e) }},
		log: log, recent: map[string][]tick{}}
	goal := justrunit.SLA{Metric: justrunit.RTMean, Max: 45}
	// cpu=80 is the least predicted to meet 45 ms (42.9), and cannot be
	// measured; cpu=90 is next (31.4), and measures so.
	got, err := m.decide(ctx, x, st, mat, "s", goal)
	if err != nil {
		t.Fatalf("decide = %v, want the next allocation", err)
	}
	if got != 90 || !slices.Equal(r.runs, []float64{30, 100, 80, 90}) {
		t.Errorf("decide = cpu %g after experiments at %v, want 90 after checking 80 and 90", got, r.runs)
	}
	found := false
	for _, e := range events {
		found = found || e.Kind == EventCheck && strings.Contains(e.Message, "could not confirm") && strings.Contains(e.Message, "0 successful responses")
	}
	if !found {
		t.Errorf("no %s event saying the check failed: %+v", EventCheck, events)
	}
}
