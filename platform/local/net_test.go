package local

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

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
