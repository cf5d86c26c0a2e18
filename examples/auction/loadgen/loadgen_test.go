package loadgen

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseSteps(t *testing.T) {
	tests := []struct {
		in      string
		want    []Step
		wantErr bool
	}{
		{"60s@100", []Step{{60 * time.Second, 100}}, false},
		{"60s@100, 1m30s@150.5,10s@0", []Step{{60 * time.Second, 100}, {90 * time.Second, 150.5}, {10 * time.Second, 0}}, false},
		{"", nil, true},
		{"60s", nil, true},
		{"60@100", nil, true},
		{"60s@-1", nil, true},
		{"0s@10", nil, true},
		{"60s@x", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseSteps(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("ParseSteps(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestMixRepeatableAndProportioned(t *testing.T) {
	for _, m := range []Mix{RUBiS, Browsing} {
		t.Run(m.Name, func(t *testing.T) {
			a, _ := newChooser(m, 42, 1000, 1000)
			b, _ := newChooser(m, 42, 1000, 1000)
			c, _ := newChooser(m, 43, 1000, 1000)
			const n = 100_000
			counts := map[Kind]int{}
			same, differs := true, false
			for range n {
				ra, rb, rc := a.next(), b.next(), c.next()
				counts[ra.kind]++
				same = same && ra.path == rb.path && string(ra.body) == string(rb.body)
				differs = differs || ra.path != rc.path
			}
			if !same {
				t.Error("two choosers with seed 42 chose different requests")
			}
			if !differs {
				t.Error("seeds 42 and 43 chose the same requests")
			}
			total := 0
			for _, w := range m.Weights {
				total += w
			}
			for _, k := range Kinds {
				want := float64(m.Weights[k]) / float64(total)
				got := float64(counts[k]) / n
				if got < want-0.01 || got > want+0.01 {
					t.Errorf("%s share = %.3f, want %.3f ± 0.01", k, got, want)
				}
			}
		})
	}
}

func TestMixByName(t *testing.T) {
	if m, err := MixByName("rubis"); err != nil || m.Name != "rubis" {
		t.Errorf("MixByName(rubis) = %v, %v", m.Name, err)
	}
	if _, err := MixByName("nope"); err == nil {
		t.Error("MixByName(nope) = nil error, want one")
	}
}

// fastServer answers every request at once and counts them.
func fastServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Write([]byte("ok"))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestTargetRate(t *testing.T) {
	s, hits := fastServer(t)
	var intervals []Interval
	sum, err := Run(t.Context(), Config{
		Target: s.URL, Rate: 200, Duration: 1500 * time.Millisecond, Arrival: Uniform, Interval: 500 * time.Millisecond,
		OnInterval: func(iv Interval) { intervals = append(intervals, iv) },
	})
	if err != nil {
		t.Fatal(err)
	}
	// Evenly spaced arrivals: exactly rate × duration scheduled, whatever
	// the timing; all of them must have been sent and answered.
	if sum.Scheduled < 295 || sum.Scheduled > 300 {
		t.Errorf("scheduled %d, want 295..300", sum.Scheduled)
	}
	if sum.Sent != sum.Scheduled || sum.Completed != sum.Sent || sum.Errors != 0 || sum.Dropped != 0 || hits.Load() != sum.Sent {
		t.Errorf("counts %+v, server saw %d; want all scheduled sent and completed", sum.Counts, hits.Load())
	}
	if sum.ElapsedS > 2.5 {
		t.Errorf("elapsed %.2f s for a 1.5 s run", sum.ElapsedS)
	}
	if sum.Throughput < 180 || sum.Throughput > 220 {
		t.Errorf("throughput %.1f/s, want 200 ± 10%%", sum.Throughput)
	}
	if len(intervals) < 3 || len(intervals) > 4 || !slices.Equal(intervals, sum.Intervals) {
		t.Fatalf("%d intervals reported (%d in summary), want 3 or 4", len(intervals), len(sum.Intervals))
	}
	for _, iv := range intervals[:3] {
		if iv.Scheduled < 85 || iv.Scheduled > 115 {
			t.Errorf("interval %d: scheduled %d, want 100 ± 15", iv.Index, iv.Scheduled)
		}
	}
	if sum.Samples != sum.Completed || sum.P95MS <= 0 || sum.MeanMS <= 0 || sum.MaxMS < sum.P95MS {
		t.Errorf("latency %+v", sum.Latency)
	}
}

func TestPoissonRepeatable(t *testing.T) {
	s, _ := fastServer(t)
	run := func() Summary {
		sum, err := Run(t.Context(), Config{Target: s.URL, Rate: 400, Duration: 500 * time.Millisecond, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	a, b := run(), run()
	// The schedule is drawn from the seed, not from the clock.
	if a.Scheduled != b.Scheduled || a.Scheduled < 150 || a.Scheduled > 250 {
		t.Errorf("scheduled %d then %d, want equal and about 200", a.Scheduled, b.Scheduled)
	}
	for _, k := range Kinds {
		if a.ByKind[k].Scheduled != b.ByKind[k].Scheduled {
			t.Errorf("%s: scheduled %d then %d, want equal", k, a.ByKind[k].Scheduled, b.ByKind[k].Scheduled)
		}
	}
}

// TestOpenLoop checks that a slow target does not slow the arrivals, and
// that response time counts from the scheduled time.
func TestOpenLoop(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
	}))
	defer s.Close()
	sum, err := Run(t.Context(), Config{Target: s.URL, Rate: 100, Duration: time.Second, Arrival: Uniform, MaxOutstanding: 100})
	if err != nil {
		t.Fatal(err)
	}
	// A closed loop with 10 users would send ~100 requests too, but only
	// if they had no think time; here ~10 are in flight at any time.
	if sum.Sent < 95 || sum.Completed != sum.Sent || sum.Dropped != 0 {
		t.Errorf("counts %+v, want ~100 sent and completed, none dropped", sum.Counts)
	}
	if sum.P50MS < 100 {
		t.Errorf("p50 %.1f ms, want >= 100 ms", sum.P50MS)
	}
	// Throughput counts the time the last answers took to come.
	if want := float64(sum.Completed) / sum.ElapsedS; math.Abs(sum.Throughput-want) > 0.01*want || sum.ElapsedS < sum.DurationS+0.09 {
		t.Errorf("throughput %.2f over %.3f s elapsed (%.3f s scheduling), want %.2f", sum.Throughput, sum.ElapsedS, sum.DurationS, want)
	}
}

// TestDropsWhenTargetHangs checks that a hung target costs dropped requests
// and timeouts, not a stalled generator.
func TestDropsWhenTargetHangs(t *testing.T) {
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer s.Close()
	defer close(release)
	t0 := time.Now()
	sum, err := Run(t.Context(), Config{
		Target: s.URL, Rate: 100, Duration: 600 * time.Millisecond, Arrival: Uniform,
		MaxOutstanding: 4, Timeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("run took %v, want about 0.9 s (duration + timeout)", took)
	}
	if sum.Scheduled < 55 || sum.Dropped < sum.Scheduled-12 || sum.Sent > 12 {
		t.Errorf("counts %+v; want ~60 scheduled, at most 4 in flight per 300 ms timeout, the rest dropped", sum.Counts)
	}
	if sum.Completed != 0 || sum.Errors != sum.Sent || sum.ErrorKinds["timeout"] != sum.Sent {
		t.Errorf("counts %+v, errors %v; want every sent request to time out", sum.Counts, sum.ErrorKinds)
	}
}

func TestStepsAndSetRate(t *testing.T) {
	s, _ := fastServer(t)
	steps, _ := ParseSteps("300ms@0,400ms@200")
	sum, err := Run(t.Context(), Config{Target: s.URL, Steps: steps, Arrival: Uniform})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Scheduled < 70 || sum.Scheduled > 85 || sum.DurationS < 0.69 || sum.DurationS > 0.75 {
		t.Errorf("steps 300ms@0,400ms@200: scheduled %d in %.2f s, want ~80 in 0.7 s", sum.Scheduled, sum.DurationS)
	}

	// A slow step's last gap does not run into the next step.
	steps, _ = ParseSteps("300ms@2,300ms@200")
	if sum, err = Run(t.Context(), Config{Target: s.URL, Steps: steps, Arrival: Uniform}); err != nil {
		t.Fatal(err)
	}
	if sum.Scheduled < 55 || sum.Scheduled > 65 {
		t.Errorf("steps 300ms@2,300ms@200: scheduled %d, want ~60 (the second step's from its start)", sum.Scheduled)
	}

	g, err := New(Config{Target: s.URL, Rate: 0.5, Arrival: Uniform}) // one request every 2 s
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan Summary)
	go func() {
		sum, _ := g.Run(ctx)
		done <- sum
	}()
	time.Sleep(100 * time.Millisecond)
	g.SetRate(200)
	time.Sleep(500 * time.Millisecond)
	cancel()
	sum = <-done
	if !sum.Interrupted || sum.Scheduled < 70 || sum.Scheduled > 150 || g.Rate() != 200 {
		t.Errorf("after SetRate(200) for 0.5 s: interrupted %v, scheduled %d, rate %v; want true, ~100, 200",
			sum.Interrupted, sum.Scheduled, g.Rate())
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg   Config
		field string
	}{
		{Config{Target: "localhost:80", Rate: 1}, "target"},
		{Config{Target: "http://x", Rate: -1}, "rate"},
		{Config{Target: "http://x", Steps: []Step{{0, 1}}}, "steps[0]"},
		{Config{Target: "http://x", Rate: 1, Arrival: "bursty"}, "arrival"},
		{Config{Target: "http://x", Rate: 1, Interval: time.Microsecond}, "interval"},
		{Config{Target: "http://x", Rate: 1, Mix: Mix{Name: "empty", Weights: map[Kind]int{}}}, "mix"},
	} {
		_, err := New(tt.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("New(%+v) = %v, want a ConfigError on %s", tt.cfg, err, tt.field)
		}
	}
}

func TestRunTwice(t *testing.T) {
	s, _ := fastServer(t)
	g, err := New(Config{Target: s.URL, Rate: 10, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Run(t.Context()); err == nil {
		t.Error("second Run = nil error, want one")
	}
}
