package qemu

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/qmp"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

// userNet is the guest network of QEMU user-mode networking.
var userNet = netip.MustParsePrefix("10.0.2.0/24")

// guestView returns the address a guest uses for the host address a:
// the host's loopback is the user network's gateway 10.0.2.2 inside.
func guestView(a string) string {
	h, port, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	if ip, err := netip.ParseAddr(h); (err == nil && ip.IsLoopback()) || h == "localhost" {
		return net.JoinHostPort(guest.Gateway, port)
	}
	return a
}

// checkRedirect validates CloneOptions.Redirect: each key is an address the
// guest calls — a loopback address (as in a site file) stands for the host,
// which the guest reaches at 10.0.2.2; any other key must lie in
// 10.0.2.0/24 and not be the guest's own address, DNS's or .254, which a
// clone's slirp uses for itself — and each value a host address.
func checkRedirect(r map[string]string) error {
	for from, to := range r {
		field := "redirect[" + from + "]"
		ap, err := netip.ParseAddrPort(guestView(from))
		if err != nil || !userNet.Contains(ap.Addr()) || ap.Port() == 0 {
			return justrunit.Invalid(field, from, "want an address:port in 10.0.2.0/24 that the guest calls (the next tier; 10.0.2.2 is the host)")
		}
		switch ap.Addr().String() {
		case "10.0.2.3", "10.0.2.15", "10.0.2.254":
			return justrunit.Invalid(field, from, "10.0.2.3, .15 and .254 are taken (DNS, the guest, the clone's NAT)")
		}
		if _, port, err := net.SplitHostPort(to); err != nil || port == "0" {
			return justrunit.Invalid(field, to, "want the out-proxy's host:port")
		}
	}
	return nil
}

