package measure

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

// fakeClock returns the times in ts one call at a time.
func fakeClock(ts ...time.Time) func() time.Time {
	return func() time.Time {
		t := ts[0]
		if len(ts) > 1 {
			ts = ts[1:]
		}
		return t
	}
}

// fakeCPU returns the CPU times in cs one call at a time.
func fakeCPU(cs ...time.Duration) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		c := cs[0]
		if len(cs) > 1 {
			cs = cs[1:]
		}
		return c, nil
	}
}

func TestModelMeter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	std := justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}
	tests := []struct {
		name        string
		cores       float64
		elapsed     time.Duration
		cpu         time.Duration // used in the interval
		requests    int64
		u, watts, j float64
		perRequest  float64
	}{
		{"idle", 4, 2 * time.Second, 0, 10, 0, 100, 200, 20},
		{"half of 4 cores", 4, time.Second, 2 * time.Second, 100, 0.5, 150, 150, 1.5},
		{"one core of 2 for 10s", 2, 10 * time.Second, 10 * time.Second, 1000, 0.5, 150, 1500, 1.5},
		{"over capacity clamps", 1, time.Second, 3 * time.Second, 1, 1, 200, 200, 200},
		{"no requests", 4, time.Second, time.Second, 0, 0.25, 125, 125, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &ModelMeter{
				Model: std, HostCores: tt.cores, Name: "host class std", CPUSource: "cgroup CPU time",
				CPUTime: fakeCPU(time.Hour, time.Hour+tt.cpu),
				now:     fakeClock(t0, t0.Add(tt.elapsed)),
			}
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			e, err := m.Stop(tt.requests)
			if err != nil {
				t.Fatal(err)
			}
			const eps = 1e-9
			if math.Abs(e.Utilisation-tt.u) > eps || math.Abs(e.Watts-tt.watts) > eps ||
				math.Abs(e.Joules-tt.j) > eps || math.Abs(e.PerRequest-tt.perRequest) > eps {
				t.Errorf("Stop(%d) = u %g, %g W, %g J, %g J/req; want u %g, %g W, %g J, %g J/req",
					tt.requests, e.Utilisation, e.Watts, e.Joules, e.PerRequest, tt.u, tt.watts, tt.j, tt.perRequest)
			}
			if e.Source != justrunit.EnergyModel {
				t.Errorf("Source = %q, want %q", e.Source, justrunit.EnergyModel)
			}
			for _, want := range []string{"linear host class std", "idle 100 W", "max 200 W", "cgroup CPU time"} {
				if !strings.Contains(e.Model, want) {
					t.Errorf("Model = %q, want it to mention %q", e.Model, want)
				}
			}
		})
	}
}

func TestModelMeterErrors(t *testing.T) {
	good := ModelMeter{Model: justrunit.PowerModel{IdleWatts: 10, MaxWatts: 20}, HostCores: 1, CPUTime: ProcessCPUTime}
	if _, err := (&ModelMeter{}).Stop(1); err == nil {
		t.Error("Stop without Start: no error")
	}
	bad := []struct {
		name string
		edit func(*ModelMeter)
	}{
		{"max below idle", func(m *ModelMeter) { m.Model.MaxWatts = 5 }},
		{"no cores", func(m *ModelMeter) { m.HostCores = 0 }},
		{"no CPU time", func(m *ModelMeter) { m.CPUTime = nil }},
		{"CPU time fails", func(m *ModelMeter) {
			m.CPUTime = func() (time.Duration, error) { return 0, errors.New("cgroup gone") }
		}},
	}
	for _, tt := range bad {
		m := good
		tt.edit(&m)
		if err := m.Start(); err == nil {
			t.Errorf("%s: Start() = nil, want an error", tt.name)
		}
	}
}

// TestModelMeterProcess measures this process burning CPU: the utilisation
// must be clearly above zero (the machine is shared, so no upper bound but 1).
func TestModelMeterProcess(t *testing.T) {
	m := &ModelMeter{Model: justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}, HostCores: 1, CPUTime: ProcessCPUTime}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	x := 1.0
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
		for range 1000 {
			x = math.Sqrt(x + 1)
		}
	}
	e, err := m.Stop(1)
	if err != nil {
		t.Fatal(err)
	}
	if e.Utilisation < 0.05 || e.Watts <= 100 || x == 0 {
		t.Errorf("busy loop: utilisation %g, %g W; want > 0.05 and > idle", e.Utilisation, e.Watts)
	}
}

