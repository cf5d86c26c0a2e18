// Package loadgen is an open-loop load generator for the auction example.
//
// Requests are sent at scheduled times whatever the target does: a slow
// answer does not delay the next request, and response time is measured
// from the scheduled send time, so a stalled target shows up as long
// response times rather than as a lower offered load (no coordinated
// omission). The number of requests in flight is bounded; a request whose
// time comes while the bound is reached is not sent and is counted as
// dropped.
//
// Arrivals are either evenly spaced or a Poisson process, at a constant
// rate, a stepped rate ([Step]) or a rate changed while running
// ([Generator.SetRate]). Request types follow a [Mix]; both the arrival
// times and the requests come from random sources seeded with
// [Config.Seed], so a run is repeatable.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Defaults for [Config].
const (
	// DefaultMaxOutstanding is the default bound on requests in flight.
	DefaultMaxOutstanding = 512
	// DefaultTimeout is the default timeout of one request.
	DefaultTimeout = 10 * time.Second
	// DefaultInterval is the default reporting interval.
	DefaultInterval = time.Second
	// DefaultItems is the default number of items requests choose from,
	// as many as the data tier seeds by default.
	DefaultItems = 1000
	// DefaultUsers is the default number of users requests choose from.
	DefaultUsers = 1000
)

// Arrival is how arrivals are spaced.
type Arrival string

const (
	// Poisson spaces arrivals by exponentially distributed gaps: the
	// arrivals of many independent users.
	Poisson Arrival = "poisson"
	// Uniform spaces arrivals evenly, 1/rate apart.
	Uniform Arrival = "uniform"
)

// Config configures a load run.
type Config struct {
	// Target is the base URL of the web (or app) tier, e.g.
	// http://127.0.0.1:8080.
	Target string
	// Rate is the request rate, per second, when Steps is empty.
	Rate float64
	// Steps is a stepped rate; it overrides Rate. Past the last step the
	// last rate holds.
	Steps []Step
	// Duration is how long requests are scheduled. 0 means the total of
	// Steps, or until the context is done when there are no steps.
	Duration time.Duration
	// Mix chooses request types; the zero Mix means RUBiS.
	Mix Mix
	// Arrival spaces arrivals; "" means Poisson.
	Arrival Arrival
	// Seed seeds the arrival times and the request choices.
	Seed uint64
	// MaxOutstanding bounds the requests in flight; 0 means
	// DefaultMaxOutstanding.
	MaxOutstanding int
	// Timeout bounds one request, from when it is sent; 0 means
	// DefaultTimeout. A request that times out is an error.
	Timeout time.Duration
	// Interval is the length of the reporting intervals; 0 means
	// DefaultInterval.
	Interval time.Duration
	// Items and Users are how many items and users the site was seeded
	// with; requests use ids in 1..Items and 1..Users. 0 means
	// DefaultItems and DefaultUsers.
	Items, Users int
	// OnInterval, if set, is called with each interval's figures as the
	// interval ends, from one goroutine.
	OnInterval func(Interval)
	// Client sends the requests; nil means a client with keep-alive sized
	// for MaxOutstanding.
	Client *http.Client
}

// ConfigError is a bad configuration value.
type ConfigError struct {
	Field string
	Value any
	Err   error
}

