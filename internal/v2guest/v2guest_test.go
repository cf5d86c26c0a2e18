package v2guest

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/platform/qemu"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

// modules are the kernel modules the local platform's tests need in the
// guest, besides the image's defaults; their dependencies are added.
var modules = []string{
	"overlay", "veth",
	"nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct", "nft_reject_ipv4",
	// criu's: socket diagnostics to dump sockets, tun for its checks
	"unix_diag", "inet_diag", "tcp_diag", "udp_diag", "raw_diag", "netlink_diag", "af_packet_diag", "tun",
}

// suites are the test binaries the guest runs, in order, with the tests
// each runs (a -test.run pattern; "." all), unless the boot names others.
var suites = []struct{ name, pkg, run string }{
	{"cgroup", "github.com/justrunit/justrunit/internal/cgroup", "."},
	{"local", "github.com/justrunit/justrunit/platform/local", "."},
	// A whole study with live clones; the site's other tests are long and
	// timing-bound, and run on the host.
	{"siterun", "github.com/justrunit/justrunit/siterun", "TestLiveCloneStudy"},
}

// script is the guest's command. JRI_CGROUP (from the kernel command line)
// picks the hierarchy: v2, a cgroup2 hierarchy at /sys/fs/cgroup and nothing
// under v1; or v1, the controllers mounted one per directory as on this
// project's machines. Then a tmpfs for the tests' temporary directories
// (the local platform puts overlay upper directories there), criu where the
// image has it, and each suite, with the tests JRI_RUN names (all by
// default). CI=true makes a missing capability fail instead of skip.
const script = `#!/bin/sh
if [ "$JRI_CGROUP" = v1 ]; then
	mount -t tmpfs cgroup /sys/fs/cgroup
	for c in freezer pids cpuset cpu cpuacct memory; do
		mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || echo "v2guest: cannot mount cgroup v1 $c"
	done
	echo "v2guest: controllers: v1 $(ls /sys/fs/cgroup | tr '\n' ' ')"
else
	mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "v2guest: cannot mount cgroup2"
	echo "v2guest: controllers: v2 $(cat /sys/fs/cgroup/cgroup.controllers)"
fi
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts && ln -sf pts/ptmx /dev/ptmx
if [ -e /bin/criu ]; then
	# criu and the shared libraries it was built with, where it looks for them
	mkdir -p /lib64 /lib/x86_64-linux-gnu /usr/sbin
	mv /bin/ld-linux-x86-64.so.2 /lib64/ && mv /bin/lib*.so* /lib/x86_64-linux-gnu/ && mv /bin/criu /usr/sbin/
	export JRI_V2GUEST=criu
	echo "v2guest: criu check: $(/usr/sbin/criu check 2>&1 | tail -1)"
fi
export TMPDIR=/tmp CI=true JRI_TESTSERVER=/bin/jri-testserver JRI_AUCTION=/bin/auction HOME=/tmp PATH=/usr/sbin:/bin
suite() {
	echo "v2guest: run $1"
	/bin/$1.test -test.v -test.timeout %s -test.run "${JRI_RUN:-$2}"
	echo "v2guest: $1 exit $?"
}
`

// suiteTimeout bounds each suite in the guest.
const suiteTimeout = 4 * time.Minute

// bootTimeout bounds one boot of the guest (a normal one takes 1–3 minutes
// under TCG here), so that a hung boot and the one after it stay inside the
// 20 minutes .ci/run gives the package.
const bootTimeout = 7 * time.Minute

