package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/internal/qmp"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

// vm is one instance or clone: its current QEMU process and what it takes
// to start another one like it (for clones and migrations).
type vm struct {
	// op serialises clone, migrate, set-allocation and destroy of one VM.
	op sync.Mutex

	mu       sync.Mutex // guards the fields below
	inst     justrunit.Instance
	endpoint string
	gen      int // QEMU processes started for this VM so far

	dir       string
	img       *guest.Image
	appendArg string // kernel command line
	mac       string
	disk      string // current top overlay
	diskN     int
	diskSize  int64
	guestPort int
	natAddr   string            // host side of the forwarded port
	redirect  map[string]string // guest addr → host addr (clones only)
	// restricted VMs (clones) reach nothing outside but their redirects.
	restricted bool
	cpus       string
	limits     cgroup.Limits
	baseUsage  time.Duration // CPU time of earlier QEMU processes (before a migration)
	pause      time.Duration
	lastMig    qmp.MigrationInfo

	proc *qproc
	gone bool
}

// qproc is one QEMU process.
type qproc struct {
	cmd  *exec.Cmd
	qmp  *qmp.Client
	cg   *cgroup.Group
	done chan struct{}
	name string
}

func (q *qproc) exited() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

func (v *vm) instance() justrunit.Instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := v.inst
	if v.proc == nil || v.proc.exited() {
		in.State = "stopped"
	}
	return in
}

