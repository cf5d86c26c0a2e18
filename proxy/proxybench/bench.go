// Package proxybench measures the in-proxy against a direct connection and
// against Debian's nginx (proxy_pass alone, and with the mirror directive),
// all on loopback and in one run, for "justrunit bench proxy".
//
// The on-line server answers after 1 ms with a 1 KiB body; the clones are
// the same server (healthy), one 10x slower (slow) and one that accepts and
// never answers (hung). Each case gets an open-loop run at a fixed rate
// (latency, measured from the intended send time) and a closed-loop run at
// saturation (throughput).
package proxybench

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Options configures a benchmark run. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// Rate is the open-loop rate in requests per second.
	Rate int
	// Open and Closed are the lengths of the measured open-loop and
	// closed-loop runs of each case in each round; Warmup runs before
	// each at the open-loop rate and is not measured.
	Open, Closed, Warmup time.Duration
	// Rounds is how many times every case is measured; the cases are
	// interleaved and the rounds combined by median.
	Rounds int
	// Connections is the number of closed-loop clients (one keep-alive
	// connection each).
	Connections int
	// OpenConnections bounds the open-loop client's connections.
	OpenConnections int
	// Timeout bounds one request; a request that takes longer is lost.
	Timeout time.Duration
	// Delay and BodySize describe the on-line server; the slow clone
	// answers after SlowFactor × Delay.
	Delay      time.Duration
	BodySize   int
	SlowFactor int
	// Nginx is the nginx binary; "" looks it up, "-" skips nginx.
	Nginx string
	// InProxyCommand, when set, runs the in-proxy as its own process, like
	// nginx: the command (e.g. justrunit proxy in) is given --listen,
	// --online and --clone flags and must print {"listen": "host:port"}
	// on its first line of output and its final statistics (InStats) as
	// JSON when sent SIGTERM. Empty: the in-proxy runs in this process.
	InProxyCommand []string
	// UpstreamCommand, when set, runs the healthy and the slow clone each
	// as its own process in CloneClass, the way the local platform runs a
	// clone below the on-line instances it shares a machine with: the
	// command (e.g. justrunit bench upstream) is given --delay, --body and
	// --idle or --nice and must print {"listen": "host:port"} on its first
	// line of output and stop on SIGTERM. Empty: the clones run in this
	// process, at the on-line server's priority.
	UpstreamCommand []string
	// CloneClass is the clones' scheduling class with UpstreamCommand:
	// ClassNormal at CloneNice (in DefaultOptions, the local platform's
	// default) or ClassIdle (a site's clone_class: idle).
	CloneClass string
	// CloneNice is the clones' nice value in ClassNormal (in
	// DefaultOptions: DefaultCloneNice; 0 is the on-line server's).
	CloneNice int
	// Settle is the longest the benchmark waits, before each case, for
	// the machine's CPUs to be quiet (see waitQuiet); negative: it does
	// not wait.
	Settle time.Duration
}

// The clones' scheduling classes (Options.CloneClass).
const (
	// ClassIdle is the idle scheduling class (SCHED_IDLE), the local
	// platform's for a clone with clone_class: idle: an on-line task that
	// wakes takes the CPU from it at once. A process has no CPU weight
	// besides the class's (3, against 1024 at nice 0); a clone of the local
	// platform keeps its cgroup's.
	ClassIdle = "idle"
	// ClassNormal is the ordinary class at Options.CloneNice.
	ClassNormal = "normal"
)

// DefaultCloneNice is the clones' nice value in ClassNormal: the local
// platform gives a clone 1/8 of the CPU weight of an on-line instance with
// the same share (cloneShares against groupShares in platform/local), and
// in the kernel's table of weights nice 9 (137) is the nearest step to 1/8
// of nice 0's (1024).
const DefaultCloneNice = 9

// startClone starts a clone upstream answering after delay: in its own
// process when opts.UpstreamCommand is set, else in this one.
func startClone(ctx context.Context, opts Options, delay time.Duration) (server, error) {
	if len(opts.UpstreamCommand) == 0 {
		return StartUpstream(delay, opts.BodySize)
	}
	return startChildUpstream(ctx, opts.UpstreamCommand, delay, opts.BodySize, opts.CloneClass, opts.CloneNice)
}

