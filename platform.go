package justrunit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"sync"
	"time"
)

// Allocation is the resources an instance or clone is given.
type Allocation struct {
	// CPU is the CPU share in percent of one core, enforced as CFS bandwidth
	// (100 = one core, 250 = two and a half); 0 means unlimited.
	CPU float64 `json:"cpu,omitempty"`
	// Freq is the CPU frequency in GHz; 0 means the host's own. Platforms
	// that cannot set it emulate it or refuse (see Capability).
	Freq float64 `json:"freq,omitempty"`
	// MemoryMiB is the memory limit; 0 means unlimited.
	MemoryMiB int64 `json:"mem,omitempty"`
}

// WithPoint returns a with the parameters of s named cpu, freq and mem set
// from p. Other parameters (host class, ...) are left to the caller; a
// categorical cpu/freq/mem parameter is an error.
func (a Allocation) WithPoint(s Space, p Point) (Allocation, error) {
	if _, err := s.IndexOf(p); err != nil {
		return a, err
	}
	for d, par := range s.Params {
		switch par.Name {
		case "cpu", "freq", "mem":
			if par.Categorical() {
				return a, Invalid("parameter "+par.Name, par.Labels, "must be numeric")
			}
		}
		switch par.Name {
		case "cpu":
			a.CPU = p[d]
		case "freq":
			a.Freq = p[d]
		case "mem":
			a.MemoryMiB = int64(p[d])
		}
	}
	return a, nil
}

func (a Allocation) String() string {
	s := "cpu=unlimited"
	if a.CPU > 0 {
		s = fmt.Sprintf("cpu=%g%%", a.CPU)
	}
	if a.Freq > 0 {
		s += fmt.Sprintf(" freq=%gGHz", a.Freq)
	}
	if a.MemoryMiB > 0 {
		s += fmt.Sprintf(" mem=%dMiB", a.MemoryMiB)
	}
	return s
}

// PowerModel is a host's linear power model P(u) = Idle + (Max − Idle)·u,
// u being CPU utilisation of the host's capacity in [0, 1].
type PowerModel struct {
	IdleWatts float64 `json:"idle_watts" yaml:"idle_watts"`
	MaxWatts  float64 `json:"max_watts" yaml:"max_watts"`
}

// Watts returns the modelled power at utilisation u (clamped to [0, 1]).
func (m PowerModel) Watts(u float64) float64 {
	u = min(max(u, 0), 1)
	return m.IdleWatts + (m.MaxWatts-m.IdleWatts)*u
}

// Validate checks 0 ≤ idle ≤ max.
func (m PowerModel) Validate() error {
	if !(m.IdleWatts >= 0) || math.IsInf(m.IdleWatts, 0) {
		return Invalid("power.idle_watts", m.IdleWatts, "must be a number ≥ 0")
	}
	if !(m.MaxWatts >= m.IdleWatts) || m.MaxWatts <= 0 || math.IsInf(m.MaxWatts, 0) {
		return Invalid("power.max_watts", m.MaxWatts, "must be a number > 0 and ≥ idle_watts (%g)", m.IdleWatts)
	}
	return nil
}

func (m PowerModel) String() string {
	return fmt.Sprintf("linear: idle %g W, max %g W", m.IdleWatts, m.MaxWatts)
}

// Host is a machine instances run on; on the local platform, a CPU partition
// (cpuset) of this machine.
type Host struct {
	Name string `json:"name"`
	// Class names the hardware kind ("std", "fast"); hosts of a class share
	// a power model and, for emulated frequency, a reference frequency.
	Class string `json:"class"`
	// Cores is the capacity in cores (CPU share 100% = one core).
	Cores float64 `json:"cores"`
	// MemoryMiB is the memory capacity; 0 means not accounted.
	MemoryMiB int64      `json:"memory_mib,omitempty"`
	Power     PowerModel `json:"power"`
	// On is the host's power state.
	On bool `json:"on"`
	// Sandbox hosts run clones only; nothing on them is on-line.
	Sandbox bool `json:"sandbox"`
}

