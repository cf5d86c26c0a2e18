package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/prio"
)

// Storage kinds of a clone's state directory.
const (
	// StorageOverlay: an overlayfs whose lower layer is a snapshot of the
	// original's state directory and whose upper layer is the clone's own.
	StorageOverlay = "overlay"
	// StorageCopy: the snapshot itself, bind-mounted (overlayfs unavailable).
	StorageCopy = "copy"
)

// freezeTimeout bounds the wait for the kernel to freeze the original; the
// on-line path comes first, so a freeze that does not take is given up.
const freezeTimeout = 500 * time.Millisecond

// testHookCloneStarted, when set by a test, runs once a clone's process has
// started and before Clone waits for it to listen.
var testHookCloneStarted func(*inst)

// testHookFreezing, when set by a test, runs as Clone is about to freeze
// the original, id.
var testHookFreezing func(id string)

// cloneState is what a clone owns beyond an instance's process and cgroup.
type cloneState struct {
	Dir  string
	Net  *cloneNet
	Mode string // justrunit.CloneLive or CloneCold
	// ColdBecause says why a clone is cold where live clones work.
	ColdBecause string
	Storage     string // StorageOverlay or StorageCopy
	// Snapshot is "reflink" when every file of the snapshot shares blocks
	// with the original's, else "copy".
	Snapshot string
}

// CloneInfo describes how a clone was made, beyond justrunit.Clone.
type CloneInfo struct {
	// Mode is justrunit.CloneLive (the original's memory state restored by
	// criu) or CloneCold (the command started again).
	Mode string `json:"mode"`
	// ColdBecause says why a clone is cold on a platform that makes live
	// clones (criu could not dump the original).
	ColdBecause string `json:"cold_because,omitempty"`
	// Storage is "overlay" or "copy" (see StorageOverlay).
	Storage string `json:"storage"`
	// Snapshot is "reflink" or "copy": how the frozen state was captured.
	Snapshot string `json:"snapshot"`
	// Netns is the clone's network namespace (ip netns exec NAME ...).
	Netns string `json:"netns"`
}