// Error names the field, its value and what is wrong with it.
func (e *ConfigError) Error() string {
	return fmt.Sprintf("loadgen: %s = %v: %v", e.Field, e.Value, e.Err)
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// Counts are request counts. Completed requests got an answer that counts
// as served: a 2xx, or a 409 to a bid that lost a race (also counted in
// Rejected). Errors got a transport error, a timeout or any other status.
// Aborted requests were in flight when the run was stopped early and count
// as neither.
type Counts struct {
	Scheduled int64 `json:"scheduled"`
	Sent      int64 `json:"sent"`
	Dropped   int64 `json:"dropped"`
	Completed int64 `json:"completed"`
	Rejected  int64 `json:"rejected"`
	Errors    int64 `json:"errors"`
	Aborted   int64 `json:"aborted,omitempty"`
}

// Latency summarises the response times of completed requests, measured
// from their scheduled send time, in milliseconds.
type Latency struct {
	Samples int64   `json:"samples"`
	MeanMS  float64 `json:"mean_ms"`
	P50MS   float64 `json:"p50_ms"`
	P95MS   float64 `json:"p95_ms"`
	P99MS   float64 `json:"p99_ms"`
	MaxMS   float64 `json:"max_ms"`
}

// Interval is what happened in one reporting interval. Requests are counted
// as scheduled, sent and dropped in the interval of their scheduled time,
// and as completed or failed in the interval they finished in.
type Interval struct {
	Index      int     `json:"index"`
	StartS     float64 `json:"start_s"` // since the run started
	EndS       float64 `json:"end_s"`
	Rate       float64 `json:"rate"` // target rate at the end of the interval
	Throughput float64 `json:"throughput"`
	Counts
	Latency
}

// KindSummary is the summary of one request type.
type KindSummary struct {
	Counts
	Latency
}

// Summary is the result of a run.
type Summary struct {
	Target      string    `json:"target"`
	Mix         string    `json:"mix"`
	Arrival     Arrival   `json:"arrival"`
	Seed        uint64    `json:"seed"`
	StartedAt   time.Time `json:"started_at"`
	DurationS   float64   `json:"duration_s"` // how long requests were scheduled
	ElapsedS    float64   `json:"elapsed_s"`  // including waiting for the last answers
	Interrupted bool      `json:"interrupted,omitempty"`
	OfferedRate float64   `json:"offered_rate"` // scheduled per second
	Throughput  float64   `json:"throughput"`   // completed per second of the whole run (elapsed_s)
	Counts
	Latency
	ByKind     map[Kind]KindSummary `json:"by_kind"`
	ErrorKinds map[string]int64     `json:"error_kinds,omitempty"` // e.g. "timeout", "status 502"
	Intervals  []Interval           `json:"intervals,omitempty"`
}

// Generator runs a load. Create it with New, run it once with Run; SetRate
// may be called from any goroutine while it runs.
type Generator struct {
	cfg    Config
	target *url.URL
	choose *chooser

	mu     sync.Mutex
	rate   float64
	rateCh chan struct{} // a rate change, for a scheduler waiting out a long gap
	stats  *stats
}

// New checks cfg and returns a generator.
func New(cfg Config) (*Generator, error) {
	u, err := url.Parse(cfg.Target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &ConfigError{"target", cfg.Target, errors.New("want http://host:port")}
	}
	if len(cfg.Steps) == 0 && (cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0)) {
		return nil, &ConfigError{"rate", cfg.Rate, errors.New("want a rate >= 0 in requests/s")}
	}
	for i, s := range cfg.Steps {
		if s.Duration <= 0 || s.Rate < 0 || math.IsNaN(s.Rate) || math.IsInf(s.Rate, 0) {
			return nil, &ConfigError{"steps[" + strconv.Itoa(i) + "]", s, errors.New("want a positive duration and a rate >= 0")}
		}
	}
	if cfg.Duration < 0 {
		return nil, &ConfigError{"duration", cfg.Duration, errors.New("want >= 0")}
	}
	if cfg.Mix.Name == "" && cfg.Mix.Weights == nil {
		cfg.Mix = RUBiS
	}
	switch cfg.Arrival {
	case "":
		cfg.Arrival = Poisson
	case Poisson, Uniform:
	default:
		return nil, &ConfigError{"arrival", cfg.Arrival, errors.New("want poisson or uniform")}
	}
	if cfg.MaxOutstanding == 0 {
		cfg.MaxOutstanding = DefaultMaxOutstanding
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Items == 0 {
		cfg.Items = DefaultItems
	}
	if cfg.Users == 0 {
		cfg.Users = DefaultUsers
	}
	for _, f := range []struct {
		name string
		bad  bool
		v    any
	}{
		{"max_outstanding", cfg.MaxOutstanding < 0, cfg.MaxOutstanding},
		{"timeout", cfg.Timeout < 0, cfg.Timeout},
		{"interval", cfg.Interval < time.Millisecond, cfg.Interval},
		{"items", cfg.Items < 0, cfg.Items},
		{"users", cfg.Users < 0, cfg.Users},
	} {
		if f.bad {
			return nil, &ConfigError{f.name, f.v, errors.New("out of range")}
		}
	}
	ch, err := newChooser(cfg.Mix, cfg.Seed, cfg.Items, cfg.Users)
	if err != nil {
		return nil, &ConfigError{"mix", cfg.Mix.Name, err}
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout: cfg.Timeout,
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:        cfg.MaxOutstanding,
				MaxIdleConnsPerHost: cfg.MaxOutstanding,
				IdleConnTimeout:     90 * time.Second,
				DisableCompression:  true,
			},
		}
	}
	g := &Generator{cfg: cfg, target: u, choose: ch, rate: cfg.Rate, rateCh: make(chan struct{}, 1)}
	if len(cfg.Steps) > 0 {
		g.rate = cfg.Steps[0].Rate
	}
	return g, nil
}

