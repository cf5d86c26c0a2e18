package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
)

// Names of the network objects a clone owns. Interface names are limited to
// 15 bytes, so veths carry a machine-wide link index and are tied to their
// scope and clone by their alias (ip link show shows it).
const (
	// netnsDir is where netns.NewNamed mounts named namespaces (as ip-netns
	// does). Not /var/run/netns: that is the same directory only where
	// /var/run links to /run.
	netnsDir     = "/run/netns"
	netnsPrefix  = "jri-"
	linkPrefix   = "jri"
	aliasPrefix  = "justrunit:"
	viaPortBase  = 40000
	maxLinkIndex = 1 << 14 // /30 links in a /16
)

func netnsName(scope, id string) string { return netnsPrefix + scope + "-" + id }
func hostVeth(idx int) string           { return fmt.Sprintf("%s%05xh", linkPrefix, idx) }
func cloneVeth(idx int) string          { return fmt.Sprintf("%s%05xc", linkPrefix, idx) }
func linkAlias(scope, id string) string { return aliasPrefix + scope + ":" + id }

// cloneNet is the network identity of one clone.
type cloneNet struct {
	Netns     string         `json:"netns"`
	Index     int            `json:"index"`
	HostVeth  string         `json:"host_veth"`
	HostAddr  netip.Addr     `json:"host_addr"`
	CloneAddr netip.Addr     `json:"clone_addr"`
	Internal  netip.AddrPort `json:"internal"`
	Endpoint  netip.AddrPort `json:"endpoint"`
	Redirects []redirect     `json:"redirects"`
	Table     string         `json:"table"`
	// Inside is a network reached only from inside
	// (CloneOptions.InNetwork): no link, no tables, no Endpoint; Answers
	// are the next-tier addresses served inside it.
	Inside  bool             `json:"inside,omitempty"`
	Answers []netip.AddrPort `json:"answers,omitempty"`
}

// parseInternal turns an instance address into the address the clone's
// DNAT targets inside its namespace: wildcard and localhost become
// 127.0.0.1; other addresses must be IPv4 literals.
func parseInternal(addr string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, justrunit.Invalid("addr", addr, "want host:port")
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		return netip.AddrPort{}, justrunit.Invalid("addr", addr, "want a port in 1..65535")
	}
	switch host {
	case "", "0.0.0.0", "localhost":
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(pn)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() {
		return netip.AddrPort{}, justrunit.Invalid("addr", addr, "want an IPv4 address (IPv6 is not supported by the local platform yet)")
	}
	return netip.AddrPortFrom(a, uint16(pn)), nil
}

// setupInsideNet gives clone id a network that only this process reaches
// into (CloneOptions.InNetwork): a named namespace with its loopback up and
// holding the internal address and the next-tier addresses in answers; no
// link out of it and no address translation. On error it removes what it
// made.
func (p *Platform) setupInsideNet(id string, internal netip.AddrPort, answers map[string]func(net.Listener) error) (*cloneNet, error) {
	cn := &cloneNet{Netns: netnsName(p.scope, id), Internal: internal, Inside: true}
	for _, k := range slices.Sorted(maps.Keys(answers)) {
		a, err := parseInternal(k)
		if err != nil {
			return nil, justrunit.Invalid("answer", k, "next-tier address must be IPv4 host:port")
		}
		switch {
		case a == internal:
			return nil, justrunit.Invalid("answer", k, "is the clone's own address")
		case slices.Contains(cn.Answers, a):
			return nil, justrunit.Invalid("answer", k, "is %s, another next-tier address already", a)
		}
		cn.Answers = append(cn.Answers, a)
	}
	ns, err := newNamedNetns(cn.Netns)
	if err != nil {
		if !errors.Is(err, fs.ErrExist) { // else not ours
			_ = p.teardownNet(cn) // NewNamed may leave the name's file behind
		}
		return nil, fmt.Errorf("create network namespace %s: %w", cn.Netns, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err == nil {
		defer nh.Close()
		err = setLoopback(nh, cn, append([]netip.AddrPort{internal}, cn.Answers...))
	}
	if err != nil {
		_ = p.teardownNet(cn)
		return nil, fmt.Errorf("network namespace %s: %w", cn.Netns, err)
	}
	return cn, nil
}

// setLoopback sets the loopback of cn's namespace up, with the addresses
// of addrs that are not loopback ones.
func setLoopback(nh *netlink.Handle, cn *cloneNet, addrs []netip.AddrPort) error {
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback in %s: %w", cn.Netns, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set loopback up in %s: %w", cn.Netns, err)
	}
	added := map[netip.Addr]bool{}
	for _, ap := range addrs {
		if a := ap.Addr(); !a.IsLoopback() && !added[a] {
			added[a] = true
			if err := nh.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(a, 32)}); err != nil {
				return fmt.Errorf("add address %s in %s: %w", a, cn.Netns, err)
			}
		}
	}
	return nil
}

