package justrunit

import (
	"fmt"
	"time"
)

// Metric names one column of a matrix.
type Metric string

// The metrics every observation carries. Response times are in milliseconds,
// throughput in requests per second, energy in joules per request, power in
// watts.
const (
	Throughput       Metric = "throughput"
	RTMean           Metric = "rt_mean"
	RTP50            Metric = "rt_p50"
	RTP95            Metric = "rt_p95"
	RTP99            Metric = "rt_p99"
	ErrorRate        Metric = "error_rate"
	EnergyPerRequest Metric = "energy_per_request"
	Power            Metric = "power"
)

// AllMetrics lists the metrics an observation can supply, in display order.
var AllMetrics = []Metric{Throughput, RTMean, RTP50, RTP95, RTP99, ErrorRate, EnergyPerRequest, Power}

// DefaultMetrics are the metrics a study records when none are named.
var DefaultMetrics = []Metric{Throughput, RTMean, RTP95, EnergyPerRequest}

// ParseMetric returns the metric called s, or an error listing the known ones.
func ParseMetric(s string) (Metric, error) {
	for _, m := range AllMetrics {
		if string(m) == s {
			return m, nil
		}
	}
	return "", Invalid("metric", s, "unknown; known: %v", AllMetrics)
}

// Unit returns the unit a metric is expressed in.
func (m Metric) Unit() string {
	switch m {
	case Throughput:
		return "req/s"
	case RTMean, RTP50, RTP95, RTP99:
		return "ms"
	case ErrorRate:
		return "fraction"
	case EnergyPerRequest:
		return "J/req"
	case Power:
		return "W"
	}
	return ""
}

// ResponseTime summarises a response-time histogram, in milliseconds.
type ResponseTime struct {
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P95  float64 `json:"p95_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	// P95Low and P95High bound p95 at 95% confidence (order-statistic
	// interval), so a reader can tell how settled the window was.
	P95Low  float64 `json:"p95_low_ms"`
	P95High float64 `json:"p95_high_ms"`
}

// Energy is what an experiment consumed and how that figure was obtained.
type Energy struct {
	Joules     float64 `json:"joules"`
	PerRequest float64 `json:"joules_per_request"`
	Watts      float64 `json:"watts"`
	// Source says where the figure came from: "rapl" (a hardware counter) or
	// "model" (a power model applied to measured CPU utilisation).
	Source string `json:"source"`
	// Model describes how the figure was obtained: for "model" the power
	// model and where utilisation came from, for "rapl" the domains summed.
	Model string `json:"model,omitempty"`
	// Utilisation is the mean CPU utilisation the model was fed (0..1 of the
	// host's capacity), when Source is "model".
	Utilisation float64 `json:"utilisation,omitempty"`
}

// Energy sources.
const (
	EnergyRAPL  = "rapl"
	EnergyModel = "model"
)

// Observation is what one experiment measured at one point, and how.
type Observation struct {
	Point  Point     `json:"point"`
	Start  time.Time `json:"start"`
	WarmUp Duration  `json:"warm_up"`
	Window Duration  `json:"window"`
	// Samples is the number of responses the window measured.
	Samples int64 `json:"samples"`
	Errors  int64 `json:"errors"`
	// Throughput is completed responses per second over the window.
	Throughput float64      `json:"throughput"`
	RT         ResponseTime `json:"response_time"`
	Energy     Energy       `json:"energy"`
	// MatchRate is the fraction of the clone's next-tier calls the out-proxy
	// answered from its record (1 when the clone made none); Dropped counts
	// request copies the in-proxy could not deliver to the clone.
	MatchRate float64 `json:"match_rate"`
	Dropped   int64   `json:"dropped"`
	// Offered is the load offered over the window, in requests per
	// second: for a clone, the copies of the live traffic that came for
	// it (sent, dropped or skipped), the most it could have served; 0
	// when not known.
	Offered float64 `json:"offered,omitempty"`
	// NextTier is the next tier's latency, per call, in the answers the
	// clone's calls were given (the on-line next tier's, as the out-proxy
	// recorded it): the conditions the clone was measured under. Nil when
	// the clone made no call answered from the record, or has no
	// out-proxy.
	NextTier *ResponseTime `json:"next_tier,omitempty"`
	// Stop says why the window ended: "converged" (the p95 confidence
	// interval was tight enough), "window" (the window ran its full length)
	// or "deadline" (the time bound cut it).
	Stop string `json:"stop,omitempty"`
	// Saturated means the target answered clearly fewer requests over the
	// window than it was sent (see SaturatedBelow): it could not keep up,
	// its queue grew, and the requests still waiting at the window's end
	// are missing from its response times, which therefore understate what
	// its clients would see (see Understates). Its throughput is then its
	// capacity at this point.
	Saturated bool `json:"saturated,omitempty"`
	// Clone says how the clone was made ("live", "cold"), when known.
	Clone string `json:"clone,omitempty"`
	// Source names what produced the observation (platform and runner).
	Source string `json:"source,omitempty"`
}

// SaturatedBelow is the share of the requests sent over a window that a
// target must answer in it not to be saturated. Requests in flight at the
// window's ends make the two differ by the load times the response time
// (a few per cent of a window) in a target that keeps up.
const SaturatedBelow = 0.9

// saturatedMin is the fewest requests sent over a window for a shortfall to
// count as saturation rather than chance.
const saturatedMin = 20

// IsSaturated reports whether a target answered (successfully or not)
// answered of the sent requests sent to it over a window — those it could
// not take (dropped) counted as sent — clearly too few to be keeping up.
func IsSaturated(answered, sent int64) bool {
	return sent >= saturatedMin && float64(answered) < SaturatedBelow*float64(sent)
}

// Understates reports whether the observation's value for m is lower than
// its clients would see: a response time of a saturated target.
func (o *Observation) Understates(m Metric) bool {
	if o == nil || !o.Saturated {
		return false
	}
	switch m {
	case RTMean, RTP50, RTP95, RTP99:
		return true
	}
	return false
}

// Value returns the observation's value for metric m.
func (o *Observation) Value(m Metric) (float64, error) {
	switch m {
	case Throughput:
		return o.Throughput, nil
	case RTMean:
		return o.RT.Mean, nil
	case RTP50:
		return o.RT.P50, nil
	case RTP95:
		return o.RT.P95, nil
	case RTP99:
		return o.RT.P99, nil
	case ErrorRate:
		if o.Samples+o.Errors == 0 {
			return 0, nil
		}
		return float64(o.Errors) / float64(o.Samples+o.Errors), nil
	case EnergyPerRequest:
		return o.Energy.PerRequest, nil
	case Power:
		return o.Energy.Watts, nil
	}
	return 0, Invalid("metric", string(m), "unknown")
}

// Duration is a time.Duration that reads and writes JSON as "1m30s".
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// String returns the duration as time.Duration prints it.
func (d Duration) String() string { return time.Duration(d).String() }
