package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/measure"
)

// Check tries on this machine what the local platform needs, the way the
// platform does it: a platform with a state directory made under dir (so
// that overlayfs is tried on the file system studies will use), a cgroup
// with a CPU quota, a cpuset and a memory limit, frozen and thawed, the
// controllers that read an instance's CPU time and limit its memory (on
// cgroup v1, the cpuacct and memory hierarchies), and a clone's network
// identity (namespace, veth pair, addresses, routes and the nftables NAT
// rules). Everything it makes is removed before it returns. Without root
// only the first checks run.
func Check(ctx context.Context, dir string) []justrunit.Check {
	var out []justrunit.Check
	add := func(c justrunit.Check) { out = append(out, c) }
	if runtime.GOOS != "linux" {
		return []justrunit.Check{{Name: "linux", Detail: "running on " + runtime.GOOS, Fix: "the local platform runs on Linux"}}
	}
	root := os.Geteuid() == 0
	add(justrunit.Check{Name: "root", OK: root, Detail: fmt.Sprintf("uid %d", os.Geteuid()),
		Fix: fixIf(!root, "run as root (cgroups, network namespaces, nftables and mounts need it)")})
	if !root {
		return out
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		add(justrunit.Check{Name: "state directory", Detail: err.Error(), Fix: "make " + dir + " writable, or pick another with --data-dir"})
		return out
	}
	sd, err := os.MkdirTemp(dir, "check-")
	if err != nil {
		add(justrunit.Check{Name: "state directory", Detail: err.Error(), Fix: "make " + dir + " writable, or pick another with --data-dir"})
		return out
	}
	defer os.RemoveAll(sd)
	p, err := New(Config{StateDir: sd})
	if err != nil {
		add(justrunit.Check{Name: "platform", Detail: err.Error(), Fix: "see the error; `justrunit platform gc` removes what a crashed run left"})
		return out
	}
	defer func() {
		if err := p.Close(); err != nil {
			add(justrunit.Check{Name: "clean-up", Detail: err.Error(), Fix: "justrunit platform gc"})
		}
		_, _ = p.Collect(context.WithoutCancel(ctx))
		if r, err := Leftovers(p.scope, sd); err != nil || r.Total() > 0 {
			add(justrunit.Check{Name: "clean-up", Detail: fmt.Sprintf("left behind: %s %v", r, err), Fix: "justrunit platform gc"})
		}
	}()

	cpus := hostlayout.OnlineCPUs()
	found, err := cgroup.Probe(p.cgPath("check"), fmt.Sprint(cpus[0]))
	add(justrunit.NewCheck("cgroups", found, err, cgroup.ProbeFix))
	for _, c := range p.accountingChecks(err == nil) {
		add(c)
	}

	hosts, _ := p.Hosts(ctx)
	var hs []string
	for _, h := range hosts {
		kind := ""
		if h.Sandbox {
			kind = ", sandbox"
		}
		hs = append(hs, fmt.Sprintf("%s (%g cores%s)", h.Name, h.Cores, kind))
	}
	add(justrunit.Check{Name: "hosts", OK: len(cpus) > 1, Optional: true,
		Detail: fmt.Sprintf("%d CPUs; default hosts %s", len(cpus), strings.Join(hs, ", ")),
		Fix:    fixIf(len(cpus) < 2, "with one CPU the sandbox shares it with the on-line instances, and what they do shows in each other's figures")})

	add(justrunit.Check{Name: "overlayfs", OK: p.overlayOK, Optional: true,
		Detail: choose(p.overlayOK, "a clone's state directory is an overlay on the snapshot, its /tmp, /var/tmp and /dev/shm overlays on the host's",
			fmt.Sprintf("cannot mount an overlay under %s (%v): each clone gets a full copy of the state directory, and keeps its writes to /tmp, /var/tmp and /dev/shm in memory (a tmpfs of its own)", sd, p.overlayErr)),
		Fix: fixIf(!p.overlayOK, "modprobe overlay, and keep the data directory on a file system overlayfs accepts as upper layer (ext4, xfs, tmpfs)")})

	err = p.checkInsideNet()
	add(justrunit.NewCheck("clone network", "network namespace with its own loopback, a listener and a connection opened inside it, made and removed", err,
		"the kernel needs network namespaces (CONFIG_NET_NS), and this process CAP_SYS_ADMIN to enter them"))
	err = p.checkNet()
	c := justrunit.NewCheck("clone NAT", "network namespace, veth pair, addresses, routes and nftables NAT made and removed (clones reached from outside: bench clone)", err,
		"the kernel needs veth and nf_tables NAT: modprobe veth nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_reject_ipv4")
	c.Optional = true
	add(c)

	if p.criu != "" {
		add(justrunit.Check{Name: "clone mode", OK: true, Optional: true,
			Detail: "live: criu dumps the original (left running) and restores the clone with its memory state (" + p.criu + ")"})
	} else {
		add(justrunit.Check{Name: "clone mode", OK: false, Optional: true,
			Detail: "cold: a clone is the instance's command started again on a snapshot of its state directory; " + p.criuErr.Error(),
			Fix:    "for live clones (the original's memory state carried over), a criu whose `criu check` passes on this kernel: scripts/install-criu installs Debian's newest for JustRunIt alone, or set " + CriuEnv})
	}

	_, err = measure.NewRAPLMeter(measure.DefaultPowercapRoot)
	add(justrunit.Check{Name: "energy", OK: err == nil, Optional: true,
		Detail: choose(err == nil, "RAPL counters at "+measure.DefaultPowercapRoot, fmt.Sprint(err)),
		Fix:    fixIf(err != nil, "energy comes from each host class's power model (idle_watts, max_watts in the site file) and says so")})
	return out
}