// Clone clones VM id live onto sandbox host (see the package doc for the
// steps). The original is paused for Clone.Pause; QEMU's own measure of
// the switch-over is in LastMigration(clone.ID).
func (p *Platform) Clone(ctx context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	src, err := p.get(id)
	if err != nil {
		return nil, fmt.Errorf("clone: %w", err)
	}
	if err := p.checkAlloc("alloc", opts.Alloc); err != nil {
		return nil, err
	}
	if opts.InNetwork {
		return nil, fmt.Errorf("clone %s in its own network only: %w: a guest is reached through its forwarded ports (Redirect)", id, justrunit.ErrUnsupported)
	}
	if err := checkRedirect(opts.Redirect); err != nil {
		return nil, err
	}
	p.mu.Lock()
	h := p.hostLocked(host)
	switch {
	case p.closed:
		p.mu.Unlock()
		return nil, fmt.Errorf("clone %s: platform closed", id)
	case h == nil:
		p.mu.Unlock()
		return nil, fmt.Errorf("clone %s: host %q: %w", id, host, justrunit.ErrNotFound)
	case !h.Sandbox:
		p.mu.Unlock()
		return nil, justrunit.Invalid("host", host, "is not a sandbox host; clones run only in the sandbox")
	case !h.On:
		p.mu.Unlock()
		return nil, justrunit.Invalid("host", host, "is powered off")
	}
	limits, err := p.limitsFor("alloc", opts.Alloc, h.CPUs)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	ctx, done := p.beginLocked(ctx)
	defer done()
	p.seq++
	cloneID := fmt.Sprintf("%s-clone%d", id, p.seq)
	for p.vms[cloneID] != nil {
		p.seq++
		cloneID = fmt.Sprintf("%s-clone%d", id, p.seq)
	}
	p.mu.Unlock()

	src.op.Lock()
	defer src.op.Unlock()
	src.mu.Lock()
	sp := src.proc
	if src.gone || sp == nil || sp.exited() {
		src.mu.Unlock()
		return nil, fmt.Errorf("clone %s: %w", id, errExited)
	}
	redirect := map[string]string{}
	for k, v := range opts.Redirect {
		redirect[guestView(k)] = v
	}
	c := &vm{
		inst: justrunit.Instance{ID: cloneID, Service: src.inst.Service, Tier: src.inst.Tier, Host: host,
			Addr: src.inst.Addr, Alloc: opts.Alloc, Origin: id, State: "starting"},
		img: src.img, appendArg: src.appendArg, mac: src.mac,
		diskSize: src.diskSize, guestPort: src.guestPort, redirect: redirect, restricted: true, cpus: h.CPUs,
		limits: limits,
	}
	frozen := src.disk
	srcDir, srcDiskN := src.dir, src.diskN
	src.mu.Unlock()

	port, err := p.freePort()
	if err != nil {
		return nil, fmt.Errorf("clone %s: %w", id, err)
	}
	c.natAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c.endpoint = c.natAddr
	p.mu.Lock()
	p.seq++
	c.dir = filepath.Join(p.o.StateDir, fmt.Sprintf("%s.%d", cloneID, p.seq))
	// The clone's overlay sits on the source's current top, which becomes
	// frozen at the switch-over.
	c.disk = filepath.Join(c.dir, "disk-0.qcow2")
	p.vms[cloneID] = c
	p.mu.Unlock()
	fail := func(err error) (*justrunit.Clone, error) {
		p.teardown(c)
		p.mu.Lock()
		delete(p.vms, cloneID)
		delete(p.usedHP, port)
		p.gcDirsLocked()
		p.mu.Unlock()
		return nil, fmt.Errorf("clone %s: %w", id, err)
	}
	_ = os.RemoveAll(c.dir) // a crashed run's, under the same name
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fail(err)
	}
	if err := qemuImgOverlay(ctx, frozen, c.disk, c.diskSize); err != nil {
		return fail(err)
	}
	start := time.Now()
	dst, err := p.startQEMU(ctx, c, startOpts{incoming: true, hostfwd: true, restrict: true})
	if err != nil {
		return fail(err)
	}
	c.mu.Lock()
	c.proc = dst
	c.mu.Unlock()

	sock := filepath.Join(c.dir, "migrate.sock")
	caps := []qmp.Capability{{Name: "pause-before-switchover", State: true}}
	if err := dst.qmp.MigrateSetCapabilities(ctx, caps...); err != nil {
		return fail(err)
	}
	if err := dst.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		return fail(err)
	}
	if err := sp.qmp.MigrateSetCapabilities(ctx, caps...); err != nil {
		return fail(err)
	}
	if err := sp.qmp.MigrateSetParameters(ctx, p.migrationParams()); err != nil {
		return fail(err)
	}
	// From here on a failure must leave the source — the on-line
	// instance — running, and its disk record true: the commands that
	// change them are sent whatever becomes of ctx (a reply lost to a
	// cancellation would leave the source paused, or its disk moved
	// without the record knowing), and a failure resumes the source.
	recoverSource := func() { resumeSource(sp) }
	var stopped time.Time // when the source was paused
	if p.stopCopy {
		if err := sourceCmd(ctx, sp.qmp.Stop); err != nil {
			recoverSource()
			return fail(err)
		}
		stopped = time.Now()
	}
	if err := sourceCmd(ctx, func(ctx context.Context) error { return sp.qmp.Migrate(ctx, "unix:"+sock) }); err != nil {
		recoverSource()
		return fail(err)
	}
	if _, err := sp.qmp.WaitMigration(ctx, 2*time.Millisecond, "pre-switchover"); err != nil {
		recoverSource()
		return fail(err)
	}
	if stopped.IsZero() {
		stopped = time.Now() // pre-copy: the source is paused now
	}
	newTop := filepath.Join(srcDir, fmt.Sprintf("disk-%d.qcow2", srcDiskN+1))
	if err := sourceCmd(ctx, func(ctx context.Context) error { return sp.qmp.BlockdevSnapshotSync(ctx, "disk0", newTop) }); err != nil {
		recoverSource()
		return fail(fmt.Errorf("snapshot the source's disk: %w", err))
	}
	src.mu.Lock()
	src.disk, src.diskN = newTop, srcDiskN+1
	src.mu.Unlock()
	if err := sourceCmd(ctx, func(ctx context.Context) error { return sp.qmp.MigrateContinue(ctx, "pre-switchover") }); err != nil {
		recoverSource()
		return fail(err)
	}
	info, err := sp.qmp.WaitMigration(ctx, time.Millisecond, "completed")
	if err != nil {
		recoverSource()
		return fail(err)
	}
	// The source was left stopped; after pre-copy the clone has started
	// by itself, after stop-and-copy it is paused like its source was.
	if err := sp.qmp.Cont(context.WithoutCancel(ctx)); err != nil {
		return fail(fmt.Errorf("resume the source: %w", err))
	}
	paused := time.Since(stopped)
	if p.stopCopy {
		if err := dst.qmp.Cont(ctx); err != nil {
			return fail(fmt.Errorf("start the clone: %w", err))
		}
	}
	info = settle(ctx, sp, info)
	// QEMU's downtime starts when it stops the source, a little before we
	// see pre-switchover; ours ends at cont. The pause is the larger.
	pause := max(paused, time.Duration(info.Downtime)*time.Millisecond)
	cloneTime := time.Since(start)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := waitListening(rctx, c.natAddr, dst); err != nil {
		return fail(fmt.Errorf("clone does not answer: %w; console: %s", err, tail(filepath.Join(c.dir, dst.name+".console.log"), 1500)))
	}
	c.mu.Lock()
	c.inst.State = "running"
	c.pause = pause
	c.lastMig = info
	in := c.inst
	c.mu.Unlock()
	p.log.Info("cloned", "id", id, "clone", cloneID, "host", host, "endpoint", c.endpoint,
		"clone_time", cloneTime.Round(time.Millisecond), "pause", pause.Round(time.Millisecond),
		"qemu_downtime_ms", info.Downtime, "redirect", len(redirect))
	return &justrunit.Clone{Instance: in, Endpoint: c.endpoint, Mode: justrunit.CloneLive, Pause: pause}, nil
}

