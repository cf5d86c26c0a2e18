package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/testutil"
)

// countingServer is an httptest server on addr ("" = 127.0.0.1:0) that
// answers body and counts its requests.
func countingServer(t *testing.T, addr, body string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		fmt.Fprint(w, body)
	}))
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		s.Listener.Close()
		s.Listener = l
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &n
}

// coldClones makes a platform whose clones are cold starts even where criu
// works (TestLiveClone tests the live ones).
func coldClones(c *Config) { c.ColdClones = true }

func TestClone(t *testing.T) {
	p := newPlatform(t, coldClones)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	next, nextHits := countingServer(t, "", "from the on-line next tier")
	proxy, proxyHits := countingServer(t, "", "from the out-proxy")
	// Listens on every host address: a clone must reach it through none.
	forbidden, forbiddenHits := countingServer(t, "0.0.0.0:0", "forbidden")

	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "blob"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	orig := launchServer(t, p, serverOpts{id: "web", stateDir: state, next: next.URL})
	base := "http://" + orig.Addr
	for i := 0; i < 3; i++ {
		getJSON(t, base+"/work?n=10")
	}
	origPid := getJSON(t, base+"/counter")["pid"]

	// Keep the original busy, writing its counter, while it is cloned; every
	// request must succeed.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var served, failed atomic.Int64
	var maxRT atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			resp, err := c.Get(base + "/work?n=10")
			if err != nil {
				failed.Add(1)
				continue
			}
			resp.Body.Close()
			served.Add(1)
			if rt := time.Since(t0); int64(rt) > maxRT.Load() {
				maxRT.Store(int64(rt))
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	proxyAddr := strings.TrimPrefix(proxy.URL, "http://")
	nextAddr := strings.TrimPrefix(next.URL, "http://")
	t0 := time.Now()
	cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{
		Alloc:    justrunit.Allocation{CPU: 50},
		Redirect: map[string]string{nextAddr: proxyAddr},
	})
	took := time.Since(t0)
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("Clone() error: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let the prober see the original after the clone too
	close(stop)
	wg.Wait()
	info, _ := p.Info(cl.ID)
	t.Logf("clone %s at %s: mode %s, pause %v, took %v, storage %s/%s; original served %d probes (max %v) while cloned",
		cl.ID, cl.Endpoint, cl.Mode, cl.Pause, took, info.Storage, info.Snapshot, served.Load(), time.Duration(maxRT.Load()))

	if cl.Mode != justrunit.CloneCold {
		t.Errorf("Mode = %q, want cold (ColdClones)", cl.Mode)
	}
	checkIdleClass(t, p, cl.ID, "web", false)
	if cl.Pause <= 0 || cl.Pause > time.Second {
		t.Errorf("Pause = %v, want a short freeze (0 < pause ≤ 1s)", cl.Pause)
	}
	if failed.Load() > 0 || served.Load() == 0 {
		t.Errorf("original during the clone: %d served, %d failed; want all served", served.Load(), failed.Load())
	}
	if cl.Addr != orig.Addr || cl.Origin != "web" || cl.Host != "sandbox" {
		t.Errorf("clone = %+v, want Addr %s, Origin web, Host sandbox", cl.Instance, orig.Addr)
	}

	cbase := "http://" + cl.Endpoint
	origCount := getJSON(t, base+"/counter")["counter"].(float64)
	t.Run("AnswersFromSnapshot", func(t *testing.T) {
		// The counter was being rewritten during the clone: the snapshot,
		// taken frozen, holds a whole value between the one before the
		// clone and the one after it.
		m := getJSON(t, cbase+"/counter")
		c, _ := m["counter"].(float64)
		if c < 3 || c > origCount {
			t.Errorf("clone counter = %v, want the original's at the snapshot, in [3, %v]", m["counter"], origCount)
		}
		if m["pid"] == origPid {
			t.Errorf("clone answered with the original's pid %v", origPid)
		}
	})

	t.Run("SameInternalAddress", func(t *testing.T) {
		in, err := p.get(cl.ID)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := netns.GetFromName(in.clone.Net.Netns)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		var pid any
		err = inNetns(ns, func() error {
			// Dialled from inside the clone's namespace, the original's own
			// address reaches the clone.
			conn, err := net.DialTimeout("tcp", orig.Addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /counter HTTP/1.0\r\nHost: x\r\n\r\n")
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			n, _ := conn.Read(buf)
			pid = string(buf[:n])
			return nil
		})
		if err != nil {
			t.Fatalf("dial %s inside the clone's namespace: %v", orig.Addr, err)
		}
		clonePid := fmt.Sprint(getJSON(t, cbase+"/counter")["pid"])
		if !strings.Contains(pid.(string), `"pid":`+clonePid) {
			t.Errorf("inside the namespace %s answered %q, want the clone (pid %s)", orig.Addr, pid, clonePid)
		}
	})

	t.Run("WritesInvisibleToOriginal", func(t *testing.T) {
		put(t, cbase+"/file/note", "written by the clone")
		getJSON(t, cbase+"/work?n=10")
		if code, body := getBody(t, cbase+"/file/note"); code != 200 || body != "written by the clone" {
			t.Errorf("clone reads its own write: %d %q", code, body)
		}
		if code, _ := getBody(t, base+"/file/note"); code != 404 {
			t.Errorf("original sees the clone's file: status %d, want 404", code)
		}
		if _, err := os.Stat(filepath.Join(state, "note")); err == nil {
			t.Errorf("clone's file appeared in the original's state dir")
		}
		if m := getJSON(t, base+"/counter"); m["counter"] != origCount {
			t.Errorf("original counter = %v after the clone worked, want %v", m["counter"], origCount)
		}
		if b, _ := os.ReadFile(filepath.Join(state, "counter")); string(b) != fmt.Sprint(origCount) {
			t.Errorf("original's counter file = %q, want %v", b, origCount)
		}
	})

	t.Run("OutboundToOutProxyOnly", func(t *testing.T) {
		code, body := getBody(t, cbase+"/next?path=/x")
		if code != 200 || body != "from the out-proxy" {
			t.Errorf("clone's next-tier call answered %d %q, want the out-proxy", code, body)
		}
		if nextHits.Load() != 0 {
			t.Errorf("the on-line next tier got %d requests from the clone", nextHits.Load())
		}
		if proxyHits.Load() != 1 {
			t.Errorf("out-proxy got %d requests, want 1", proxyHits.Load())
		}
		in, _ := p.get(cl.ID)
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(forbidden.URL, "http://"))
		for _, target := range []string{
			in.clone.Net.HostAddr.String() + ":" + port, // the host through the clone's link
			"127.0.0.1:" + port,                         // its own loopback: nothing there
		} {
			code, body := getBody(t, cbase+"/fetch?url=http://"+target+"/")
			if code == 200 {
				t.Errorf("clone reached %s: %q", target, body)
			}
		}
		if forbiddenHits.Load() != 0 {
			t.Errorf("a host server not named in Redirect got %d requests from the clone", forbiddenHits.Load())
		}
		// The original still reaches its real next tier.
		if code, body := getBody(t, base+"/next?path=/x"); code != 200 || body != "from the on-line next tier" {
			t.Errorf("original's next-tier call: %d %q", code, body)
		}
	})

	t.Run("SecondClone", func(t *testing.T) {
		// Two clones of one instance at once: same internal address, each in
		// its own namespace, behind different endpoints, on separate storage.
		cl2, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}})
		if err != nil {
			t.Fatalf("second Clone() error: %v", err)
		}
		defer p.Destroy(ctx, cl2.ID)
		if cl2.Endpoint == cl.Endpoint || cl2.Addr != cl.Addr {
			t.Errorf("clones at %s and %s, internal %s and %s; want different endpoints, one internal address", cl.Endpoint, cl2.Endpoint, cl.Addr, cl2.Addr)
		}
		a, b := getJSON(t, cbase+"/counter")["pid"], getJSON(t, "http://"+cl2.Endpoint+"/counter")["pid"]
		if a == b {
			t.Errorf("both endpoints answered from pid %v", a)
		}
		if code, _ := getBody(t, "http://"+cl2.Endpoint+"/file/note"); code != 404 {
			t.Errorf("the second clone sees the first clone's file (status %d)", code)
		}
	})

	t.Run("Destroy", func(t *testing.T) {
		if err := p.Destroy(ctx, cl.ID); err != nil {
			t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
		}
		if err := p.Destroy(ctx, cl.ID); err != nil {
			t.Fatalf("second Destroy(%s) = %v, want nil", cl.ID, err)
		}
		r, err := Leftovers(p.Scope(), p.cfg.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, list := range [][]string{r.Cgroups, r.Netns, r.Links, r.Tables, r.Dirs, r.Mounts} {
			for _, o := range list {
				if strings.Contains(o, cl.ID) || strings.HasPrefix(o, linkPrefix) {
					t.Errorf("after Destroy, %s is left", o)
				}
			}
		}
		getJSON(t, base+"/counter") // the original is unharmed
	})
}

