package loadgen

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Step is one stretch of a stepped load: Rate requests per second for
// Duration.
type Step struct {
	Duration time.Duration
	Rate     float64
}

// ParseSteps parses a stepped load like "60s@100,60s@150": a
// comma-separated list of duration@rate.
func ParseSteps(s string) ([]Step, error) {
	var steps []Step
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		ds, rs, ok := strings.Cut(part, "@")
		if !ok {
			return nil, fmt.Errorf("step %q: want duration@rate, e.g. 60s@100", part)
		}
		d, err := time.ParseDuration(strings.TrimSpace(ds))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("step %q: want a positive duration, e.g. 60s", part)
		}
		r, err := strconv.ParseFloat(strings.TrimSpace(rs), 64)
		if err != nil || r < 0 {
			return nil, fmt.Errorf("step %q: want a rate >= 0 in requests/s", part)
		}
		steps = append(steps, Step{Duration: d, Rate: r})
	}
	return steps, nil
}

// totalDuration is the sum of the steps' durations.
func totalDuration(steps []Step) time.Duration {
	var d time.Duration
	for _, s := range steps {
		d += s.Duration
	}
	return d
}