// sourceCmdTimeout bounds a command to a source QEMU that is sent whatever
// becomes of the caller's context (see sourceCmd).
const sourceCmdTimeout = 10 * time.Second

// sourceCmd sends a command that changes a running instance's state (stop,
// migrate, snapshot its disk) and waits for its reply even when ctx ends
// meanwhile, for at most sourceCmdTimeout: QEMU carries out a command it
// has read whatever the client does, and a reply lost to a cancellation
// would leave the caller not knowing what it did. It returns ctx's error
// when ctx ended, after the command.
func sourceCmd(ctx context.Context, cmd func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sourceCmdTimeout)
	defer cancel()
	if err := cmd(cctx); err != nil {
		return err
	}
	return ctx.Err()
}

// resumeSource leaves a source QEMU running after a failed clone or
// migration: it cancels the migration, if any, waits for it to end, and
// resumes the source if it is paused. Each step has a time bound of its
// own. QEMU 7.2 leaves a VM's migration status empty until it first
// migrates: that is "none".
func resumeSource(q *qproc) {
	cutMigration(q.qmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := q.qmp.QueryStatus(ctx); err == nil && !st.Running {
		_ = q.qmp.Cont(ctx)
	}
}

// cutMigration cancels a source's migration and waits for it to end, each
// step within its own bound. It returns the final statistics, and whether
// the migration completed all the same (a cancel that comes as it
// completes is ignored).
func cutMigration(c *qmp.Client) (qmp.MigrationInfo, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = c.MigrateCancel(ctx)
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := c.WaitMigration(ctx, 5*time.Millisecond, "cancelled", "completed", "none", "failed", "")
	return m, err == nil && m.Status == "completed"
}

func (p *Platform) migrationParams() qmp.MigrationParameters {
	return qmp.MigrationParameters{MaxBandwidth: DefaultMaxBandwidth, DowntimeLimit: p.o.DowntimeLimit.Milliseconds()}
}

// Migrate moves VM id to host by live migration: a new QEMU in the host's
// cpuset takes over the same disk chain (shared storage), and the source
// exits. The forwarded port moves with it after the switch-over, so the
// instance keeps its address; it refuses connections for that moment. A
// failure before the switch-over leaves the VM running where it was; if
// the port cannot be forwarded again after it, the VM runs on host and
// Migrate says that its address does not reach it.
func (p *Platform) Migrate(ctx context.Context, id, host string) error {
	v, err := p.get(id)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	p.mu.Lock()
	h := p.hostLocked(host)
	switch {
	case p.closed:
		p.mu.Unlock()
		return fmt.Errorf("migrate %s: platform closed", id)
	case h == nil:
		p.mu.Unlock()
		return fmt.Errorf("migrate %s: host %q: %w", id, host, justrunit.ErrNotFound)
	case !h.On:
		p.mu.Unlock()
		return justrunit.Invalid("host", host, "is powered off")
	}
	cpus := h.CPUs
	sandbox := h.Sandbox
	ctx, done := p.beginLocked(ctx)
	defer done()
	p.mu.Unlock()

	v.op.Lock()
	defer v.op.Unlock()
	v.mu.Lock()
	old := v.proc
	if v.gone || old == nil || old.exited() {
		v.mu.Unlock()
		return fmt.Errorf("migrate %s: %w", id, errExited)
	}
	if v.inst.Host == host {
		v.mu.Unlock()
		return nil
	}
	if v.inst.Origin != "" && !sandbox {
		v.mu.Unlock()
		return justrunit.Invalid("host", host, "is not a sandbox host; clones stay in the sandbox")
	}
	// The quota is recomputed too: an emulated frequency with no cpu
	// share scales the new host's CPU count.
	limits, err := p.limitsFor("allocation", v.inst.Alloc, cpus)
	if err != nil {
		v.mu.Unlock()
		return fmt.Errorf("migrate %s: %w", id, err)
	}
	oldCPUs, oldLimits := v.cpus, v.limits
	v.cpus, v.limits = cpus, limits
	restricted := v.restricted
	v.mu.Unlock()
	undo := func() {
		v.mu.Lock()
		v.cpus, v.limits = oldCPUs, oldLimits
		v.mu.Unlock()
	}

	dst, err := p.startQEMU(ctx, v, startOpts{incoming: true, restrict: restricted})
	if err != nil {
		undo()
		return fmt.Errorf("migrate %s: %w", id, err)
	}
	abort := func(err error) error {
		resumeSource(old)
		p.killProc(dst)
		undo()
		return fmt.Errorf("migrate %s: %w", id, err)
	}
	sock := filepath.Join(v.dir, dst.name+".migrate.sock")
	if err := dst.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		return abort(err)
	}
	if err := old.qmp.MigrateSetCapabilities(ctx, qmp.Capability{Name: "pause-before-switchover", State: false}); err != nil {
		return abort(err)
	}
	if err := old.qmp.MigrateSetParameters(ctx, p.migrationParams()); err != nil {
		return abort(err)
	}
	var stopped time.Time
	if p.stopCopy {
		if err := sourceCmd(ctx, old.qmp.Stop); err != nil {
			return abort(err)
		}
		stopped = time.Now()
	}
	// Once started, the migration is seen to its end (within
	// migrateTimeout) whatever becomes of ctx: cancelled as it completes,
	// it could not be undone (the destination holds the disk and may be
	// running), and undoing it at other moments gains little.
	var info qmp.MigrationInfo
	err = sourceCmd(ctx, func(ctx context.Context) error { return old.qmp.Migrate(ctx, "unix:"+sock) })
	if err == nil {
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), migrateTimeout)
		info, err = old.qmp.WaitMigration(wctx, time.Millisecond, "completed")
		wcancel()
	}
	if err != nil {
		// One that completed all the same as it was cut has switched
		// over: the destination runs on the disk, and resuming the
		// source would put two VMs' writes on it. It is carried through.
		fin, completed := cutMigration(old.qmp)
		if !completed {
			return abort(err)
		}
		info = fin
	}
	if stopped.IsZero() {
		stopped = time.Now().Add(-time.Duration(info.Downtime) * time.Millisecond)
	}
	if p.stopCopy {
		// The destination never ran: the source, stopped since before
		// the copy, is still the VM's state and abort resumes it.
		if err := dst.qmp.Cont(context.WithoutCancel(ctx)); err != nil {
			return abort(fmt.Errorf("start the destination: %w", err))
		}
	}
	info = settle(ctx, old, info)
	// The source is stopped for good; keep its CPU time and let it go.
	if u, err := old.cg.Usage(); err == nil {
		v.mu.Lock()
		v.baseUsage += u.CPU
		v.mu.Unlock()
	}
	p.killProc(old)
	fh, fp, _ := net.SplitHostPort(v.natAddr)
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	fwdErr := dst.qmp.HMP(fctx, fmt.Sprintf("hostfwd_add n0 tcp:%s:%s-:%d", fh, fp, v.guestPort))
	fcancel()
	// The VM runs on the destination now whatever hostfwd_add said: it is
	// recorded there, so that Destroy stops it.
	v.mu.Lock()
	v.proc = dst
	v.inst.Host = host
	v.lastMig = info
	v.pause = time.Since(stopped)
	v.mu.Unlock()
	if fwdErr != nil {
		return fmt.Errorf("migrate %s: moved to %s, but its address %s does not reach it: forward the port again: %w", id, host, v.natAddr, fwdErr)
	}
	p.log.Info("migrated", "id", id, "host", host, "total_ms", info.TotalTime, "qemu_downtime_ms", info.Downtime)
	return nil
}

// migrateTimeout bounds a migration between hosts once it has started.
const migrateTimeout = 2 * time.Minute

// settle re-reads a completed migration's statistics for a few
// milliseconds when they are still zero: QEMU can report "completed"
// before it has filled in the total and down times.
func settle(ctx context.Context, q *qproc, m qmp.MigrationInfo) qmp.MigrationInfo {
	for i := 0; i < 50 && m.TotalTime == 0; i++ {
		time.Sleep(time.Millisecond)
		n, err := q.qmp.QueryMigrate(ctx)
		if err != nil {
			break
		}
		m = n
	}
	return m
}
