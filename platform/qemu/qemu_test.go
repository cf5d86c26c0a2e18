package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/platform/platformtest"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

// needQEMU skips (or, under CI=true, fails) when the machine cannot run
// the platform.
func needQEMU(t *testing.T) {
	t.Helper()
	if err := Requirements(); err != nil {
		msg := fmt.Sprintf("%v; run as root after: apt-get install qemu-system-x86 qemu-utils linux-image-amd64 busybox-static e2fsprogs", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// testImage builds the guest image with the guestserver, cached by input
// hash under the system temp dir, so a second run takes well under a second.
func testImage(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cache := filepath.Join(os.TempDir(), "justrunit-qemu-test-cache")
		if err := os.MkdirAll(cache, 0o755); err != nil {
			imageErr = err
			return
		}
		bin := filepath.Join(cache, "guestserver")
		if err := guest.GoBuild(ctx, ".", "github.com/justrunit/justrunit/internal/guestserver", bin); err != nil {
			imageErr = err
			return
		}
		im, err := guest.Build(ctx, guest.Config{CacheDir: cache, Services: map[string]string{"guestserver": bin}})
		if err != nil {
			imageErr = err
			return
		}
		imageDir = im.Dir
	})
	if imageErr != nil {
		t.Fatalf("build test image: %v", imageErr)
	}
	return imageDir
}

func newTestPlatform(t *testing.T) *Platform {
	t.Helper()
	needQEMU(t)
	img := testImage(t)
	state, err := os.MkdirTemp("", "jri-qemu-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{StateDir: state, Image: img, KillWithParent: true, MemoryMiB: 192,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := os.Stat(cgroupDir(p)); err == nil {
			t.Errorf("cgroup scope %s left after Close", cgroupDir(p))
		}
		os.RemoveAll(state)
	})
	if _, err := New(Options{StateDir: state, Image: img}); !errors.Is(err, justrunit.ErrExists) {
		t.Errorf("second New on the same state directory = %v, want ErrExists", err)
	}
	return p
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func launchCounter(t *testing.T, ctx context.Context, p *Platform, id, host string) *justrunit.Instance {
	t.Helper()
	start := time.Now()
	in, err := p.Launch(ctx, justrunit.InstanceSpec{ID: id, Host: host, Addr: "10.0.2.15:8080",
		Command: []string{"/bin/guestserver", "-addr", ":8080", "-dir", "/data"}})
	if err != nil {
		t.Fatalf("Launch(%s): %v", id, err)
	}
	t.Logf("booted %s in %v (accel %s), at %s", id, time.Since(start).Round(time.Millisecond), p.Accel(), in.Addr)
	return in
}

var httpc = &http.Client{Timeout: 20 * time.Second}

