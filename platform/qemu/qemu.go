// Package qemu is the JustRunIt platform whose instances are virtual
// machines: QEMU processes controlled over QMP (internal/qmp), each in its
// own cgroup so that its CPU share can be set, booting a guest image built by
// package guest.
//
// A clone is made the paper's way, by live migration that resumes both
// sides:
//
//  1. a destination QEMU starts on the sandbox host with -incoming defer,
//     the same devices, and a disk overlay whose backing file is the
//     source's current disk (created with qemu-img -u: nothing is read yet);
//  2. both sides enable the pause-before-switchover capability; the source
//     gets a high bandwidth and a small downtime limit, then migrates over a
//     unix socket (pre-copy: it keeps running while its RAM is copied; under
//     TCG it is paused first, see Options.CloneMethod);
//  3. when the source reaches pre-switchover (it is paused, its disk quiet),
//     blockdev-snapshot-sync moves the source onto a new overlay: its old
//     disk is now the frozen backing file that both the source's new overlay
//     and the clone's overlay sit on (the paper's copy-on-write snapshot);
//  4. migrate-continue finishes the switch-over, the destination starts
//     running, and `cont` resumes the source (and, after stop-and-copy, the
//     clone): both run from the same memory state and the same disk state.
//
// Networking is QEMU user-mode networking (slirp): every guest has the same
// address inside (10.0.2.15, same MAC for a clone as for its origin), and is
// reached from the host through its own forwarded port (the NAT). A clone's
// network is started with restrict=on, so it can reach nothing outside
// except the guestfwd rules made from CloneOptions.Redirect, which connect
// the next-tier address the guest calls to the out-proxy.
//
// Hosts are CPU partitions (cpusets) of this machine; Migrate moves a VM
// between them by a real live migration.
//
// Acceleration: KVM when /dev/kvm can run a stock kernel, otherwise QEMU's
// TCG. Some nested setups expose /dev/kvm through a paravirtual module
// (kvm_pvm) that runs only specially built guest kernels, and a stock Debian
// kernel then takes minutes to decompress; Options.Accel "auto" detects that
// and uses TCG, and Platform.Accel says which one is in use.
package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

func init() {
	justrunit.RegisterPlatform("qemu", func(c justrunit.PlatformConfig) (justrunit.Platform, error) {
		o, err := optionsFrom(c)
		if err != nil {
			return nil, err
		}
		return New(o)
	})
}

// optionsFrom turns what the platform registry passes into Options: the
// hosts with the cpusets the site gives them (so that a sandbox the site
// puts on CPUs of its own stays there), and the image $JUSTRUNIT_QEMU_IMAGE
// names.
func optionsFrom(c justrunit.PlatformConfig) (Options, error) {
	o := Options{Logger: c.Logger, StateDir: c.StateDir}
	known := map[string]bool{}
	for _, h := range c.Hosts {
		o.Hosts = append(o.Hosts, HostConfig{Host: h, CPUs: c.HostCPUs[h.Name]})
		known[h.Name] = true
	}
	for name := range c.HostCPUs {
		if !known[name] {
			return Options{}, justrunit.Invalid("host_cpus["+name+"]", c.HostCPUs[name], "names no host of the configuration")
		}
	}
	if d := os.Getenv("JUSTRUNIT_QEMU_IMAGE"); d != "" {
		o.Image = d
	}
	return o, nil
}

// Defaults.
const (
	// DefaultMemoryMiB is a guest's memory.
	DefaultMemoryMiB = 256
	// DefaultBootTimeout bounds Launch's wait for the service to listen.
	DefaultBootTimeout = 90 * time.Second
	// DefaultPeriod is the CFS period (short, so a small share throttles
	// a request smoothly rather than in 100 ms steps).
	DefaultPeriod = 20 * time.Millisecond
	// DefaultDowntimeLimit is the switch-over pause QEMU aims for.
	DefaultDowntimeLimit = 50 * time.Millisecond
	// DefaultMaxBandwidth is the migration bandwidth cap (bytes/s); a
	// unix socket on one machine carries far more than QEMU's 128 MiB/s
	// default.
	DefaultMaxBandwidth = 8 << 30
	// DefaultRefFreqGHz is the frequency freq is emulated relative to when
	// neither cpufreq nor /proc/cpuinfo tells (hostlayout.MachineFreqGHz).
	DefaultRefFreqGHz = 2.0
)

// cgroupRoot is the cgroup path every QEMU process of the platform is
// under, in a scope per state directory (so that two platforms with
// different state directories never clean up each other's VMs).
const cgroupRoot = "/justrunit/qemu"

// HostConfig is a host: a partition of this machine's CPUs.
type HostConfig = hostlayout.Host

// LockFile is the file in Options.StateDir that the platform holds locked
// while it is open; it stays when the platform closes (it is not a VM's).
const LockFile = ".lock"