// accountingChecks say whether the platform reads an instance's CPU time
// (Usage, which every experiment's energy is computed from) and sets
// memory limits. cgroup v2 does both with the controllers the cgroups
// check requires; on v1 they need the cpuacct and memory hierarchies,
// which that check does not (a group is made without them), so that
// without cpuacct the platform would start, and only the first Usage
// fail.
// cgroupsOK is the cgroups check's verdict, which on v2 is theirs.
func (p *Platform) accountingChecks(cgroupsOK bool) []justrunit.Check {
	cpu := cgroup.CPUTimeCheck(p.cg, cgroupsOK, p.noCPUAcct, "an instance")
	if p.cg == cgroup.V2 {
		mem := justrunit.Check{Name: "memory limits", OK: cgroupsOK, Optional: true, Detail: "cgroup v2 memory.max"}
		if !cgroupsOK {
			mem.Detail += ": not tried, the cgroups check failed"
			mem.Fix = "see the cgroups check"
		}
		return []justrunit.Check{cpu, mem}
	}
	mem := justrunit.Check{Name: "memory limits", OK: !p.noMemory, Optional: true, Detail: "cgroup v1 memory"}
	if p.noMemory {
		mem.Detail = cgroup.NotMountedV1("memory") + ": no memory limit can be set (the platform offers no mem parameter), and memory use reads 0"
		mem.Fix = cgroup.MountFixV1("memory")
	}
	return []justrunit.Check{cpu, mem}
}

// checkNet makes and removes a clone's network identity, with one
// next-tier redirect.
func (p *Platform) checkNet() error {
	internal := netip.MustParseAddrPort("127.0.0.1:8080")
	cn, err := p.setupNet("check", internal, map[string]string{"127.0.0.1:8081": "127.0.0.1:8082"})
	if err != nil {
		return err
	}
	return p.teardownNet(cn)
}

// checkInsideNet makes and removes a study clone's network: a namespace
// with a next-tier listener opened in it, and a connection from outside to
// a listener at the internal address, as the proxies open them.
func (p *Platform) checkInsideNet() error {
	internal := netip.MustParseAddrPort("127.0.0.1:8080")
	var lns []net.Listener
	keep := func(ln net.Listener) error { lns = append(lns, ln); return nil }
	answers := map[string]func(net.Listener) error{"127.0.0.1:8081": keep}
	cn, err := p.setupInsideNet("check", internal, answers)
	if err != nil {
		return err
	}
	err = cn.serveAnswers(answers)
	if err == nil {
		err = cn.enter(func() error {
			ln, err := net.Listen("tcp", internal.String())
			if err == nil {
				lns = append(lns, ln)
			}
			return err
		})
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var c net.Conn
		if c, err = cn.dial(ctx); err == nil {
			c.Close()
		}
		cancel()
	}
	for _, ln := range lns {
		ln.Close()
	}
	return errors.Join(err, p.teardownNet(cn))
}

func fixIf(cond bool, fix string) string {
	if cond {
		return fix
	}
	return ""
}

func choose(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}
