package proxybench

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// LoadResult is what one load run measured.
type LoadResult struct {
	// Sent counts requests started; OK those answered 200 in full; Lost
	// the others (error, timeout, other status). Requests cut by the end
	// of a closed-loop run are neither.
	Sent int64 `json:"sent"`
	OK   int64 `json:"ok"`
	Lost int64 `json:"lost"`
	// Duration is the measured run's length; RPS is OK / Duration.
	Duration time.Duration `json:"-"`
	RPS      float64       `json:"rps"`
	// Latency quantiles in milliseconds. In an open-loop run latency runs
	// from the intended send time (so a stall delays every request behind
	// it: no coordinated omission) and a lost request counts with the time
	// it was given up after.
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) fill(r *LoadResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	q := func(p float64) float64 {
		i := min(int(p*float64(len(l.d))), len(l.d)-1)
		return ms(l.d[i])
	}
	var sum time.Duration
	for _, d := range l.d {
		sum += d
	}
	r.P50, r.P99, r.P999 = q(0.50), q(0.99), q(0.999)
	r.Max = ms(l.d[len(l.d)-1])
	r.Mean = ms(sum / time.Duration(len(l.d)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// newClient returns a keep-alive client with up to conns connections.
func newClient(conns int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			DisableCompression:  true,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// fetch makes one GET and reads the body; it reports whether the answer
// was a 200 read in full.
func fetch(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode == http.StatusOK
}

// OpenLoop sends GET url at rate requests per second for d, each at its
// intended time whatever happened to the earlier ones, and waits for the
// answers (each bounded by timeout). At most conns connections are used.
func OpenLoop(ctx context.Context, url string, rate int, d, timeout time.Duration, conns int) LoadResult {
	c := newClient(conns, timeout)
	defer c.CloseIdleConnections()
	var res LoadResult
	var lat latencies
	var ok, lost atomic.Int64
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	n := int64(d / interval)
	start := time.Now()
	for i := int64(0); i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			good := fetch(ctx, c, url)
			lat.add(time.Since(due))
			if good {
				ok.Add(1)
			} else {
				lost.Add(1)
			}
		}()
		res.Sent++
	}
	wg.Wait()
	res.Duration = time.Since(start)
	res.OK, res.Lost = ok.Load(), lost.Load()
	res.RPS = float64(res.OK) / d.Seconds()
	lat.fill(&res)
	return res
}

// ClosedLoop runs conns clients that each send GET url, wait for the
// answer and send the next, for d; it measures saturation throughput.
// Requests still waiting at the end are cancelled and not counted.
func ClosedLoop(ctx context.Context, url string, conns int, d, timeout time.Duration) LoadResult {
	c := newClient(conns, timeout)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var lat latencies
	var sent, ok, lost atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t := time.Now()
				sent.Add(1)
				good := fetch(ctx, c, url)
				switch {
				case good:
					ok.Add(1)
					lat.add(time.Since(t))
				case ctx.Err() != nil:
					sent.Add(-1) // cut by the end of the run
				default:
					lost.Add(1)
					lat.add(time.Since(t))
				}
			}
		}()
	}
	wg.Wait()
	res := LoadResult{Sent: sent.Load(), OK: ok.Load(), Lost: lost.Load(), Duration: time.Since(start)}
	res.RPS = float64(res.OK) / res.Duration.Seconds()
	lat.fill(&res)
	return res
}

// combine merges the rounds of one case: counts are summed, throughput
// and latency quantiles are the median over the rounds, Max the maximum.
func combine(rs []LoadResult) LoadResult {
	var out LoadResult
	if len(rs) == 0 {
		return out
	}
	med := func(f func(LoadResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return median(v)
	}
	for _, r := range rs {
		out.Sent += r.Sent
		out.OK += r.OK
		out.Lost += r.Lost
		out.Duration += r.Duration
		out.Max = max(out.Max, r.Max)
	}
	out.RPS = med(func(r LoadResult) float64 { return r.RPS })
	out.P50 = med(func(r LoadResult) float64 { return r.P50 })
	out.P99 = med(func(r LoadResult) float64 { return r.P99 })
	out.P999 = med(func(r LoadResult) float64 { return r.P999 })
	out.Mean = med(func(r LoadResult) float64 { return r.Mean })
	return out
}

// median returns the median of v (which it sorts); 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