func do(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func wantBody(t *testing.T, method, url, body, want string) {
	t.Helper()
	code, got := do(t, method, url, body)
	if code != 200 || got != want {
		t.Errorf("%s %s = %d %q, want 200 %q", method, url, code, got, want)
	}
}

// hostServer is a next tier (or out-proxy) on the host's loopback.
func hostServer(t *testing.T, reply string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, reply) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// TestCloneLive is the acceptance test: a guest with an in-memory
// counter is cloned live; both answer on their own endpoints, continue from
// the same value and diverge; the clone's disk writes are its own; its
// outbound calls reach only the out-proxy; its CPU share changes its
// response time; the original then migrates live to another host.
func TestCloneLive(t *testing.T) {
	p := newTestPlatform(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	orig := launchCounter(t, ctx, p, "counter", "pm1")
	o := "http://" + orig.Addr

	for i := 1; i <= 3; i++ {
		wantBody(t, "POST", o+"/incr", "", strconv.Itoa(i))
	}
	wantBody(t, "PUT", o+"/file/before", "written before the clone", "written")

	nextTier := hostServer(t, "from the real next tier")
	outProxy := hostServer(t, "from the out-proxy")
	other := hostServer(t, "must not reach the clone")
	nextAddr := fmt.Sprintf("%s:%d", guest.Gateway, nextTier)
	otherAddr := fmt.Sprintf("%s:%d", guest.Gateway, other)
	wantBody(t, "GET", o+"/call?addr="+nextAddr, "", "from the real next tier")

	start := time.Now()
	cl, err := p.Clone(ctx, orig.ID, "sandbox", justrunit.CloneOptions{
		// The next tier as a site file names it (host loopback); the
		// guest calls it at 10.0.2.2.
		Redirect: map[string]string{fmt.Sprintf("127.0.0.1:%d", nextTier): fmt.Sprintf("127.0.0.1:%d", outProxy)},
	})
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	st, _ := p.LastMigration(cl.ID)
	t.Logf("cloned (%s) in %v: pause %v, QEMU downtime %v, migration total %v, %d MiB sent", p.CloneMethod(),
		time.Since(start).Round(time.Millisecond), cl.Pause.Round(time.Millisecond), st.Downtime, st.Total, st.Transferred>>20)
	if cl.Mode != justrunit.CloneLive || cl.Origin != orig.ID || cl.Host != "sandbox" || cl.Addr != orig.Addr || cl.Endpoint == orig.Addr {
		t.Errorf("Clone = %+v, want a live clone of %s on sandbox with the same Addr and its own Endpoint", cl, orig.ID)
	}
	c := "http://" + cl.Endpoint

	// Same memory: both continue from 3, then diverge.
	wantBody(t, "GET", o+"/count", "", "3")
	wantBody(t, "GET", c+"/count", "", "3")
	wantBody(t, "POST", c+"/incr", "", "4")
	wantBody(t, "POST", o+"/incr", "", "4")
	wantBody(t, "POST", o+"/incr", "", "5")
	wantBody(t, "GET", c+"/count", "", "4")

	// Same disk up to the clone, then each its own.
	wantBody(t, "GET", c+"/file/before", "", "written before the clone")
	wantBody(t, "PUT", c+"/file/clone-only", "the clone's", "written")
	if code, body := do(t, "GET", o+"/file/clone-only", ""); code != http.StatusNotFound {
		t.Errorf("original sees the clone's file: %d %q", code, body)
	}
	wantBody(t, "PUT", o+"/file/orig-only", "the original's", "written")
	if code, body := do(t, "GET", c+"/file/orig-only", ""); code != http.StatusNotFound {
		t.Errorf("clone sees the original's new file: %d %q", code, body)
	}

	// Network: the same next-tier address reaches the out-proxy from the
	// clone, the real next tier from the original; nothing else gets out.
	wantBody(t, "GET", c+"/call?addr="+nextAddr, "", "from the out-proxy")
	wantBody(t, "GET", o+"/call?addr="+nextAddr, "", "from the real next tier")
	if code, body := do(t, "GET", c+"/call?addr="+otherAddr, ""); code == 200 {
		t.Errorf("clone reached a host service outside its redirects: %q", body)
	}

	// CPU share through the cgroup.
	n := calibrate(t, c)
	fast := medianRT(t, c, n, 3)
	if err := p.SetAllocation(ctx, cl.ID, justrunit.Allocation{CPU: 20}); err != nil {
		t.Fatalf("SetAllocation(cpu=20): %v", err)
	}
	slow := medianRT(t, c, n, 3)
	t.Logf("clone's /work?n=%d: %v unlimited, %v at cpu=20%%", n, fast.Round(time.Millisecond), slow.Round(time.Millisecond))
	if slow < 2*fast {
		t.Errorf("cpu=20%% response time %v, want at least twice the unlimited %v", slow, fast)
	}
	// Memory through the balloon.
	if err := p.SetAllocation(ctx, cl.ID, justrunit.Allocation{CPU: 20, MemoryMiB: 128}); err != nil {
		t.Fatalf("SetAllocation(mem=128): %v", err)
	}
	if got := balloonMiB(t, p, cl.ID, 128); got != 128 {
		t.Errorf("balloon after mem=128: guest has %d MiB", got)
	}
	u, err := p.Usage(ctx, cl.ID)
	if err != nil || u.CPUTime <= 0 {
		t.Errorf("Usage(clone) = %+v, %v; want CPU time > 0", u, err)
	}

	// A clone of the clone continues from the clone's memory and disk.
	cc, err := p.Clone(ctx, cl.ID, "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone(clone): %v", err)
	}
	wantBody(t, "GET", "http://"+cc.Endpoint+"/count", "", "4")
	wantBody(t, "GET", "http://"+cc.Endpoint+"/file/clone-only", "", "the clone's")
	if err := p.Destroy(ctx, cc.ID); err != nil {
		t.Fatal(err)
	}

	// Live migration of the original to another host keeps its address
	// and memory.
	start = time.Now()
	if err := p.Migrate(ctx, orig.ID, "pm2"); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	ms, _ := p.LastMigration(orig.ID)
	t.Logf("migrated to pm2 in %v (QEMU downtime %v)", time.Since(start).Round(time.Millisecond), ms.Downtime)
	wantBody(t, "GET", o+"/count", "", "5")
	wantBody(t, "GET", o+"/file/orig-only", "", "the original's")
	if got := instanceOf(t, p, orig.ID).Host; got != "pm2" {
		t.Errorf("after Migrate, host = %s, want pm2", got)
	}

	// Clean-up: the clone goes, the original stays; then the original goes.
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	wantBody(t, "GET", o+"/count", "", "5")
	if err := p.Destroy(ctx, orig.ID); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(p.o.StateDir); len(ents) != 1 || ents[0].Name() != LockFile {
		t.Errorf("state left after Destroy: %v, want only .lock", ents)
	}
}

// balloonMiB polls query-balloon until the guest has want MiB or 10 s pass.
func balloonMiB(t *testing.T, p *Platform, id string, want int64) int64 {
	t.Helper()
	v, err := p.get(id)
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	q := v.proc.qmp
	v.mu.Unlock()
	var got int64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var b struct {
			Actual int64 `json:"actual"`
		}
		if err := q.Execute(context.Background(), "query-balloon", nil, &b); err != nil {
			t.Fatalf("query-balloon: %v", err)
		}
		if got = b.Actual >> 20; got == want {
			break
		}
	}
	return got
}

