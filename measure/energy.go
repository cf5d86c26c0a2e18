package measure

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
)

// EnergyMeter measures the energy spent between Start and Stop. A meter
// measures one interval at a time and is not safe for concurrent use.
type EnergyMeter interface {
	// Start begins an interval, discarding any interval in progress.
	Start() error
	// Stop ends the interval and returns its energy; requests is the number
	// of requests served in it, for Energy.PerRequest (0 leaves PerRequest
	// 0). Stop without Start is an error.
	Stop(requests int64) (justrunit.Energy, error)
}

// errNotStarted is returned by Stop without a Start.
var errNotStarted = errors.New("energy meter not started")

// ModelMeter estimates energy from CPU time with a host's linear power model
// P(u) = Idle + (Max − Idle)·u. Over an interval of length t in which the
// measured process tree used CPU time c on a host of HostCores cores, the
// utilisation is u = c / (t·HostCores) (clamped to [0, 1]), the power
// Model.Watts(u) and the energy Model.Watts(u)·t: what a host of that class
// would draw running this instance alone, idle power included, as the
// paper's per-host power models do.
type ModelMeter struct {
	// Model is the host class's power model.
	Model justrunit.PowerModel
	// HostCores is the host's capacity in cores; u is relative to it.
	HostCores float64
	// CPUTime returns the cumulative CPU time of what is measured (the
	// clone's cgroup, or this process with ProcessCPUTime).
	CPUTime func() (time.Duration, error)
	// Name names the host class for Energy.Model, e.g. "host class std".
	Name string
	// CPUSource says where CPUTime reads from for Energy.Model, e.g.
	// "cgroup CPU time" (default "measured CPU time").
	CPUSource string

	now     func() time.Time // for tests; time.Now when nil
	started bool
	t0      time.Time
	cpu0    time.Duration
}

var _ EnergyMeter = (*ModelMeter)(nil)

func (m *ModelMeter) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// Start implements EnergyMeter.
func (m *ModelMeter) Start() error {
	if err := m.validate(); err != nil {
		return err
	}
	cpu, err := m.CPUTime()
	if err != nil {
		return fmt.Errorf("read CPU time: %w", err)
	}
	m.started, m.t0, m.cpu0 = true, m.clock(), cpu
	return nil
}

// Stop implements EnergyMeter.
func (m *ModelMeter) Stop(requests int64) (justrunit.Energy, error) {
	if !m.started {
		return justrunit.Energy{}, errNotStarted
	}
	m.started = false
	cpu, err := m.CPUTime()
	if err != nil {
		return justrunit.Energy{}, fmt.Errorf("read CPU time: %w", err)
	}
	elapsed := m.clock().Sub(m.t0).Seconds()
	if elapsed <= 0 {
		return justrunit.Energy{}, fmt.Errorf("energy meter: interval of %gs", elapsed)
	}
	u := (cpu - m.cpu0).Seconds() / (elapsed * m.HostCores)
	u = min(max(u, 0), 1)
	e := justrunit.Energy{
		Watts:       m.Model.Watts(u),
		Source:      justrunit.EnergyModel,
		Model:       m.Describe(),
		Utilisation: u,
	}
	e.Joules = e.Watts * elapsed
	if requests > 0 {
		e.PerRequest = e.Joules / float64(requests)
	}
	return e, nil
}

// Describe returns the model's description as Energy.Model carries it, e.g.
// "linear host class std: idle 100 W, max 200 W, 4 cores, utilisation from
// cgroup CPU time".
func (m *ModelMeter) Describe() string {
	name := "linear"
	if m.Name != "" {
		name += " " + m.Name
	}
	src := m.CPUSource
	if src == "" {
		src = "measured CPU time"
	}
	return fmt.Sprintf("%s: idle %g W, max %g W, %g cores, utilisation from %s",
		name, m.Model.IdleWatts, m.Model.MaxWatts, m.HostCores, src)
}

func (m *ModelMeter) validate() error {
	if err := m.Model.Validate(); err != nil {
		return err
	}
	if m.HostCores <= 0 {
		return justrunit.Invalid("host cores", m.HostCores, "must be > 0")
	}
	if m.CPUTime == nil {
		return justrunit.Invalid("cpu time", nil, "the model meter needs a CPU time source")
	}
	return nil
}

// ProcessCPUTime returns the user and system CPU time this process has used
// (getrusage RUSAGE_SELF), for ModelMeter.CPUTime when the process itself
// is what is measured.
func ProcessCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// NewEnergyMeter returns the best meter available: RAPL under root (""
// means DefaultPowercapRoot) when it has readable package domains,
// otherwise model. The string says which was chosen and why, for the log
// and the study's record.
func NewEnergyMeter(root string, model ModelMeter) (EnergyMeter, string) {
	if root == "" {
		root = DefaultPowercapRoot
	}
	r, err := NewRAPLMeter(root)
	if err == nil {
		return r, "RAPL at " + root + ": " + r.Describe()
	}
	m := model
	return &m, fmt.Sprintf("%v: using the power model (%s)", err, m.Describe())
}