// TestGuest boots the guest twice: on cgroup v2 with every test of the
// suites, and on cgroup v1 with the tests of the paths v1 takes that this
// machine cannot run (TestLiveClone: criu on v1's freezer). It fails with
// the guest's output when a suite fails in it.
func TestGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest for minutes; skipped with -short")
	}
	testutil.NeedRoot(t)
	if err := guest.Requirements(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v; .ci/run installs them", err)
		}
		t.Skip(err)
	}
	// Inside the 20 minutes .ci/run gives go test, so that QEMU is killed
	// by its context, never left running by a test binary go test killed.
	ctx, cancel := context.WithTimeout(context.Background(), 18*time.Minute)
	defer cancel()

	dir := t.TempDir()
	services := map[string]string{}
	var names []string
	body := fmt.Sprintf(script, suiteTimeout)
	for _, s := range suites {
		bin := filepath.Join(dir, s.name+".test")
		goTool(t, ctx, "test", "-c", "-trimpath", "-o", bin, s.pkg)
		services[s.name+".test"] = bin
		names = append(names, s.name)
		body += fmt.Sprintf("suite %s '%s'\n", s.name, s.run)
	}
	for name, pkg := range map[string]string{
		"jri-testserver": "github.com/justrunit/justrunit/internal/testserver/cmd/jri-testserver",
		"auction":        "github.com/justrunit/justrunit/examples/auction",
	} {
		bin := filepath.Join(dir, name)
		goTool(t, ctx, "build", "-trimpath", "-o", bin, pkg)
		services[name] = bin
	}
	run := filepath.Join(dir, "run-v2")
	if err := os.WriteFile(run, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	services["run-v2"] = run
	// criu, for live clones (TestLiveClone), with its shared libraries.
	criu, err := exec.LookPath("criu")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("criu is not installed; .ci/run installs it (apt-get install criu)")
		}
		t.Log("criu is not installed: TestLiveClone skips in the guest (apt-get install criu)")
	} else {
		libs, err := sharedLibs(criu)
		if err != nil {
			t.Fatal(err)
		}
		services["criu"] = criu
		maps.Copy(services, libs)
	}
	img, err := guest.Build(ctx, guest.Config{
		CacheDir: filepath.Join(dir, "images"),
		Services: services,
		Modules:  append(append([]string{}, guest.DefaultModules...), modules...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("v2", func(t *testing.T) { bootSuites(t, ctx, img, names, "v2", "") })
	// On v1: the cgroup group, and the live clone and live study (criu on v1's
	// freezer); the rest of v1 runs on the host.
	t.Run("v1", func(t *testing.T) { bootSuites(t, ctx, img, names, "v1", "TestGroup|TestLiveClone") })
}

// bootSuites boots img on cgroup hierarchy (v1 or v2), runs the suites
// names with the tests run selects (all when empty), and fails with the
// guest's console when one fails.
func bootSuites(t *testing.T, ctx context.Context, img *guest.Image, names []string, hierarchy, run string) {
	accel := []string{"-machine", "pc,accel=kvm"}
	a, _ := qemu.AutoAccel()
	tcg := a == "tcg"
	if tcg {
		accel = []string{"-machine", "pc", "-accel", "tcg,thread=multi,tb-size=128"}
	}
	kargs := "console=ttyS0 quiet panic=-1 JRI_CGROUP=" + hierarchy
	if run != "" {
		kargs += " JRI_RUN=" + run
	}
	args := append(accel,
		// Two CPUs: the local platform's tests lay hosts out as cpusets 0 and 1.
		"-m", "1536", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel(), "-initrd", img.Initrd(),
		"-append", kargs+" -- /bin/run-v2",
		"-serial", "stdio",
		// A NIC gives the guest a non-loopback address (10.0.2.15), which
		// TestCloneNonLoopbackAddress needs; restrict=on keeps it off the host.
		"-nic", "user,model=virtio-net-pci,restrict=on",
	)
	// A boot is bounded well inside go test's own timeout, so that a
	// guest that hangs (seen once under TCG, the v1 guest still running
	// after 18 minutes) is killed and reported with its console rather
	// than left running when the test binary is killed; it is booted once
	// more, and a second hang fails.
	var console string
	for attempt := 1; ; attempt++ {
		bctx, cancel := context.WithTimeout(ctx, bootTimeout)
		var out bytes.Buffer
		cmd := exec.CommandContext(bctx, "qemu-system-x86_64", args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = 5 * time.Second
		// QEMU dies with the test binary, should go test kill it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		start := time.Now()
		t.Logf("booting a cgroup %s guest (tcg=%v) to run %s (tests: %s)", hierarchy, tcg, strings.Join(names, ", "), orAll(run))
		err := cmd.Run()
		hung := bctx.Err() != nil && ctx.Err() == nil
		cancel()
		console = out.String()
		t.Logf("guest ran for %v", time.Since(start).Round(time.Second))
		if hung && attempt == 1 {
			t.Logf("the guest was still running after %v: killed, booting it once more; its console:\n%s", bootTimeout, console)
			continue
		}
		if err != nil {
			t.Fatalf("qemu: %v (context: %v)\n%s", err, ctx.Err(), console)
		}
		break
	}
	if !strings.Contains(console, "v2guest: controllers: "+hierarchy) || strings.Contains(console, "cannot mount cgroup") {
		t.Fatalf("the guest did not get its cgroup %s hierarchy:\n%s", hierarchy, console)
	}
	failed := false
	for _, n := range names {
		m := regexp.MustCompile(`v2guest: ` + n + ` exit (\d+)`).FindStringSubmatch(console)
		switch {
		case m == nil:
			t.Errorf("suite %s did not finish in the guest", n)
			failed = true
		case m[1] != "0":
			t.Errorf("suite %s failed in the cgroup %s guest (exit %s)", n, hierarchy, m[1])
			failed = true
		}
	}
	for _, line := range strings.Split(console, "\n") {
		if strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "v2guest:") || strings.Contains(line, "mode live") || strings.Contains(line, "live_test.go") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if failed {
		t.Logf("guest console:\n%s", console)
	}
}

func orAll(run string) string {
	if run == "" {
		return "all"
	}
	return run
}

// sharedLibs maps the file names of the shared libraries bin loads, and of
// its dynamic loader, to their paths, as ldd lists them.
func sharedLibs(bin string) (map[string]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	libs := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs[filepath.Base(f[2])] = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"): // the loader
			libs[filepath.Base(f[0])] = f[0]
		}
	}
	return libs, nil
}

// goTool runs the go tool for a static linux/amd64 binary.
func goTool(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}