// powercapTree writes a fake powercap tree: zone dir name → name, max range
// and energy. It tests the parser and the wraparound arithmetic, not any
// measurement.
func powercapTree(t *testing.T, zones map[string][3]string) string {
	t.Helper()
	root := t.TempDir()
	for dir, z := range zones {
		d := filepath.Join(root, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, f := range []string{"name", "max_energy_range_uj", "energy_uj"} {
			if err := os.WriteFile(filepath.Join(d, f), []byte(z[i]+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func setEnergy(t *testing.T, root, zone string, uj uint64) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, zone, "energy_uj"), []byte(strconv.FormatUint(uj, 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRAPLMeter(t *testing.T) {
	root := powercapTree(t, map[string][3]string{
		"intel-rapl:0":   {"package-0", "1000000", "999000"},
		"intel-rapl:0:0": {"core", "1000000", "5"}, // part of package-0: not summed
		"intel-rapl:1":   {"package-1", "262143328850", "2000"},
		"intel-rapl:2":   {"psys", "262143328850", "7"}, // the whole platform: not summed
	})
	m, err := NewRAPLMeter(root)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Describe(), "package-0, package-1 (whole packages)"; got != want {
		t.Errorf("Describe() = %q, want %q", got, want)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.now = fakeClock(t0, t0.Add(2*time.Second))
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	setEnergy(t, root, "intel-rapl:0", 500)      // wrapped: 1000 to the top, 500 after
	setEnergy(t, root, "intel-rapl:1", 3002000)  // +3 J
	setEnergy(t, root, "intel-rapl:0:0", 999999) // ignored
	setEnergy(t, root, "intel-rapl:2", 999999)   // ignored
	e, err := m.Stop(10)
	if err != nil {
		t.Fatal(err)
	}
	wantJ := (1000 + 500 + 3000000) / 1e6
	if math.Abs(e.Joules-wantJ) > 1e-12 || math.Abs(e.Watts-wantJ/2) > 1e-12 || math.Abs(e.PerRequest-wantJ/10) > 1e-12 {
		t.Errorf("Stop(10) = %g J, %g W, %g J/req; want %g J, %g W, %g J/req", e.Joules, e.Watts, e.PerRequest, wantJ, wantJ/2, wantJ/10)
	}
	if e.Source != justrunit.EnergyRAPL {
		t.Errorf("Source = %q, want %q", e.Source, justrunit.EnergyRAPL)
	}
	if _, err := m.Stop(1); err == nil {
		t.Error("second Stop without Start: no error")
	}
}

func TestCounterDelta(t *testing.T) {
	tests := []struct{ a, b, max, want uint64 }{
		{10, 30, 100, 20},
		{90, 10, 100, 20},
		{0, 0, 100, 0},
		{99, 0, 100, 1},
	}
	for _, tt := range tests {
		if got := counterDelta(tt.a, tt.b, tt.max); got != tt.want {
			t.Errorf("counterDelta(%d, %d, %d) = %d, want %d", tt.a, tt.b, tt.max, got, tt.want)
		}
	}
}

func TestRAPLMeterUnusable(t *testing.T) {
	tests := []struct {
		name string
		root string
		want string
	}{
		{"missing root", filepath.Join(t.TempDir(), "nope"), "no RAPL at"},
		{"empty root", t.TempDir(), "no RAPL at"},
		{"only psys", powercapTree(t, map[string][3]string{"intel-rapl:0": {"psys", "100", "1"}}), "no RAPL at"},
		{"garbage counter", powercapTree(t, map[string][3]string{"intel-rapl:0": {"package-0", "100", "x"}}), "invalid syntax"},
	}
	for _, tt := range tests {
		if _, err := NewRAPLMeter(tt.root); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: NewRAPLMeter error = %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func TestNewEnergyMeter(t *testing.T) {
	model := ModelMeter{Model: justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200}, HostCores: 2, CPUTime: ProcessCPUTime, Name: "host class std"}

	empty := t.TempDir()
	m, why := NewEnergyMeter(empty, model)
	if _, ok := m.(*ModelMeter); !ok {
		t.Errorf("NewEnergyMeter(no RAPL) = %T, want *ModelMeter", m)
	}
	if want := "no RAPL at " + empty + ": using the power model"; !strings.HasPrefix(why, want) {
		t.Errorf("NewEnergyMeter(no RAPL) says %q, want it to start %q", why, want)
	}

	root := powercapTree(t, map[string][3]string{"intel-rapl:0": {"package-0", "1000", "1"}})
	m, why = NewEnergyMeter(root, model)
	if _, ok := m.(*RAPLMeter); !ok {
		t.Errorf("NewEnergyMeter(RAPL tree) = %T (%s), want *RAPLMeter", m, why)
	}
	if !strings.HasPrefix(why, "RAPL at "+root) {
		t.Errorf("NewEnergyMeter(RAPL tree) says %q, want it to start %q", why, "RAPL at "+root)
	}

	// This machine: whatever it has, the choice must be explained.
	m, why = NewEnergyMeter("", model)
	t.Logf("this machine: %T: %s", m, why)
	if m == nil || why == "" {
		t.Errorf("NewEnergyMeter(default) = %v, %q", m, why)
	}
}