// DefaultOptions returns the options of the documented benchmark.
func DefaultOptions() Options {
	return Options{
		Rate:            2000,
		Open:            3 * time.Second, // 6,000 requests a round: a stall of a few ms moves no p99
		Closed:          1500 * time.Millisecond,
		Warmup:          300 * time.Millisecond,
		Rounds:          5,
		Connections:     64,
		OpenConnections: 512,
		Timeout:         5 * time.Second,
		Delay:           time.Millisecond,
		BodySize:        1024,
		SlowFactor:      10,
		CloneClass:      ClassNormal,
		CloneNice:       DefaultCloneNice,
		Settle:          10 * time.Second,
	}
}

func (o *Options) fill() {
	d := DefaultOptions()
	if o.Rate <= 0 {
		o.Rate = d.Rate
	}
	if o.Open <= 0 {
		o.Open = d.Open
	}
	if o.Closed <= 0 {
		o.Closed = d.Closed
	}
	if o.Rounds <= 0 {
		o.Rounds = d.Rounds
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Connections <= 0 {
		o.Connections = d.Connections
	}
	if o.OpenConnections <= 0 {
		o.OpenConnections = d.OpenConnections
	}
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.Delay <= 0 {
		o.Delay = d.Delay
	}
	if o.BodySize <= 0 {
		o.BodySize = d.BodySize
	}
	if o.SlowFactor <= 0 {
		o.SlowFactor = d.SlowFactor
	}
	if o.CloneClass == "" {
		o.CloneClass = d.CloneClass
	}
	if o.Settle == 0 {
		o.Settle = d.Settle
	}
}

// Case is one configuration's two runs.
type Case struct {
	Name string `json:"name"`
	// What describes the path measured.
	What   string     `json:"what"`
	Open   LoadResult `json:"open_loop"`
	Closed LoadResult `json:"closed_loop"`
	// Clone holds the in-proxy's figures for the clone, when there is one.
	Clone *CloneFigures `json:"clone,omitempty"`
	// RoundsP99 and RoundsRPS are each round's open-loop p99 and
	// closed-loop throughput; Open and Closed combine the rounds (median
	// of the quantiles and of the throughput, sums of the counts).
	RoundsP99 []float64 `json:"rounds_p99_ms"`
	RoundsRPS []float64 `json:"rounds_rps"`
	// RoundsSettleS is how long each round waited for the machine to be
	// quiet before the case; RoundsBusy how busy the machine's CPUs were
	// then (a fraction of all of them, over the last quarter second; -1
	// where that could not be read). Empty when the run did not wait.
	RoundsSettleS []float64 `json:"rounds_settle_s,omitempty"`
	RoundsBusy    []float64 `json:"rounds_busy,omitempty"`
}

// CloneFigures is what the in-proxy reported for the clone over both runs.
type CloneFigures struct {
	Sent    int64   `json:"sent"`
	Dropped int64   `json:"dropped"`
	Errors  int64   `json:"errors"`
	P99     float64 `json:"p99_ms"`
}

// Lost is the on-line requests the case lost, in both runs.
func (c *Case) Lost() int64 { return c.Open.Lost + c.Closed.Lost }

// NginxFigures are one nginx case's raw figures, and its p99 against
// direct's, taken as the in-proxy's are (Ratios): what the same hop costs
// nginx on this machine.
type NginxFigures struct {
	P99      float64  `json:"p99_ms"`
	RPS      float64  `json:"rps"`
	P99Ratio *float64 `json:"p99_ratio"`
}

// Ratios compares a case with a reference case. Each ratio is the median
// over the rounds of that round's ratio.
type Ratios struct {
	// P99Ratio is the case's open-loop p99 over the reference's.
	P99Ratio *float64 `json:"p99_ratio"`
	// ThroughputRatio is the case's closed-loop throughput over the
	// reference's.
	ThroughputRatio *float64 `json:"throughput_ratio,omitempty"`
	// Lost counts the case's lost on-line requests.
	Lost int64 `json:"lost"`
	// Reference names the case the ratios divide by.
	Reference string `json:"reference"`
}

// HealthyRatios are the healthy-clone case's ratios.
type HealthyRatios struct {
	Ratios
	// ThroughputVsNginxMirror is the closed-loop throughput over nginx's
	// with mirror to the healthy clone; null without nginx.
	ThroughputVsNginxMirror *float64 `json:"throughput_vs_nginx_mirror"`
}

// Report is a benchmark run's result; its JSON form is the command
// contract of "justrunit bench proxy --json".
type Report struct {
	Settings Settings `json:"settings"`
	Cases    []*Case  `json:"cases"`
	// NoClone compares the in-proxy without clone with direct; Healthy
	// the in-proxy with a healthy clone with direct (and nginx with
	// mirror); Slow and Hung the slow- and hung-clone cases with the
	// healthy one.
	NoClone Ratios        `json:"no_clone"`
	Healthy HealthyRatios `json:"healthy"`
	Slow    Ratios        `json:"slow"`
	Hung    Ratios        `json:"hung"`
	Nginx   struct {
		Version    string        `json:"version,omitempty"`
		Proxy      *NginxFigures `json:"proxy"`
		Mirror     *NginxFigures `json:"mirror"`
		MirrorHung *NginxFigures `json:"mirror_hung"`
	} `json:"nginx"`
	// Targets says which of the targets this run met.
	Targets map[string]bool `json:"targets"`
	// Notes explain anything a reader needs to read the figures right.
	Notes []string `json:"notes,omitempty"`
}

// Settings records how the run was made.
type Settings struct {
	Rate        int     `json:"rate"`
	OpenS       float64 `json:"open_s"`
	ClosedS     float64 `json:"closed_s"`
	WarmupS     float64 `json:"warmup_s"`
	Rounds      int     `json:"rounds"`
	Connections int     `json:"connections"`
	TimeoutS    float64 `json:"timeout_s"`
	DelayMs     float64 `json:"server_delay_ms"`
	BodyBytes   int     `json:"body_bytes"`
	SlowDelayMs float64 `json:"slow_delay_ms"`
	// SettleMaxS is the longest wait for a quiet machine before each
	// case; 0: no wait.
	SettleMaxS float64 `json:"settle_max_s"`
	// CloneClass is the clones' scheduling class (ClassIdle or
	// ClassNormal); empty when they run in the benchmark's process.
	CloneClass string `json:"clone_class,omitempty"`
	// CloneNice is the clones' nice value in ClassNormal, else null.
	CloneNice *int `json:"clone_nice"`
	CPUs      int  `json:"cpus"`
	// HarnessGOGC is the GOGC of the benchmark's process (the load
	// generator and the on-line server): harnessGOGC unless set in the
	// environment (0: off or unparsable).
	HarnessGOGC int `json:"harness_gogc"`
}

// harnessGOGC is the benchmark process's GOGC unless the environment sets
// one (see Run).
const harnessGOGC = 800

// Run runs every case and returns the report. progress, when not nil,
// receives a line per step.
func Run(ctx context.Context, opts Options, progress io.Writer) (*Report, error) {
	opts.fill()
	if opts.CloneClass != ClassIdle && opts.CloneClass != ClassNormal {
		return nil, fmt.Errorf("clone class %q: want %s or %s", opts.CloneClass, ClassIdle, ClassNormal)
	}
	say := func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
	rep := &Report{Settings: Settings{
		Rate: opts.Rate, OpenS: opts.Open.Seconds(), ClosedS: opts.Closed.Seconds(), WarmupS: opts.Warmup.Seconds(),
		Rounds: opts.Rounds, Connections: opts.Connections, TimeoutS: opts.Timeout.Seconds(), DelayMs: ms(opts.Delay),
		BodyBytes: opts.BodySize, SlowDelayMs: ms(opts.Delay * time.Duration(opts.SlowFactor)), CPUs: runtime.NumCPU(),
		SettleMaxS: max(opts.Settle, 0).Seconds(),
	}}
	if len(opts.UpstreamCommand) > 0 {
		rep.Settings.CloneClass = opts.CloneClass
		if opts.CloneClass == ClassNormal {
			rep.Settings.CloneNice = &opts.CloneNice
		}
	}

	// The load generator's own garbage collection is the largest source of
	// noise in its latencies: on a 2-CPU machine, twelve open-loop runs
	// straight at the on-line server had p99s of 2.8-5.2 ms with Go's
	// default GOGC=100 (about four collections a second) and 2.5-2.9 ms
	// with GOGC=800. It hits every case alike, but it swamps the
	// differences between them.
	rep.Settings.HarnessGOGC = harnessGOGC
	if g := os.Getenv("GOGC"); g != "" {
		rep.Settings.HarnessGOGC, _ = strconv.Atoi(g)
	} else {
		defer debug.SetGCPercent(debug.SetGCPercent(harnessGOGC))
	}

	online, err := StartUpstream(opts.Delay, opts.BodySize)
	if err != nil {
		return nil, err
	}
	defer online.Close()
	healthy, err := startClone(ctx, opts, opts.Delay)
	if err != nil {
		return nil, fmt.Errorf("healthy clone: %w", err)
	}
	defer healthy.Close()
	slow, err := startClone(ctx, opts, opts.Delay*time.Duration(opts.SlowFactor))
	if err != nil {
		return nil, fmt.Errorf("slow clone: %w", err)
	}
	defer slow.Close()
	hung, err := StartHung()
	if err != nil {
		return nil, err
	}
	defer hung.Close()

	// Start every path first, then measure them in interleaved rounds, so
	// that a burst of load from elsewhere on the machine hits every case
	// alike rather than one of them.
	type target struct {
		c      *Case
		url    string
		proxy  inProxy
		hung   bool // copies or mirrors to the hung clone
		rounds []*Case
		// settles are the waits for a quiet machine before each round.
		settles []settle
	}
	var targets []*target
	defer func() {
		for _, t := range targets {
			if t.proxy != nil {
				_, _ = t.proxy.stop()
			}
		}
	}()
	switch {
	case len(opts.UpstreamCommand) > 0 && opts.CloneClass == ClassIdle:
		rep.Notes = append(rep.Notes, "the healthy and slow clones run in their own process in the idle scheduling class, as the local platform runs a clone with clone_class: idle")
	case len(opts.UpstreamCommand) > 0:
		rep.Notes = append(rep.Notes, fmt.Sprintf("the healthy and slow clones run in their own process at nice %d: "+
			"the local platform gives a clone 1/8 of an on-line instance's CPU weight, and nice %d is the nearest step to that below the on-line server's nice 0", opts.CloneNice, opts.CloneNice))
	default:
		rep.Notes = append(rep.Notes, "the clones run in this process, at the on-line server's priority")
	}
	targets = append(targets, &target{c: &Case{Name: "direct", What: "client → on-line server"}, url: online.URL})
	for _, k := range []struct{ name, what, clone string }{
		{"proxy", "client → in-proxy (no clone) → on-line", ""},
		{"proxy_healthy", "client → in-proxy → on-line, copies to a healthy clone", healthy.base()},
		{"proxy_slow", fmt.Sprintf("client → in-proxy → on-line, copies to a %dx slower clone", opts.SlowFactor), slow.base()},
		{"proxy_hung", "client → in-proxy → on-line, copies to a hung clone", hung.URL},
	} {
		var p inProxy
		if len(opts.InProxyCommand) > 0 {
			p, err = startChildInProxy(ctx, opts.InProxyCommand, online.URL, k.clone)
		} else {
			p, err = startLocalInProxy(ctx, online.URL, k.clone)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k.name, err)
		}
		targets = append(targets, &target{c: &Case{Name: k.name, What: k.what}, url: p.url(), proxy: p, hung: k.clone == hung.URL})
	}

	bin := opts.Nginx
	if bin == "" {
		bin = FindNginx()
	}
	var ngx *Nginx
	switch {
	case bin == "-":
		rep.Notes = append(rep.Notes, "nginx skipped (--nginx -): nginx figures are null")
	case bin == "":
		rep.Notes = append(rep.Notes, "nginx not found (install Debian's nginx: apt-get install nginx): nginx figures are null")
	default:
		ngx, err = StartNginx(ctx, bin, hostPort(online.URL), hostPort(healthy.base()), hostPort(hung.URL))
		if err != nil {
			rep.Notes = append(rep.Notes, "nginx did not start, nginx figures are null: "+err.Error())
			ngx = nil
			break
		}
		defer ngx.Close()
		rep.Nginx.Version = ngx.Version
		targets = append(targets,
			&target{c: &Case{Name: "nginx_proxy", What: "client → nginx proxy_pass → on-line"}, url: ngx.Proxy},
			&target{c: &Case{Name: "nginx_mirror", What: "client → nginx proxy_pass + mirror to the healthy clone"}, url: ngx.Mirror},
			&target{c: &Case{Name: "nginx_mirror_hung", What: "client → nginx proxy_pass + mirror to the hung clone"}, url: ngx.MirrorHung, hung: true})
	}

	for r := range opts.Rounds {
		for i := range targets {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			t := targets[(i+r)%len(targets)] // rotate: no case always runs first
			u := t.url + "/item"
			settled := ""
			if opts.Settle > 0 {
				st := waitQuiet(ctx, procCPUTimes, opts.Settle)
				t.settles = append(t.settles, st)
				settled = fmt.Sprintf(" | after %.1f s, CPUs %.0f%% busy", st.Waited.Seconds(), 100*st.Busy)
				if st.Busy < 0 {
					settled = " | CPU use unknown (no /proc/stat)"
				}
			}
			if opts.Warmup > 0 {
				OpenLoop(ctx, u, opts.Rate, opts.Warmup, opts.Timeout, opts.OpenConnections)
			}
			rc := &Case{
				Open:   OpenLoop(ctx, u, opts.Rate, opts.Open, opts.Timeout, opts.OpenConnections),
				Closed: ClosedLoop(ctx, u, opts.Connections, opts.Closed, opts.Timeout),
			}
			t.rounds = append(t.rounds, rc)
			if t.hung {
				// What still waits on the hung clone (nginx keeps a mirror
				// subrequest 60 s) would weigh on the cases that follow.
				hung.dropConns()
			}
			say("round %d/%d %-18s open loop p50 %7.2f ms p99 %7.2f ms lost %4d | closed loop %6.0f req/s lost %d%s",
				r+1, opts.Rounds, t.c.Name, rc.Open.P50, rc.Open.P99, rc.Open.Lost, rc.Closed.RPS, rc.Closed.Lost, settled)
		}
	}

	cases := map[string]*Case{}
	var unsettled []string
	for _, t := range targets {
		c := t.c
		var opens, closeds []LoadResult
		for _, rc := range t.rounds {
			opens, closeds = append(opens, rc.Open), append(closeds, rc.Closed)
			c.RoundsP99 = append(c.RoundsP99, rc.Open.P99)
			c.RoundsRPS = append(c.RoundsRPS, rc.Closed.RPS)
		}
		for r, st := range t.settles {
			c.RoundsSettleS = append(c.RoundsSettleS, st.Waited.Seconds())
			c.RoundsBusy = append(c.RoundsBusy, st.Busy)
			if !st.Quiet && st.Busy >= 0 {
				unsettled = append(unsettled, fmt.Sprintf("%s in round %d (%.0f%%)", c.Name, r+1, 100*st.Busy))
			}
		}
		c.Open, c.Closed = combine(opens), combine(closeds)
		if t.proxy != nil {
			st, err := t.proxy.stop()
			t.proxy = nil
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.Name, err)
			}
			if cs, ok := st.Clone("clone"); ok {
				c.Clone = &CloneFigures{Sent: cs.Sent, Dropped: cs.Dropped, Errors: cs.Response.Errors, P99: cs.Response.RT.P99}
			}
		}
		rep.Cases = append(rep.Cases, c)
		cases[c.Name] = c
	}

	// Ratios are taken round by round, between cases measured minutes
	// apart at most, and the median of the rounds' ratios is reported: a
	// burst of outside load then skews one round's ratio, not the result.
	rounds := map[string][]*Case{}
	for _, t := range targets {
		rounds[t.c.Name] = t.rounds
	}
	p99 := func(c *Case) float64 { return c.Open.P99 }
	rps := func(c *Case) float64 { return c.Closed.RPS }
	ratio := func(name, ref string, f func(*Case) float64) *float64 {
		var rs []float64
		a, b := rounds[name], rounds[ref]
		for i := range min(len(a), len(b)) {
			if d := f(b[i]); d > 0 {
				rs = append(rs, f(a[i])/d)
			}
		}
		if len(rs) == 0 {
			return nil
		}
		m := median(rs)
		return &m
	}
	for _, k := range []struct {
		dst       *Ratios
		name, ref string
	}{
		{&rep.NoClone, "proxy", "direct"},
		{&rep.Healthy.Ratios, "proxy_healthy", "direct"},
		{&rep.Slow, "proxy_slow", "proxy_healthy"},
		{&rep.Hung, "proxy_hung", "proxy_healthy"},
	} {
		*k.dst = Ratios{P99Ratio: ratio(k.name, k.ref, p99), ThroughputRatio: ratio(k.name, k.ref, rps),
			Lost: cases[k.name].Lost(), Reference: k.ref}
	}
	if ngx != nil {
		figures := func(name string) *NginxFigures {
			return &NginxFigures{P99: cases[name].Open.P99, RPS: cases[name].Closed.RPS, P99Ratio: ratio(name, "direct", p99)}
		}
		rep.Nginx.Proxy, rep.Nginx.Mirror, rep.Nginx.MirrorHung = figures("nginx_proxy"), figures("nginx_mirror"), figures("nginx_mirror_hung")
		rep.Healthy.ThroughputVsNginxMirror = ratio("proxy_healthy", "nginx_mirror", rps)
	}
	le := func(p *float64, v float64) bool { return p != nil && *p <= v }
	ge := func(p *float64, v float64) bool { return p != nil && *p >= v }
	rep.Targets = map[string]bool{
		"healthy.p99_ratio<=1.15":        le(rep.Healthy.P99Ratio, 1.15),
		"slow.p99_ratio<=1.05":           le(rep.Slow.P99Ratio, 1.05),
		"hung.p99_ratio<=1.05":           le(rep.Hung.P99Ratio, 1.05),
		"slow.throughput_ratio>=0.95":    ge(rep.Slow.ThroughputRatio, 0.95),
		"hung.throughput_ratio>=0.95":    ge(rep.Hung.ThroughputRatio, 0.95),
		"lost==0":                        rep.Healthy.Lost == 0 && rep.Slow.Lost == 0 && rep.Hung.Lost == 0,
		"healthy.throughput_vs_nginx>=1": ge(rep.Healthy.ThroughputVsNginxMirror, 1),
		"healthy.throughput_vs_nginx>=2": ge(rep.Healthy.ThroughputVsNginxMirror, 2),
	}
	where := "the in-proxy runs in its own process, like nginx; the load generator and the upstream servers share this one"
	if len(opts.InProxyCommand) == 0 {
		where = "the in-proxy runs in this process with the load generator and the upstream servers, nginx in its own"
	}
	if opts.Settle > 0 {
		note := fmt.Sprintf("before each case the benchmark waited, %v at most, for the CPUs to be quiet (under %.0f%% busy over %d consecutive samples of %v), so that no case pays for what the one before left running",
			opts.Settle, 100*quietBusy, quietSamples, quietSample)
		if len(unsettled) > 0 {
			note += "; these started on a busy machine: " + strings.Join(unsettled, ", ")
		}
		rep.Notes = append(rep.Notes, note)
	}
	rep.Notes = append(rep.Notes,
		where+fmt.Sprintf(" (%d CPUs): ratios are of figures from this one run", runtime.NumCPU()),
		"open-loop latency is measured from each request's intended send time; a lost request counts with the time it was given up after")
	return rep, nil
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func hostPort(u string) string { return strings.TrimPrefix(u, "http://") }
