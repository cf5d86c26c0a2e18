package manager

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/justrunit/justrunit/manager/monitor"
)

// Timeline collects what the manager saw and did: per service, one sample
// per interval, and the events (the paper's Figure 3). It keeps the latest
// MaxTimelineSamples samples and MaxTimelineEvents events (up to a quarter
// more between trims): a daemon runs the manager for months.
type Timeline struct {
	mu      sync.Mutex
	Samples []monitor.Sample `json:"samples"`
	Events  []Event          `json:"events"`
}

// The most a Timeline keeps; older entries are dropped.
const (
	MaxTimelineSamples = 50_000
	MaxTimelineEvents  = 10_000
)

// AddSample records a sample; use it as Config.OnSample.
func (t *Timeline) AddSample(s monitor.Sample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Samples = keepLast(append(t.Samples, s), MaxTimelineSamples)
}

// keepLast returns the last n of xs, in a new array once a quarter of n
// was dropped (so that the dropped ones are freed, and not copied on every
// append).
func keepLast[T any](xs []T, n int) []T {
	if len(xs) <= n+n/4 {
		return xs
	}
	return append([]T(nil), xs[len(xs)-n:]...)
}

// SamplesSince returns a copy of the samples that started at or after since.
func (t *Timeline) SamplesSince(since time.Time) []monitor.Sample {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []monitor.Sample
	for _, s := range t.Samples {
		if !s.Start.Before(since) {
			out = append(out, s)
		}
	}
	return out
}

// AddEvent records an event; use it as Config.OnEvent.
func (t *Timeline) AddEvent(e Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Events = keepLast(append(t.Events, e), MaxTimelineEvents)
}

// SVG draws the timeline: each service's SLA value (e.g. mean response
// time) per interval, the SLA as a dashed line, and the manager's actions
// as labelled markers at the interval they happened in.
func (t *Timeline) SVG(w io.Writer, title string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	const W, H, left, right, top, bottom = 900.0, 460.0, 70.0, 170.0, 50.0, 60.0
	var services []string
	maxI, maxV, sla := 1, 1.0, 0.0
	for _, s := range t.Samples {
		if !slices.Contains(services, s.Service) {
			services = append(services, s.Service)
		}
		maxI = max(maxI, s.Interval)
		maxV = math.Max(maxV, s.Value)
		sla = math.Max(sla, s.SLA)
	}
	maxV = math.Max(maxV, sla) * 1.15
	x := func(i float64) float64 { return left + (i-0.5)/float64(maxI)*(W-left-right) }
	y := func(v float64) float64 { return H - bottom - v/maxV*(H-top-bottom) }
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="12">`+"\n", W, H)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%g" y="24" font-size="16">%s</text>`+"\n", left, html.EscapeString(title))
	p(`<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, H-bottom, W-right, H-bottom)
	p(`<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, top, left, H-bottom)
	for i := 1; i <= maxI; i++ {
		p(`<text x="%g" y="%g" text-anchor="middle">%d</text>`+"\n", x(float64(i)), H-bottom+16, i)
	}
	p(`<text x="%g" y="%g" text-anchor="middle">interval</text>`+"\n", (left+W-right)/2, H-bottom+36)
	for k := 0; k <= 4; k++ {
		v := maxV * float64(k) / 4
		p(`<text x="%g" y="%g" text-anchor="end">%.0f</text>`+"\n", left-6, y(v)+4, v)
		p(`<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#eee"/>`+"\n", left, y(v), W-right, y(v))
	}
	p(`<text transform="translate(18,%g) rotate(-90)" text-anchor="middle">response time (ms)</text>`+"\n", (top+H-bottom)/2)
	if sla > 0 {
		p(`<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="red" stroke-dasharray="6,4"/>`+"\n", left, y(sla), W-right, y(sla))
		p(`<text x="%g" y="%g" fill="red">SLA %g ms</text>`+"\n", W-right+6, y(sla)+4, sla)
	}
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"}
	for k, svc := range services {
		c := colors[k%len(colors)]
		var pts string
		for _, s := range t.Samples {
			if s.Service == svc && s.Requests > 0 {
				pts += fmt.Sprintf("%.1f,%.1f ", x(float64(s.Interval)), y(s.Value))
				p(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(float64(s.Interval)), y(s.Value), c)
			}
		}
		p(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", pts, c)
		p(`<text x="%g" y="%g" fill="%s">%s</text>`+"\n", W-right+6, top+16*float64(k+1), c, html.EscapeString(svc))
	}
	// Actions: a marker at the interval in progress when they happened.
	row := 0
	for _, e := range t.Events {
		if e.Kind == EventStudy || e.Kind == EventApplied || e.Kind == monitor.EventViolated || e.Kind == monitor.EventCleared {
			i := t.intervalAt(e)
			p(`<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#888" stroke-dasharray="2,3"/>`+"\n", x(i), top, x(i), H-bottom)
			p(`<text x="%.1f" y="%g" fill="#555" font-size="10">%s</text>`+"\n", x(i)+3, top+12+float64(row%4)*12, html.EscapeString(short(e)))
			row++
		}
	}
	p("</svg>\n")
	return nil
}

// intervalAt places an event after the last interval that had ended when
// it happened.
func (t *Timeline) intervalAt(e Event) float64 {
	best := 0.5
	for _, s := range t.Samples {
		if !s.End.IsZero() && !s.End.After(e.Time) {
			best = math.Max(best, float64(s.Interval)+0.5)
		}
	}
	return best
}

func short(e Event) string {
	switch e.Kind {
	case monitor.EventViolated:
		return e.Service + " SLA violated"
	case monitor.EventCleared:
		return e.Service + " SLA met"
	case EventStudy:
		return "study " + e.Service
	case EventApplied:
		return "plan applied"
	}
	return e.Kind
}