// cgroupDir is the platform's scope in the cpu hierarchy (v1) or the
// unified one (v2).
func cgroupDir(p *Platform) string {
	if p.CgroupVersion() == "v1" {
		return filepath.Join("/sys/fs/cgroup/cpu", p.scope)
	}
	return filepath.Join("/sys/fs/cgroup", p.scope)
}

func instanceOf(t *testing.T, p *Platform, id string) justrunit.Instance {
	t.Helper()
	is, _ := p.Instances(context.Background())
	for _, in := range is {
		if in.ID == id {
			return in
		}
	}
	t.Fatalf("no instance %s", id)
	return justrunit.Instance{}
}

// calibrate finds a /work size that takes 40 ms or more unthrottled.
func calibrate(t *testing.T, base string) int {
	n := 8
	for n < 1<<16 {
		if rt(t, base, n) >= 40*time.Millisecond {
			return n
		}
		n *= 2
	}
	return n
}

func rt(t *testing.T, base string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	code, body := do(t, "GET", fmt.Sprintf("%s/work?n=%d", base, n), "")
	if code != 200 {
		t.Fatalf("GET /work: %d %s", code, body)
	}
	return time.Since(start)
}

func medianRT(t *testing.T, base string, n, k int) time.Duration {
	var ds []time.Duration
	for i := 0; i < k; i++ {
		ds = append(ds, rt(t, base, n))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[k/2]
}

// TestConformance runs the platform conformance suite.
func TestConformance(t *testing.T) {
	p := newTestPlatform(t)
	n := 0
	platformtest.Run(t, platformtest.Config{
		Platform:   p,
		Sandbox:    "sandbox",
		OnlineHost: "pm1",
		Timeout:    2 * time.Minute,
		Launch: func(t *testing.T) string {
			n++
			id := fmt.Sprintf("conf%d", n)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			launchCounter(t, ctx, p, id, "pm1")
			t.Cleanup(func() { _ = p.Destroy(context.Background(), id) })
			return id
		},
	})
}

func TestCheckRedirect(t *testing.T) {
	for _, tc := range []struct {
		r  map[string]string
		ok bool
	}{
		{map[string]string{"10.0.2.2:5432": "127.0.0.1:9000"}, true},
		{map[string]string{"10.0.2.100:80": "127.0.0.1:9000"}, true},
		{map[string]string{"127.0.0.1:5432": "127.0.0.1:9000"}, true}, // the host's loopback: 10.0.2.2 inside
		{map[string]string{"192.168.1.1:5432": "127.0.0.1:9000"}, false},
		{map[string]string{"10.0.2.15:80": "127.0.0.1:9000"}, false},
		{map[string]string{"10.0.2.2:80": "nowhere"}, false},
	} {
		err := checkRedirect(tc.r)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, justrunit.ErrInvalid)) {
			t.Errorf("checkRedirect(%v) = %v, want ok=%v", tc.r, err, tc.ok)
		}
	}
}

