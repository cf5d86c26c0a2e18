// Package local is JustRunIt's embedded platform: an instance is a process
// tree started from a command and kept in a cgroup (v1 or v2) of this
// machine; hosts are CPU partitions (cpusets) of the machine; a clone is the
// original's process tree restored by criu with its memory state (live, where
// `criu check` passes; see criu.go) or a cold start of the same command, in
// its own network namespace with the same internal address and port as the
// original, reached inside it (CloneOptions.InNetwork) or behind a veth pair
// and NAT, on a copy-on-write snapshot of the
// original's state directory taken while the original is frozen for a moment,
// and with copy-on-write views of the machine's /tmp, /var/tmp and /dev/shm.
//
// Everything the platform creates carries a name that says it is JustRunIt's
// and which platform state directory (its scope) owns it:
//
//	cgroups     /justrunit/<scope>/<id>   (in every v1 controller, or v2)
//	netns       jri-<scope>-<clone>       (/run/netns)
//	veth pairs  jri<index>h / jri<index>c, host side aliased justrunit:<scope>:<clone>
//	nftables    table ip justrunit-<scope>-<clone> (host and clone namespace)
//	files       <StateDir>/clones/<clone>, <StateDir>/logs
//
// so Cleanup ("justrunit platform gc") removes a crashed run's objects and
// never anything else. The scope is a short hash of the state directory; a
// running platform holds a lock on it, and Cleanup by another process refuses
// to touch a scope that is in use.
//
// The platform must run as root on Linux.
package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/internal/prio"
)

func init() {
	justrunit.RegisterPlatform("local", func(c justrunit.PlatformConfig) (justrunit.Platform, error) {
		cfg := Config{Logger: c.Logger, StateDir: c.StateDir}
		for _, h := range c.Hosts {
			cfg.Hosts = append(cfg.Hosts, HostConfig{Host: h, CPUs: c.HostCPUs[h.Name]})
		}
		return New(cfg)
	})
}

// Defaults.
const (
	// DefaultPeriod is the CFS period. It is shorter than the kernel's 100 ms
	// so that a small share throttles a request smoothly instead of in
	// 100 ms steps; a share whose quota would fall under the kernel's 1 ms
	// minimum gets a longer period.
	DefaultPeriod = 20 * time.Millisecond
	// DefaultReadyTimeout bounds how long Clone waits for a clone to accept
	// connections on its endpoint.
	DefaultReadyTimeout = 20 * time.Second
	// DefaultKillTimeout bounds how long Destroy waits for processes to die.
	DefaultKillTimeout = 5 * time.Second
	// DefaultRefFreqGHz is the reference frequency of a host class when
	// neither cpufreq nor /proc/cpuinfo tells.
	DefaultRefFreqGHz = 2.0
)

// DefaultLinkNet is the /16 that clone links (/30 each) are numbered from.
// These addresses exist only on the platform's veths and in the clones'
// namespaces.
var DefaultLinkNet = netip.MustParsePrefix("10.231.0.0/16")

// runDir holds machine-wide locks.
const runDir = "/run/justrunit"

// HostConfig is a host of the local platform: a partition of this machine's
// CPUs.
type HostConfig = hostlayout.Host

// Config configures the platform. Zero fields take the defaults.
type Config struct {
	// Logger receives the platform's logs; nil discards them.
	Logger *slog.Logger
	// StateDir holds snapshots, overlays and logs. Required.
	StateDir string
	// Hosts are the partitions; none gives DefaultHosts.
	Hosts []HostConfig
	// Period is the CFS period; 0 is DefaultPeriod.
	Period time.Duration
	// RefFreqGHz is, per host class, the frequency that freq is emulated
	// relative to; a missing class uses this machine's clock.
	RefFreqGHz map[string]float64
	// LinkNet is the /16 clone links are numbered from; zero is DefaultLinkNet.
	LinkNet netip.Prefix
	// ReadyTimeout bounds Clone's wait for the clone to listen.
	ReadyTimeout time.Duration
	// ColdClones makes every clone a cold start, even where criu could
	// carry the original's memory state over (see criu.go).
	ColdClones bool
	// LiveClones makes every clone live or none: New fails where criu
	// does not work, and Clone fails where criu cannot dump the original,
	// instead of starting it cold.
	LiveClones bool
	// IdleClones runs every clone's threads in the idle scheduling class
	// (SCHED_IDLE): an on-line task or a proxy that wakes where a clone
	// runs takes the CPU at once rather than after the clone's slice. The
	// on-line path gains; the clone's figures change too (see README).
	IdleClones bool
}

// Platform is the local platform. Its methods are safe for concurrent use.
type Platform struct {
	cfg       Config
	log       *slog.Logger
	cg        cgroup.Version
	scope     string
	lock      *os.File
	refFreq   float64
	overlayOK bool
	// overlayErr is why no overlay could be mounted under the data
	// directory (overlayOK false).
	overlayErr error
	// noMemory and noCPUAcct say that cgroup v1's memory or cpuacct
	// hierarchy is not mounted (a kernel booted with cgroup_disable=memory,
	// as Raspberry Pi OS's long was): a memory limit would limit nothing,
	// and Usage would read 0.
	noMemory, noCPUAcct bool
	// criu is the criu binary when live clones work here; criuErr says
	// why not otherwise.
	criu    string
	criuErr error

	mu        sync.Mutex
	hosts     []*HostConfig
	insts     map[string]*inst
	destroyed map[string]bool
	seq       int
	closed    bool
	// starting counts the Launches and Clones under way; Close waits for
	// them. Added to under mu while not closed.
	starting sync.WaitGroup
}