// Instance is one running server of a tier, or a clone of one.
type Instance struct {
	ID      string `json:"id"`
	Service string `json:"service,omitempty"`
	Tier    string `json:"tier,omitempty"`
	Host    string `json:"host"`
	// Addr is the instance's internal address (host:port) as the previous
	// tier knows it. A clone has the same internal address inside its own
	// network and is reached through Clone.Endpoint or Clone.Dial.
	Addr  string     `json:"addr"`
	Alloc Allocation `json:"allocation"`
	// Origin is, for a clone, the instance it was cloned from.
	Origin string `json:"origin,omitempty"`
	State  string `json:"state"` // "running", "stopped", ...
}

// InstanceSpec is how to start an instance on a platform that launches them.
type InstanceSpec struct {
	ID      string   `json:"id"`
	Service string   `json:"service,omitempty"`
	Tier    string   `json:"tier,omitempty"`
	Host    string   `json:"host"`
	Command []string `json:"command"`
	Env     []string `json:"env,omitempty"`
	Dir     string   `json:"dir,omitempty"`
	// StateDir is the directory the instance writes its state to; clones get
	// a copy-on-write view of it.
	StateDir string     `json:"state_dir,omitempty"`
	Addr     string     `json:"addr"`
	Alloc    Allocation `json:"allocation"`
}

// CloneOptions configure a clone.
type CloneOptions struct {
	// Alloc is the clone's initial allocation.
	Alloc Allocation
	// Redirect maps next-tier addresses the instance calls (host:port) to
	// the out-proxy address that answers the clone instead. Calls to any
	// other address from the clone are refused.
	Redirect map[string]string
	// InNetwork, on a platform that reaches into its clones' networks (see
	// NetworkReacher), makes a clone reached inside its own network only:
	// it has no address outside it (Clone.Endpoint is empty), Clone.Dial
	// connects to it there, and each next-tier address in Answer is served
	// by a listener the platform opens inside that network before the
	// clone runs. Redirect is unused then, and the clone's calls to any
	// other address fail. Its traffic then takes the path its original's
	// takes (a loopback, on the local platform) instead of address
	// translation and a virtual link, whose per-packet cost the clone would
	// pay in its own CPU time.
	InNetwork bool
	// Answer maps next-tier addresses the instance calls (host:port) to
	// what serves the clone's calls to them (the out-proxy), with
	// InNetwork. The platform calls each function during Clone, before the
	// clone runs; the function owns the listener once it returns nil (also
	// when Clone fails after), and on error the platform closes it and
	// the clone fails.
	Answer map[string]func(net.Listener) error
}

// Clone is a copy of an on-line instance in the sandbox.
type Clone struct {
	Instance
	// Endpoint is where the in-proxy sends the clone's copies (host:port
	// reachable from the host, behind NAT); empty for a clone made
	// InNetwork, reached through Dial.
	Endpoint string `json:"endpoint,omitempty"`
	// Mode is "live" (memory state copied) or "cold" (started afresh from
	// the same command and a snapshot of the state).
	Mode string `json:"mode"`
	// Pause is how long the original was paused for a consistent snapshot.
	Pause time.Duration `json:"pause"`
	// Network, for a clone made InNetwork, says in words where it listens:
	// its internal address and the network that holds it. Dial connects to
	// it there; nil unless InNetwork.
	Network string                                      `json:"network,omitempty"`
	Dial    func(ctx context.Context) (net.Conn, error) `json:"-"`
}

// Clone modes.
const (
	CloneLive = "live"
	CloneCold = "cold"
)

// Usage is an instance's resource consumption since it started, read from
// its cgroup. MemoryBytes is 0 where the platform cannot read it (the
// local platform on cgroup v1 without the memory controller).
type Usage struct {
	CPUTime     time.Duration `json:"cpu_time"`
	MemoryBytes int64         `json:"memory_bytes"`
	At          time.Time     `json:"at"`
}

// Capability says how a platform varies one parameter.
type Capability struct {
	Param string `json:"param"` // "cpu", "freq", "mem", "hostclass"
	How   string `json:"how"`   // e.g. "CFS bandwidth (cpu.max)"
	// Emulated is true when the platform imitates the knob with another
	// (e.g. frequency by scaling CPU bandwidth); results say so.
	Emulated bool `json:"emulated"`
}

