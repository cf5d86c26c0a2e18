package siterun

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/checker"
	"github.com/justrunit/justrunit/measure"
)

// Verification compares what a study predicted at one point with what the
// on-line instance does at that point under the same live load.
type Verification struct {
	Point justrunit.Point `json:"point"`
	// Measured is the on-line instance's observation at Point.
	Measured justrunit.Observation `json:"measured"`
	// Metrics, Predicted and RelError are parallel: the study's cell for
	// each metric and |measured − predicted| / measured.
	Metrics   []justrunit.Metric `json:"metrics"`
	Predicted []justrunit.Cell   `json:"predicted"`
	RelError  []float64          `json:"rel_error"`
}

// Verify sets the on-line target of the study to point p, measures it
// through its in-proxy for one window (warm-up included), compares with
// the matrix, and restores the target's allocation — also on error. It
// changes the on-line system on purpose: it is the fidelity check that
// tells how far the sandbox's answers are from the real thing.
func (s *Site) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, p justrunit.Point, win measure.WindowConfig) (v Verification, err error) {
	if _, err := st.Space.IndexOf(p); err != nil {
		return v, err
	}
	feed, ok := s.InProxy(st.Target)
	if !ok {
		return v, justrunit.Invalid("target", st.Target, "has no in_proxy: its on-line response time cannot be measured")
	}
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return v, err
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == st.Target })
	if i < 0 {
		return v, fmt.Errorf("instance %s: %w on the platform", st.Target, justrunit.ErrNotFound)
	}
	orig := insts[i].Alloc
	alloc, err := orig.WithPoint(st.Space, p)
	if err != nil {
		return v, err
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return v, err
	}
	h := slices.IndexFunc(hosts, func(x justrunit.Host) bool { return x.Name == insts[i].Host })
	if h < 0 {
		return v, fmt.Errorf("host %s of %s: %w", insts[i].Host, st.Target, justrunit.ErrNotFound)
	}
	if err := s.Platform.SetAllocation(ctx, st.Target, alloc); err != nil {
		return v, fmt.Errorf("set %s on the on-line %s: %w", alloc, st.Target, err)
	}
	defer func() {
		if rerr := s.Platform.SetAllocation(context.WithoutCancel(ctx), st.Target, orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore %s on %s: %w", orig, st.Target, rerr))
		}
	}()
	meter := &measure.ModelMeter{
		Model: hosts[h].Power, HostCores: hosts[h].Cores, Name: "host class " + hosts[h].Class,
		CPUSource: "cgroup CPU time of the on-line instance",
		CPUTime: func() (time.Duration, error) {
			u, err := s.Platform.Usage(ctx, st.Target)
			return u.CPUTime, err
		},
	}
	// A window of its own: whoever else reads the on-line instance's
	// response times (the manager's monitor, say) keeps its windows.
	rec, unwatch := feed.Watch()
	defer unwatch()
	res, err := measure.MeasureWindow(ctx, win, rec, meter, nil)
	if err != nil {
		return v, fmt.Errorf("measure the on-line %s at %s: %w", st.Target, alloc, err)
	}
	v = Verification{Point: p, Measured: res.Observation(p), Metrics: m.Metrics}
	v.Measured.Source = "on-line " + st.Target
	for _, mt := range m.Metrics {
		c, err := m.Cell(p, mt)
		if err != nil {
			return v, err
		}
		got, err := v.Measured.Value(mt)
		if err != nil {
			return v, err
		}
		v.Predicted = append(v.Predicted, c)
		v.RelError = append(v.RelError, checker.RelError(got, c.Value))
	}
	return v, nil
}