// Info returns how clone id was made.
func (p *Platform) Info(id string) (CloneInfo, error) {
	in, err := p.get(id)
	if err != nil {
		return CloneInfo{}, err
	}
	if in.clone == nil {
		return CloneInfo{}, justrunit.Invalid("id", id, "is not a clone")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ci := CloneInfo{Mode: in.clone.Mode, ColdBecause: in.clone.ColdBecause, Storage: in.clone.Storage, Snapshot: in.clone.Snapshot}
	if in.clone.Net != nil {
		ci.Netns = in.clone.Net.Netns
	}
	return ci, nil
}

// Clone starts a clone of on-line instance id on sandbox host. Where criu
// works the clone is live (the original's process tree with its memory
// state), else, or when criu cannot dump the tree, a cold start of the same
// command and environment (CloneInfo.ColdBecause says why):
//
//  1. the clone's network identity is set up: a namespace where the
//     internal address is. InNetwork: only a loopback there, and the
//     next-tier addresses served by listeners opened in it (Answer);
//     else a veth pair with IPv6 off, a /30 link, DNAT from its endpoint
//     to the internal address, next-tier addresses steered to the
//     out-proxies, everything else refused;
//  2. the original's state directory is copied while it runs; then its
//     cgroup is frozen, the copy brought up to date with what changed
//     since (reflink where the filesystem can, else copied), its tree
//     dumped by criu (live), and it is thawed; the time frozen is
//     reported as Pause;
//  3. in the clone's cgroup, network namespace and a private mount
//     namespace where the state directory's path shows an overlay
//     (snapshot below, the clone's writes above) and /tmp, /var/tmp and
//     /dev/shm show overlays of the host's (see scratchDirs), criu
//     restores the tree in a PID namespace of its own (live), or the
//     command starts (cold);
//  4. Clone returns once the clone accepts connections on its endpoint, or
//     through its Dial.
func (p *Platform) Clone(ctx context.Context, id, host string, opts justrunit.CloneOptions) (*justrunit.Clone, error) {
	c, err := p.clone(ctx, id, host, opts)
	if err != nil {
		return nil, fmt.Errorf("clone instance %s: %w", id, err)
	}
	return c, nil
}

func (p *Platform) clone(ctx context.Context, id, host string, opts justrunit.CloneOptions) (_ *justrunit.Clone, err error) {
	start := time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("platform closed")
	}
	orig, ok := p.insts[id]
	if !ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("instance %q: %w", id, justrunit.ErrNotFound)
	}
	h := p.host(host)
	switch {
	case orig.Origin != "":
		err = justrunit.Invalid("id", id, "is a clone; clone its on-line instance %s", orig.Origin)
	case !orig.isReady():
		err = justrunit.Invalid("id", id, "is still starting; clone it once its Launch has returned")
	case orig.teardownErr != nil:
		err = justrunit.Invalid("id", id, "%s; destroy it", notRemoved(orig))
	case orig.exited():
		err = justrunit.Invalid("id", id, "has exited")
	case orig.Addr == "":
		err = justrunit.Invalid("addr", nil, "instance %s has no address to give its clone", id)
	case h == nil:
		err = justrunit.Invalid("host", host, "unknown host; hosts: %s", p.hostNames())
	case !h.Sandbox:
		err = justrunit.Invalid("host", host, "is not a sandbox host")
	case !h.On:
		err = justrunit.Invalid("host", host, "is powered off")
	}
	if err == nil {
		err = p.checkAlloc(opts.Alloc, h)
	}
	if err == nil {
		err = p.checkRoom(h, opts.Alloc.CPU, "")
	}
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	cid := p.cloneID(orig.ID)
	in := &inst{
		Instance: justrunit.Instance{ID: cid, Service: orig.Service, Tier: orig.Tier, Host: h.Name, Addr: orig.Addr, Alloc: opts.Alloc, Origin: orig.ID, State: "starting"},
		spec:     orig.spec,
		path:     orig.path,
		env:      orig.env,
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
		clone:    &cloneState{Dir: filepath.Join(p.cfg.StateDir, "clones", cid)},
	}
	ctx, in.stopStart = context.WithCancel(ctx)
	defer in.stopStart()
	p.insts[cid] = in
	origGroup := orig.group
	p.starting.Add(1) // Close waits for it
	p.mu.Unlock()
	defer p.starting.Done() // after the clone is forgotten, on error
	defer func() {
		if err != nil {
			if p.stillWanted(in) != nil {
				err = errDestroyedStarting // rather than what it cut short
			}
			err = p.forgetAfter(in, err)
		}
	}()

	internal, err := parseInternal(orig.Addr)
	if err != nil {
		return nil, err
	}
	// Before anything is made for it, and the original frozen.
	if err := checkScratch(); err != nil {
		return nil, err
	}
	cs := in.clone
	if err := os.MkdirAll(cs.Dir, 0o700); err != nil {
		return nil, err
	}
	// A Clone given up on makes nothing: no namespace, veth, tables or
	// answer listeners, for a clone no one will use.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var cn *cloneNet
	if opts.InNetwork {
		cn, err = p.setupInsideNet(cid, internal, opts.Answer)
	} else {
		cn, err = p.setupNet(cid, internal, opts.Redirect)
	}
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	cs.Net = cn
	p.mu.Unlock()
	if opts.InNetwork {
		// Before the clone runs: its first calls find their answer.
		if err := cn.serveAnswers(opts.Answer); err != nil {
			return nil, err
		}
	}
	if err := p.stillWanted(in); err != nil { // before the original is frozen for it
		return nil, err
	}

	sc := &shimConfig{Netns: filepath.Join(netnsDir, cn.Netns)}
	var pause time.Duration
	mode := justrunit.CloneCold
	images := filepath.Join(cs.Dir, "images")
	var reflinked bool
	p.mu.Lock()
	coldBecause := orig.undumpable // set only where criu works
	p.mu.Unlock()
	dump := p.criu != "" && coldBecause == ""
	lost := &xattrsLost{}
	if sd := orig.spec.StateDir; sd != "" || dump {
		// The state directory's snapshot and the memory dump are taken at
		// the same instant: with the original frozen. The directory is
		// copied first while the original runs, so that frozen, only what
		// changed since is copied.
		lower := filepath.Join(cs.Dir, "lower")
		var since time.Time
		if sd != "" {
			var err error
			if since, reflinked, err = preCopyTree(ctx, sd, lower, lost); err != nil {
				return nil, fmt.Errorf("snapshot %s: %w", sd, err)
			}
		}
		// A Clone given up on (or destroyed) by now does not pause the
		// on-line instance for a snapshot no one will use.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("freeze %s: %w", id, err)
		}
		if testHookFreezing != nil {
			testHookFreezing(id)
		}
		t0 := time.Now()
		if err := origGroup.Freeze(freezeTimeout); err != nil {
			return nil, fmt.Errorf("freeze %s: %w", id, err)
		}
		var cerr error
		if sd != "" {
			var ok bool
			_, ok, cerr = syncTree(ctx, sd, lower, since, lost)
			reflinked = reflinked && ok
		}
		// Nor held frozen for a dump once ctx has ended.
		if cerr == nil && dump && ctx.Err() == nil {
			if derr := p.dumpOriginal(orig, origGroup, images); derr != nil {
				if !p.cfg.LiveClones {
					p.log.Warn("cloning cold: the original cannot be dumped", "id", id, "err", derr)
				}
				coldBecause = derr.Error()
				if errors.Is(derr, errMPTCP) {
					p.mu.Lock()
					orig.undumpable = coldBecause
					p.mu.Unlock()
				}
			} else {
				mode = justrunit.CloneLive
			}
		}
		terr := origGroup.Thaw()
		pause = time.Since(t0)
		if cerr != nil {
			return nil, fmt.Errorf("snapshot %s: %w", sd, cerr)
		}
		if terr != nil {
			return nil, fmt.Errorf("thaw %s: %w", id, terr)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
	}
	if err := p.stillWanted(in); err != nil {
		return nil, err
	}
	if p.cfg.LiveClones && mode != justrunit.CloneLive {
		return nil, fmt.Errorf("clone %s: live clones asked for, and this one would be cold: %s", id, coldBecause)
	}
	if mode == justrunit.CloneLive {
		sc.Restore, sc.Images = true, images
		args := criuRestoreArgs(p.criu)
		sc.Path, sc.Argv = args[0], args
	}
	p.mu.Lock()
	cs.Mode, cs.ColdBecause = mode, coldBecause
	p.mu.Unlock()
	if sd := orig.spec.StateDir; sd != "" {
		lower := filepath.Join(cs.Dir, "lower")
		p.mu.Lock()
		cs.Snapshot = "copy"
		if reflinked {
			cs.Snapshot = "reflink"
		}
		cs.Storage = StorageCopy
		if p.overlayOK {
			cs.Storage = StorageOverlay
		}
		p.mu.Unlock()
		sc.Target = sd
		if p.overlayOK {
			sc.Lower, sc.Upper, sc.Work = lower, filepath.Join(cs.Dir, "upper"), filepath.Join(cs.Dir, "work")
			for _, d := range []string{sc.Upper, sc.Work} {
				if err := os.Mkdir(d, 0o700); err != nil {
					return nil, err
				}
			}
			// The overlay's root is the upper layer's: the state
			// directory's owner and mode, for a service that drops
			// privileges to write there. The work directory is the
			// kernel's, used with the mounter's (root's) credentials.
			li, err := os.Lstat(lower)
			if err != nil {
				return nil, err
			}
			if err := copyMeta(lower, sc.Upper, li, lost); err != nil {
				return nil, fmt.Errorf("overlay %s: %w", sc.Upper, err)
			}
		} else {
			sc.Bind = lower
		}
	}
	if sc.Scratch, sc.ScratchTmpfs, err = scratchLayers(cs.Dir, !p.overlayOK, lost); err != nil {
		return nil, err
	}
	if names, first := lost.summary(); names != "" {
		p.log.Warn("the clone's layers lack extended attributes of its original's state directory or of the host's /tmp, /var/tmp or /dev/shm, which the platform's state directory refused",
			"id", id, "clone", cid, "xattrs", names, "err", first)
	}
	// Nor starts its process (the snapshot, checked above, is skipped for
	// a cold clone without a state directory).
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := p.startInstance(in, sc); err != nil {
		return nil, err
	}
	if testHookCloneStarted != nil {
		testHookCloneStarted(in)
	}
	if mode == justrunit.CloneLive {
		if err := waitRestored(ctx, images, p.cfg.ReadyTimeout, in.done); err != nil {
			if tail := logTail(filepath.Join(p.cfg.StateDir, "logs", cid+".log"), 512); tail != "" {
				return nil, fmt.Errorf("%w; its output ends: %s", err, tail)
			}
			return nil, err
		}
		_ = os.RemoveAll(images) // the memory pages, in the restored tree now
	}
	// A cold clone's command started in the idle class (the shim execs
	// it from an idle thread); criu restores the original's class with its
	// threads, so a live clone's is set once it runs.
	if p.cfg.IdleClones && mode == justrunit.CloneLive {
		if err := idleFrozen(in.group); err != nil {
			return nil, fmt.Errorf("clone %s: %w", cid, err)
		}
	}
	if err := waitListening(ctx, cn.where(), cn.dial, p.cfg.ReadyTimeout, in.done); err != nil {
		if tail := logTail(filepath.Join(p.cfg.StateDir, "logs", cid+".log"), 512); tail != "" {
			return nil, fmt.Errorf("%w; its output ends: %s", err, tail)
		}
		return nil, err
	}
	if err := p.started(in); err != nil {
		return nil, err
	}
	p.log.Info("cloned", "id", id, "clone", cid, "endpoint", cn.where(), "mode", mode,
		"pause", pause, "storage", cs.Storage, "snapshot", cs.Snapshot, "took", time.Since(start))
	p.mu.Lock()
	i := in.Instance
	p.mu.Unlock()
	c := &justrunit.Clone{Instance: i, Mode: mode, Pause: pause}
	if cn.Inside {
		c.Network, c.Dial = cn.where(), cn.dial
	} else {
		c.Endpoint = cn.Endpoint.String()
	}
	return c, nil
}