// Options configure the platform. Zero fields take the defaults.
type Options struct {
	// Logger receives the platform's logs; nil discards them.
	Logger *slog.Logger
	// StateDir is the platform's directory: VMs' overlays, sockets and
	// consoles go to StateDir/vms (locked while the platform is open).
	// Required.
	StateDir string
	// Image is the guest image directory (see package guest) Launch boots
	// when the spec's Dir does not name one; default StateDir/image, where
	// "justrunit image build" links the image it builds.
	Image string
	// Hosts are the partitions; none gives DefaultHosts.
	Hosts []HostConfig
	// QEMU is the emulator binary (default qemu-system-x86_64 on $PATH).
	QEMU string
	// Accel is "kvm", "tcg" or "auto" (the default; see the package doc).
	Accel string
	// MemoryMiB is each guest's memory (default DefaultMemoryMiB).
	MemoryMiB int
	// BootTimeout bounds Launch's wait (default DefaultBootTimeout).
	BootTimeout time.Duration
	// Period is the CFS period (default DefaultPeriod), 1 ms to 1 s; a
	// share too small for it gets a longer one, up to 1 s.
	Period time.Duration
	// DowntimeLimit is the migration downtime QEMU aims for.
	DowntimeLimit time.Duration
	// CloneMethod is how Clone and Migrate copy memory: "pre-copy" (live
	// migration: the source runs while its RAM is copied and pauses only
	// for the switch-over), "stop-and-copy" (the source pauses for the whole
	// copy), or "auto" (the default: pre-copy under KVM, stop-and-copy under
	// TCG, whose dirty-page tracking in QEMU before 9.0 misses guest writes
	// during pre-copy — the clone then runs on stale memory and its kernel
	// crashes; upstream fix "physmem: Fix migration dirty bitmap coherency
	// with TCG memory access").
	CloneMethod string
	// KillWithParent makes the QEMU processes die with this process (tests
	// and benchmarks); a daemon leaves on-line VMs running.
	KillWithParent bool
}

// DefaultHosts are the hosts used when none are configured: two on-line
// hosts and a sandbox, as on the local platform.
func DefaultHosts(ncpu int) []HostConfig {
	per := math.Max(1, math.Floor(float64(ncpu)/3))
	pw := justrunit.PowerModel{IdleWatts: 60, MaxWatts: 140}
	mk := func(name string, sandbox bool) HostConfig {
		return HostConfig{Host: justrunit.Host{Name: name, Class: "std", Cores: per, Power: pw, On: true, Sandbox: sandbox}}
	}
	hs := []HostConfig{mk("pm1", false), mk("pm2", false), mk("sandbox", true)}
	if ncpu == 2 {
		hs[0].CPUs, hs[1].CPUs, hs[2].CPUs = "0", "1", "1"
	}
	return hs
}

// cgroupControllers lists the cgroup controllers mounted here; a test
// replaces it to play a machine without some.
var cgroupControllers = cgroup.Controllers

// Platform is the qemu platform. Its methods are safe for concurrent use.
type Platform struct {
	o     Options
	log   *slog.Logger
	accel string
	cg    cgroup.Version
	// noCPUAcct says that cgroup v1's cpuacct hierarchy is not mounted:
	// a VM's CPU time cannot be read (Usage fails rather than read 0).
	noCPUAcct bool
	refFreq   float64
	busybox   string
	scope     string // cgroupRoot/<hash of the state directory>
	// stopCopy pauses sources for the whole memory copy (see CloneMethod).
	stopCopy bool

	imgOnce sync.Once
	img     *guest.Image
	imgErr  error

	lock *os.File

	stopTrim chan struct{} // ends trimConsoles; closed by Close
	trimDone chan struct{}

	// ops counts the Launches, Clones and Migrates under way (see
	// beginLocked); Close cancels them through opsCtx and waits for them
	// before it destroys the VMs, so that none adds a VM behind it.
	ops       sync.WaitGroup
	opsCtx    context.Context
	cancelOps context.CancelFunc

	mu     sync.Mutex
	closed bool
	hosts  []*HostConfig
	vms    map[string]*vm
	seq    int
	usedHP map[int]bool
}

var (
	_ justrunit.Platform    = (*Platform)(nil)
	_ justrunit.Launcher    = (*Platform)(nil)
	_ justrunit.Migrator    = (*Platform)(nil)
	_ justrunit.PowerSwitch = (*Platform)(nil)
	_ justrunit.Cleaner     = (*Platform)(nil)
)