// Launch boots a VM from spec: spec.Command runs in the guest (arguments
// must not contain spaces: they travel on the kernel command line), Env
// entries become its environment, Addr's port is where it listens inside,
// and Addr itself — when its host is a loopback address — is the forwarded
// port the host reaches it at (otherwise a free port is chosen). Dir, if
// set, is the guest image directory; StateDir, if set, seeds the guest's
// /data disk. Launch returns once the service accepts connections.
func (p *Platform) Launch(ctx context.Context, spec justrunit.InstanceSpec) (*justrunit.Instance, error) {
	if !idRe.MatchString(spec.ID) {
		return nil, justrunit.Invalid("id", spec.ID, "want 1-48 letters, digits, '.', '_' or '-'")
	}
	if len(spec.Command) == 0 {
		return nil, justrunit.Invalid("command", nil, "required: the service command inside the guest")
	}
	for i, a := range spec.Command {
		if a == "" || strings.ContainsAny(a, " \t\n\"") {
			return nil, justrunit.Invalid(fmt.Sprintf("command[%d]", i), a, "guest arguments travel on the kernel command line: no spaces or quotes")
		}
	}
	for i, e := range spec.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(e, " \t\n\".") {
			return nil, justrunit.Invalid(fmt.Sprintf("env[%d]", i), e, "want NAME=value without spaces, quotes or dots")
		}
	}
	host, portStr, err := net.SplitHostPort(spec.Addr)
	if err != nil {
		return nil, justrunit.Invalid("addr", spec.Addr, "want host:port (the port the service listens on in the guest)")
	}
	gport, err := strconv.Atoi(portStr)
	if err != nil || gport <= 0 || gport > 65535 {
		return nil, justrunit.Invalid("addr", spec.Addr, "want a port in 1-65535")
	}
	if err := p.checkAlloc("allocation", spec.Alloc); err != nil {
		return nil, err
	}
	img, err := p.image(spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", spec.ID, err)
	}

	p.mu.Lock()
	h := p.hostLocked(spec.Host)
	switch {
	case p.closed:
		p.mu.Unlock()
		return nil, fmt.Errorf("launch %s: platform closed", spec.ID)
	case h == nil:
		p.mu.Unlock()
		return nil, fmt.Errorf("launch %s: host %q: %w", spec.ID, spec.Host, justrunit.ErrNotFound)
	case !h.On:
		p.mu.Unlock()
		return nil, justrunit.Invalid("host", spec.Host, "is powered off")
	case p.vms[spec.ID] != nil:
		p.mu.Unlock()
		return nil, fmt.Errorf("launch %s: %w", spec.ID, justrunit.ErrExists)
	}
	limits, err := p.limitsFor("allocation", spec.Alloc, h.CPUs)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	natAddr := ""
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		natAddr = spec.Addr
	} else if host == "localhost" {
		natAddr = net.JoinHostPort("127.0.0.1", portStr)
	}
	// A directory per VM lifetime: a destroyed VM's files may still back a
	// clone's disk when a new VM takes its ID.
	p.seq++
	v := &vm{
		inst: justrunit.Instance{ID: spec.ID, Service: spec.Service, Tier: spec.Tier, Host: spec.Host, Alloc: spec.Alloc, State: "starting"},
		dir:  filepath.Join(p.o.StateDir, fmt.Sprintf("%s.%d", spec.ID, p.seq)), img: img, guestPort: gport, cpus: h.CPUs,
		mac: macFor(spec.ID),
	}
	p.vms[spec.ID] = v // reserve the ID
	ctx, done := p.beginLocked(ctx)
	defer done()
	p.mu.Unlock()

	reserved := 0 // the port freePort reserved for this VM
	fail := func(err error) (*justrunit.Instance, error) {
		p.teardown(v)
		p.mu.Lock()
		delete(p.vms, spec.ID)
		delete(p.usedHP, reserved)
		p.gcDirsLocked()
		p.mu.Unlock()
		return nil, fmt.Errorf("launch %s: %w", spec.ID, err)
	}
	if natAddr == "" {
		port, err := p.freePort()
		if err != nil {
			return fail(err)
		}
		reserved = port
		natAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	v.mu.Lock()
	v.natAddr = natAddr
	v.inst.Addr = natAddr
	v.endpoint = natAddr
	v.mu.Unlock()
	_ = os.RemoveAll(v.dir)
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return fail(err)
	}
	// The disk: an overlay on the image's empty data disk, or a disk made
	// from the spec's state directory.
	base := img.Disk()
	if spec.StateDir != "" {
		base = filepath.Join(v.dir, "base.qcow2")
		if err := guest.MakeDisk(ctx, base, img.DiskMiB, spec.StateDir); err != nil {
			return fail(err)
		}
	}
	disk, size := filepath.Join(v.dir, "disk-0.qcow2"), int64(img.DiskMiB)<<20
	if err := qemuImgOverlay(ctx, base, disk, size); err != nil {
		return fail(err)
	}
	var kargs []string
	kargs = append(kargs, "console=ttyS0", "quiet", "panic=-1", "tsc=reliable", "i8042.noaux", "i8042.nokbd")
	kargs = append(kargs, spec.Env...)
	kargs = append(kargs, "--")
	kargs = append(kargs, spec.Command...)
	v.mu.Lock()
	v.disk, v.diskSize = disk, size
	v.appendArg = strings.Join(kargs, " ")
	v.limits = limits
	v.mu.Unlock()

	start := time.Now()
	proc, err := p.startQEMU(ctx, v, startOpts{paused: true, hostfwd: true})
	if err != nil {
		return fail(err)
	}
	v.mu.Lock()
	v.proc = proc
	v.mu.Unlock()
	if err := proc.qmp.Cont(ctx); err != nil {
		return fail(err)
	}
	bctx, cancel := context.WithTimeout(ctx, p.o.BootTimeout)
	defer cancel()
	console := filepath.Join(v.dir, proc.name+".console.log")
	if err := waitBooted(bctx, console, proc); err != nil {
		return fail(fmt.Errorf("%w; guest console: %s", err, tail(console, 600)))
	}
	if err := waitListening(bctx, natAddr, proc); err != nil {
		return fail(fmt.Errorf("%w; guest console: %s", err, tail(filepath.Join(v.dir, proc.name+".console.log"), 600)))
	}
	v.mu.Lock()
	v.inst.State = "running"
	v.mu.Unlock()
	p.log.Info("launched", "id", spec.ID, "host", spec.Host, "addr", natAddr, "boot", time.Since(start).Round(time.Millisecond), "accel", p.accel)
	in := v.instance()
	return &in, nil
}

type startOpts struct {
	paused   bool // -S: do not run until cont (so that it runs in its cgroup from the start)
	incoming bool // -incoming defer
	hostfwd  bool // forward natAddr now (Migrate adds it after the source has let go of the port)
	restrict bool // clone networking: nothing out but the guestfwd rules
}