// TestCloneStorage runs a clone on each storage a state directory can have,
// and checks that it starts from the original's files and writes its own:
//   - copy fallback: where overlayfs cannot be mounted, the snapshot itself,
//     bind-mounted over the state path;
//   - odd paths: a data directory and a state directory whose paths hold a
//     comma and a colon (which overlayfs takes as separators in its options)
//     still give overlays: the probe and the shim name every layer by
//     descriptor.
func TestCloneStorage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		overlay bool
		dir     string // the data and state directories' last element ("" none)
		want    string
	}{
		{name: "copy fallback", want: StorageCopy},
		{name: "odd paths", overlay: true, dir: "dir,with:odd", want: StorageOverlay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlatform(t, func(c *Config) { c.StateDir = filepath.Join(c.StateDir, tc.dir) })
			if tc.overlay && !p.overlayOK {
				t.Fatalf("overlayfs found unusable under %s", p.cfg.StateDir)
			}
			if !tc.overlay {
				p.overlayOK = false
			}
			state := filepath.Join(t.TempDir(), tc.dir)
			if err := os.MkdirAll(state, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(state, "counter"), []byte("41"), 0o644); err != nil {
				t.Fatal(err)
			}
			orig := launchServer(t, p, serverOpts{id: "db", stateDir: state})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cl, err := p.Clone(ctx, "db", "sandbox", justrunit.CloneOptions{})
			if err != nil {
				t.Fatalf("Clone() error: %v", err)
			}
			if info, _ := p.Info(cl.ID); info.Storage != tc.want {
				t.Errorf("storage = %q, want %q", info.Storage, tc.want)
			}
			cbase := "http://" + cl.Endpoint
			if m := getJSON(t, cbase+"/work?n=1"); m["counter"] != float64(42) {
				t.Errorf("clone counter after one request = %v, want 42", m["counter"])
			}
			put(t, cbase+"/file/x", "clone")
			if code, _ := getBody(t, "http://"+orig.Addr+"/file/x"); code != 404 {
				t.Errorf("original sees the clone's write (status %d)", code)
			}
			if b, _ := os.ReadFile(filepath.Join(state, "counter")); string(b) != "41" {
				t.Errorf("original's counter file = %q, want 41", b)
			}
		})
	}
}

