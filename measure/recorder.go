package measure

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/justrunit/justrunit"
)

// Histogram range and precision. Values are recorded in microseconds.
const (
	// MinRecordable is the smallest response time the histogram tells apart
	// from zero.
	MinRecordable = time.Microsecond
	// MaxRecordable is the largest response time the histogram holds; longer
	// ones are recorded as MaxRecordable and counted in Summary.Clamped.
	MaxRecordable = 60 * time.Second
	// SignificantDigits is the histogram's precision: values are kept to
	// within 0.1% of their size.
	SignificantDigits = 3
)

const maxMicros = int64(MaxRecordable / time.Microsecond)

// Recorder collects response times and errors from many goroutines into an
// HDR histogram, window by window. Record and RecordError are safe for
// concurrent use and cheap (tens of nanoseconds): each is a short mutex
// around a histogram. On hosts with more than two CPUs the recorder keeps
// several such shards and a recording goroutine picks one at random, so
// concurrent recorders rarely wait for each other; Snapshot and Reset merge
// the shards.
//
// The zero Recorder is not usable; call NewRecorder.
type Recorder struct {
	shards []shard
	mask   uint32

	mu     sync.Mutex // serialises Snapshot and Reset, guards start and merged
	start  time.Time
	merged *hdrhistogram.Histogram // scratch for collect
}

// shard is one part of a Recorder. It is padded to 128 bytes so the hot
// fields (the first 48 bytes) of neighbouring shards never share a 64-byte
// cache line, whatever the slice's alignment.
type shard struct {
	mu      sync.Mutex
	hist    *hdrhistogram.Histogram
	sum     int64 // exact sum of recorded durations, ns (clamped values included unclamped)
	max     int64 // exact maximum recorded duration, ns
	errors  int64
	clamped int64
	_       [128 - 48]byte
}

// NewRecorder returns a recorder whose first window starts now.
func NewRecorder() *Recorder {
	return newRecorder(defaultShards())
}

// defaultShards is one shard (one mutex) on up to two CPUs and otherwise
// one shard per CPU rounded up to a power of two, at most 16 (every shard is
// a histogram of ~140 KiB that Snapshot merges and that competes for cache).
// On the 2-CPU development machine one mutex measured faster than four
// shards (≈13 vs ≈19 ns per Record from two goroutines, see
// BenchmarkRecordParallel): with two CPUs contention is mild and a single
// histogram stays in cache. Sharding is for many-core hosts, where one
// mutex bouncing between cores is what makes recording slow; run the
// benchmark there to check.
func defaultShards() int {
	p := runtime.GOMAXPROCS(0)
	if p <= 2 {
		return 1
	}
	return min(1<<bits.Len(uint(p-1)), 16)
}

func newRecorder(shards int) *Recorder {
	r := &Recorder{shards: make([]shard, shards), mask: uint32(shards - 1), start: time.Now(), merged: newHistogram()}
	for i := range r.shards {
		r.shards[i].hist = newHistogram()
	}
	return r
}

func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(int64(MinRecordable/time.Microsecond), maxMicros, SignificantDigits)
}

func (r *Recorder) pick() *shard {
	if r.mask == 0 {
		return &r.shards[0]
	}
	// rand.Uint32 reads per-thread runtime state: no shared cache line.
	return &r.shards[rand.Uint32()&r.mask]
}

// Record records one successful response that took d. A negative d counts
// as zero; a d above MaxRecordable is recorded as MaxRecordable and counted
// as clamped, but the mean and the maximum keep its true value.
func (r *Recorder) Record(d time.Duration) {
	d = max(d, 0)
	us := int64((d + time.Microsecond/2) / time.Microsecond)
	clamped := us > maxMicros
	if clamped {
		us = maxMicros
	}
	s := r.pick()
	s.mu.Lock()
	_ = s.hist.RecordValue(us) // cannot fail: 0 ≤ us ≤ the histogram's max
	s.sum += int64(d)
	s.max = max(s.max, int64(d))
	if clamped {
		s.clamped++
	}
	s.mu.Unlock()
}

