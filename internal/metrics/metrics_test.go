package metrics

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestNames checks that Names lists exactly what New registers, every name
// carries the justrunit_ prefix, and a second Set on one registry panics.
func TestNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(reg)
	s.ProxyCopiesSent.WithLabelValues("svc", "i0").Inc()
	s.ProxyCopiesDropped.WithLabelValues("svc", "i0").Inc()
	s.OutProxyMatchRate.WithLabelValues("svc", "i0").Set(1)
	s.ServiceResponseTime.WithLabelValues("svc", "web").Observe(0.01)
	s.StudiesTotal.WithLabelValues("done").Inc()
	s.StudyDuration.WithLabelValues("done").Observe(3)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range fams {
		got = append(got, f.GetName())
	}
	want := Names()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("registered %v, Names() = %v", got, want)
	}
	defer func() {
		if recover() == nil {
			t.Error("a second Set on the same registry did not panic")
		}
	}()
	New(reg)
}
