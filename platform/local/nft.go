package local

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Every nftables table the platform creates is named tablePrefix + scope +
// "-" + clone id, one table per clone, so that destroying a clone is deleting
// one table and gc can find a crashed run's tables by name alone.
const tablePrefix = "justrunit-"

func cloneTable(scope, id string) string { return tablePrefix + scope + "-" + id }

// redirect is one steered next-tier address: the clone's connections to From
// are rewritten inside its namespace to the host side of its link at Via,
// and on the host to To (the out-proxy).
type redirect struct {
	From netip.AddrPort
	Via  netip.AddrPort
	To   netip.AddrPort
}

// nsRules builds the clone-side table (inside the clone's namespace):
//
//	prerouting: iif <veth> daddr <clone link addr> tcp dport P -> dnat <internal addr>:P
//	output nat: daddr <next tier> tcp dport Q -> dnat <host link addr>:<via port>
//	postrouting: oif <veth> -> masquerade (connections from 127.x must leave with the link address)
//	output filter: oif lo, established/related, the via ports on the host link: accept;
//	               other tcp: reset; anything else: drop
func nsRules(c *nftables.Conn, table, veth string, linkAddr netip.Addr, internal netip.AddrPort, hostAddr netip.Addr, reds []redirect) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: concat(
		matchIif(veth), matchDaddr(linkAddr), matchTCPDport(internal.Port()), dnat(internal))})

	outNAT := c.AddChain(&nftables.Chain{Name: "output-nat", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	for _, r := range reds {
		c.AddRule(&nftables.Rule{Table: t, Chain: outNAT, Exprs: concat(
			matchDaddr(r.From.Addr()), matchTCPDport(r.From.Port()), dnat(r.Via))})
	}
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(matchOif(veth), []expr.Any{&expr.Masq{}})})

	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(matchOif("lo"), accept())})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())})
	for _, r := range reds {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(
			matchOif(veth), matchDaddr(hostAddr), matchTCPDport(r.Via.Port()), accept())})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: concat(matchL4(unix.IPPROTO_TCP),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
}

// hostRules builds the host-side table:
//
//	prerouting: iif <veth> daddr <host link addr> tcp dport <via> -> dnat <out-proxy>
//	input:      iif <veth>: established/related or dnat'ed: accept; else drop
//	forward:    iif <veth>: drop (a clone never reaches past this host)
func hostRules(c *nftables.Conn, table, veth string, hostAddr netip.Addr, reds []redirect) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	for _, r := range reds {
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: concat(
			matchIif(veth), matchDaddr(hostAddr), matchTCPDport(r.Via.Port()), dnat(r.To))})
	}
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: concat(matchIif(veth), matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: concat(matchIif(veth), matchCtStatus(ipsDstNAT), accept())})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: concat(matchIif(veth), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(matchIif(veth), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})})
}

// deleteTable deletes the IPv4 table called name, if there is one, and says
// whether there was. Only that name: a clone's table name is a prefix of
// other clones' (justrunit-<scope>-c1-web, -c12-web).
func deleteTable(c *nftables.Conn, name string) (bool, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == name {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return false, fmt.Errorf("delete nftables table %s: %w", name, err)
			}
			return true, nil
		}
	}
	return false, nil
}

// hasTable reports whether there is an IPv4 table called name.
func hasTable(c *nftables.Conn, name string) (bool, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// listTables returns the names of the IPv4 tables starting with prefix.
func listTables(c *nftables.Conn, prefix string) ([]string, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var out []string
	for _, t := range ts {
		if strings.HasPrefix(t.Name, prefix) {
			out = append(out, t.Name)
		}
	}
	return out, nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func matchIif(n string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)},
	}
}

func matchOif(n string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)},
	}
}

func matchDaddr(a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

func matchL4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func matchTCPDport(port uint16) []expr.Any {
	return append(matchL4(unix.IPPROTO_TCP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
}

func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func matchCtStatus(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func dnat(to netip.AddrPort) []expr.Any {
	a := to.Addr().As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// ipsDstNAT is IPS_DST_NAT of linux/netfilter/nf_conntrack_common.h: the
// connection's destination was rewritten.
const ipsDstNAT = 1 << 5
