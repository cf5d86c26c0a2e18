package measure

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// within reports whether got is within rel (relative) or abs (ms) of want.
func within(got, want, rel, abs float64) bool {
	return math.Abs(got-want) <= max(rel*math.Abs(want), abs)
}

// exactQuantile returns the q-quantile of sorted (ms) by the rank rule the
// histogram uses: rank round(q·n), 1-based.
func exactQuantile(sorted []float64, q float64) float64 {
	r := int(q*float64(len(sorted)) + 0.5)
	r = min(max(r, 1), len(sorted))
	return sorted[r-1]
}

func TestRecorderPercentiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dists := []struct {
		name string
		draw func() time.Duration
	}{
		{"uniform 1-100ms", func() time.Duration { return time.Millisecond + time.Duration(rng.Int64N(int64(99*time.Millisecond))) }},
		{"exponential mean 20ms", func() time.Duration { return time.Duration(rng.ExpFloat64() * float64(20*time.Millisecond)) }},
		{"lognormal median 5ms", func() time.Duration {
			return time.Duration(math.Exp(rng.NormFloat64()) * float64(5*time.Millisecond))
		}},
		{"constant 7ms", func() time.Duration { return 7 * time.Millisecond }},
	}
	for _, d := range dists {
		t.Run(d.name, func(t *testing.T) {
			r := NewRecorder()
			const n = 50000
			ms := make([]float64, n)
			var sum float64
			for i := range ms {
				v := d.draw()
				r.Record(v)
				ms[i] = float64(v) / 1e6
				sum += ms[i]
			}
			slices.Sort(ms)
			s := r.Snapshot()
			if s.Count != n || s.Errors != 0 || s.Clamped != 0 {
				t.Fatalf("Count, Errors, Clamped = %d, %d, %d, want %d, 0, 0", s.Count, s.Errors, s.Clamped, n)
			}
			// 3 significant digits: 0.1% of the value, plus the 1 µs unit.
			const rel, abs = 0.002, 0.002
			for _, c := range []struct {
				name string
				got  float64
				q    float64
			}{{"p50", s.RT.P50, 0.50}, {"p95", s.RT.P95, 0.95}, {"p99", s.RT.P99, 0.99}} {
				if want := exactQuantile(ms, c.q); !within(c.got, want, rel, abs) {
					t.Errorf("%s = %.4f ms, want %.4f ms (±0.2%%)", c.name, c.got, want)
				}
			}
			if want := sum / n; !within(s.RT.Mean, want, 1e-6, 1e-6) {
				t.Errorf("mean = %.6f ms, want %.6f ms (exact)", s.RT.Mean, want)
			}
			if want := ms[n-1]; !within(s.RT.Max, want, 1e-9, 1e-9) {
				t.Errorf("max = %.6f ms, want %.6f ms (exact)", s.RT.Max, want)
			}
			if !(s.RT.P95Low <= s.RT.P95 && s.RT.P95 <= s.RT.P95High) {
				t.Errorf("p95 CI [%g, %g] does not contain p95 %g", s.RT.P95Low, s.RT.P95High, s.RT.P95)
			}
		})
	}
}

func TestRecorderClampsAndErrors(t *testing.T) {
	r := NewRecorder()
	r.Record(2 * time.Minute)
	r.Record(time.Millisecond)
	r.Record(-time.Second) // counts as zero
	r.RecordError()
	r.RecordError()
	s := r.Snapshot()
	if s.Count != 3 || s.Errors != 2 || s.Clamped != 1 {
		t.Fatalf("Count, Errors, Clamped = %d, %d, %d, want 3, 2, 1", s.Count, s.Errors, s.Clamped)
	}
	if s.RT.Max != 120000 {
		t.Errorf("Max = %g ms, want 120000 (the true value, not the clamp)", s.RT.Max)
	}
	if want := float64(MaxRecordable) / 1e6; !within(s.RT.P99, want, 0.001, 0) {
		t.Errorf("P99 = %g ms, want the clamp %g ms", s.RT.P99, want)
	}
}

func TestRecorderEmpty(t *testing.T) {
	s := NewRecorder().Snapshot()
	if s.Count != 0 || s.RT.P95 != 0 || s.Throughput != 0 {
		t.Errorf("empty Snapshot = %+v, want zeros", s)
	}
	if w := s.P95RelWidth(); !math.IsInf(w, 1) {
		t.Errorf("empty P95RelWidth = %g, want +Inf", w)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := NewRecorder()
	const goroutines, each = 8, 5000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	done := make(chan struct{})
	var resets []Summary
	// A reader resets windows while writers record: every response must land
	// in exactly one window.
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resets = append(resets, r.Reset())
			_ = r.Snapshot()
		}
	}()
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				r.Record(time.Duration(1+(g*each+i)%1000) * time.Microsecond)
				if i%10 == 0 {
					r.RecordError()
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-done
	last := r.Reset()
	var count, errs int64
	for _, s := range append(resets, last) {
		count += s.Count
		errs += s.Errors
	}
	if count != goroutines*each || errs != goroutines*each/10 {
		t.Errorf("over %d windows: Count = %d, Errors = %d, want %d, %d", len(resets)+1, count, errs, goroutines*each, goroutines*each/10)
	}
	for i := 1; i < len(resets); i++ {
		if !resets[i].Start.Equal(resets[i-1].End) {
			t.Fatalf("window %d starts %v, previous ended %v: windows must abut", i, resets[i].Start, resets[i-1].End)
		}
	}
}