func TestLimitsFor(t *testing.T) {
	p := &Platform{o: Options{Period: DefaultPeriod}, refFreq: 2}
	for _, tc := range []struct {
		a             justrunit.Allocation
		quota, period int64
	}{
		{justrunit.Allocation{}, 0, 20000},
		{justrunit.Allocation{CPU: 50}, 10000, 20000},
		{justrunit.Allocation{CPU: 2}, 1600, 80000}, // period grows past the 1 ms minimum quota
		{justrunit.Allocation{CPU: 100, Freq: 1}, 10000, 20000},
	} {
		l, err := p.limitsFor("allocation", tc.a, "0")
		if err != nil || l.QuotaUS != tc.quota || int64(l.PeriodUS) != tc.period {
			t.Errorf("limitsFor(%v) = quota %d period %d, %v; want %d %d", tc.a, l.QuotaUS, l.PeriodUS, err, tc.quota, tc.period)
		}
	}
}

// TestLaunchErrors checks that bad specs are refused before anything
// starts, and that a guest whose service exits fails Launch and leaves
// nothing behind.
func TestLaunchErrors(t *testing.T) {
	p := newTestPlatform(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for name, spec := range map[string]justrunit.InstanceSpec{
		"space in arg": {ID: "a", Host: "pm1", Addr: "10.0.2.15:80", Command: []string{"/bin/guestserver", "-addr", ": 80"}},
		"no command":   {ID: "a", Host: "pm1", Addr: "10.0.2.15:80"},
		"no port":      {ID: "a", Host: "pm1", Addr: "10.0.2.15", Command: []string{"/bin/true"}},
		"bad id":       {ID: "a/b", Host: "pm1", Addr: "10.0.2.15:80", Command: []string{"/bin/true"}},
		"bad cpu":      {ID: "a", Host: "pm1", Addr: "10.0.2.15:80", Command: []string{"/bin/true"}, Alloc: justrunit.Allocation{CPU: -3}},
	} {
		if _, err := p.Launch(ctx, spec); !errors.Is(err, justrunit.ErrInvalid) {
			t.Errorf("Launch(%s) = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "a", Host: "nohost", Addr: "10.0.2.15:80", Command: []string{"/bin/true"}}); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("Launch(unknown host) = %v, want ErrNotFound", err)
	}
	start := time.Now()
	_, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "exits", Host: "pm1", Addr: "10.0.2.15:80", Command: []string{"/bin/false"}})
	if !errors.Is(err, errExited) {
		t.Errorf("Launch(service that exits) = %v, want errExited", err)
	}
	t.Logf("failed launch returned in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if is, _ := p.Instances(ctx); len(is) != 0 {
		t.Errorf("Instances() after a failed launch = %v", is)
	}
	if ents, _ := os.ReadDir(p.o.StateDir); len(ents) != 1 {
		t.Errorf("state left after a failed launch: %v", ents)
	}
}

// TestCheckWithoutCPUAcct: where cgroup v1's cpuacct hierarchy is not
// mounted, the check's "cpu time" fails, required, naming what to mount
// (Usage would fail for every VM: energy is computed from its CPU time).
func TestCheckWithoutCPUAcct(t *testing.T) {
	needQEMU(t)
	if v, _ := cgroup.Detect(); v != cgroup.V1 {
		t.Skip("cgroup v1 only: v2 reads CPU time from cpu.stat, which every group has")
	}
	cgroupControllers = func(v cgroup.Version) ([]string, error) {
		have, err := cgroup.Controllers(v)
		return slices.DeleteFunc(have, func(c string) bool { return c == "cpuacct" }), err
	}
	t.Cleanup(func() { cgroupControllers = cgroup.Controllers })
	var cpu *justrunit.Check
	checks := Check(context.Background(), t.TempDir(), filepath.Join(t.TempDir(), "no-image"))
	for i, c := range checks {
		t.Logf("%-14s ok=%-5v optional=%-5v %s (fix: %s)", c.Name, c.OK, c.Optional, c.Detail, c.Fix)
		if c.Name == "cpu time" {
			cpu = &checks[i]
		}
	}
	switch {
	case cpu == nil:
		t.Errorf("no cpu time check, want one failed")
	case cpu.OK || cpu.Optional:
		t.Errorf("cpu time: ok=%v optional=%v, want failed and required", cpu.OK, cpu.Optional)
	case !strings.Contains(cpu.Fix, "mount -t cgroup -o cpuacct cgroup /sys/fs/cgroup/cpuacct"):
		t.Errorf("cpu time's fix %q does not say what to mount", cpu.Fix)
	}
}
