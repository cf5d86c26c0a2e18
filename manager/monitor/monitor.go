// Package monitor is the manager's SLA monitor: every interval it reads
// each service's on-line response time (from the in-proxy in front of the
// service, or of a tier), compares it with the service's SLA and, with
// hysteresis, reports a violation — the paper's trigger for a study — and
// later its end.
package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
)

// Window is where a service's on-line response times come from: Reset ends
// the current window and returns it. An in-proxy's on-line recorder (or a
// *measure.Recorder) is one.
type Window interface {
	Reset() measure.Summary
}

// Service is one monitored service.
type Service struct {
	Name string
	SLA  justrunit.SLA
	// Window gives the response times of the service's on-line path.
	Window Window
}

// Sample is one interval of one service.
type Sample struct {
	Service  string    `json:"service"`
	Interval int       `json:"interval"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Requests int64     `json:"requests"`
	Errors   int64     `json:"errors"`
	// Value is the SLA metric over the interval (e.g. mean response time,
	// ms); MeanMs and P95Ms are always filled.
	Value  float64 `json:"value"`
	MeanMs float64 `json:"mean_ms"`
	P95Ms  float64 `json:"p95_ms"`
	SLA    float64 `json:"sla"`
	// Over is whether this interval broke the SLA; Violated whether the
	// service is in violation after it (hysteresis applied).
	Over     bool `json:"over"`
	Violated bool `json:"violated"`
}

// Event kinds the monitor reports.
const (
	EventViolated = "manager.sla_violated"
	EventCleared  = "manager.sla_met"
	// EventStillViolated is reported when a service in violation has been
	// over its SLA for Again intervals since it entered violation or was
	// re-armed (Rearm): whatever was done about it has not been enough.
	EventStillViolated = "manager.sla_still_violated"
)

// Change is a service entering or leaving violation.
type Change struct {
	Kind    string // EventViolated, EventStillViolated or EventCleared
	Service string
	// Samples are the intervals that decided it.
	Samples []Sample
}

// Defaults.
const (
	// DefaultEnter is how many consecutive intervals over the SLA start a
	// violation; DefaultLeave how many under it end one.
	DefaultEnter = 1
	DefaultLeave = 2
	// MinRequests is the fewest responses (successful or not) an interval
	// needs to be judged; quieter intervals neither start nor end a
	// violation.
	MinRequests = 20
)

// Monitor watches services. Set the fields, then call Run, or Tick from
// your own loop.
type Monitor struct {
	Services []Service
	// Interval is the length of one interval (the paper's minute).
	Interval time.Duration
	// Enter and Leave set the hysteresis; zero values take the defaults.
	Enter, Leave int
	// Again is how many intervals over the SLA, while in violation, report
	// EventStillViolated; 0 never does.
	Again int
	// OnSample is called with every sample; OnChange with every change.
	// Both are called from the monitor's goroutine.
	OnSample func(Sample)
	OnChange func(Change)
	Logger   *slog.Logger

	mu     sync.Mutex
	n      int
	states map[string]*state
}

type state struct {
	violated bool
	streak   []Sample // consecutive intervals on the other side
	over     []Sample // intervals over the SLA in violation since entering it or Rearm
	again    int      // this service's Again, when RearmAfter set one
}

// Rearm restarts the count of intervals towards EventStillViolated for
// service, e.g. once a response to its violation has been applied.
func (m *Monitor) Rearm(service string) { m.RearmAfter(service, 0) }

// RearmAfter is Rearm with, for service, n intervals instead of Again
// before the next EventStillViolated (0: Again).
func (m *Monitor) RearmAfter(service string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.states == nil {
		m.states = map[string]*state{}
	}
	st := m.states[service]
	if st == nil {
		st = &state{}
		m.states[service] = st
	}
	st.over, st.again = nil, n
}

// Run ticks every Interval until ctx ends; it resets every window first so
// the first interval is a whole one.
func (m *Monitor) Run(ctx context.Context) error {
	if err := m.Validate(); err != nil {
		return err
	}
	for _, s := range m.Services {
		s.Window.Reset()
	}
	t := time.NewTicker(m.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			m.Tick()
		}
	}
}

// Validate checks the monitor's settings and names the first bad field.
func (m *Monitor) Validate() error {
	if m.Interval <= 0 {
		return justrunit.Invalid("interval", m.Interval, "must be > 0")
	}
	if len(m.Services) == 0 {
		return justrunit.Invalid("services", nil, "nothing to monitor: no service has an SLA and an in-proxy")
	}
	for i, s := range m.Services {
		if err := CheckSLA(s.SLA); err != nil {
			return justrunit.Invalid(fmt.Sprintf("services[%d].sla", i), s.SLA.String(), "%v", err)
		}
		if s.Window == nil {
			return justrunit.Invalid(fmt.Sprintf("services[%d].window", i), s.Name, "no response-time source")
		}
	}
	return nil
}

// Tick closes one interval of every service and returns its samples. The
// monitor must be valid (see Validate).
func (m *Monitor) Tick() []Sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.states == nil {
		m.states = map[string]*state{}
	}
	m.n++
	var out []Sample
	for _, svc := range m.Services {
		sum := svc.Window.Reset()
		smp := Sample{Service: svc.Name, Interval: m.n, Start: sum.Start, End: sum.End, Requests: sum.Count, Errors: sum.Errors,
			MeanMs: sum.RT.Mean, P95Ms: sum.RT.P95, SLA: svc.SLA.Max}
		smp.Value = Value(sum, svc.SLA.Metric)
		smp.Over = !svc.SLA.Met(smp.Value)
		answered := sum.Count + sum.Errors
		if answered >= MinRequests && sum.Count < MinRequests && svc.SLA.Metric != justrunit.ErrorRate {
			// (Almost) every request failed: too few response times to
			// judge them, and a service that fails its requests misses
			// its SLA.
			smp.Over = true
		}
		st := m.states[svc.Name]
		if st == nil {
			st = &state{}
			m.states[svc.Name] = st
		}
		var change *Change
		switch {
		case answered < MinRequests:
			// Too quiet to judge either way; keep the state.
		case smp.Over != st.violated:
			st.streak = append(st.streak, smp)
			need := orDefault(m.Enter, DefaultEnter)
			kind := EventViolated
			if st.violated {
				need, kind = orDefault(m.Leave, DefaultLeave), EventCleared
			}
			if len(st.streak) >= need {
				st.violated = !st.violated
				change = &Change{Kind: kind, Service: svc.Name, Samples: st.streak}
				st.streak, st.over = nil, nil
			}
		default:
			st.streak = nil
			again := m.Again
			if st.again > 0 && again > 0 {
				again = st.again
			}
			if st.violated && smp.Over && again > 0 {
				if st.over = append(st.over, smp); len(st.over) >= again {
					change = &Change{Kind: EventStillViolated, Service: svc.Name, Samples: st.over}
					st.over = nil
				}
			}
		}
		smp.Violated = st.violated
		if change != nil {
			change.Samples[len(change.Samples)-1].Violated = st.violated
		}
		out = append(out, smp)
		if m.OnSample != nil {
			m.OnSample(smp)
		}
		if change != nil {
			m.logger().Info("sla "+change.Kind, "service", svc.Name, "value", smp.Value, "sla", svc.SLA.String())
			if m.OnChange != nil {
				m.OnChange(*change)
			}
		}
	}
	return out
}

// Violated reports whether service is in violation now.
func (m *Monitor) Violated(service string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.states[service]
	return st != nil && st.violated
}

// Value is the SLA metric mt of a window (response times in ms, the error
// rate as a fraction).
func Value(s measure.Summary, mt justrunit.Metric) float64 {
	switch mt {
	case justrunit.RTMean:
		return s.RT.Mean
	case justrunit.RTP50:
		return s.RT.P50
	case justrunit.RTP95:
		return s.RT.P95
	case justrunit.RTP99:
		return s.RT.P99
	case justrunit.ErrorRate:
		if s.Count+s.Errors == 0 {
			return 0
		}
		return float64(s.Errors) / float64(s.Count+s.Errors)
	}
	return s.RT.Mean // unreachable for a valid monitor: CheckSLA refuses other metrics
}

// CheckSLA reports whether an SLA can be monitored from response times.
func CheckSLA(sla justrunit.SLA) error {
	switch sla.Metric {
	case justrunit.RTMean, justrunit.RTP50, justrunit.RTP95, justrunit.RTP99, justrunit.ErrorRate:
		return nil
	}
	return justrunit.Invalid("sla.metric", string(sla.Metric), "the monitor reads response times: use rt_mean, rt_p50, rt_p95, rt_p99 or error_rate")
}

func orDefault(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

func (m *Monitor) logger() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.Default()
}