// Platform runs instances and clones them into the sandbox. Methods are safe
// for concurrent use. IDs not known to the platform give ErrNotFound.
type Platform interface {
	// Name is the platform's registered name ("local", "qemu").
	Name() string
	// Capabilities lists the parameters the platform can vary, and how.
	Capabilities() []Capability
	Hosts(ctx context.Context) ([]Host, error)
	Instances(ctx context.Context) ([]Instance, error)
	// Clone copies the on-line instance id onto sandbox host. The original
	// keeps serving; the pause it suffered is reported in Clone.Pause.
	Clone(ctx context.Context, id, host string, opts CloneOptions) (*Clone, error)
	// SetAllocation changes an instance's or clone's resources at run time.
	SetAllocation(ctx context.Context, id string, a Allocation) error
	// Usage reads an instance's or clone's consumption.
	Usage(ctx context.Context, id string) (Usage, error)
	// Destroy removes an instance or clone and everything it owned
	// (processes, cgroup, namespace, NAT rules, overlay). Destroying what
	// is already gone returns nil.
	Destroy(ctx context.Context, id string) error
}

// NetworkReacher is a platform that can reach into its clones' networks
// from this process (the local platform: a clone's network namespace is
// on this machine), and so makes clones CloneOptions.InNetwork.
type NetworkReacher interface {
	ReachesIntoClones() bool
}

// Launcher is a platform that starts instances from a spec.
type Launcher interface {
	Launch(ctx context.Context, spec InstanceSpec) (*Instance, error)
}

// Migrator is a platform that moves instances between hosts while they run.
type Migrator interface {
	Migrate(ctx context.Context, id, host string) error
}

// PowerSwitch is a platform that powers hosts on and off.
type PowerSwitch interface {
	SetPower(ctx context.Context, host string, on bool) error
}

// Cleaner is a platform that can remove what a crashed run left behind.
type Cleaner interface {
	Cleanup(ctx context.Context) error
}

// PlatformConfig is what a platform factory receives. Zero fields take the
// platform's defaults.
type PlatformConfig struct {
	// Logger receives the platform's logs; nil discards them.
	Logger *slog.Logger
	// StateDir is where the platform keeps its own files (overlays, sockets).
	StateDir string
	// Hosts are the site's hosts; none lets the platform pick its own.
	Hosts []Host
	// HostCPUs maps a host name to its cpuset ("0", "1-3"), for platforms
	// that split one machine into hosts (local, qemu). A host not in the
	// map, or mapped to "", gets CPUs the platform picks, which may be
	// another host's.
	HostCPUs map[string]string
}

// PlatformFactory makes a platform.
type PlatformFactory func(PlatformConfig) (Platform, error)

var (
	platformsMu sync.Mutex
	platforms   = map[string]PlatformFactory{}
)

// RegisterPlatform makes a platform available by name. It panics when the
// name is taken, so two backends cannot silently shadow each other.
func RegisterPlatform(name string, f PlatformFactory) {
	platformsMu.Lock()
	defer platformsMu.Unlock()
	if _, dup := platforms[name]; dup {
		panic("justrunit: platform " + name + " registered twice")
	}
	platforms[name] = f
}

// NewPlatform makes the platform registered as name.
func NewPlatform(name string, cfg PlatformConfig) (Platform, error) {
	platformsMu.Lock()
	f, ok := platforms[name]
	platformsMu.Unlock()
	if !ok {
		return nil, Invalid("platform", name, "unknown; registered: %v", PlatformNames())
	}
	return f(cfg)
}

// PlatformNames lists the registered platforms, sorted.
func PlatformNames() []string {
	platformsMu.Lock()
	defer platformsMu.Unlock()
	names := make([]string, 0, len(platforms))
	for n := range platforms {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Check is one thing a platform needs from the machine, as found there
// (justrunit platform check).
type Check struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Optional is set when the platform works without it, in the lesser
	// way Detail names.
	Optional bool `json:"optional,omitempty"`
	// Detail is what was found, or why the check failed.
	Detail string `json:"detail"`
	// Fix says what to do when the check fails.
	Fix string `json:"fix,omitempty"`
}

// NewCheck returns the check called name: passed when err is nil, with
// detail as its Detail; failed otherwise, with err added to the Detail
// and fix as its Fix.
func NewCheck(name, detail string, err error, fix string) Check {
	c := Check{Name: name, OK: err == nil, Detail: detail}
	if err != nil {
		c.Fix = fix
		if detail == "" {
			c.Detail = err.Error()
		} else {
			c.Detail = detail + "; " + err.Error()
		}
	}
	return c
}