// startQEMU starts a QEMU process for v, in a new cgroup with v.limits,
// and connects to its QMP socket.
func (p *Platform) startQEMU(ctx context.Context, v *vm, so startOpts) (*qproc, error) {
	v.mu.Lock()
	v.gen++
	gen := v.gen
	name := fmt.Sprintf("qemu-%d", gen)
	sock := filepath.Join(v.dir, name+".qmp")
	args := p.qemuArgs(v, name, sock, so)
	if so.paused {
		args = append(args, "-S")
	}
	if so.incoming {
		args = append(args, "-incoming", "defer")
	}
	limits := v.limits
	cgPath := fmt.Sprintf("%s/%s-%d", p.scope, v.inst.ID, gen)
	v.mu.Unlock()

	g, err := cgroup.New(p.cg, cgPath, limits)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.o.QEMU, args...)
	cmd.Dir = v.dir
	stderr, err := os.Create(filepath.Join(v.dir, name+".stderr"))
	if err != nil {
		_ = g.Delete()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if p.o.KillWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	err = cmd.Start()
	stderr.Close()
	if err != nil {
		_ = g.Delete()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	q := &qproc{cmd: cmd, cg: g, done: make(chan struct{}), name: name}
	go func() { _ = cmd.Wait(); close(q.done) }()
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		p.killProc(q)
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		select {
		case <-q.done:
			cancel() // QEMU died before its QMP socket answered
		case <-dctx.Done():
		}
	}()
	c, err := qmp.Dial(dctx, sock)
	if err != nil {
		p.killProc(q)
		return nil, fmt.Errorf("%w; qemu said: %s", err, tail(filepath.Join(v.dir, name+".stderr"), 400))
	}
	q.qmp = c
	return q, nil
}