func TestRecorderResetWindowsAndThroughput(t *testing.T) {
	r := NewRecorder()
	for range 100 {
		r.Record(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	w1 := r.Reset()
	if w1.Count != 100 {
		t.Fatalf("first window Count = %d, want 100", w1.Count)
	}
	if want := 100 / w1.Duration().Seconds(); !within(w1.Throughput, want, 1e-9, 0) {
		t.Errorf("Throughput = %g, want Count/duration = %g", w1.Throughput, want)
	}
	if w1.Duration() < 50*time.Millisecond {
		t.Errorf("window lasted %v, want ≥ 50ms", w1.Duration())
	}
	r.Record(3 * time.Millisecond)
	w2 := r.Snapshot()
	if w2.Count != 1 || !w2.Start.Equal(w1.End) {
		t.Errorf("second window Count = %d, Start = %v; want 1 starting at the first's End %v", w2.Count, w2.Start, w1.End)
	}
	if w2.RT.P50 < 2.99 || w2.RT.P50 > 3.01 {
		t.Errorf("second window p50 = %g ms, want 3 (the first window's values gone)", w2.RT.P50)
	}
	if again := r.Snapshot(); again.Count != 1 {
		t.Errorf("Snapshot reset the window: Count = %d, want 1", again.Count)
	}
}

func TestRankInterval(t *testing.T) {
	tests := []struct {
		n      int64
		lo, hi int64
	}{
		{0, 0, 0},
		{1, 1, 1},
		{10, 8, 10},
		{100, 90, 100},
		{1000, 936, 964},
		{10000, 9457, 9543},
	}
	for _, tt := range tests {
		lo, hi := P95Interval(tt.n)
		if lo != tt.lo || hi != tt.hi {
			t.Errorf("P95Interval(%d) = %d, %d, want %d, %d", tt.n, lo, hi, tt.lo, tt.hi)
		}
	}
}

// TestCIShrinks checks that the p95 interval narrows as a window gathers
// samples from the same distribution, roughly as 1/sqrt(n).
func TestCIShrinks(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	r := NewRecorder()
	var widths []float64
	n := 0
	for _, target := range []int{100, 1000, 10000, 100000} {
		for ; n < target; n++ {
			r.Record(time.Duration(rng.ExpFloat64() * float64(10*time.Millisecond)))
		}
		widths = append(widths, r.Snapshot().P95RelWidth())
	}
	for i := 1; i < len(widths); i++ {
		if !(widths[i] < widths[i-1]) {
			t.Errorf("relative CI width did not shrink with 10x samples: %v", widths)
		}
	}
	// 1000x the samples: ~sqrt(1000) ≈ 32x narrower; ask for 10x.
	if widths[len(widths)-1] > widths[0]/10 {
		t.Errorf("relative CI width %v: want the last < first/10", widths)
	}
	// Exponential, n=100000: the interval is a few percent wide at most.
	if w := widths[len(widths)-1]; w > 0.05 {
		t.Errorf("relative CI width at n=100000 = %g, want ≤ 0.05", w)
	}
}

// TestCICoverage checks that the p95 interval contains the true p95 of an
// exponential distribution in about 95% of windows.
func TestCICoverage(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const mean = 10.0 // ms
	trueP95 := -mean * math.Log(0.05)
	const trials, n = 200, 2000
	hit := 0
	for range trials {
		r := newRecorder(1)
		for range n {
			r.Record(time.Duration(rng.ExpFloat64() * mean * float64(time.Millisecond)))
		}
		s := r.Snapshot()
		// The histogram reports the top of a bucket; allow its 0.1%.
		if s.RT.P95Low*0.999 <= trueP95 && trueP95 <= s.RT.P95High*1.001 {
			hit++
		}
	}
	if rate := float64(hit) / trials; rate < 0.88 || rate > 0.995 {
		t.Errorf("p95 CI covered the true p95 in %.1f%% of %d windows, want ≈ 95%%", 100*rate, trials)
	}
}

// BenchmarkRecordParallel measures Record from GOMAXPROCS goroutines with
// one shard (a single mutex), with several, and with the default for this
// machine, so one run shows what sharding buys here. Response times are
// lognormal around 5 ms, as a service's would be.
func BenchmarkRecordParallel(b *testing.B) {
	b.Logf("GOMAXPROCS=%d, default shards=%d", runtime.GOMAXPROCS(0), defaultShards())
	for _, shards := range slices.Compact(slices.Sorted(slices.Values([]int{1, 4, 16, defaultShards()}))) {
		name := fmt.Sprintf("shards=%d", shards)
		if shards == defaultShards() {
			name += "(default)"
		}
		b.Run(name, func(b *testing.B) {
			r := newRecorder(shards)
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				ds := make([]time.Duration, 1024)
				for i := range ds {
					ds[i] = time.Duration(math.Exp(rng.NormFloat64()) * float64(5*time.Millisecond))
				}
				i := 0
				for pb.Next() {
					r.Record(ds[i&1023])
					i++
				}
			})
		})
	}
}

// BenchmarkSnapshot measures merging the shards, which MeasureWindow does
// every tick.
func BenchmarkSnapshot(b *testing.B) {
	r := NewRecorder()
	for i := range 100000 {
		r.Record(time.Duration(i) * time.Microsecond)
	}
	b.ResetTimer()
	for b.Loop() {
		_ = r.Snapshot()
	}
}

func TestShardSize(t *testing.T) {
	if got := unsafe.Sizeof(shard{}); got != 128 {
		t.Errorf("shard is %d bytes, want 128 (two cache lines)", got)
	}
}