// enter runs fn on a thread inside cn's namespace: a socket it opens
// belongs to the clone's network for its whole life.
func (cn *cloneNet) enter(fn func() error) error {
	ns, err := netns.GetFromPath(filepath.Join(netnsDir, cn.Netns))
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", cn.Netns, err)
	}
	defer ns.Close()
	return inNetns(ns, fn)
}

// dial connects to the clone: at its endpoint, or inside its network.
func (cn *cloneNet) dial(ctx context.Context) (net.Conn, error) {
	if !cn.Inside {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", cn.Endpoint.String())
	}
	return cn.dialInside(ctx)
}

// dialInside connects to the clone's internal address from inside its
// network. Only the socket is made, and its connection started, on a thread inside
// the namespace; the wait for the connection (a second or more when the
// clone's accept queue is full and its SYN is dropped) parks a goroutine in
// the runtime's poller rather than holding that thread.
func (cn *cloneNet) dialInside(ctx context.Context) (net.Conn, error) {
	fd, cerr := -1, error(nil)
	err := cn.enter(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return os.NewSyscallError("socket", err)
		}
		cerr = unix.Connect(fd, &unix.SockaddrInet4{Port: int(cn.Internal.Port()), Addr: cn.Internal.Addr().As4()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cn.where(), err)
	}
	f := os.NewFile(uintptr(fd), cn.where()) // non-blocking: in the poller
	defer f.Close()                          // FileConn holds a copy
	switch {
	case errors.Is(cerr, unix.EINPROGRESS):
		cerr = waitConnected(ctx, f)
	case cerr != nil:
		cerr = os.NewSyscallError("connect", cerr)
	}
	if cerr != nil {
		return nil, fmt.Errorf("dial %s: %w", cn.where(), cerr)
	}
	return net.FileConn(f)
}

// waitConnected waits for the connection f's socket started to be made or
// to fail, or for ctx to end.
func waitConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Now()) })
	defer stop()
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		switch e, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); {
		case err != nil:
			cerr = os.NewSyscallError("getsockopt", err)
		case e != 0:
			cerr = os.NewSyscallError("connect", unix.Errno(e))
		default:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false // still connecting: wait until writable
			}
		}
		return true
	})
	switch {
	case werr == nil:
		return cerr
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(werr, os.ErrDeadlineExceeded): // ctx's deadline, its timer not yet run
		return context.DeadlineExceeded
	}
	return werr
}

// serveAnswers listens on each next-tier address of cn inside its network
// and hands the listener to what serves it; a listener not handed over is
// closed.
func (cn *cloneNet) serveAnswers(answers map[string]func(net.Listener) error) error {
	for _, k := range slices.Sorted(maps.Keys(answers)) {
		a, _ := parseInternal(k) // checked by setupInsideNet
		var ln net.Listener
		if err := cn.enter(func() error {
			var err error
			ln, err = net.Listen("tcp", a.String())
			return err
		}); err != nil {
			return fmt.Errorf("listen on %s inside %s: %w", a, cn.Netns, err)
		}
		if err := answers[k](ln); err != nil {
			ln.Close()
			return fmt.Errorf("serve %s inside %s: %w", a, cn.Netns, err)
		}
	}
	return nil
}

// where says where a clone on cn is reached.
func (cn *cloneNet) where() string {
	if cn.Inside {
		return cn.Internal.String() + " inside network namespace " + cn.Netns
	}
	return cn.Endpoint.String()
}

// parseRedirects validates CloneOptions.Redirect: keys are the next-tier
// addresses the instance calls, values out-proxy addresses that must be on
// this host (loopback or one of its addresses), since a clone's traffic
// never leaves the machine.
func parseRedirects(m map[string]string, hostAddr netip.Addr) ([]redirect, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	local := localAddrs()
	var out []redirect
	for i, k := range keys {
		from, err := parseInternal(k)
		if err != nil {
			return nil, justrunit.Invalid("redirect", k, "next-tier address must be IPv4 host:port")
		}
		to, err := parseInternal(m[k])
		if err != nil {
			return nil, justrunit.Invalid("redirect["+k+"]", m[k], "out-proxy address must be IPv4 host:port")
		}
		if !to.Addr().IsLoopback() && !local[to.Addr()] {
			return nil, justrunit.Invalid("redirect["+k+"]", m[k], "out-proxy must listen on this host (loopback or a local address)")
		}
		out = append(out, redirect{From: from, Via: netip.AddrPortFrom(hostAddr, uint16(viaPortBase+i)), To: to})
	}
	return out, nil
}