// qemuArgs is the command line of one QEMU process of v. A destination
// must have the same devices as its source, so clones and migrations use
// it too.
func (p *Platform) qemuArgs(v *vm, name, sock string, so startOpts) []string {
	accel := []string{"-machine", "pc,accel=kvm"}
	if p.accel == "tcg" {
		accel = []string{"-machine", "pc", "-accel", "tcg,thread=multi,tb-size=64"}
	}
	args := []string{"-name", "jri-" + v.inst.ID + ",debug-threads=on"}
	args = append(args, accel...)
	return append(args,
		"-m", strconv.Itoa(p.o.MemoryMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", v.img.Kernel(), "-initrd", v.img.Initrd(), "-append", v.appendArg,
		// Appending, so that trimConsole can cut the file under QEMU.
		"-chardev", "file,id=console0,append=on,path="+commaEscape(filepath.Join(v.dir, name+".console.log")),
		"-serial", "chardev:console0",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-pidfile", filepath.Join(v.dir, name+".pid"),
		"-drive", "file="+commaEscape(v.disk)+",if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap",
		"-device", "virtio-blk-pci,drive=disk0,id=vblk0",
		"-netdev", p.netdev(v, so),
		"-device", "virtio-net-pci,netdev=n0,id=nic0,mac="+v.mac,
		"-device", "virtio-balloon-pci,id=balloon0",
	)
}

// netdev is the user-mode network of v: the guest is 10.0.2.15 behind
// slirp's NAT, reached at natAddr. A clone's network is restricted: it
// reaches only the guestfwd relays to the out-proxy.
func (p *Platform) netdev(v *vm, so startOpts) string {
	s := "user,id=n0,net=10.0.2.0/24"
	if so.hostfwd {
		h, port, _ := net.SplitHostPort(v.natAddr)
		s += fmt.Sprintf(",hostfwd=tcp:%s:%s-:%d", h, port, v.guestPort)
	}
	if so.restrict {
		// The gateway address is given up (slirp's own address moves to
		// .254) so that a next tier the guest calls at 10.0.2.2 can be a
		// guestfwd rule; nothing else gets out.
		s += ",restrict=on,host=10.0.2.254"
		keys := make([]string, 0, len(v.redirect))
		for k := range v.redirect {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, from := range keys {
			to := v.redirect[from]
			th, tp, _ := net.SplitHostPort(to)
			s += fmt.Sprintf(",guestfwd=tcp:%s-cmd:%s nc %s %s", from, p.busybox, th, tp)
		}
	}
	return s
}

// CFS bandwidth bounds: the kernel refuses a quota under 1 ms and a
// period over 1 s, so the least share it can enforce is 1 ms per 1 s.
const (
	minQuota  = time.Millisecond
	maxPeriod = time.Second
	// MinCPUShare is the least CPU share (percent of one CPU) other than
	// 0 (unlimited) that an allocation may ask for.
	MinCPUShare = 100 * float64(minQuota) / float64(maxPeriod)
)

// checkAlloc validates an allocation against the platform's limits.
// limitsFor checks what depends on the host as well.
func (p *Platform) checkAlloc(field string, a justrunit.Allocation) error {
	ncpu := len(onlineCPUs())
	if !(a.CPU >= 0 && a.CPU <= 100*float64(ncpu)) { // NaN fails too
		return justrunit.Invalid(field+".cpu", a.CPU, "want 0 (unlimited) or %g to %d (all CPUs)", MinCPUShare, 100*ncpu)
	}
	if a.CPU > 0 && a.CPU < MinCPUShare {
		return justrunit.Invalid(field+".cpu", a.CPU, "want 0 (unlimited) or at least %g: CFS bandwidth needs a quota of at least %v per period of at most %v", MinCPUShare, minQuota, maxPeriod)
	}
	if !(a.Freq >= 0 && a.Freq <= 10) { // NaN fails too
		return justrunit.Invalid(field+".freq", a.Freq, "want 0 (the host's) to 10 GHz")
	}
	if a.MemoryMiB < 0 || a.MemoryMiB > int64(p.o.MemoryMiB) {
		return justrunit.Invalid(field+".mem", a.MemoryMiB, "want 0 (all) to the %d MiB the guest booted with", p.o.MemoryMiB)
	}
	if a.MemoryMiB > 0 && a.MemoryMiB < 64 {
		return justrunit.Invalid(field+".mem", a.MemoryMiB, "want at least 64 MiB")
	}
	return nil
}

// limitsFor turns an allocation (checked by checkAlloc) into cgroup limits
// on cpus. A share too small for the platform's period gets a longer one,
// up to the kernel's 1 s; a share too small even for that (a small cpu, or
// a low emulated freq) is refused, the error naming field.
func (p *Platform) limitsFor(field string, a justrunit.Allocation, cpus string) (cgroup.Limits, error) {
	l := cgroup.Limits{Cpus: cpus, PeriodUS: uint64(p.o.Period.Microseconds())}
	share := a.CPU
	if a.Freq > 0 {
		if share == 0 {
			share = 100 * float64(cpuCount(cpus))
		}
		share *= a.Freq / p.refFreq
	}
	if share == 0 {
		return l, nil
	}
	if !(share >= MinCPUShare) || math.IsInf(share, 0) { // NaN fails too
		if a.Freq > 0 {
			base := a.CPU
			if base == 0 {
				base = 100 * float64(cpuCount(cpus))
			}
			return l, justrunit.Invalid(field+".freq", a.Freq, "emulates %.3g%% of a CPU (cpu %g of %s scaled by freq / %.2f GHz), below the %g%% CFS bandwidth can enforce (1 ms per 1 s); want freq at least %.3g GHz or a larger cpu",
				share, a.CPU, cpus, p.refFreq, MinCPUShare, MinCPUShare/base*p.refFreq)
		}
		return l, justrunit.Invalid(field+".cpu", a.CPU, "want 0 (unlimited) or at least %g", MinCPUShare)
	}
	period := p.o.Period
	quota := time.Duration(float64(period) * share / 100)
	for quota < minQuota && period < maxPeriod {
		period = min(2*period, maxPeriod)
		quota = time.Duration(float64(period) * share / 100)
	}
	// share >= MinCPUShare: only rounding can leave quota short here.
	quota = max(quota, minQuota)
	l.PeriodUS = uint64(period.Microseconds())
	l.QuotaUS = quota.Microseconds()
	return l, nil
}

// cpuCount is the number of CPUs in a cpuset ("0-3,6" has 5); 1 when it
// cannot be parsed.
func cpuCount(cpus string) int {
	set, err := hostlayout.ParseCPUList(cpus)
	if err != nil || len(set) == 0 {
		return 1
	}
	return len(set)
}

// SetAllocation sets a VM's CPU share (cgroup CFS bandwidth), emulated
// frequency (bandwidth scaled) and memory (balloon target).
func (p *Platform) SetAllocation(ctx context.Context, id string, a justrunit.Allocation) error {
	v, err := p.get(id)
	if err != nil {
		return fmt.Errorf("set allocation: %w", err)
	}
	if err := p.checkAlloc("allocation", a); err != nil {
		return err
	}
	// Close cancels the balloon request and waits for it, which has a
	// bound of its own: a QEMU that stops answering without closing its
	// socket would otherwise hold the VM (and Close) for good.
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("set allocation %s: platform closed", id)
	}
	ctx, done := p.beginLocked(ctx)
	defer done()
	p.mu.Unlock()
	v.op.Lock()
	defer v.op.Unlock()
	v.mu.Lock()
	proc, gone := v.proc, v.gone
	l, err := p.limitsFor("allocation", a, v.cpus)
	v.mu.Unlock()
	if err != nil {
		return err
	}
	if gone || proc == nil {
		return fmt.Errorf("set allocation %s: %w", id, justrunit.ErrNotFound)
	}
	if err := proc.cg.Set(l); err != nil {
		return fmt.Errorf("set allocation %s: %w", id, err)
	}
	mem := a.MemoryMiB
	if mem == 0 {
		mem = int64(p.o.MemoryMiB)
	}
	bctx, cancel := context.WithTimeout(ctx, sourceCmdTimeout)
	defer cancel()
	if err := proc.qmp.Balloon(bctx, mem<<20); err != nil {
		return fmt.Errorf("set allocation %s: memory: %w", id, err)
	}
	v.mu.Lock()
	v.limits = l
	v.inst.Alloc = a
	v.mu.Unlock()
	return nil
}

// Usage reads the CPU time of the VM's QEMU processes (all of them, across
// migrations) and the memory of the current one from its cgroup.
func (p *Platform) Usage(ctx context.Context, id string) (justrunit.Usage, error) {
	v, err := p.get(id)
	if err != nil {
		return justrunit.Usage{}, fmt.Errorf("usage: %w", err)
	}
	v.mu.Lock()
	proc, base := v.proc, v.baseUsage
	v.mu.Unlock()
	if proc == nil {
		return justrunit.Usage{}, fmt.Errorf("usage %s: %w", id, justrunit.ErrNotFound)
	}
	// Rather than 0 CPU time: an energy model would take it for an idle
	// VM.
	if p.noCPUAcct {
		return justrunit.Usage{}, fmt.Errorf("usage %s: %w: its CPU time cannot be read: %s: %s", id, justrunit.ErrUnsupported, cgroup.NotMountedV1("cpuacct"), cgroup.MountFixV1("cpuacct"))
	}
	u, err := proc.cg.Usage()
	if err != nil {
		return justrunit.Usage{}, fmt.Errorf("usage %s: %w", id, err)
	}
	return justrunit.Usage{CPUTime: base + u.CPU, MemoryBytes: u.Memory, At: time.Now()}, nil
}

// Destroy stops the VM and removes its cgroup, sockets and overlays.
// Destroying an unknown or already destroyed VM returns nil. Overlays of
// an origin that clones still read as their backing file stay until the
// last such clone is destroyed.
func (p *Platform) Destroy(ctx context.Context, id string) error {
	p.mu.Lock()
	v, ok := p.vms[id]
	p.mu.Unlock()
	if !ok {
		return nil
	}
	v.op.Lock()
	defer v.op.Unlock()
	p.teardown(v)
	p.mu.Lock()
	delete(p.vms, id)
	if h, _, err := net.SplitHostPort(v.endpoint); err == nil && h == "127.0.0.1" {
		_, port, _ := net.SplitHostPort(v.endpoint)
		n, _ := strconv.Atoi(port)
		delete(p.usedHP, n)
	}
	// Remove directories no running VM needs any more.
	p.gcDirsLocked()
	p.mu.Unlock()
	p.log.Info("destroyed", "id", id)
	return nil
}

// teardown kills v's QEMU and removes its cgroup; its directory is
// removed by gcDirsLocked once no clone reads from it.
func (p *Platform) teardown(v *vm) {
	v.mu.Lock()
	proc := v.proc
	v.proc = nil
	v.gone = true
	v.mu.Unlock()
	if proc != nil {
		p.killProc(proc)
	}
}

// killProc stops a QEMU process (quit over QMP, then SIGKILL) and deletes
// its cgroup.
func (p *Platform) killProc(q *qproc) {
	if q.qmp != nil && !q.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = q.qmp.Quit(ctx)
		cancel()
		select {
		case <-q.done:
		case <-time.After(2 * time.Second):
		}
	}
	if !q.exited() {
		_ = q.cmd.Process.Kill()
		select {
		case <-q.done:
		case <-time.After(5 * time.Second):
			p.log.Warn("qemu did not exit after SIGKILL", "pid", q.cmd.Process.Pid)
		}
	}
	if q.qmp != nil {
		q.qmp.Close()
	}
	if q.cg != nil {
		_ = q.cg.Kill(time.Now().Add(2 * time.Second))
		if err := q.cg.Delete(); err != nil {
			p.log.Warn("cannot delete cgroup", "path", q.cg.Path(), "err", err)
		}
	}
}

