package local

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
)

// TestTeardownNetOnlyItsVeth: teardownNet deletes the host-side veth only
// while it is the clone's; once gone, a link of the same name made since
// (its index reused) is left alone, and a second teardown does nothing.
func TestTeardownNetOnlyItsVeth(t *testing.T) {
	p := newPlatform(t)
	cn, err := p.setupNet("vethcheck", netip.MustParseAddrPort("127.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := *cn
	t.Cleanup(func() { first.HostVeth = ""; _ = p.teardownNet(&first) })
	name := cn.HostVeth
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.Attrs().Alias, p.vethAlias(cn); got != want {
		t.Fatalf("veth %s alias = %q, want %q", name, got, want)
	}
	// The clone's veth goes, and another link takes its name.
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	other := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, Alias: linkAlias(p.scope, "someone-else")}, PeerName: "jritestpeer"}
	if err := netlink.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(other) })

	if err := p.teardownNet(cn); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(name); err != nil {
		t.Errorf("teardownNet deleted %s, another clone's link: %v", name, err)
	}
	if cn.HostVeth != "" {
		t.Errorf("HostVeth = %q after teardown, want it cleared", cn.HostVeth)
	}
	_ = netlink.LinkDel(other)

	// Its own veth: deleted, and HostVeth cleared.
	cn, err = p.setupNet("vethcheck", netip.MustParseAddrPort("127.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.teardownNet(cn) })
	name = cn.HostVeth
	if err := p.teardownNet(cn); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(name); err == nil {
		t.Errorf("teardownNet left the clone's veth %s", name)
	}
	if cn.HostVeth != "" {
		t.Errorf("HostVeth = %q after teardown, want it cleared", cn.HostVeth)
	}
}

// TestDestroyPrefixLeavesTables: Destroy of an ID that is only a prefix of a
// clone's (c for c1-web) finds nothing and leaves that clone's table.
func TestDestroyPrefixLeavesTables(t *testing.T) {
	p := newPlatform(t)
	cn, err := p.setupNet("c1-web", netip.MustParseAddrPort("127.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.teardownNet(cn) })
	for _, id := range []string{"c", "c1", "c1-we"} {
		if err := p.Destroy(context.Background(), id); !errors.Is(err, justrunit.ErrNotFound) {
			t.Errorf("Destroy(%s) = %v, want ErrNotFound", id, err)
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	if ts, err := listTables(c, cn.Table); !slices.Contains(ts, cn.Table) {
		t.Errorf("tables %s… after the Destroys: %v (%v), want clone c1-web's %s kept", cn.Table, ts, err, cn.Table)
	}
}

// TestNATCloneNoIPv6: a NAT clone cannot reach a host service listening on
// [::] at the link-local address of its veth's host end, which no nftables
// rule (IPv4 only) would stop; neither end of the veth has an IPv6 address.
func TestNATCloneNoIPv6(t *testing.T) {
	p := newPlatform(t)
	l, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no IPv6 listener here: %v", err)
	}
	defer l.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	cn, err := p.setupNet("v6check", netip.MustParseAddrPort("127.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.teardownNet(cn) })
	h, err := netlink.LinkByName(cn.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	// The address the kernel gives the host end, once usable (duplicate
	// address detection takes a second); by its MAC where it gives none.
	target := eui64LinkLocal(h.Attrs().HardwareAddr)
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
		as, err := netlink.AddrList(h, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 0 && time.Since(start) > 500*time.Millisecond {
			break // none by now: none is coming
		}
		if len(as) > 0 && as[0].Flags&unix.IFA_F_TENTATIVE == 0 {
			t.Errorf("host veth %s has IPv6 addresses %v, want none", cn.HostVeth, as)
			target = as[0].IP
			time.Sleep(time.Second) // the clone's end's is usable too
			break
		}
	}
	port := l.Addr().(*net.TCPAddr).Port
	to := net.JoinHostPort(target.String()+"%"+cloneVeth(cn.Index), strconv.Itoa(port))
	err = cn.enter(func() error {
		c, err := net.DialTimeout("tcp", to, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil || accepted.Load() > 0 {
		t.Errorf("from inside clone network %s, dial %s (a listener on [::] of the host) = %v, want refused", cn.Netns, to, err)
	}
}

// eui64LinkLocal is the link-local address IPv6 derives from MAC mac.
func eui64LinkLocal(mac net.HardwareAddr) net.IP {
	ip := make(net.IP, net.IPv6len)
	ip[0], ip[1] = 0xfe, 0x80
	copy(ip[8:], []byte{mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]})
	return ip
}