// scratchDirs are the machine-wide directories where services keep
// sockets, lock files, caches and POSIX shared memory (shm_open names a file
// in /dev/shm). Shared with the host, a clone would read and write its
// on-line instance's files there; so a clone sees each through an overlay
// of its own, mounted in its mount namespace by the shim: the host's
// directory below, the clone's writes above, in <clone dir>/scratch/<name>,
// removed with the clone's directory. Below, not a copy: the clone finds
// what its original had there when it was cloned (a live clone restores
// the files its tree holds open there, at their paths), and files it has
// not written show the host's later changes too, as overlayfs reads a
// lower layer live. What the host mounts below them is not seen through
// the overlay (a layer is one file system).
//
// /run is not among them: /etc/resolv.conf often links into it
// (systemd-resolved's stub, resolvconf), and the host's mounts below it
// (/run/user/*, /run/netns) would vanish from the clone's view.
var scratchDirs = []string{"/tmp", "/var/tmp", "/dev/shm"}

// checkScratch says why a clone cannot have its own scratch directories:
// one of the host's is not a directory (an overlay needs one). One the
// host does not have is skipped (a minimal system may have no /var/tmp):
// its original has nothing there to protect (a clone that makes it, as
// root, makes it on the host).
func checkScratch() error {
	for _, d := range scratchDirs {
		if err := checkScratchDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// checkScratchDir says why host directory d cannot be a clone's scratch
// directory, or nil. The shim asks again when it cannot open d.
func checkScratchDir(d string) error {
	fi, err := os.Lstat(d)
	switch {
	case err != nil:
		return fmt.Errorf("the clone's own %s: %w", d, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("the clone's own %s: %w: it is a symlink, and an overlay needs a directory (the clone would write where it leads)", d, justrunit.ErrUnsupported)
	case !fi.IsDir():
		return fmt.Errorf("the clone's own %s: %w: it is not a directory, and an overlay needs one", d, justrunit.ErrUnsupported)
	}
	return nil
}

// scratchLayers makes, under the clone's directory dir, the upper and work
// layers of its scratch directories. An upper layer's root is the overlay's
// root: it takes the host directory's owner, mode (/tmp's 1777) and
// extended attributes (those it cannot take are added to lost).
//
// With inMemory (the platform's data directory cannot hold an overlay's
// upper layer: overlayfs refuses one on an overlay, as a container's root
// file system often is, or on NFS) it makes only the directory that holds
// them, and returns it as tmpfs: the shim covers it with a tmpfs in the
// clone's mount namespace and makes the layers there (owner and mode
// only), so the clone's scratch writes are kept in memory, seen by nobody
// else, and go with the clone.
func scratchLayers(dir string, inMemory bool, lost *xattrsLost) (out []scratchOverlay, tmpfs string, err error) {
	root := filepath.Join(dir, "scratch")
	if inMemory {
		if err := os.MkdirAll(root, 0o700); err != nil {
			return nil, "", fmt.Errorf("the clone's scratch layers: %w", err)
		}
		tmpfs = root
	}
	for _, d := range scratchDirs {
		fi, err := os.Lstat(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue // see checkScratch
		}
		if err != nil {
			return nil, "", fmt.Errorf("the clone's own %s: %w", d, err)
		}
		layers := filepath.Join(root, strings.ReplaceAll(strings.Trim(d, "/"), "/", "-"))
		s := scratchOverlay{Path: d, Upper: filepath.Join(layers, "upper"), Work: filepath.Join(layers, "work"), Mode: fi.Mode()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			s.UID, s.GID = int(st.Uid), int(st.Gid)
		}
		out = append(out, s)
		if inMemory {
			continue
		}
		for _, l := range []string{s.Upper, s.Work} {
			if err := os.MkdirAll(l, 0o700); err != nil {
				return nil, "", fmt.Errorf("the clone's own %s: %w", d, err)
			}
		}
		if err := copyMeta(d, s.Upper, fi, lost); err != nil {
			return nil, "", fmt.Errorf("the clone's own %s: %w", d, err)
		}
	}
	return out, tmpfs, nil
}

// cloneID picks the ID of a new clone of instance id: c<seq>-<id>, with the
// next sequence number that names no instance (an on-line instance may be
// called c1-web too) and no object a crashed run left in this scope (the
// sequence starts again with each process): a clone given the ID of a
// leftover would fail to make its namespace or directory, or add its NAT
// rules to the leftover's table. The caller holds p.mu.
func (p *Platform) cloneID(id string) string {
	for {
		p.seq++
		cid := fmt.Sprintf("c%d-%s", p.seq, id)
		if len(cid) > 48 {
			cid = cid[:48]
		}
		if _, taken := p.insts[cid]; !taken && !p.leftOver(cid) {
			return cid
		}
	}
}

// logTail returns the last n bytes of file, trimmed.
func logTail(file string, n int64) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// waitListening polls the clone at addr through dial until it accepts a
// TCP connection, the process exits (done), the timeout passes or ctx ends.
func waitListening(ctx context.Context, addr string, dial func(context.Context) (net.Conn, error), timeout time.Duration, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 2 * time.Millisecond
	for {
		dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		c, err := dial(dctx)
		dcancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("clone exited before listening on %s", addr)
		case <-ctx.Done():
			return fmt.Errorf("clone not listening on %s after %v: %w", addr, timeout, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

func (p *Platform) teardownClone(cs *cloneState) error {
	var errs []error
	if cs.Net != nil {
		if err := p.teardownNet(cs.Net); err != nil {
			errs = append(errs, err)
		}
	}
	if cs.Dir != "" {
		if err := os.RemoveAll(cs.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// idleFrozen puts every thread of group g in the idle scheduling class
// while g is frozen. Frozen, no thread of it is starting another: a thread
// being created while its creator is set would copy the creator's old
// class, and could show up in the group only after the last listing.
func idleFrozen(g *cgroup.Group) error {
	if err := g.Freeze(freezeTimeout); err != nil {
		return err
	}
	err := prio.SetIdleThreads(g.Threads)
	return errors.Join(err, g.Thaw())
}

// probeOverlay mounts an overlayfs with its layers under dir, and says why
// it could not. The layers are named by descriptor (/proc/self/fd/N), as
// the shim names a clone's: overlayfs splits its options on commas and its
// lower layers on colons, which a data directory's path may hold.
func probeOverlay(dir string) error {
	tmp, err := os.MkdirTemp(dir, ".probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var ds []string
	for _, n := range []string{"l", "u", "w", "m"} {
		d := filepath.Join(tmp, n)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if n == "m" {
			ds = append(ds, d)
			break
		}
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ds = append(ds, "/proc/self/fd/"+strconv.Itoa(fd))
	}
	opts := "lowerdir=" + ds[0] + ",upperdir=" + ds[1] + ",workdir=" + ds[2]
	if err := unix.Mount("overlay", ds[3], "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount an overlay with its layers in %s: %w", tmp, err)
	}
	_ = unix.Unmount(ds[3], unix.MNT_DETACH)
	return nil
}