// TestGCLeavesOtherScopes checks that gc of one state directory touches
// nothing of another platform's running instances and clones.
func TestGCLeavesOtherScopes(t *testing.T) {
	p1 := newPlatform(t)
	p2 := newPlatform(t)
	in := launchServer(t, p1, serverOpts{id: "keep"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := p1.Clone(ctx, "keep", "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	removed, err := p2.Collect(ctx)
	if err != nil || removed.Total() != 0 {
		t.Errorf("gc of another scope removed %s, %v; want nothing", removed, err)
	}
	// p1's own gc keeps what p1 runs.
	removed, err = p1.Collect(ctx)
	if err != nil || removed.Total() != 0 {
		t.Errorf("gc of a running platform removed %s, %v; want nothing it owns", removed, err)
	}
	getJSON(t, "http://"+in.Addr+"/counter")
	getJSON(t, "http://"+cl.Endpoint+"/counter")
}

// TestCloneNonLoopbackAddress clones an instance that listens on one of the
// host's own (non-loopback) addresses: inside its namespace the clone gets
// that address on its loopback device and binds it.
func TestCloneNonLoopbackAddress(t *testing.T) {
	p := newPlatform(t)
	var hostIP string
	for a := range localAddrs() {
		if !a.IsLoopback() && !DefaultLinkNet.Contains(a) {
			hostIP = a.String()
			break
		}
	}
	if hostIP == "" {
		t.Skip("this machine has no non-loopback IPv4 address")
	}
	bin := testServer(t)
	addr := net.JoinHostPort(hostIP, fmt.Sprint(freePort(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "nl", Host: "pm1", Command: []string{bin, "-addr", addr}, Addr: addr}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Destroy(context.Background(), "nl") })
	waitHTTP(t, "http://"+addr+"/health", 10*time.Second)
	cl, err := p.Clone(ctx, "nl", "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	// The endpoint reaches the clone, not the original: only the clone's
	// counter moves (live or cold alike).
	getJSON(t, "http://"+cl.Endpoint+"/work?n=10")
	if a, b := getJSON(t, "http://"+cl.Endpoint+"/counter")["counter"], getJSON(t, "http://"+addr+"/counter")["counter"]; a == b {
		t.Errorf("after a call to endpoint %s, its counter is the original's (%v)", cl.Endpoint, a)
	}
}

// TestCloneThatFailsToStart: a cold clone whose command exits at once
// (here: the snapshot holds a counter it cannot parse) makes Clone fail and
// leaves nothing of the clone behind.
func TestCloneThatFailsToStart(t *testing.T) {
	p := newPlatform(t, coldClones)
	state := t.TempDir()
	launchServer(t, p, serverOpts{id: "fragile", stateDir: state})
	if err := os.WriteFile(filepath.Join(state, "counter"), []byte("not a number"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.Clone(ctx, "fragile", "sandbox", justrunit.CloneOptions{})
	if err == nil || !strings.Contains(err.Error(), "exited before listening") || !strings.Contains(err.Error(), "invalid syntax") {
		t.Fatalf("Clone() = %v, want an error saying the clone exited, with its output", err)
	}
	t.Logf("Clone(): %v", err)
	r, err := Leftovers(p.Scope(), p.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Netns)+len(r.Links)+len(r.Tables)+len(r.Dirs)+len(r.Mounts) != 0 {
		t.Errorf("a failed clone left %+v", r)
	}
	for _, g := range r.Cgroups {
		if strings.Contains(g, "-fragile") {
			t.Errorf("a failed clone left cgroup %s", g)
		}
	}
	is, _ := p.Instances(ctx)
	if len(is) != 1 {
		t.Errorf("Instances() = %v, want only the original", is)
	}
}

// TestColdIdleClone checks that a cold clone on a platform with idle clones
// runs every thread in the idle class, and the original none.
func TestColdIdleClone(t *testing.T) {
	p := newPlatform(t, func(c *Config) { c.ColdClones, c.IdleClones = true, true })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	launchServer(t, p, serverOpts{id: "idle", stateDir: t.TempDir()})
	cl, err := p.Clone(ctx, "idle", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	if cl.Mode != justrunit.CloneCold {
		t.Errorf("Mode = %q, want cold (ColdClones)", cl.Mode)
	}
	getJSON(t, "http://"+cl.Endpoint+"/counter")
	checkIdleClass(t, p, cl.ID, "idle", true)
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
	}
}

// TestLiveClone clones an instance live (criu): the clone continues from the
// original's memory (an in-memory counter, the same PID in its own PID
// namespace), then both go on apart; the clone answers behind its NAT.
func TestLiveClone(t *testing.T) {
	p := newPlatform(t, func(c *Config) { c.IdleClones = true })
	testutil.NeedLiveClones(t, p.criuErr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	state := t.TempDir()
	orig := launchServer(t, p, serverOpts{id: "mem", stateDir: state})
	base := "http://" + orig.Addr
	for range 3 {
		getJSON(t, base+"/work?n=10")
	}
	before := getJSON(t, base+"/counter")
	cl, err := p.Clone(ctx, "mem", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	info, _ := p.Info(cl.ID)
	t.Logf("clone %s at %s: mode %s (%s), pause %v", cl.ID, cl.Endpoint, cl.Mode, info.Mode, cl.Pause)
	if cl.Mode != justrunit.CloneLive || info.Mode != justrunit.CloneLive {
		t.Fatalf("Mode = %q (info %q), want live; cold because: %s", cl.Mode, info.Mode, info.ColdBecause)
	}
	cbase := "http://" + cl.Endpoint
	got := getJSON(t, cbase+"/counter")
	if got["counter"] != before["counter"] || got["pid"] != before["pid"] {
		t.Errorf("clone answered %v, want the original's memory state %v (a cold start has a pid of its own)", got, before)
	}
	checkIdleClass(t, p, cl.ID, "mem", true)
	// Apart from here on.
	getJSON(t, cbase+"/work?n=10")
	getJSON(t, cbase+"/work?n=10")
	getJSON(t, base+"/work?n=10")
	c, o := getJSON(t, cbase+"/counter")["counter"].(float64), getJSON(t, base+"/counter")["counter"].(float64)
	if n := before["counter"].(float64); c != n+2 || o != n+1 {
		t.Errorf("after 2 calls to the clone and 1 to the original: clone %v, original %v; want %v and %v", c, o, n+2, n+1)
	}
	// The clone's state directory is the overlay on the snapshot taken
	// with the memory: its writes stay there.
	put(t, cbase+"/file/note", "written by the clone")
	if code, body := getBody(t, cbase+"/file/note"); code != 200 || body != "written by the clone" {
		t.Errorf("clone reads its own write: %d %q", code, body)
	}
	if code, _ := getBody(t, base+"/file/note"); code != 404 {
		t.Errorf("original sees the clone's file: status %d, want 404", code)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "counter")); string(b) != fmt.Sprint(o) {
		t.Errorf("original's counter file = %q, want %v (the clone's counts stay in its overlay)", b, o)
	}
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
	}
	getJSON(t, base+"/counter") // the original is unharmed
}

// TestCloseStopsClone: Close, called while a clone is being made, makes the
// Clone fail at its next step (here, rather than wait for the clone to
// listen) and returns once the Clone has removed what it had made; Clone
// fails once Close has begun.
func TestCloseStopsClone(t *testing.T) {
	p := newPlatform(t)
	state := t.TempDir()
	launchServer(t, p, serverOpts{id: "busy", stateDir: state})

	closeDone := make(chan error, 1)
	var cid string
	var hookErr error
	testHookCloneStarted = func(in *inst) {
		testHookCloneStarted = nil // the Clone below is not to run this
		cid = in.ID
		go func() { closeDone <- p.Close() }()
		for closed := false; !closed; time.Sleep(5 * time.Millisecond) {
			p.mu.Lock()
			closed = p.closed
			p.mu.Unlock()
		}
		if _, err := p.Clone(context.Background(), "busy", "sandbox", justrunit.CloneOptions{}); err == nil || !strings.Contains(err.Error(), "platform closed") {
			hookErr = fmt.Errorf("Clone while closing: %v, want platform closed", err)
			return
		}
		select {
		case err := <-closeDone:
			hookErr = fmt.Errorf("Close returned (%v) while a clone was being made", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Cleanup(func() { testHookCloneStarted = nil })

	c, err := p.Clone(context.Background(), "busy", "sandbox", justrunit.CloneOptions{})
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	if err == nil || !strings.Contains(err.Error(), "destroyed while starting") {
		t.Errorf("Clone() during Close = %v, %v; want destroyed while starting", c, err)
	}
	select {
	case err := <-closeDone:
		if err != nil {
			t.Fatalf("Close error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return after the Clone")
	}
	if _, err := p.get(cid); err == nil {
		t.Errorf("clone %s outlived Close", cid)
	}
}

// TestCloneWorkingDirInStateDir: a cold clone of an instance that runs in
// its state directory and opens its files by relative paths works on its
// snapshot, not on the original's files: whether the instance's Dir names
// the state directory, or is relative (".") or empty while the platform's
// working directory is the state directory.
func TestCloneWorkingDirInStateDir(t *testing.T) {
	for _, c := range []struct {
		name  string
		dir   string // "STATE" is the state directory
		chdir bool   // into the state directory
	}{
		{"absolute", "STATE", false},
		{"relative", ".", true},
		{"empty", "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPlatform(t, coldClones)
			bin := testServer(t) // built from the module's directory
			state := t.TempDir()
			if err := os.WriteFile(filepath.Join(state, "counter"), []byte("41"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := c.dir
			if dir == "STATE" {
				dir = state
			}
			if c.chdir {
				t.Chdir(state)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "rel", Host: "pm1", Command: []string{bin, "-addr", addr, "-state", "."},
				Dir: dir, StateDir: state, Addr: addr})
			if err != nil {
				t.Fatalf("Launch() error: %v", err)
			}
			t.Cleanup(func() { _ = p.Destroy(context.Background(), "rel") })
			waitHTTP(t, "http://"+addr+"/health", 10*time.Second)
			cl, err := p.Clone(ctx, "rel", "sandbox", justrunit.CloneOptions{})
			if err != nil {
				t.Fatalf("Clone() error: %v", err)
			}
			cbase := "http://" + cl.Endpoint
			if m := getJSON(t, cbase+"/work?n=1"); m["counter"] != float64(42) {
				t.Errorf("clone counter after one request = %v, want 42", m["counter"])
			}
			put(t, cbase+"/file/note", "written by the clone")
			if b, _ := os.ReadFile(filepath.Join(state, "counter")); string(b) != "41" {
				t.Errorf("original's counter file = %q after the clone worked, want 41", b)
			}
			if _, err := os.Stat(filepath.Join(state, "note")); err == nil {
				t.Errorf("the clone's file appeared in the original's state directory")
			}
			if info, _ := p.Info(cl.ID); info.Storage == StorageOverlay {
				upper := filepath.Join(p.cfg.StateDir, "clones", cl.ID, "upper", "note")
				if b, err := os.ReadFile(upper); err != nil || string(b) != "written by the clone" {
					t.Errorf("clone's upper layer has note = %q, %v; want the clone's write", b, err)
				}
			}
		})
	}
}

// TestCloneSymlinkedStateDir: a state directory named by a symlink is
// snapshotted as the directory it leads to, on either storage: the clone's
// writes never reach the original's files.
func TestCloneSymlinkedStateDir(t *testing.T) {
	for _, overlay := range []bool{false, true} {
		t.Run(fmt.Sprintf("overlay=%v", overlay), func(t *testing.T) {
			p := newPlatform(t)
			if overlay && !p.overlayOK {
				t.Skip("overlayfs cannot be mounted here")
			}
			p.overlayOK = overlay
			target := t.TempDir()
			if err := os.WriteFile(filepath.Join(target, "counter"), []byte("41"), 0o644); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(t.TempDir(), "state")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			launchServer(t, p, serverOpts{id: "db", stateDir: link})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cl, err := p.Clone(ctx, "db", "sandbox", justrunit.CloneOptions{})
			if err != nil {
				t.Fatalf("Clone() error: %v", err)
			}
			lower := filepath.Join(p.cfg.StateDir, "clones", cl.ID, "lower")
			if fi, err := os.Lstat(lower); err != nil {
				t.Error(err)
			} else if !fi.IsDir() {
				t.Errorf("snapshot %s is of type %v, want a directory", lower, fi.Mode().Type())
			}
			cbase := "http://" + cl.Endpoint
			if m := getJSON(t, cbase+"/work?n=1"); m["counter"] != float64(42) {
				t.Errorf("clone counter after one request = %v, want 42", m["counter"])
			}
			put(t, cbase+"/file/x", "clone")
			if b, _ := os.ReadFile(filepath.Join(target, "counter")); string(b) != "41" {
				t.Errorf("original's counter file = %q after the clone worked, want 41", b)
			}
			if _, err := os.Stat(filepath.Join(target, "x")); err == nil {
				t.Errorf("the clone's file appeared in the original's state directory")
			}
		})
	}
}

// TestCloneIDTaken: a clone's ID is never an existing instance's, even one
// launched under the name the clone would get (c1-web).
func TestCloneIDTaken(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "web", host: "pm1"})
	taken := launchServer(t, p, serverOpts{id: "c1-web", host: "pm2"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	if cl.ID == "c1-web" {
		t.Errorf("clone ID = %s, the ID of an on-line instance", cl.ID)
	}
	is, err := p.Instances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, in := range is {
		if in.ID == "c1-web" {
			found = true
			if in.Origin != "" || in.Host != "pm2" {
				t.Errorf("instance c1-web = %+v, want the on-line one on pm2", in)
			}
		}
	}
	if !found {
		t.Errorf("Instances() = %v, want the on-line c1-web among them", is)
	}
	getJSON(t, "http://"+taken.Addr+"/counter") // the on-line c1-web is unharmed
	_, err = p.Launch(ctx, justrunit.InstanceSpec{ID: cl.ID, Host: "pm1", Command: []string{testServer(t)}})
	if !errors.Is(err, justrunit.ErrExists) {
		t.Errorf("Launch(%s), the clone's ID = %v, want ErrExists", cl.ID, err)
	}
}

// TestCloneWhileLaunching: an instance whose Launch is under way is not
// cloned yet (it has no cgroup to freeze), and reading it meanwhile is safe
// (go test -race).
func TestCloneWhileLaunching(t *testing.T) {
	p := newPlatform(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cloneErr error
	stop := make(chan struct{})
	var readers sync.WaitGroup
	testHookStarting = func(in *inst) {
		if in.ID != "young" {
			return
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Microsecond):
				}
				_, _ = p.Usage(ctx, "young")
				_, _ = p.Instances(ctx)
			}
		}()
		_, cloneErr = p.Clone(ctx, "young", "sandbox", justrunit.CloneOptions{})
	}
	t.Cleanup(func() { testHookStarting = nil })
	launchServer(t, p, serverOpts{id: "young", stateDir: t.TempDir()})
	testHookStarting = nil
	close(stop)
	readers.Wait()
	if cloneErr == nil || !strings.Contains(cloneErr.Error(), "still starting") {
		t.Errorf("Clone() while its original launches = %v, want an error saying it is still starting", cloneErr)
	}
}

// TestDestroyWhileCloning: Destroy of a clone whose Clone is under way
// returns once the Clone has failed and removed everything it had made.
func TestDestroyWhileCloning(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "orig", stateDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	destroyed := make(chan error, 1)
	var cid string
	var early bool
	testHookStarting = func(in *inst) {
		if in.Origin == "" {
			return
		}
		cid = in.ID // its network and snapshot are made; its process is next
		go func() { destroyed <- p.Destroy(ctx, in.ID) }()
		select {
		case err := <-destroyed:
			early = true
			destroyed <- err
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Cleanup(func() { testHookStarting = nil })
	cl, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{})
	testHookStarting = nil
	if early {
		t.Errorf("Destroy(%s) returned while its Clone was under way", cid)
	}
	if err == nil {
		t.Errorf("Clone() = %s, want an error: it was destroyed while starting", cl.ID)
	} else if !strings.Contains(err.Error(), "destroyed while starting") {
		t.Errorf("Clone() error: %v, want destroyed while starting", err)
	}
	if err := <-destroyed; err != nil {
		t.Errorf("Destroy(%s) error: %v", cid, err)
	}
	if err := p.Destroy(ctx, cid); err != nil {
		t.Errorf("second Destroy(%s) = %v, want nil", cid, err)
	}
	r, err := Leftovers(p.Scope(), p.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Netns)+len(r.Links)+len(r.Tables)+len(r.Dirs)+len(r.Mounts) != 0 {
		t.Errorf("a clone destroyed while starting left %+v", r)
	}
	for _, g := range r.Cgroups {
		if strings.Contains(g, cid) {
			t.Errorf("a clone destroyed while starting left cgroup %s", g)
		}
	}
	if is, _ := p.Instances(ctx); len(is) != 1 {
		t.Errorf("Instances() = %v, want only the original", is)
	}
}

// TestCloneCancelledLeavesOriginal: a Clone whose context has ended never
// freezes the on-line instance (nor copies its state directory on), and
// fails with the context's error.
func TestCloneCancelledLeavesOriginal(t *testing.T) {
	p := newPlatform(t)
	launchServer(t, p, serverOpts{id: "busy", stateDir: t.TempDir()})
	var froze atomic.Bool
	testHookFreezing = func(string) { froze.Store(true) }
	t.Cleanup(func() { testHookFreezing = nil })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cl, err := p.Clone(ctx, "busy", "sandbox", justrunit.CloneOptions{})
	if err == nil {
		t.Fatalf("Clone() with a cancelled context = %s, want an error", cl.ID)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Clone() with a cancelled context: %v, want context.Canceled", err)
	}
	if froze.Load() {
		t.Error("Clone() with a cancelled context froze the on-line instance")
	}
	if is, _ := p.Instances(context.Background()); len(is) != 1 {
		t.Errorf("Instances() = %v, want only the original", is)
	}
}

// TestCloneKeepsOwners: the clone of a service that runs as another user
// than root (here nobody, by setpriv) can read and write its state
// directory as its original does: the snapshot keeps owners and modes, and
// the overlay's root is the state directory's.
func TestCloneKeepsOwners(t *testing.T) {
	for _, overlay := range []bool{true, false} {
		t.Run(fmt.Sprintf("overlay=%v", overlay), func(t *testing.T) {
			p := newPlatform(t, coldClones)
			if !overlay {
				p.overlayOK = false
			} else if !p.overlayOK {
				t.Skip("no overlayfs here")
			}
			// The server drops root for nobody (-uid), as PostgreSQL
			// does; nobody reaches its state directory.
			state := t.TempDir()
			if err := os.Chmod(filepath.Dir(state), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(state, "counter"), []byte("41"), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{state, filepath.Join(state, "counter")} {
				chown(t, f, 65534, 65534)
			}
			if err := os.Chmod(state, 0o700); err != nil {
				t.Fatal(err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "nobody", Host: "pm1", StateDir: state, Addr: addr,
				Command: []string{testServer(t), "-uid", "65534", "-addr", addr, "-state", state}})
			if err != nil {
				t.Fatalf("Launch() error: %v", err)
			}
			t.Cleanup(func() { _ = p.Destroy(context.Background(), "nobody") })
			waitHTTP(t, "http://"+addr+"/health", 10*time.Second)
			if m := getJSON(t, "http://"+addr+"/work?n=1"); m["counter"] != float64(42) {
				t.Fatalf("original's counter = %v, want 42", m["counter"])
			}
			cl, err := p.Clone(ctx, "nobody", "sandbox", justrunit.CloneOptions{})
			if err != nil {
				t.Fatalf("Clone() error: %v", err)
			}
			cbase := "http://" + cl.Endpoint
			code, body := getBody(t, cbase+"/work?n=1")
			if code != 200 || !strings.Contains(body, `"counter":43`) {
				t.Errorf("clone's /work = %d %s, want its counter at 43", code, body)
			}
			req, _ := http.NewRequest(http.MethodPut, cbase+"/file/note", strings.NewReader("the clone's"))
			if resp, err := client.Do(req); err != nil {
				t.Errorf("PUT clone's /file/note: %v", err)
			} else {
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != 204 && resp.StatusCode != 201 {
					t.Errorf("PUT clone's /file/note: %s, want it stored", resp.Status)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(state, "counter")); string(b) != "42" {
				t.Errorf("original's counter file = %q after the clone worked, want 42", b)
			}
		})
	}
}

// TestDestroyWhileCloningLeavesSome: when a Clone destroyed while it starts
// cannot remove all it made, the Destroy says so, the clone stays listed
// (failed), and a later Destroy removes it.
func TestDestroyWhileCloningLeavesSome(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "orig", stateDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cid, busy string
	destroyed := make(chan error, 1)
	testHookStarting = func(in *inst) {
		if in.Origin == "" {
			return
		}
		// A mount in the clone's directory keeps it from being removed.
		cid, busy = in.ID, filepath.Join(in.clone.Dir, "busy")
		if err := os.Mkdir(busy, 0o755); err != nil {
			t.Error(err)
		}
		if err := unix.Mount("tmpfs", busy, "tmpfs", 0, ""); err != nil {
			t.Errorf("mount tmpfs on %s: %v", busy, err)
		}
		go func() { destroyed <- p.Destroy(ctx, in.ID) }()
		time.Sleep(200 * time.Millisecond)
	}
	unmount := func() {
		if busy != "" {
			_ = unix.Unmount(busy, unix.MNT_DETACH)
		}
	}
	t.Cleanup(func() { testHookStarting = nil; unmount() })
	_, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{})
	testHookStarting = nil
	if err == nil || !strings.Contains(err.Error(), "not all removed") {
		t.Errorf("Clone() error: %v, want destroyed while starting, and not all removed", err)
	}
	if err := <-destroyed; err == nil {
		t.Errorf("Destroy(%s) = nil while its clone directory could not be removed", cid)
	}
	is, _ := p.Instances(ctx)
	if len(is) != 2 || is[0].ID != cid || is[0].State != "failed" {
		t.Errorf("Instances() = %v, want %s failed and the original", is, cid)
	}
	if err := p.Destroy(ctx, cid); err == nil {
		t.Errorf("second Destroy(%s) = nil, its directory still mounted on", cid)
	}
	unmount()
	if err := p.Destroy(ctx, cid); err != nil {
		t.Errorf("Destroy(%s) once it can be removed: %v", cid, err)
	}
	if _, err := os.Stat(filepath.Join(p.cfg.StateDir, "clones", cid)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("clone directory of %s after its Destroy: %v, want it gone", cid, err)
	}
	if err := p.Destroy(ctx, cid); err != nil {
		t.Errorf("Destroy(%s) once destroyed = %v, want nil", cid, err)
	}
}

// TestDestroyGivenUpWhileCloning: a Destroy whose ctx ends while the clone
// starts leaves it destroyed once its Clone has removed it: trying again
// returns nil, not ErrNotFound.
func TestDestroyGivenUpWhileCloning(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "orig"})
	var cid string
	var derr error
	testHookStarting = func(in *inst) {
		if in.Origin == "" {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		cid, derr = in.ID, p.Destroy(ctx, in.ID)
	}
	t.Cleanup(func() { testHookStarting = nil })
	_, err := p.Clone(context.Background(), "orig", "sandbox", justrunit.CloneOptions{})
	testHookStarting = nil
	if !errors.Is(derr, context.Canceled) {
		t.Errorf("Destroy(%s) with a done ctx while it starts = %v, want context.Canceled", cid, derr)
	}
	if err == nil || !strings.Contains(err.Error(), "destroyed while starting") {
		t.Errorf("Clone() error: %v, want destroyed while starting", err)
	}
	if err := p.Destroy(context.Background(), cid); err != nil {
		t.Errorf("Destroy(%s) again = %v, want nil", cid, err)
	}
}

// TestCloneContextDone: a Clone whose ctx has ended makes nothing (no
// network, no answer listeners) and, when it ends while the clone's
// network is made, starts no process, even for an original without a
// state directory to snapshot.
func TestCloneContextDone(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "nostate"})
	for _, c := range []struct {
		name     string
		inside   bool
		answered bool // ctx ends as its answer listener is served
	}{
		{"nat", false, false},
		{"inside", true, false},
		{"ended while its network is made", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if !c.answered {
				cancel()
			}
			var started, answered bool
			testHookStarting = func(in *inst) { started = started || in.Origin != "" }
			t.Cleanup(func() { testHookStarting = nil })
			opts := justrunit.CloneOptions{InNetwork: c.inside}
			if c.inside {
				opts.Answer = map[string]func(net.Listener) error{"10.9.9.9:5432": func(ln net.Listener) error {
					answered = true
					ln.Close()
					cancel()
					return nil
				}}
			}
			_, err := p.Clone(ctx, "nostate", "sandbox", opts)
			testHookStarting = nil
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Clone() with its ctx ended = %v, want context.Canceled", err)
			}
			if answered != c.answered {
				t.Errorf("its answer listener served: %v, want %v", answered, c.answered)
			}
			if started {
				t.Errorf("Clone() with its ctx ended started the clone's process")
			}
		})
	}
}

// TestTeardownFailedShowsFailed: a clone whose teardown failed (a mount in
// its directory keeps it) is listed failed, not exited, though its process
// was killed and reaped: after its Clone was destroyed while it waited for
// the clone to listen, and after a Destroy of the whole clone. What could
// not be removed is what SetAllocation, Migrate and Clone say when they
// refuse it, and a Destroy once the mount is gone removes it.
func TestTeardownFailedShowsFailed(t *testing.T) {
	for _, whole := range []bool{false, true} {
		t.Run(fmt.Sprintf("whole=%v", whole), func(t *testing.T) {
			p := newPlatform(t, coldClones)
			launchServer(t, p, serverOpts{id: "orig", stateDir: t.TempDir()})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var busy string
			unmount := func() {
				if busy != "" {
					_ = unix.Unmount(busy, unix.MNT_DETACH)
				}
			}
			t.Cleanup(unmount)
			keep := func(in *inst) {
				busy = filepath.Join(in.clone.Dir, "busy")
				if err := os.Mkdir(busy, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mount("tmpfs", busy, "tmpfs", 0, ""); err != nil {
					t.Fatalf("mount tmpfs on %s: %v", busy, err)
				}
			}
			var cid string
			var derr error
			if whole {
				cl, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{})
				if err != nil {
					t.Fatalf("Clone() error: %v", err)
				}
				cid = cl.ID
				in, err := p.get(cid)
				if err != nil {
					t.Fatal(err)
				}
				keep(in)
				derr = p.Destroy(ctx, cid)
			} else {
				destroyed := make(chan error, 1)
				testHookCloneStarted = func(in *inst) {
					cid = in.ID
					keep(in)
					go func() { destroyed <- p.Destroy(ctx, in.ID) }()
					// Until the Destroy is seen, so that the Clone stops
					// waiting for the clone to listen and removes it.
					deadline := time.Now().Add(10 * time.Second)
					for {
						p.mu.Lock()
						d := in.destroying
						p.mu.Unlock()
						if d || time.Now().After(deadline) {
							return
						}
						time.Sleep(time.Millisecond)
					}
				}
				t.Cleanup(func() { testHookCloneStarted = nil })
				_, err := p.Clone(ctx, "orig", "sandbox", justrunit.CloneOptions{})
				testHookCloneStarted = nil
				if err == nil || !strings.Contains(err.Error(), "not all removed") {
					t.Errorf("Clone() error: %v, want destroyed while starting, and not all removed", err)
				}
				derr = waitFor(t, destroyed, "Destroy("+cid+")")
			}
			if derr == nil {
				t.Fatalf("Destroy(%s) = nil while its clone directory could not be removed", cid)
			}
			in, err := p.get(cid)
			if err != nil {
				t.Fatal(err)
			}
			if !in.exited() {
				t.Fatalf("the process of %s is not reaped after its teardown", cid)
			}
			is, _ := p.Instances(ctx)
			if len(is) != 2 || is[0].ID != cid || is[0].State != "failed" {
				t.Errorf("Instances() = %v, want %s failed and the original", is, cid)
			}
			for op, err := range map[string]error{
				"SetAllocation": p.SetAllocation(ctx, cid, justrunit.Allocation{CPU: 10}),
				"Migrate":       p.Migrate(ctx, cid, "sandbox"),
			} {
				if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "resource busy") {
					t.Errorf("%s(%s) after its teardown failed = %v, want ErrInvalid with what could not be removed", op, cid, err)
				}
			}
			unmount()
			if err := p.Destroy(ctx, cid); err != nil {
				t.Errorf("Destroy(%s) once it can be removed: %v", cid, err)
			}
			if is, _ := p.Instances(ctx); len(is) != 1 {
				t.Errorf("Instances() = %v, want only the original", is)
			}
		})
	}
}

// TestCloneIDSkipsLeftovers: a clone's ID is none that a crashed run's
// leftovers of this scope carry, whichever they are (network namespace,
// nftables table, clone directory, veth), and the clone leaves them alone
// for gc to remove.
func TestCloneIDSkipsLeftovers(t *testing.T) {
	p := newPlatform(t, coldClones)
	launchServer(t, p, serverOpts{id: "web"})
	ns, err := newNamedNetns(netnsName(p.scope, "c1-web"))
	if err != nil {
		t.Fatalf("leftover namespace: %v", err)
	}
	ns.Close()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: cloneTable(p.scope, "c2-web")})
	if err := c.Flush(); err != nil {
		t.Fatalf("leftover table: %v", err)
	}
	dir := filepath.Join(p.cfg.StateDir, "clones", "c3-web")
	if err := os.MkdirAll(filepath.Join(dir, "upper"), 0o700); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: linkPrefix + "test0h"}, PeerName: linkPrefix + "test0c"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("leftover veth: %v", err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(veth.Name); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	if err := netlink.LinkSetAlias(veth, linkAlias(p.scope, "c4-web")); err != nil {
		t.Fatalf("alias of the leftover veth: %v", err)
	}
	before, err := Leftovers(p.Scope(), p.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Netns) != 1 || len(before.Tables) != 1 || len(before.Dirs) != 1 || len(before.Links) != 1 {
		t.Fatalf("leftovers made = %+v, want one of each", before)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone() beside leftovers of c1-web to c4-web: %v", err)
	}
	if cl.ID != "c5-web" {
		t.Errorf("clone ID = %s, want c5-web, the first that no leftover carries", cl.ID)
	}
	getJSON(t, "http://"+cl.Endpoint+"/counter")
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatalf("Destroy(%s) error: %v", cl.ID, err)
	}
	// Their cgroups are the scope's own, which the original's group is in.
	objects := func(r Report) string { return fmt.Sprint(r.Netns, r.Tables, r.Dirs, r.Links) }
	after, err := Leftovers(p.Scope(), p.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if objects(after) != objects(before) {
		t.Errorf("leftovers after the clone = %s, want them untouched: %s", objects(after), objects(before))
	}
	removed, err := p.Collect(ctx)
	if err != nil {
		t.Errorf("Collect() error: %v", err)
	}
	if objects(removed) != objects(before) {
		t.Errorf("Collect() removed %s, want the leftovers: %s", objects(removed), objects(before))
	}
}

// TestProbeOverlay: the probe mounts an overlay where it can, and says why
// where it cannot.
func TestProbeOverlay(t *testing.T) {
	needRoot(t)
	if err := probeOverlay(filepath.Join(t.TempDir(), "a,b:c")); err == nil || !strings.Contains(err.Error(), "a,b:c") {
		t.Errorf("probe under a missing directory: %v, want an error naming it", err)
	}
	dir := filepath.Join(t.TempDir(), "a,b:c")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := probeOverlay(dir); err != nil {
		t.Errorf("probe under %s: %v", dir, err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the probe left %v behind", left)
	}
}