func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	as, _ := net.InterfaceAddrs()
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				out[ip] = true
			}
		}
	}
	return out
}

// linkAddrs returns the host and clone addresses of link idx in base, a /16.
func linkAddrs(base netip.Prefix, idx int) (host, clone netip.Addr) {
	b := base.Masked().Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n += uint32(idx) * 4
	mk := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return mk(n + 1), mk(n + 2)
}

// withNetLock runs fn holding a machine-wide lock, so that two platforms
// (two test binaries, a daemon and a test) never pick the same link index.
func withNetLock(fn func() error) error {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(runDir, "net.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return fn()
}

// inNetns runs fn on an OS thread switched into ns. If the thread cannot be
// switched back, it is left locked so that the runtime discards it.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// newNamedNetns creates the named namespace without leaving the calling
// goroutine's thread in it.
func newNamedNetns(name string) (netns.NsHandle, error) {
	type res struct {
		h   netns.NsHandle
		err error
	}
	rc := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			rc <- res{netns.None(), err}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		rc <- res{h, err}
	}()
	r := <-rc
	return r.h, r.err
}

// setupNet gives clone id its network identity: a named namespace, a veth
// pair with a /30 link, the internal address, and the clone-side and
// host-side nftables tables. On error it removes what it made.
func (p *Platform) setupNet(id string, internal netip.AddrPort, redirects map[string]string) (*cloneNet, error) {
	cn := &cloneNet{Netns: netnsName(p.scope, id), Internal: internal, Table: cloneTable(p.scope, id)}
	err := withNetLock(func() error {
		used := map[int]bool{}
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			n := l.Attrs().Name
			if strings.HasPrefix(n, linkPrefix) && len(n) == len(linkPrefix)+6 {
				if v, err := strconv.ParseUint(n[len(linkPrefix):len(n)-1], 16, 32); err == nil {
					used[int(v)] = true
				}
			}
		}
		cn.Index = -1
		for i := 0; i < maxLinkIndex; i++ {
			if !used[i] {
				cn.Index = i
				break
			}
		}
		if cn.Index < 0 {
			return errors.New("no free clone link left")
		}
		cn.HostVeth = hostVeth(cn.Index)
		cn.HostAddr, cn.CloneAddr = linkAddrs(p.cfg.LinkNet, cn.Index)
		reds, err := parseRedirects(redirects, cn.HostAddr)
		if err != nil {
			return err
		}
		cn.Redirects = reds

		ns, err := newNamedNetns(cn.Netns)
		if err != nil {
			return fmt.Errorf("create network namespace %s: %w", cn.Netns, err)
		}
		defer ns.Close()
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: cn.HostVeth},
			PeerName:      cloneVeth(cn.Index),
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s: %w", cn.HostVeth, err)
		}
		if err := p.configureLink(cn, ns); err != nil {
			// Made just now under the lock, so ours, though perhaps not
			// labeled yet (the kernel takes no alias at creation), which
			// teardownNet would need to delete it.
			if l, lerr := netlink.LinkByName(cn.HostVeth); lerr == nil {
				_ = netlink.LinkDel(l)
			}
			return err
		}
		return nil
	})
	if err != nil {
		_ = p.teardownNet(cn)
		return nil, err
	}
	cn.Endpoint = netip.AddrPortFrom(cn.CloneAddr, internal.Port())
	return cn, nil
}

// vethAlias is the alias of clone cn's host-side veth.
func (p *Platform) vethAlias(cn *cloneNet) string {
	return linkAlias(p.scope, strings.TrimPrefix(cn.Netns, netnsPrefix+p.scope+"-"))
}