// gcDirsLocked removes the state directories of destroyed VMs whose files
// no live VM's disk chain reaches.
func (p *Platform) gcDirsLocked() {
	needed := map[string]bool{}
	for _, v := range p.vms {
		v.mu.Lock()
		needed[v.dir] = true
		for _, f := range backingChain(v.disk) {
			needed[filepath.Dir(f)] = true
		}
		v.mu.Unlock()
	}
	ents, _ := os.ReadDir(p.o.StateDir)
	for _, e := range ents {
		d := filepath.Join(p.o.StateDir, e.Name())
		if e.IsDir() && !needed[d] {
			_ = os.RemoveAll(d)
		}
	}
}

// backingChain lists the files below a qcow2 overlay, reading the backing
// file name from each header (no qemu-img call: this runs under a lock).
func backingChain(path string) []string {
	var out []string
	for i := 0; i < 64 && path != ""; i++ {
		b := readBacking(path)
		if b == "" {
			break
		}
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(path), b)
		}
		out = append(out, b)
		path = b
	}
	return out
}

// readBacking reads the backing file name from a qcow2 header.
func readBacking(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr[:4]) != "QFI\xfb" {
		return ""
	}
	off := int64(0)
	for _, c := range hdr[8:16] {
		off = off<<8 | int64(c)
	}
	size := int(uint32(hdr[16])<<24 | uint32(hdr[17])<<16 | uint32(hdr[18])<<8 | uint32(hdr[19]))
	if off == 0 || size == 0 || size > 4096 {
		return ""
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, off); err != nil {
		return ""
	}
	return string(name)
}