var (
	_ justrunit.Platform       = (*Platform)(nil)
	_ justrunit.Launcher       = (*Platform)(nil)
	_ justrunit.Migrator       = (*Platform)(nil)
	_ justrunit.PowerSwitch    = (*Platform)(nil)
	_ justrunit.Cleaner        = (*Platform)(nil)
	_ justrunit.NetworkReacher = (*Platform)(nil)
)

// inst is one instance or clone.
type inst struct {
	justrunit.Instance
	spec  justrunit.InstanceSpec
	path  string // resolved command path
	env   []string
	group *cgroup.Group
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has been reaped
	// ready is closed, under p.mu, when its Launch or Clone has made it
	// whole, or has failed and forgotten it. Until then what it owns is
	// its starter's to make and to remove: Clone refuses it as an
	// original, and Destroy sets destroying (under p.mu) and waits.
	ready      chan struct{}
	destroying bool
	// stopStart cancels the context its Clone waits on (for the clone to
	// listen), so that a Destroy while it starts need not wait that long.
	stopStart context.CancelFunc
	// teardownErr is why its starter (set with ready), or a Destroy of it
	// whole, could not remove what it had made: the entry stays, in the
	// state "failed" (also once its process is reaped), keeping its ID and
	// cgroup path from being taken again, until a Destroy or Close
	// removes it. Set under p.mu.
	teardownErr error
	clone       *cloneState
	// undumpable says why criu cannot dump this instance's tree for as
	// long as it runs (an MPTCP listener); its clones are then cold.
	undumpable string
	// changing is held by SetAllocation and Migrate while they apply a
	// change, so that one change at a time reaches the cgroup: its limits
	// and the recorded Alloc and Host then agree, and pending is the only
	// booking in flight. Taken before p.mu, never while holding it.
	changing sync.Mutex
	// pending books, under p.mu, the CPU share a change being applied
	// takes on its host (see booked), so that the room it was checked
	// against is not given to another instance before the change lands.
	pending *booking
}

// booking is a CPU share booked on a host by a change not yet applied.
type booking struct {
	host string
	cpu  float64
}

// isReady reports whether in's Launch or Clone has made it whole.
func (in *inst) isReady() bool {
	select {
	case <-in.ready:
		return true
	default:
		return false
	}
}

// errDestroyedStarting is a Launch's or Clone's error when its instance was
// destroyed before it was whole.
var errDestroyedStarting = errors.New("destroyed while starting")

// stillWanted returns errDestroyedStarting once in has been destroyed while
// it starts. Its starter checks after each step that makes something, so
// that a Destroy waits for one step at most before the starter removes what
// it made.
func (p *Platform) stillWanted(in *inst) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in.destroying {
		return errDestroyedStarting
	}
	return nil
}

// started makes in whole, unless it has been destroyed meanwhile: in one
// step under p.mu, so that a Destroy either finds it whole and destroys it
// itself, or is seen here and left to the starter.
func (p *Platform) started(in *inst) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if in.destroying {
		return errDestroyedStarting
	}
	close(in.ready)
	return nil
}