// Run runs a load described by cfg; see [Generator.Run].
func Run(ctx context.Context, cfg Config) (Summary, error) {
	g, err := New(cfg)
	if err != nil {
		return Summary{}, err
	}
	return g.Run(ctx)
}

// Rate is the current target rate, in requests per second.
func (g *Generator) Rate() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rate
}

// SetRate changes the target rate from now on; with Steps, until the next
// step begins.
func (g *Generator) SetRate(r float64) {
	if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return
	}
	g.mu.Lock()
	g.rate = r
	g.mu.Unlock()
	select {
	case g.rateCh <- struct{}{}:
	default:
	}
}

// idleTick is how often a generator at rate 0 looks at its rate again.
const idleTick = 10 * time.Millisecond

// Run sends requests until the duration is over or ctx is done, waits for
// the answers in flight (each bounded by the timeout) and returns the
// summary. When ctx ends the run early it cancels the requests in flight
// and returns what it measured, marked Interrupted; the error is nil then
// too. Run may be called once.
func (g *Generator) Run(ctx context.Context) (Summary, error) {
	g.mu.Lock()
	ran := g.stats != nil
	g.stats = newStats(time.Now())
	g.mu.Unlock()
	if ran {
		return Summary{}, errors.New("loadgen: Generator.Run called twice")
	}
	cfg := g.cfg
	end := cfg.Duration
	if end == 0 && len(cfg.Steps) > 0 {
		end = totalDuration(cfg.Steps)
	}
	arrivals := rand.New(rand.NewPCG(cfg.Seed, 2))
	reqCtx, cancelReqs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelReqs()

	start := time.Now()
	g.stats.lastCut = start
	reporterDone := make(chan struct{})
	stopReporter := make(chan struct{})
	go g.report(start, stopReporter, reporterDone)

	sem := make(chan struct{}, cfg.MaxOutstanding)
	var wg sync.WaitGroup
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var (
		sched       time.Duration // next arrival, from start
		step        int
		stepEnd     time.Duration
		interrupted bool
	)
	if len(cfg.Steps) > 0 {
		stepEnd = cfg.Steps[0].Duration
	}
loop:
	for {
		for len(cfg.Steps) > 0 && step < len(cfg.Steps)-1 && sched >= stepEnd {
			step++
			stepEnd += cfg.Steps[step].Duration
			g.mu.Lock()
			g.rate = cfg.Steps[step].Rate
			g.mu.Unlock()
		}
		rate := g.Rate()
		idle := rate <= 0
		if idle {
			sched += idleTick
		} else {
			gap := 1 / rate
			if cfg.Arrival == Poisson {
				gap *= arrivals.ExpFloat64()
			}
			next := sched + time.Duration(min(gap, 3600)*float64(time.Second)) // SetRate cuts a long gap short
			if len(cfg.Steps) > 0 && step < len(cfg.Steps)-1 && next > stepEnd {
				// A gap drawn at this step's rate does not run into the
				// next step: that step starts at its start, drawing at
				// its own rate (exact for Poisson arrivals, which have
				// no memory).
				sched = stepEnd
				continue
			}
			sched = next
		}
		if end > 0 && sched >= end {
			sched = end
			break
		}
		if d := time.Until(start.Add(sched)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				interrupted = true
				break loop
			case <-g.rateCh:
				// Start over from now at the new rate rather than wait out
				// a gap drawn at the old one.
				sched = time.Since(start)
				continue
			}
		} else if ctx.Err() != nil {
			interrupted = true
			break
		}
		if idle {
			continue
		}
		req := g.choose.next()
		at := start.Add(sched)
		select {
		case sem <- struct{}{}:
			g.stats.scheduled(req.kind, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.send(reqCtx, req, at)
				<-sem
			}()
		default:
			g.stats.scheduled(req.kind, false)
		}
	}
	scheduleEnd := time.Since(start)
	if !interrupted {
		scheduleEnd = sched
	}
	if interrupted {
		cancelReqs()
	}
	wg.Wait()
	close(stopReporter)
	<-reporterDone

	s := g.stats.summary()
	s.Target, s.Mix, s.Arrival, s.Seed = cfg.Target, cfg.Mix.Name, cfg.Arrival, cfg.Seed
	s.StartedAt = start
	s.DurationS = round(scheduleEnd.Seconds(), 3)
	s.ElapsedS = round(time.Since(start).Seconds(), 3)
	s.Interrupted = interrupted
	if d := scheduleEnd.Seconds(); d > 0 {
		s.OfferedRate = round(float64(s.Scheduled)/d, 2)
	}
	// Over the whole run: the answers that came after the last request was
	// sent took that time too (an overloaded target otherwise looks as
	// fast as the load offered to it).
	if d := time.Since(start).Seconds(); d > 0 {
		s.Throughput = round(float64(s.Completed)/d, 2)
	}
	return s, nil
}