// RecordError records one failed request. Failed requests count in
// Summary.Errors only, not in the response times or the throughput.
func (r *Recorder) RecordError() {
	s := r.pick()
	s.mu.Lock()
	s.errors++
	s.mu.Unlock()
}

// Snapshot summarises the current window, from the last Reset (or the
// recorder's creation) until now, without ending it.
func (r *Recorder) Snapshot() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.collect(false)
}

// Reset ends the current window, returns its summary and starts a new one.
// A response recorded while Reset runs lands in one window or the other,
// never in both and never in neither.
func (r *Recorder) Reset() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.collect(true)
}

// collect merges the shards into a Summary, clearing them when reset is set.
// r.mu is held.
func (r *Recorder) collect(reset bool) Summary {
	merged := r.merged
	merged.Reset()
	var sum, mx, errs, clamped int64
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		merged.Merge(s.hist)
		sum += s.sum
		mx = max(mx, s.max)
		errs += s.errors
		clamped += s.clamped
		if reset {
			s.hist.Reset()
			s.sum, s.max, s.errors, s.clamped = 0, 0, 0, 0
		}
		s.mu.Unlock()
	}
	end := time.Now()
	sum0 := Summary{Start: r.start, End: end, Errors: errs, Clamped: clamped}
	if reset {
		r.start = end
	}
	return summarise(sum0, merged, sum, mx)
}

// Summary is one measurement window of a Recorder.
type Summary struct {
	// Start and End bound the window.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Count is the number of successful responses; Errors the number of
	// failed requests.
	Count  int64 `json:"count"`
	Errors int64 `json:"errors"`
	// Clamped counts responses longer than MaxRecordable, which the
	// percentiles treat as MaxRecordable.
	Clamped int64 `json:"clamped"`
	// Throughput is successful responses per second: Count / (End − Start).
	Throughput float64 `json:"throughput"`
	// RT is the response-time distribution in milliseconds, with a 95%
	// confidence interval for p95 (see P95Interval). With Count 0 it is
	// all zeros and measures nothing: Result.Observation turns it into
	// NaN, and MeasureWindow refuses such a window (ErrTooFewSamples).
	RT justrunit.ResponseTime `json:"response_time"`
}

// Duration returns the window's length.
func (s Summary) Duration() time.Duration { return s.End.Sub(s.Start) }

// P95RelWidth returns the width of the p95 confidence interval relative to
// p95, (P95High − P95Low) / P95: 0.1 means the interval spans 10% of the
// estimate. It is +Inf for an empty window and 0 when every response took
// the same (zero) time.
func (s Summary) P95RelWidth() float64 {
	if s.Count == 0 {
		return math.Inf(1)
	}
	w := s.RT.P95High - s.RT.P95Low
	if s.RT.P95 <= 0 {
		if w <= 0 {
			return 0
		}
		return math.Inf(1)
	}
	return w / s.RT.P95
}

// summarise fills s from a merged histogram (µs), the exact sum and max (ns).
func summarise(s Summary, h *hdrhistogram.Histogram, sumNs, maxNs int64) Summary {
	s.Count = h.TotalCount()
	if secs := s.Duration().Seconds(); secs > 0 {
		s.Throughput = float64(s.Count) / secs
	}
	if s.Count == 0 {
		return s
	}
	const usToMs = 1e-3
	q := func(p float64) float64 { return float64(h.ValueAtPercentile(p)) * usToMs }
	s.RT.Mean = float64(sumNs) / float64(s.Count) / 1e6
	s.RT.P50 = q(50)
	s.RT.P95 = q(95)
	s.RT.P99 = q(99)
	s.RT.Max = float64(maxNs) / 1e6
	lo, hi := P95Interval(s.Count)
	s.RT.P95Low = valueAtRank(h, lo) * usToMs
	s.RT.P95High = valueAtRank(h, hi) * usToMs
	return s
}

// valueAtRank returns the histogram's value (highest equivalent) at 1-based
// rank r of its n = TotalCount sorted samples.
func valueAtRank(h *hdrhistogram.Histogram, r int64) float64 {
	n := h.TotalCount()
	return float64(h.ValueAtPercentile(100 * float64(r) / float64(n)))
}