func (in *inst) exited() bool {
	select {
	case <-in.done:
		return true
	default:
		return false
	}
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$`)

// New checks that the machine can run the platform, takes the lock on
// cfg.StateDir and returns the platform. Call Close to release it.
func New(cfg Config) (*Platform, error) {
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("local platform: %w: needs Linux", justrunit.ErrUnsupported)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("local platform: %w: needs root (cgroups, namespaces, nftables)", justrunit.ErrUnsupported)
	}
	if cfg.StateDir == "" {
		return nil, justrunit.Invalid("state_dir", nil, "required")
	}
	sd, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, justrunit.Invalid("state_dir", cfg.StateDir, "%v", err)
	}
	cfg.StateDir = sd
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Period <= 0 {
		cfg.Period = DefaultPeriod
	}
	if !cfg.LinkNet.IsValid() {
		cfg.LinkNet = DefaultLinkNet
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	var criu string
	var criuErr error
	switch {
	case cfg.ColdClones && cfg.LiveClones:
		return nil, justrunit.Invalid("clones", "cold and live", "choose one (Config.ColdClones, Config.LiveClones)")
	case cfg.ColdClones:
		criuErr = errors.New("cold clones asked for")
	default:
		criu, criuErr = criuHere()
		if criuErr != nil && cfg.LiveClones {
			return nil, fmt.Errorf("local platform: %w: live clones asked for, and none can be made here: %v", justrunit.ErrUnsupported, criuErr)
		}
	}
	v, err := cgroup.Detect()
	if err != nil {
		return nil, fmt.Errorf("local platform: %w", err)
	}
	p := &Platform{
		cfg:       cfg,
		log:       cfg.Logger,
		cg:        v,
		scope:     Scope(sd),
		refFreq:   hostlayout.MachineFreqGHz("/", DefaultRefFreqGHz),
		insts:     map[string]*inst{},
		destroyed: map[string]bool{},
	}
	if v == cgroup.V1 {
		have, err := cgroupControllers(v)
		if err != nil {
			return nil, fmt.Errorf("local platform: cgroup controllers: %w", err)
		}
		p.noMemory, p.noCPUAcct = !slices.Contains(have, "memory"), !slices.Contains(have, "cpuacct")
	}
	hosts, err := layoutHosts(cfg.Hosts, hostlayout.OnlineCPUs())
	if err != nil {
		return nil, err
	}
	p.hosts = hosts
	for _, d := range []string{sd, filepath.Join(sd, "clones"), filepath.Join(sd, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("local platform: %w", err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(sd, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("local platform: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("local platform: state dir %s: %w: in use by another process", sd, justrunit.ErrExists)
	}
	_ = lf.Truncate(0)
	_, _ = lf.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	p.lock = lf
	registerScope(p.scope, sd)
	p.overlayErr = probeOverlay(filepath.Join(sd, "clones"))
	p.overlayOK = p.overlayErr == nil
	p.criu, p.criuErr = criu, criuErr
	p.log.Debug("local platform ready", "scope", p.scope, "cgroup", v.String(), "overlay", p.overlayOK, "ref_freq_ghz", p.refFreq,
		"live_clones", p.criu != "", "cold_because", p.criuErr)
	return p, nil
}

// Scope returns the short name that the objects of the platform with state
// directory stateDir carry.
func Scope(stateDir string) string {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	sum := sha256.Sum256([]byte(filepath.Clean(stateDir)))
	return hex.EncodeToString(sum[:4])
}

// Scope is the short name this platform's objects carry.
func (p *Platform) Scope() string { return p.scope }

// CgroupVersion is the cgroup version in use.
func (p *Platform) CgroupVersion() string { return p.cg.String() }

// Close destroys every instance and clone the platform started and releases
// its lock. A Launch or Clone under way is destroyed as Destroy does it: it
// fails at its next step, once it has removed what it had made, and Close
// waits for that. Launch and Clone fail from then on.
// It is idempotent.
func (p *Platform) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	// Rather than wait for a clone to be whole only to destroy it (a
	// whole pre-copy, a dump with its original frozen, the wait for it
	// to listen).
	for _, in := range p.insts {
		if !in.isReady() {
			in.destroying = true
			if in.stopStart != nil {
				in.stopStart()
			}
		}
	}
	p.mu.Unlock()
	// An instance or clone being started is in p.insts until its starter
	// has forgotten it; what it could not remove is destroyed below.
	p.starting.Wait()
	p.mu.Lock()
	ids := make([]string, 0, len(p.insts))
	for id := range p.insts {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := p.destroy(context.Background(), id); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		unregisterScope(p.scope)
	}
	if p.lock != nil {
		_ = p.lock.Close()
	}
	return errors.Join(errs...)
}

// Name returns "local".
func (p *Platform) Name() string { return "local" }

// ReachesIntoClones is true: a clone's network namespace is on this
// machine, so a clone made CloneOptions.InNetwork is reached over its own
// loopback, as its original is over the host's.
func (p *Platform) ReachesIntoClones() bool { return true }

// Capabilities lists what the platform varies: CPU share by CFS bandwidth,
// frequency emulated by scaling that bandwidth, memory by the memory
// controller (where it is mounted), host class by migrating to a
// partition of that class.
func (p *Platform) Capabilities() []justrunit.Capability {
	bw := "CFS bandwidth (cpu.cfs_quota_us/cpu.cfs_period_us)"
	mem := "memory.limit_in_bytes"
	if p.cg == cgroup.V2 {
		bw, mem = "CFS bandwidth (cpu.max)", "memory.max"
	}
	caps := []justrunit.Capability{
		{Param: "cpu", How: bw},
		{Param: "freq", How: "CPU bandwidth scaled by freq / the host class's reference frequency", Emulated: true},
		{Param: "mem", How: mem},
		{Param: "hostclass", How: "cpuset partition of this machine (migration between partitions)", Emulated: true},
	}
	if p.noMemory {
		caps = slices.DeleteFunc(caps, func(c justrunit.Capability) bool { return c.Param == "mem" })
	}
	return caps
}

// cgroupControllers lists the cgroup controllers mounted here; a test
// replaces it to play a machine without some.
var cgroupControllers = cgroup.Controllers

// notMounted says that cgroup v1's hierarchy of controller is not mounted
// here, and how to mount it.
func notMounted(controller string) string {
	return cgroup.NotMountedV1(controller) + ": " + cgroup.MountFixV1(controller)
}

// Hosts lists the partitions.
func (p *Platform) Hosts(ctx context.Context) ([]justrunit.Host, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]justrunit.Host, 0, len(p.hosts))
	for _, h := range p.hosts {
		out = append(out, h.Host)
	}
	return out, nil
}

// HostConfigs lists the partitions with their cpusets.
func (p *Platform) HostConfigs() []HostConfig {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]HostConfig, 0, len(p.hosts))
	for _, h := range p.hosts {
		out = append(out, *h)
	}
	return out
}

// Instances lists instances and clones, sorted by ID.
func (p *Platform) Instances(ctx context.Context) ([]justrunit.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]justrunit.Instance, 0, len(p.insts))
	for _, in := range p.insts {
		i := in.Instance
		if in.exited() && in.teardownErr == nil {
			i.State = "exited"
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, nil
}

func (p *Platform) host(name string) *HostConfig {
	for _, h := range p.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func (p *Platform) get(id string) (*inst, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in, ok := p.insts[id]
	if !ok {
		return nil, fmt.Errorf("instance %q: %w", id, justrunit.ErrNotFound)
	}
	return in, nil
}

func (p *Platform) cgPath(id string) string { return "/justrunit/" + p.scope + "/" + id }

// refFreqOf returns the reference frequency of a host class.
func (p *Platform) refFreqOf(class string) float64 {
	if f, ok := p.cfg.RefFreqGHz[class]; ok && f > 0 {
		return f
	}
	return p.refFreq
}

// checkAlloc validates a for host h. field prefixes the field names.
func (p *Platform) checkAlloc(a justrunit.Allocation, h *HostConfig) error {
	capPct := h.Cores * 100
	if a.CPU < 0 || math.IsNaN(a.CPU) {
		return justrunit.Invalid("cpu", a.CPU, "must be ≥ 0 (0 = unlimited)")
	}
	if a.CPU > capPct {
		return justrunit.Invalid("cpu", a.CPU, "above host %s's capacity of %g%% (%g cores)", h.Name, capPct, h.Cores)
	}
	ref := p.refFreqOf(h.Class)
	if a.Freq < 0 || a.Freq > ref+1e-9 {
		return justrunit.Invalid("freq", a.Freq, "must be in (0, %g] GHz, the reference frequency of class %q (emulated by CPU bandwidth; 0 = the host's own)", ref, h.Class)
	}
	if share := effectiveShare(a, h, ref); share > 0 && share < MinCPUShare {
		field, v := "cpu", a.CPU
		if a.Freq > 0 {
			field, v = "freq", a.Freq
		}
		return justrunit.Invalid(field, v, "gives %.3g%% of a CPU; CFS bandwidth needs at least %g%% (a quota of 1 ms per period of at most 1 s)", share, MinCPUShare)
	}
	if a.MemoryMiB < 0 {
		return justrunit.Invalid("mem", a.MemoryMiB, "must be ≥ 0 (0 = unlimited)")
	}
	if a.MemoryMiB > 0 && p.noMemory {
		return justrunit.Invalid("mem", a.MemoryMiB, "no memory limit can be set here: %s", notMounted("memory"))
	}
	if h.MemoryMiB > 0 && a.MemoryMiB > h.MemoryMiB {
		return justrunit.Invalid("mem", a.MemoryMiB, "above host %s's capacity of %d MiB", h.Name, h.MemoryMiB)
	}
	return nil
}

// checkRoom checks that host h can take a CPU share of cpu besides what is
// booked on it by its other instances (except the one named skip). The
// caller holds p.mu, and books the share before releasing it: a new
// instance by entering p.insts, a change by setting inst.pending.
func (p *Platform) checkRoom(h *HostConfig, cpu float64, skip string) error {
	used := p.booked(h.Name, skip)
	if used+cpu > h.Cores*100+1e-9 {
		return justrunit.Invalid("cpu", cpu, "host %s has %g%% of %g%% left", h.Name, h.Cores*100-used, h.Cores*100)
	}
	return nil
}

// booked returns the CPU share booked on host by the instances that have
// not exited, except the one named skip: an instance's allocation on its
// own host and the share a change being applied takes on the change's
// host. An instance counts once on a host, at the larger of the two while
// its allocation changes (the cgroup may have either until the change
// lands), and on both hosts while it migrates. Unlimited instances count
// as nothing. The caller holds p.mu.
func (p *Platform) booked(host, skip string) float64 {
	used := 0.0
	for _, in := range p.insts {
		if in.ID == skip || in.exited() {
			continue
		}
		b := 0.0
		if in.Host == host {
			b = in.Alloc.CPU
		}
		if r := in.pending; r != nil && r.host == host {
			b = max(b, r.cpu)
		}
		used += b
	}
	return used
}

// groupShares is the CPU weight (v1 units; 1024 is one ordinary process)
// of the platform's groups and of an instance with a full core. A CFS quota
// only caps; on a busy machine an instance would not get even its quota if
// it competed with every other process at an ordinary weight, and response
// times would measure the neighbours rather than the allocation. So
// /justrunit, the scope and each instance weigh more, an instance in
// proportion to its share.
const groupShares = 8192

// cloneShares is the CPU weight of a clone with a full core: an ordinary
// process's. The on-line path comes first: the JustRunIt process whose
// proxies carry on-line requests, and which runs at an ordinary weight,
// must not lose the CPU to a clone it shares a CPU with; a clone's quota,
// not its weight, is what its experiment measures.
const cloneShares = 1024

// MinCPUShare is the least CPU share (percent of one CPU, after freq's
// scaling) other than unlimited: the kernel's CFS bandwidth takes a quota
// of at least 1 ms in a period of at most 1 s.
const MinCPUShare = 0.1

// effectiveShare is the CPU share a gets on host h, freq emulated by
// scaling the share relative to the class's reference frequency ref; 0 is
// unlimited.
func effectiveShare(a justrunit.Allocation, h *HostConfig, ref float64) float64 {
	share := a.CPU
	if a.Freq > 0 {
		if share == 0 {
			share = h.Cores * 100
		}
		share *= a.Freq / ref
	}
	return share
}

// limits turns an allocation into cgroup limits on host h, for a clone
// when clone is set.
func (p *Platform) limits(a justrunit.Allocation, h *HostConfig, clone bool) cgroup.Limits {
	period := p.cfg.Period.Microseconds()
	share := effectiveShare(a, h, p.refFreqOf(h.Class))
	base := float64(groupShares)
	if clone {
		base = cloneShares
	}
	l := cgroup.Limits{Cpus: h.CPUs, MemoryBytes: a.MemoryMiB << 20, Shares: uint64(base)}
	if share > 0 {
		l.Shares = uint64(max(2, math.Round(share/100*base)))
		quota := int64(math.Round(share / 100 * float64(period)))
		if quota < 1000 { // the kernel's minimum quota is 1 ms
			period = int64(math.Ceil(1000 * 100 / share))
			quota = 1000
		}
		l.QuotaUS = quota
	}
	l.PeriodUS = uint64(period)
	return l
}

// Launch starts an instance from spec on spec.Host.
func (p *Platform) Launch(ctx context.Context, spec justrunit.InstanceSpec) (*justrunit.Instance, error) {
	in, err := p.prepareLaunch(spec)
	if err != nil {
		return nil, fmt.Errorf("launch instance: %w", err)
	}
	defer p.starting.Done() // after the instance is forgotten, on error
	err = p.startInstance(in, nil)
	if err == nil {
		err = p.started(in)
	}
	if err != nil {
		return nil, fmt.Errorf("launch instance %s: %w", in.ID, p.forgetAfter(in, err))
	}
	p.mu.Lock()
	i := in.Instance
	p.mu.Unlock()
	return &i, nil
}

func (p *Platform) prepareLaunch(spec justrunit.InstanceSpec) (*inst, error) {
	if !idRe.MatchString(spec.ID) {
		return nil, justrunit.Invalid("id", spec.ID, "want 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if len(spec.Command) == 0 || spec.Command[0] == "" {
		return nil, justrunit.Invalid("command", nil, "required")
	}
	// Absolute, the platform's own when empty: the shim enters it after a
	// clone's mounts, and a working directory inherited or resolved before
	// them would stay on the directory the overlay covers (a clone run in
	// its state directory would write the original's files). A working
	// directory that is gone has no state directory below it.
	if spec.Dir == "" {
		if wd, err := os.Getwd(); err == nil {
			spec.Dir = wd
		}
	} else if abs, err := filepath.Abs(spec.Dir); err == nil {
		spec.Dir = abs
	}
	path := spec.Command[0]
	if !strings.Contains(path, "/") {
		lp, err := exec.LookPath(path)
		if err != nil {
			return nil, justrunit.Invalid("command", path, "not found in PATH")
		}
		path = lp
	} else if !filepath.IsAbs(path) && spec.Dir != "" {
		path = filepath.Join(spec.Dir, path)
	}
	if fi, err := os.Stat(path); err != nil {
		return nil, justrunit.Invalid("command", spec.Command[0], "does not exist")
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, justrunit.Invalid("command", spec.Command[0], "is not an executable file")
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if spec.Dir != "" {
		if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
			return nil, justrunit.Invalid("dir", spec.Dir, "is not an existing directory")
		}
	}
	if spec.StateDir != "" {
		fi, err := os.Stat(spec.StateDir)
		if err != nil || !fi.IsDir() {
			return nil, justrunit.Invalid("state_dir", spec.StateDir, "is not an existing directory")
		}
		// Resolved: a clone's snapshot is of the directory itself (a
		// symlink copied as such would point the clone at the live
		// original), and its overlay covers the directory the original's
		// paths lead to.
		resolved, err := filepath.EvalSymlinks(spec.StateDir)
		if err == nil {
			resolved, err = filepath.Abs(resolved)
		}
		if err != nil {
			return nil, justrunit.Invalid("state_dir", spec.StateDir, "%v", err)
		}
		spec.StateDir = resolved
	}
	if spec.Addr != "" {
		if _, err := parseInternal(spec.Addr); err != nil {
			return nil, err
		}
	}
	env := mergeEnv(os.Environ(), spec.Env)

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("platform closed")
	}
	if _, ok := p.insts[spec.ID]; ok {
		return nil, fmt.Errorf("instance %q: %w", spec.ID, justrunit.ErrExists)
	}
	h := p.host(spec.Host)
	if h == nil {
		return nil, justrunit.Invalid("host", spec.Host, "unknown host; hosts: %s", p.hostNames())
	}
	if !h.On {
		return nil, justrunit.Invalid("host", spec.Host, "is powered off")
	}
	if h.Sandbox {
		return nil, justrunit.Invalid("host", spec.Host, "is a sandbox host; on-line instances run on other hosts")
	}
	if err := p.checkAlloc(spec.Alloc, h); err != nil {
		return nil, err
	}
	if err := p.checkRoom(h, spec.Alloc.CPU, ""); err != nil {
		return nil, err
	}
	in := &inst{
		Instance: justrunit.Instance{ID: spec.ID, Service: spec.Service, Tier: spec.Tier, Host: h.Name, Addr: spec.Addr, Alloc: spec.Alloc, State: "starting"},
		spec:     spec,
		path:     path,
		env:      env,
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
	}
	p.insts[spec.ID] = in
	delete(p.destroyed, spec.ID)
	p.starting.Add(1) // Close waits for it
	return in, nil
}

// mergeEnv returns base with the variables of over set, over winning. The
// shim execs with exactly this list, and C's getenv takes the first of
// duplicates, so there must be none.
func mergeEnv(base, over []string) []string {
	idx := map[string]int{}
	var out []string
	for _, kv := range append(append([]string(nil), base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func (p *Platform) hostNames() string {
	var ns []string
	for _, h := range p.hosts {
		ns = append(ns, h.Name)
	}
	return strings.Join(ns, ", ")
}

// forget removes an instance whose Launch or Clone failed: its processes,
// cgroup and clone objects, then its entry (which, until then, keeps its ID
// and so its cgroup's path from being taken again); then the Destroys
// waiting for it return. What it cannot remove it returns, and the entry
// stays (see inst.teardownErr) for a later Destroy or Close to try again.
func (p *Platform) forget(in *inst) error {
	err := p.killAndRemove(in)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil:
		in.teardownErr, in.State = err, "failed"
	case p.insts[in.ID] == in:
		delete(p.insts, in.ID)
		if in.destroying {
			// Also for a Destroy that stopped waiting: its retry finds it
			// destroyed rather than unknown.
			p.destroyed[in.ID] = true
		}
	}
	if len(p.insts) == 0 {
		p.removeScopeIfEmpty()
	}
	close(in.ready)
	return err
}

// forgetAfter forgets in, whose start failed with err, and returns err with
// what could not be removed.
func (p *Platform) forgetAfter(in *inst, err error) error {
	if ferr := p.forget(in); ferr != nil {
		return fmt.Errorf("%w; and what it made is not all removed (destroy %s to try again): %v", err, in.ID, ferr)
	}
	return err
}

// testHookStarting, when set by a test, runs as an instance's or clone's
// process is about to be started.
var testHookStarting func(*inst)

// startInstance creates the instance's cgroup and starts its process
// through the shim; for a clone, c carries its namespace and storage.
func (p *Platform) startInstance(in *inst, sc *shimConfig) (err error) {
	if testHookStarting != nil {
		testHookStarting(in)
	}
	h := p.hostOf(in)
	cpus, err := hostlayout.ParseCPUList(h.CPUs)
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	g, err := cgroup.New(p.cg, p.cgPath(in.ID), p.limits(in.Alloc, h, in.Origin != ""))
	if err != nil {
		return err
	}
	for _, anc := range []string{"/justrunit", "/justrunit/" + p.scope} {
		if err := cgroup.SetShares(p.cg, anc, groupShares); err != nil {
			p.log.Warn("cannot raise the CPU weight of the platform's cgroups", "err", err)
		}
	}
	p.mu.Lock()
	in.group = g
	p.mu.Unlock()
	if err := p.stillWanted(in); err != nil {
		return err
	}
	cfg := shimConfig{Path: in.path, Argv: in.spec.Command, Env: in.env, Dir: in.spec.Dir, CPUs: cpus}
	var cloneflags uintptr
	if sc != nil {
		cfg.Netns, cfg.Target, cfg.Lower, cfg.Upper, cfg.Work, cfg.Bind = sc.Netns, sc.Target, sc.Lower, sc.Upper, sc.Work, sc.Bind
		// Every clone, with a state directory or without, has a mount
		// namespace of its own: its scratch directories are its own.
		cfg.Private, cfg.Scratch, cfg.ScratchTmpfs = true, sc.Scratch, sc.ScratchTmpfs
		cloneflags = syscall.CLONE_NEWNS
		if sc.Restore {
			// criu restore (sc.Path, sc.Argv): the tree's PIDs are free
			// only in a PID namespace of its own, which needs its own /proc.
			cfg.Path, cfg.Argv, cfg.Env, cfg.Restore, cfg.Images = sc.Path, sc.Argv, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, true, sc.Images
			cloneflags |= syscall.CLONE_NEWPID
		}
		cfg.Idle = p.cfg.IdleClones && !sc.Restore
	}
	logf, err := os.OpenFile(filepath.Join(p.cfg.StateDir, "logs", in.ID+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd, err := startShim(cfg, logf, cloneflags, g)
	if err != nil {
		return err
	}
	p.mu.Lock()
	in.cmd = cmd
	in.State = "running"
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(in.done)
	}()
	return nil
}

func (p *Platform) hostOf(in *inst) *HostConfig {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := *p.host(in.Host)
	return &h
}

// testHookApplying, when set by a test, runs while a change to instance id
// is booked and about to be applied to its cgroup.
var testHookApplying func(id string)

// lockChange returns instance id with its change lock (inst.changing) held;
// the caller unlocks it. Under p.mu, the caller then checks with
// changeable that the instance is still p.insts[id] (it may have been
// destroyed meanwhile) and whole.
func (p *Platform) lockChange(id string) (*inst, error) {
	p.mu.Lock()
	in, ok := p.insts[id]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("instance %q: %w", id, justrunit.ErrNotFound)
	}
	in.changing.Lock()
	return in, nil
}

// changeable says why SetAllocation or Migrate cannot change in, the
// instance they looked up as id, or nil. An instance still starting is
// refused, as Clone refuses it as an original: until its Launch or Clone
// has returned, its cgroup and its Alloc and Host are its starter's to
// make (or to remove, when it fails), and a change would reach a cgroup
// about to be made or deleted, or give the clone another allocation than
// the one it was asked with. The caller holds p.mu.
func (p *Platform) changeable(in *inst, id string) error {
	switch {
	case p.insts[id] != in:
		return fmt.Errorf("instance %q: %w", id, justrunit.ErrNotFound)
	case !in.isReady():
		return justrunit.Invalid("id", id, "is still starting; change it once its %s has returned", starter(in))
	case in.teardownErr != nil:
		return justrunit.Invalid("id", id, "%s; destroy it", notRemoved(in))
	}
	return nil
}

// notRemoved says that in, failed, is not all removed, and why. The caller
// holds p.mu.
func notRemoved(in *inst) string {
	return fmt.Sprintf("failed: what it made is not all removed (%v)", in.teardownErr)
}

// starter names the call that starts in: Launch, or Clone for a clone.
func starter(in *inst) string {
	if in.Origin != "" {
		return "Clone"
	}
	return "Launch"
}

// SetAllocation changes the CPU share, emulated frequency and memory limit
// of an instance or clone. A share above the room left on the host is an
// error naming the field "cpu"; the room is checked and the new share
// booked in one step, so concurrent changes, launches and clones cannot
// together overcommit the host. An instance or clone still starting is
// refused (ErrInvalid) until its Launch or Clone has returned.
func (p *Platform) SetAllocation(ctx context.Context, id string, a justrunit.Allocation) error {
	in, err := p.lockChange(id)
	if err != nil {
		return fmt.Errorf("set allocation: %w", err)
	}
	defer in.changing.Unlock()
	p.mu.Lock()
	if err := p.changeable(in, id); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("set allocation: %w", err)
	}
	h := *p.host(in.Host)
	if err := p.checkAlloc(a, &h); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("set allocation of %s: %w", id, err)
	}
	if err := p.checkRoom(&h, a.CPU, id); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("set allocation of %s: %w", id, err)
	}
	g, old, clone := in.group, in.Alloc, in.Origin != ""
	if g == nil {
		p.mu.Unlock()
		return fmt.Errorf("set allocation: instance %q is not running", id)
	}
	in.pending = &booking{host: h.Name, cpu: a.CPU}
	p.mu.Unlock()
	if testHookApplying != nil {
		testHookApplying(id)
	}
	err = g.Set(p.limits(a, &h, clone))
	if err != nil {
		p.restoreLimits(g, p.limits(old, &h, clone), id)
	}
	p.mu.Lock()
	in.pending = nil
	if err == nil {
		in.Alloc = a
	}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("set allocation of %s: %w", id, err)
	}
	return nil
}

// restoreLimits puts back the limits a cgroup had before a change that
// failed part-way, so that it takes no more than its booking once the
// booking of the change is dropped.
func (p *Platform) restoreLimits(g *cgroup.Group, l cgroup.Limits, id string) {
	if err := g.Set(l); err != nil {
		p.log.Warn("cannot restore the limits of a failed change", "id", id, "err", err)
	}
}

// Usage reads the CPU time and memory of an instance's cgroup. It fails,
// naming the fix, where cgroup v1's cpuacct controller is not mounted;
// where only the memory controller is not, the memory reads 0 (the CPU
// time is what measurements need).
func (p *Platform) Usage(ctx context.Context, id string) (justrunit.Usage, error) {
	in, err := p.get(id)
	if err != nil {
		return justrunit.Usage{}, fmt.Errorf("usage: %w", err)
	}
	p.mu.Lock()
	g := in.group
	p.mu.Unlock()
	if g == nil {
		return justrunit.Usage{}, fmt.Errorf("usage: instance %q is not running", id)
	}
	// Rather than 0 CPU time: an energy model would take it for an idle
	// instance.
	if p.noCPUAcct {
		return justrunit.Usage{}, fmt.Errorf("usage of %s: %w: its CPU time cannot be read: %s", id, justrunit.ErrUnsupported, notMounted("cpuacct"))
	}
	u, err := g.Usage()
	if err != nil {
		return justrunit.Usage{}, err
	}
	return justrunit.Usage{CPUTime: u.CPU, MemoryBytes: u.Memory, At: time.Now()}, nil
}

// Migrate moves a running instance to another host's partition: its cgroup
// gets the target's cpuset and, for emulated frequency, the target class's
// bandwidth. The target must be on, of the same kind (sandbox or not) and
// have room for the instance's CPU share; the share is booked on the
// target when the room is checked and stays booked on the source until
// the move lands. An instance or clone still starting is refused
// (ErrInvalid) until its Launch or Clone has returned.
func (p *Platform) Migrate(ctx context.Context, id, host string) error {
	in, err := p.lockChange(id)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer in.changing.Unlock()
	p.mu.Lock()
	if err := p.changeable(in, id); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("migrate: %w", err)
	}
	h := p.host(host)
	switch {
	case h == nil:
		err = justrunit.Invalid("host", host, "unknown host; hosts: %s", p.hostNames())
	case !h.On:
		err = justrunit.Invalid("host", host, "is powered off")
	case h.Sandbox != (in.Origin != ""):
		err = justrunit.Invalid("host", host, "clones stay on sandbox hosts and on-line instances off them")
	}
	if err == nil {
		err = p.checkAlloc(in.Alloc, h)
	}
	if err == nil && in.Host != host {
		err = p.checkRoom(h, in.Alloc.CPU, id)
	}
	if err != nil {
		p.mu.Unlock()
		return fmt.Errorf("migrate %s: %w", id, err)
	}
	hc, from := *h, *p.host(in.Host)
	g, a, clone := in.group, in.Alloc, in.Origin != ""
	if g == nil {
		p.mu.Unlock()
		return fmt.Errorf("migrate: instance %q is not running", id)
	}
	in.pending = &booking{host: host, cpu: a.CPU}
	p.mu.Unlock()
	if testHookApplying != nil {
		testHookApplying(id)
	}
	err = g.Set(p.limits(a, &hc, clone))
	if err != nil {
		p.restoreLimits(g, p.limits(a, &from, clone), id)
	}
	p.mu.Lock()
	in.pending = nil
	if err == nil {
		in.Host = host
	}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("migrate %s: %w", id, err)
	}
	// The instance's threads were started on the old host's CPUs (the
	// shim's affinity), which the kernel keeps within the new cpuset where
	// the two overlap: they are given the new host's CPUs.
	cpus, err := hostlayout.ParseCPUList(hc.CPUs)
	if err == nil {
		err = prio.SetAffinityThreads(g.Threads, cpus)
	}
	if err != nil {
		p.log.Warn("migrated, but the instance's threads keep their CPUs within the new host's", "id", id, "host", host, "err", err)
	}
	p.log.Info("migrated", "id", id, "host", host, "cpus", hc.CPUs)
	return nil
}

// SetPower switches a host's power state. The local platform's power is
// logical (the CPUs are shared with the rest of the machine): an off host
// takes no instances and draws nothing in the power model. Powering off a
// host that still runs instances is an error.
func (p *Platform) SetPower(ctx context.Context, host string, on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.host(host)
	if h == nil {
		return fmt.Errorf("set power: host %q: %w", host, justrunit.ErrNotFound)
	}
	if !on {
		var ids []string
		for _, in := range p.insts {
			// An instance migrating to the host counts as on it.
			onto := in.pending != nil && in.pending.host == host
			if (in.Host == host || onto) && !in.exited() {
				ids = append(ids, in.ID)
			}
		}
		if len(ids) > 0 {
			sort.Strings(ids)
			return fmt.Errorf("power off: %w", justrunit.Invalid("host", host, "still runs %s; migrate or destroy them first", strings.Join(ids, ", ")))
		}
	}
	h.On = on
	return nil
}

// Destroy stops an instance or clone and removes its processes, cgroup and,
// for a clone, its namespace, veth pair, NAT tables and storage. Destroying
// an ID that was destroyed before, or whose leftovers a crashed run left in
// this scope, returns nil; an ID never seen gives ErrNotFound. An instance
// or clone whose Launch or Clone is under way makes that call fail, and
// Destroy returns once the call has removed what it had made (or ctx ends).
// What cannot be removed is returned, and the instance stays, listed as
// failed, until a later Destroy (or Close), which tries again, removes it.
func (p *Platform) Destroy(ctx context.Context, id string) error {
	if err := p.destroy(ctx, id); err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	return nil
}

func (p *Platform) destroy(ctx context.Context, id string) error {
	p.mu.Lock()
	in, ok := p.insts[id]
	gone := p.destroyed[id]
	starting := ok && !in.isReady()
	if starting {
		in.destroying = true
		if in.stopStart != nil {
			in.stopStart()
		}
	}
	p.mu.Unlock()
	if !ok {
		if gone {
			return nil
		}
		if idRe.MatchString(id) {
			if n, err := p.removeLeftovers(id); err != nil || n > 0 {
				return err
			}
		}
		return fmt.Errorf("instance %q: %w", id, justrunit.ErrNotFound)
	}
	if starting {
		// Its Launch or Clone sees destroying once the step under way is
		// done, removes what it has made and forgets it.
		select {
		case <-in.ready:
		case <-ctx.Done():
			return fmt.Errorf("instance %q is still starting: %w", id, ctx.Err())
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.insts[id] == in {
			return in.teardownErr // kept: this Destroy's retry removes it
		}
		if p.insts[id] == nil {
			p.destroyed[id] = true
		}
		return nil
	}
	err := p.killAndRemove(in)
	p.mu.Lock()
	if err == nil {
		delete(p.insts, id)
		p.destroyed[id] = true
	} else {
		in.teardownErr, in.State = err, "failed"
	}
	if len(p.insts) == 0 {
		p.removeScopeIfEmpty()
	}
	p.mu.Unlock()
	return err
}

// killAndRemove kills the instance's process tree and removes everything it
// owned.
func (p *Platform) killAndRemove(in *inst) error {
	var errs []error
	deadline := time.Now().Add(DefaultKillTimeout)
	p.mu.Lock()
	g, cmd := in.group, in.cmd
	p.mu.Unlock()
	if g != nil {
		if err := g.Kill(deadline); err != nil {
			errs = append(errs, err)
		}
	}
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		select {
		case <-in.done:
		case <-time.After(time.Until(deadline)):
			errs = append(errs, fmt.Errorf("process %d not reaped", cmd.Process.Pid))
		}
	}
	if g != nil {
		if err := g.Delete(); err != nil {
			errs = append(errs, err)
		} else {
			// Deleted: a retry, after what else failed here, finds no group
			// (a deleted one errs for every use).
			p.mu.Lock()
			in.group = nil
			p.mu.Unlock()
		}
	} else if err := cgroup.RemoveTree(p.cg, p.cgPath(in.ID)); err != nil {
		errs = append(errs, err)
	}
	if in.clone != nil {
		if err := p.teardownClone(in.clone); err != nil {
			errs = append(errs, err)
		}
		// An on-line instance's log outlives it for post-mortems; a clone's
		// would pile up, one per experiment.
		_ = os.Remove(filepath.Join(p.cfg.StateDir, "logs", in.ID+".log"))
	}
	return errors.Join(errs...)
}

// removeScopeIfEmpty removes /justrunit/<scope> once no group is left below
// it. The caller holds p.mu and knows the platform has no instance left, so
// no Launch is creating a group below it at the same time.
func (p *Platform) removeScopeIfEmpty() {
	for _, d := range cgroup.Dirs(p.cg, "/justrunit/"+p.scope) {
		_ = syscall.Rmdir(d)
	}
}