// send sends one request and records its outcome.
func (g *Generator) send(ctx context.Context, r request, at time.Time) {
	u := *g.target
	path, query, _ := strings.Cut(r.path, "?")
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = query
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		g.stats.done(r.kind, 0, "bad request")
		return
	}
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.cfg.Client.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			g.stats.aborted(r.kind)
		case isTimeout(err):
			g.stats.done(r.kind, 0, "timeout")
		default:
			g.stats.done(r.kind, 0, "transport")
		}
		return
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	now := time.Now()
	switch {
	case err != nil && ctx.Err() != nil:
		g.stats.aborted(r.kind)
	case err != nil:
		g.stats.done(r.kind, 0, "reading body")
	case resp.StatusCode/100 == 2:
		g.stats.done(r.kind, now.Sub(at), "")
	case resp.StatusCode == http.StatusConflict && r.kind == Bid:
		g.stats.done(r.kind, now.Sub(at), "rejected")
	default:
		g.stats.done(r.kind, 0, "status "+strconv.Itoa(resp.StatusCode))
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// report emits an interval every cfg.Interval, and the last, partial one
// when stop closes.
func (g *Generator) report(start time.Time, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case now := <-t.C:
			g.emit(g.stats.cut(i, start, now, g.Rate()))
		case <-stop:
			now := time.Now()
			if iv := g.stats.cut(i, start, now, g.Rate()); iv.EndS-iv.StartS >= 0.001 || iv.Scheduled+iv.Completed+iv.Errors > 0 {
				g.emit(iv)
			}
			return
		}
	}
}

func (g *Generator) emit(iv Interval) {
	g.stats.mu.Lock()
	g.stats.intervals = append(g.stats.intervals, iv)
	g.stats.mu.Unlock()
	if g.cfg.OnInterval != nil {
		g.cfg.OnInterval(iv)
	}
}