// Cleanup removes what a crashed run left: QEMU processes in the
// platform's cgroups, the cgroups, and state directories of VMs this
// Platform does not know.
func (p *Platform) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	live := map[string]bool{}
	for _, v := range p.vms {
		v.mu.Lock()
		if v.proc != nil {
			live[strings.TrimPrefix(v.proc.cg.Path(), p.scope+"/")] = true
		}
		v.mu.Unlock()
	}
	p.mu.Unlock()
	var errs []error
	kids, _ := cgroup.Children(p.cg, p.scope)
	for _, k := range kids {
		if live[k] {
			continue
		}
		path := p.scope + "/" + k
		for _, pid := range cgroup.TreeProcs(p.cg, path) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if g, err := cgroup.Load(p.cg, path); err == nil {
			_ = g.Kill(time.Now().Add(3 * time.Second))
		}
		if err := cgroup.RemoveTree(p.cg, path); err != nil {
			errs = append(errs, err)
		}
	}
	if len(live) == 0 {
		// Nothing of ours runs: remove the scope (and the platform's
		// root, if no other scope is left; RemoveTree of a busy root
		// would fail, so only empty groups go).
		if err := cgroup.RemoveTree(p.cg, p.scope); err != nil {
			errs = append(errs, err)
		}
		if others, _ := cgroup.Children(p.cg, cgroupRoot); len(others) == 0 {
			_ = cgroup.RemoveTree(p.cg, cgroupRoot)
			// The parent the local platform shares goes too when empty
			// (rmdir of a busy group fails and changes nothing).
			for _, d := range cgroup.Dirs(p.cg, path.Dir(cgroupRoot)) {
				_ = syscall.Rmdir(d)
			}
		}
	}
	p.mu.Lock()
	p.gcDirsLocked()
	p.mu.Unlock()
	return errors.Join(errs...)
}