var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$`)

// Requirements says what this machine lacks to run the platform (root,
// QEMU, the image tools), or nil.
func Requirements() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("qemu platform: %w: needs Linux", justrunit.ErrUnsupported)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("qemu platform: %w: needs root (cgroups)", justrunit.ErrUnsupported)
	}
	if err := guest.Requirements(); err != nil {
		return fmt.Errorf("qemu platform: %w: %v", justrunit.ErrUnsupported, err)
	}
	return nil
}

// New checks the machine and returns the platform. It starts nothing.
func New(o Options) (*Platform, error) {
	if err := Requirements(); err != nil {
		return nil, err
	}
	if o.StateDir == "" {
		return nil, justrunit.Invalid("state_dir", nil, "required")
	}
	sd, err := filepath.Abs(o.StateDir)
	if err != nil {
		return nil, justrunit.Invalid("state_dir", o.StateDir, "%v", err)
	}
	o.StateDir = filepath.Join(sd, "vms")
	if o.Image == "" {
		o.Image = filepath.Join(sd, "image")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = DefaultMemoryMiB
	}
	if o.BootTimeout <= 0 {
		o.BootTimeout = DefaultBootTimeout
	}
	if o.Period <= 0 {
		o.Period = DefaultPeriod
	}
	if o.Period < minQuota || o.Period > maxPeriod {
		return nil, justrunit.Invalid("period", o.Period, "want %v to %v (the kernel's CFS period bounds)", minQuota, maxPeriod)
	}
	if o.DowntimeLimit <= 0 {
		o.DowntimeLimit = DefaultDowntimeLimit
	}
	accel, err := pickAccel(o.Accel)
	if err != nil {
		return nil, err
	}
	var stopCopy bool
	switch o.CloneMethod {
	case "", "auto":
		stopCopy = accel == "tcg"
	case "pre-copy":
	case "stop-and-copy":
		stopCopy = true
	default:
		return nil, justrunit.Invalid("clone_method", o.CloneMethod, "want pre-copy, stop-and-copy or auto")
	}
	v, err := cgroup.Detect()
	if err != nil {
		return nil, fmt.Errorf("qemu platform: %w", err)
	}
	noCPUAcct := false
	if v == cgroup.V1 {
		have, err := cgroupControllers(v)
		if err != nil {
			return nil, fmt.Errorf("qemu platform: cgroup controllers: %w", err)
		}
		noCPUAcct = !slices.Contains(have, "cpuacct")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("qemu platform: %w: busybox (busybox-static) relays clones' redirected calls", justrunit.ErrUnsupported)
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu platform: %w", err)
	}
	hosts, err := layoutHosts(o.Hosts, onlineCPUs())
	if err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(o.StateDir, LockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("qemu platform: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("qemu platform: state directory %s is in use by another process: %w", o.StateDir, justrunit.ErrExists)
	}
	p := &Platform{o: o, log: o.Logger, accel: accel, lock: lock, stopCopy: stopCopy, cg: v, noCPUAcct: noCPUAcct, refFreq: hostlayout.MachineFreqGHz("/", DefaultRefFreqGHz), busybox: bb,
		hosts: hosts, vms: map[string]*vm{}, usedHP: map[int]bool{},
		scope: fmt.Sprintf("%s/%x", cgroupRoot, sha256.Sum256([]byte(o.StateDir)))[:len(cgroupRoot)+1+12]}
	p.opsCtx, p.cancelOps = context.WithCancel(context.Background())
	p.stopTrim, p.trimDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.trimDone)
		p.trimConsoles(p.stopTrim)
	}()
	p.log.Info("qemu platform ready", "accel", accel, "clone_method", p.CloneMethod(), "cgroup", v.String(), "state_dir", o.StateDir)
	return p, nil
}

// pickAccel resolves Options.Accel.
func pickAccel(a string) (string, error) {
	switch a {
	case "kvm", "tcg":
		return a, nil
	case "", "auto":
		a, _ := AutoAccel()
		return a, nil
	}
	return "", justrunit.Invalid("accel", a, "want kvm, tcg or auto")
}

// Accel is the accelerator the platform's VMs use ("kvm" or "tcg").
func (p *Platform) Accel() string { return p.accel }

// CloneMethod is how clones and migrations copy memory: "pre-copy" or
// "stop-and-copy" (see Options.CloneMethod).
func (p *Platform) CloneMethod() string {
	if p.stopCopy {
		return "stop-and-copy"
	}
	return "pre-copy"
}

// Name is "qemu".
func (p *Platform) Name() string { return "qemu" }

// Capabilities: CPU share by CFS bandwidth on each QEMU process's cgroup,
// frequency emulated by scaling that bandwidth, memory by the virtio
// balloon (up to the boot memory).
func (p *Platform) Capabilities() []justrunit.Capability {
	how := "CFS bandwidth (cpu.cfs_quota_us) on the QEMU process's cgroup"
	if p.cg == cgroup.V2 {
		how = "CFS bandwidth (cpu.max) on the QEMU process's cgroup"
	}
	return []justrunit.Capability{
		{Param: "cpu", How: how},
		{Param: "freq", How: fmt.Sprintf("CPU bandwidth scaled by freq / %.2f GHz", p.refFreq), Emulated: true},
		{Param: "mem", How: fmt.Sprintf("virtio-balloon target, up to the %d MiB the guest booted with", p.o.MemoryMiB)},
	}
}

// Hosts lists the CPU partitions.
func (p *Platform) Hosts(ctx context.Context) ([]justrunit.Host, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]justrunit.Host, 0, len(p.hosts))
	for _, h := range p.hosts {
		out = append(out, h.Host)
	}
	return out, nil
}

// SetPower records a host's power state; a host that is off takes no new
// instances. Turning off a host that runs instances is refused.
func (p *Platform) SetPower(ctx context.Context, host string, on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hostLocked(host)
	if h == nil {
		return fmt.Errorf("set power: host %s: %w", host, justrunit.ErrNotFound)
	}
	if !on {
		for _, v := range p.vms {
			if v.inst.Host == host {
				return justrunit.Invalid("host", host, "runs instance %s; migrate it first", v.inst.ID)
			}
		}
	}
	h.On = on
	return nil
}

func (p *Platform) hostLocked(name string) *HostConfig {
	for _, h := range p.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Instances lists the VMs, on-line instances and clones, sorted by ID.
func (p *Platform) Instances(ctx context.Context) ([]justrunit.Instance, error) {
	p.mu.Lock()
	vms := make([]*vm, 0, len(p.vms))
	for _, v := range p.vms {
		vms = append(vms, v)
	}
	p.mu.Unlock()
	out := make([]justrunit.Instance, 0, len(vms))
	for _, v := range vms {
		out = append(out, v.instance())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (p *Platform) get(id string) (*vm, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.vms[id]
	if !ok {
		return nil, fmt.Errorf("instance %s: %w", id, justrunit.ErrNotFound)
	}
	return v, nil
}

// image loads the default guest image once.
func (p *Platform) image(dir string) (*guest.Image, error) {
	if dir != "" && dir != p.o.Image {
		return guest.Load(dir)
	}
	p.imgOnce.Do(func() {
		p.img, p.imgErr = guest.Load(p.o.Image)
		if p.imgErr != nil {
			p.imgErr = fmt.Errorf("%w (build one with: justrunit image build --out %s)", p.imgErr, p.o.Image)
		}
	})
	return p.img, p.imgErr
}

// layoutHosts validates hosts and lays them out (see hostlayout.Layout);
// no hosts gives DefaultHosts.
func layoutHosts(cfg []HostConfig, cpus []int) ([]*HostConfig, error) {
	if len(cfg) == 0 {
		cfg = DefaultHosts(len(cpus))
	}
	hs, err := hostlayout.Layout(cfg, cpus, justrunit.PowerModel{IdleWatts: 60, MaxWatts: 140})
	if err != nil {
		return nil, fmt.Errorf("qemu platform: %w", err)
	}
	return hs, nil
}

func onlineCPUs() []int { return hostlayout.OnlineCPUs() }

// errExited reports an operation on a VM whose QEMU has exited.
var errExited = errors.New("qemu process has exited")

// beginLocked registers an operation that may add or move a VM; the caller
// holds p.mu and has checked that the platform is not closed. It returns
// ctx, also cancelled when Close starts, and the function that ends the
// operation.
func (p *Platform) beginLocked(ctx context.Context) (context.Context, func()) {
	p.ops.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stop := func() bool { return false }
	if p.opsCtx != nil {
		stop = context.AfterFunc(p.opsCtx, cancel)
	}
	return ctx, func() {
		stop()
		cancel()
		p.ops.Done()
	}
}

// endOps cancels the operations under way and waits for them to end; the
// platform is closed, so no new one begins.
func (p *Platform) endOps() {
	if p.cancelOps != nil {
		p.cancelOps()
	}
	p.ops.Wait()
}

// CgroupVersion is the cgroup version in use ("v1" or "v2").
func (p *Platform) CgroupVersion() string { return p.cg.String() }

// Close destroys every VM the platform started (clones first) and releases
// the state directory. It is idempotent.
func (p *Platform) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	if p.stopTrim != nil {
		// Before any VM directory goes: a trim in progress writes in them.
		close(p.stopTrim)
		<-p.trimDone
	}
	p.endOps()
	p.mu.Lock()
	var clones, origins []string
	for id, v := range p.vms {
		if v.inst.Origin != "" {
			clones = append(clones, id)
		} else {
			origins = append(origins, id)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, id := range append(clones, origins...) {
		if err := p.Destroy(context.Background(), id); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Cleanup(ctx); err != nil {
		errs = append(errs, err)
	}
	if p.lock != nil {
		_ = p.lock.Close()
	}
	return errors.Join(errs...)
}