// acc accumulates counts and response times.
type acc struct {
	Counts
	hist *hdrhistogram.Histogram // microseconds
	sum  time.Duration
	max  time.Duration
}

const maxRecordable = 60 * time.Second

func newAcc() *acc {
	return &acc{hist: hdrhistogram.New(1, int64(maxRecordable/time.Microsecond), 3)}
}

func (a *acc) record(d time.Duration) {
	a.sum += d
	a.max = max(a.max, d)
	us := min(max(int64(d/time.Microsecond), 1), int64(maxRecordable/time.Microsecond))
	_ = a.hist.RecordValue(us)
}

func (a *acc) latency() Latency {
	n := a.hist.TotalCount()
	if n == 0 {
		return Latency{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Samples: n,
		MeanMS:  round(float64(a.sum)/float64(n)/float64(time.Millisecond), 3),
		P50MS:   ms(a.hist.ValueAtQuantile(50)),
		P95MS:   ms(a.hist.ValueAtQuantile(95)),
		P99MS:   ms(a.hist.ValueAtQuantile(99)),
		MaxMS:   round(float64(a.max)/float64(time.Millisecond), 3),
	}
}

// round rounds x to digits decimals: figures are printed, and noise digits
// only hide them.
func round(x float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}

// stats is shared by the scheduler, the senders and the reporter.
type stats struct {
	mu        sync.Mutex
	lastCut   time.Time
	interval  *acc
	total     *acc
	byKind    map[Kind]*acc
	errKinds  map[string]int64
	intervals []Interval
}

func newStats(start time.Time) *stats {
	s := &stats{lastCut: start, interval: newAcc(), total: newAcc(), byKind: map[Kind]*acc{}, errKinds: map[string]int64{}}
	for _, k := range Kinds {
		s.byKind[k] = newAcc()
	}
	return s
}

func (s *stats) scheduled(k Kind, sent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range []*acc{s.interval, s.total, s.byKind[k]} {
		a.Scheduled++
		if sent {
			a.Sent++
		} else {
			a.Dropped++
		}
	}
}

func (s *stats) aborted(k Kind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range []*acc{s.interval, s.total, s.byKind[k]} {
		a.Aborted++
	}
}

// done records a finished request: outcome "" is a success, "rejected" a
// lost bid (also a success), anything else an error of that kind.
func (s *stats) done(k Kind, d time.Duration, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range []*acc{s.interval, s.total, s.byKind[k]} {
		switch outcome {
		case "", "rejected":
			a.Completed++
			if outcome == "rejected" {
				a.Rejected++
			}
			a.record(d)
		default:
			a.Errors++
		}
	}
	if outcome != "" && outcome != "rejected" {
		s.errKinds[outcome]++
	}
}

// cut ends the current interval at now and starts the next.
func (s *stats) cut(i int, start, now time.Time, rate float64) Interval {
	s.mu.Lock()
	a := s.interval
	s.interval = newAcc()
	from := s.lastCut
	s.lastCut = now
	s.mu.Unlock()
	iv := Interval{
		Index: i, StartS: round(from.Sub(start).Seconds(), 3), EndS: round(now.Sub(start).Seconds(), 3), Rate: rate,
		Counts: a.Counts, Latency: a.latency(),
	}
	if d := now.Sub(from).Seconds(); d > 0 {
		iv.Throughput = round(float64(iv.Completed)/d, 2)
	}
	return iv
}

func (s *stats) summary() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := Summary{Counts: s.total.Counts, Latency: s.total.latency(), ByKind: map[Kind]KindSummary{},
		Intervals: slices.Clone(s.intervals)}
	for k, a := range s.byKind {
		if a.Scheduled > 0 {
			sum.ByKind[k] = KindSummary{Counts: a.Counts, Latency: a.latency()}
		}
	}
	if len(s.errKinds) > 0 {
		sum.ErrorKinds = map[string]int64{}
		for k, v := range s.errKinds {
			sum.ErrorKinds[k] = v
		}
	}
	return sum
}