func (p *Platform) configureLink(cn *cloneNet, ns netns.NsHandle) error {
	h, err := netlink.LinkByName(cn.HostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", cn.HostVeth, err)
	}
	if err := netlink.LinkSetAlias(h, p.vethAlias(cn)); err != nil {
		return fmt.Errorf("label veth: %w", err)
	}
	if err := netlink.AddrAdd(h, &netlink.Addr{IPNet: prefixNet(cn.HostAddr, 30)}); err != nil {
		return fmt.Errorf("address veth %s: %w", cn.HostVeth, err)
	}
	// The out-proxy usually listens on 127.0.0.1: DNAT to a loopback address
	// of packets arriving on this one interface needs route_localnet on it.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+cn.HostVeth+"/route_localnet", []byte("1"), 0); err != nil {
		return fmt.Errorf("route_localnet on %s: %w", cn.HostVeth, err)
	}
	if err := disableIPv6(cn.HostVeth); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(h); err != nil {
		return fmt.Errorf("set veth %s up: %w", cn.HostVeth, err)
	}

	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // links, addresses, routes: nothing needs xfrm or netfilter sockets
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", cn.Netns, err)
	}
	defer nh.Close()
	if err := setLoopback(nh, cn, []netip.AddrPort{cn.Internal}); err != nil {
		return err
	}
	c, err := nh.LinkByName(cloneVeth(cn.Index))
	if err != nil {
		return fmt.Errorf("find veth %s in %s: %w", cloneVeth(cn.Index), cn.Netns, err)
	}
	if err := nh.AddrAdd(c, &netlink.Addr{IPNet: prefixNet(cn.CloneAddr, 30)}); err != nil {
		return fmt.Errorf("address veth %s in %s: %w", cloneVeth(cn.Index), cn.Netns, err)
	}
	if err := inNetns(ns, func() error {
		// "default": the links made there later (none is, today).
		return errors.Join(disableIPv6(cloneVeth(cn.Index)), disableIPv6("default"))
	}); err != nil {
		return fmt.Errorf("in %s: %w", cn.Netns, err)
	}
	if err := nh.LinkSetUp(c); err != nil {
		return fmt.Errorf("set veth %s up in %s: %w", cloneVeth(cn.Index), cn.Netns, err)
	}
	gw := net.IP(cn.HostAddr.AsSlice())
	if err := nh.RouteAdd(&netlink.Route{LinkIndex: c.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("default route in %s: %w", cn.Netns, err)
	}
	// Inside the clone's own namespace: DNAT from the link to 127.x and
	// masquerading 127.x sources out of the link need route_localnet.
	if err := inNetns(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/route_localnet", []byte("1"), 0)
	}); err != nil {
		return fmt.Errorf("route_localnet in %s: %w", cn.Netns, err)
	}

	nc, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", cn.Netns, err)
	}
	nsRules(nc, cn.Table, cloneVeth(cn.Index), cn.CloneAddr, cn.Internal, cn.HostAddr, cn.Redirects)
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("nftables in %s: %w", cn.Netns, err)
	}
	hc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	hostRules(hc, cn.Table, cn.HostVeth, cn.HostAddr, cn.Redirects)
	if err := hc.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", cn.Table, err)
	}
	return nil
}

// disableIPv6 turns IPv6 off on link dev of the calling thread's network
// namespace before it is up, so that it never has an address. A clone's
// nftables rules, its own and the host's, are IPv4 ones: over the
// link-local addresses IPv6 gives both ends of its veth, it would reach
// every host service listening on [::] (Go's ":port" listeners, sshd)
// past them. The loopback keeps ::1, which leads nowhere but the clone.
// A kernel without IPv6 has nothing to turn off.
func disableIPv6(dev string) error {
	if _, err := os.Stat("/proc/sys/net/ipv6/conf"); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", []byte("1"), 0); err != nil {
		return fmt.Errorf("disable IPv6 on %s: %w", dev, err)
	}
	return nil
}

func prefixNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// teardownNet removes the clone's host table, veth pair and namespace. What
// is already gone is skipped.
func (p *Platform) teardownNet(cn *cloneNet) error {
	var errs []error
	if cn.Table != "" {
		if c, err := nftables.New(); err == nil {
			if _, err := deleteTable(c, cn.Table); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if cn.HostVeth != "" {
		// Under the lock setupNet takes its link index under, and only the
		// link labeled this clone's: once this clone's veth is gone, its
		// name may be another clone's.
		err := withNetLock(func() error {
			l, err := netlink.LinkByName(cn.HostVeth)
			var nf netlink.LinkNotFoundError
			switch {
			case errors.As(err, &nf):
			case err != nil:
				return fmt.Errorf("find veth %s: %w", cn.HostVeth, err)
			case l.Attrs().Alias == p.vethAlias(cn):
				if err := netlink.LinkDel(l); err != nil {
					return fmt.Errorf("delete veth %s: %w", cn.HostVeth, err)
				}
			}
			cn.HostVeth = "" // gone, or the name is another's now
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	if cn.Netns != "" {
		if err := deleteNetns(cn.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", name, err)
	}
	return nil
}