// freePort picks a loopback port nobody listens on and no VM of ours uses.
func (p *Platform) freePort() (int, error) {
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		p.mu.Lock()
		used := p.usedHP[port]
		if !used {
			p.usedHP[port] = true
		}
		p.mu.Unlock()
		if !used {
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

// waitBooted waits until the guest's init has said on the console that the
// network is up. Until then slirp holds connections to the forwarded port
// open while its SYNs go unanswered, so waitListening would be fooled.
func waitBooted(ctx context.Context, console string, q *qproc) error {
	for {
		if q.exited() {
			return errExited
		}
		if b, err := os.ReadFile(console); err == nil && strings.Contains(string(b), "jri: booted") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the guest to boot: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitListening waits until a connection to addr is accepted and held
// open: slirp accepts on the host side at once and closes the connection
// when the booted guest refuses it, so an early EOF means "not yet". A
// service that speaks first (SMTP, SSH, MySQL) is listening as soon as a
// byte arrives; one that waits for the client, once the read times out
// with the connection still open.
func waitListening(ctx context.Context, addr string, q *qproc) error {
	for {
		if q != nil && q.exited() {
			return errExited
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			n, rerr := c.Read(make([]byte, 1))
			c.Close()
			var ne net.Error
			if n > 0 || (errors.As(rerr, &ne) && ne.Timeout()) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to listen: %w", addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// qemuImgOverlay creates a qcow2 overlay on backing without opening it
// (-u), so it works while a running QEMU holds the backing file.
func qemuImgOverlay(ctx context.Context, backing, path string, size int64) error {
	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-u", "-f", "qcow2",
		"-b", backing, "-F", "qcow2", path, strconv.FormatInt(size, 10)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create overlay: %v: %s", err, out)
	}
	return nil
}

// macFor derives a stable locally administered MAC from an ID.
func macFor(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}

func commaEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	b, err := tailBytes(path, n)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if int64(len(b)) < n { // the rest may be in the trimmed part
		if old, err := tailBytes(path+".1", n-int64(len(b))); err == nil {
			b = append(old, b...)
		}
	}
	return strings.TrimSpace(string(b))
}

// tailBytes returns the last n bytes of the file at path.
func tailBytes(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, _ := f.Stat()
	if st != nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	return io.ReadAll(io.LimitReader(f, n))
}

// A guest's console (its kernel's messages and its service's output) goes
// to a file per QEMU process, which QEMU opens for appending: a chatty
// service would otherwise fill the state directory over a long run. While
// the platform is open it trims the files every consoleTrimEvery: one
// over maxConsole bytes has its last maxConsole/2 bytes kept in "LOG.1"
// (replacing the one before) and is emptied, and QEMU's next write lands
// at its new start. What the guest writes between the copy and the cut
// is lost. tail reads both files.
const (
	maxConsole       = 4 << 20
	consoleTrimEvery = 30 * time.Second
)

// trimConsole trims the console log at path when it is over limit bytes
// (see maxConsole).
func trimConsole(path string, limit int64) error {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= limit {
		if errors.Is(err, os.ErrNotExist) {
			err = nil // the VM went meanwhile
		}
		return err
	}
	b, err := tailBytes(path, limit/2)
	if err != nil {
		return err
	}
	tmp := path + ".1.tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path+".1"); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Truncate(path, 0)
}

// trimConsoles trims every console log of the platform's VMs every
// consoleTrimEvery until stop is closed.
func (p *Platform) trimConsoles(stop <-chan struct{}) {
	t := time.NewTicker(consoleTrimEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		logs, _ := filepath.Glob(filepath.Join(p.o.StateDir, "*", "*.console.log"))
		for _, l := range logs {
			if err := trimConsole(l, maxConsole); err != nil {
				p.log.Warn("trim a guest console log", "file", l, "err", err)
			}
		}
	}
}

// MigrationStats is what QEMU reported for a VM's last clone or migration.
type MigrationStats struct {
	// Downtime is the switch-over pause QEMU measured.
	Downtime time.Duration `json:"downtime"`
	// Total is the migration's wall time.
	Total time.Duration `json:"total"`
	// Pause is how long the source was stopped as the platform measured it:
	// QEMU's downtime plus the disk snapshot and the final cont.
	Pause time.Duration `json:"pause"`
	// Transferred is the bytes of RAM sent.
	Transferred int64 `json:"transferred"`
	// Status is QEMU's final migration status.
	Status string `json:"status"`
}

// LastMigration returns what QEMU reported for the clone or migration that
// made (or last moved) VM id.
func (p *Platform) LastMigration(id string) (MigrationStats, error) {
	v, err := p.get(id)
	if err != nil {
		return MigrationStats{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.lastMig
	s := MigrationStats{Downtime: time.Duration(m.Downtime) * time.Millisecond, Total: time.Duration(m.TotalTime) * time.Millisecond,
		Pause: v.pause, Status: m.Status}
	if m.RAM != nil {
		s.Transferred = m.RAM.Transferred
	}
	return s, nil
}
