package cloneside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// TestMain lets this test binary be the clone side that the tests start
// (os.Executable() clone-side).
func TestMain(m *testing.M) {
	if os.Getenv("CLONESIDE_TEST_HANG") == "1" { // a hung clone side, for TestReapOrphans
		time.Sleep(time.Minute)
		os.Exit(3)
	}
	RunIfHelper()
	os.Exit(m.Run())
}

// waitFor polls cond until it holds, failing the test after 15 s with
// what cond last said.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 15s (last: %s)", what, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// site is a target's on-line side: the on-line instance behind a
// started in-proxy, and its next tier behind a started out-proxy.
type site struct {
	app, next *httptest.Server
	in        *httpproxy.InProxy
	inURL     string
	out       *httpproxy.OutProxy // nil without a next tier
	outURL    string
	inCfg     httpproxy.InConfig
	outCfg    *httpproxy.OutConfig
	client    *http.Client
}

func newSite(t *testing.T, withNext bool) *site {
	t.Helper()
	s := &site{client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}
	t.Cleanup(s.client.CloseIdleConnections)
	s.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "online "+r.URL.Path)
	}))
	t.Cleanup(s.app.Close)
	s.inCfg = httpproxy.InConfig{Online: mustURL(t, s.app.URL), CopyTimeout: 5 * time.Second}
	in, err := httpproxy.NewInProxy(s.inCfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := in.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close() })
	s.in, s.inURL = in, "http://"+a.String()
	if !withNext {
		return s
	}
	s.next = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "next "+r.URL.RequestURI())
	}))
	t.Cleanup(s.next.Close)
	s.outCfg = &httpproxy.OutConfig{Upstream: mustURL(t, s.next.URL), MatchWait: 5 * time.Second}
	out, err := httpproxy.NewOutProxy(*s.outCfg)
	if err != nil {
		t.Fatal(err)
	}
	on, _, err := out.Start(context.Background(), "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = out.Close() })
	s.out, s.outURL = out, "http://"+on.String()
	return s
}

// config is the clone side's configuration for s.
func (s *site) config(name string, log *slog.Logger) Config {
	return Config{In: s.inCfg, Out: s.outCfg, Name: name, Logger: log}
}

// start starts a clone side for s, closed at the test's end.
func (s *site) start(t *testing.T, cfg Config) *Side {
	t.Helper()
	side, err := Start(context.Background(), cfg, s.in, s.out)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = side.Close() })
	return side
}

// get sends a GET to base+path and returns the body.
func (s *site) get(t *testing.T, base, path string) string {
	t.Helper()
	resp, err := s.client.Get(base + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", base, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s: %v", base, path, err)
	}
	return string(b)
}

// cloneServer is a clone: it counts the requests that reach it.
type cloneServer struct {
	*httptest.Server
	n atomic.Int64
}

func newClone(t *testing.T) *cloneServer {
	t.Helper()
	c := &cloneServer{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.n.Add(1)
		_, _ = io.WriteString(w, "clone "+r.URL.Path)
	}))
	t.Cleanup(c.Close)
	return c
}

// syncBuffer is a log sink the helper's forwarded lines are written to
// from another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFeed attaches two clones to a clone side, one it dials itself and
// one the site dials for it (the dial broker), and checks that both get
// a copy of every on-line request and that their statistics count them.
func TestFeed(t *testing.T) {
	s := newSite(t, true)
	logs := &syncBuffer{}
	side := s.start(t, s.config("feed", slog.New(slog.NewJSONHandler(logs, nil))))
	direct, brokered := newClone(t), newClone(t)
	ctx := context.Background()
	if err := side.AddCloneDial(ctx, "direct", mustURL(t, direct.URL), nil, ""); err != nil {
		t.Fatalf("AddCloneDial(direct): %v", err)
	}
	var dials atomic.Int64
	dial := func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", brokered.Listener.Addr().String())
	}
	// The clone's own address, reachable only through dial.
	inside := mustURL(t, "http://10.255.255.1:8080")
	if err := side.AddCloneDial(ctx, "brokered", inside, dial, "test network"); err != nil {
		t.Fatalf("AddCloneDial(brokered): %v", err)
	}

	const n = 5
	for i := range n {
		if got, want := s.get(t, s.inURL, fmt.Sprintf("/item/%d", i)), fmt.Sprintf("online /item/%d", i); got != want {
			t.Fatalf("on-line answer = %q, want %q", got, want)
		}
	}
	for _, c := range []struct {
		name  string
		clone *cloneServer
	}{{"direct", direct}, {"brokered", brokered}} {
		waitFor(t, c.name+" gets every copy", func() (bool, string) {
			st, err := side.CloneStats(c.name, false)
			if err != nil {
				return false, err.Error()
			}
			return c.clone.n.Load() == n && st.Sent == n && st.Response.Count == n,
				fmt.Sprintf("clone saw %d, stats sent %d answered %d", c.clone.n.Load(), st.Sent, st.Response.Count)
		})
	}
	if dials.Load() == 0 {
		t.Errorf("the brokered clone's dial was never called")
	}
	st, err := side.CloneStats("brokered", false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Target, "test network") {
		t.Errorf("CloneStats(brokered).Target = %q, want it to say where it was dialled", st.Target)
	}

	// Calls under way at once are each answered with their own result.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		name := []string{"direct", "brokered"}[i%2]
		wg.Go(func() {
			st, err := side.CloneStats(name, false)
			if err == nil && st.Name != name {
				err = fmt.Errorf("CloneStats(%s) answered for %s", name, st.Name)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if err := side.AddCloneDial(ctx, "direct", mustURL(t, direct.URL), nil, ""); !errors.Is(err, justrunit.ErrExists) {
		t.Errorf("AddCloneDial(direct) again = %v, want ErrExists", err)
	}
	err = side.AddCloneDial(ctx, "bad", mustURL(t, "ftp://127.0.0.1:21"), nil, "")
	var fe *justrunit.FieldError
	if !errors.Is(err, justrunit.ErrInvalid) || !errors.As(err, &fe) || fe.Field != "clone.url" {
		t.Errorf("AddCloneDial(ftp URL) = %v, want a field error on clone.url", err)
	}

	st, err = side.RemoveClone("direct")
	if err != nil || st.Sent != n {
		t.Fatalf("RemoveClone(direct) = %+v, %v; want %d sent", st, err, n)
	}
	if _, err := side.CloneStats("direct", false); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("CloneStats(direct) after removal = %v, want ErrNotFound", err)
	}
	if _, err := side.RemoveClone("direct"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("RemoveClone(direct) again = %v, want ErrNotFound", err)
	}
	s.get(t, s.inURL, "/after")
	waitFor(t, "the remaining clone gets the next copy", func() (bool, string) {
		return brokered.n.Load() == n+1, fmt.Sprintf("brokered saw %d", brokered.n.Load())
	})
	if got := direct.n.Load(); got != n {
		t.Errorf("the removed clone saw %d requests, want %d", got, n)
	}
	waitFor(t, "the helper's logs reach the site's logger", func() (bool, string) {
		l := logs.String()
		return strings.Contains(l, `"msg":"clone attached"`) && strings.Contains(l, `"clone_side":"feed"`), l
	})
}

// TestReplay serves clones from the helper's out-proxy replica, on a
// listener handed over and on one the helper opens, and checks they are
// answered from what the site's out-proxy recorded.
func TestReplay(t *testing.T) {
	s := newSite(t, true)
	side := s.start(t, s.config("replay", nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnAddr := ln.Addr().String()
	if err := side.ServeCloneOn("on", ln); err != nil {
		_ = ln.Close()
		t.Fatalf("ServeCloneOn: %v", err)
	}
	addr, err := side.ServeClone(context.Background(), "own")
	if err != nil {
		t.Fatalf("ServeClone: %v", err)
	}
	for _, name := range []string{"on", "own"} {
		if err := side.Attach(name); err != nil {
			t.Fatalf("Attach(%s): %v", name, err)
		}
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := side.ServeCloneOn("on", ln2); !errors.Is(err, justrunit.ErrExists) {
		t.Errorf("ServeCloneOn(on) again = %v, want ErrExists", err)
	}
	if err := ln2.Close(); err != nil {
		t.Errorf("a listener ServeCloneOn refused was closed: %v", err)
	}

	// The on-line instance's calls, through the site's out-proxy.
	for _, p := range []string{"/item/1", "/item/2"} {
		if got, want := s.get(t, s.outURL, p), "next "+p; got != want {
			t.Fatalf("on-line call %s = %q, want %q", p, got, want)
		}
	}
	for _, c := range []struct{ name, addr string }{{"on", lnAddr}, {"own", addr}} {
		for _, p := range []string{"/item/1", "/item/2"} {
			if got, want := s.get(t, "http://"+c.addr, p), "next "+p; got != want {
				t.Errorf("clone %s's call %s = %q, want the recorded %q", c.name, p, got, want)
			}
		}
		st, err := side.ReplayStats(c.name, false)
		if err != nil || st.Matched != 2 || st.Unmatched != 0 {
			t.Errorf("ReplayStats(%s) = %+v, %v; want 2 matched", c.name, st, err)
		}
	}

	if err := side.StopClone("on"); err != nil {
		t.Fatalf("StopClone(on): %v", err)
	}
	if _, err := side.ReplayStats("on", false); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("ReplayStats(on) after StopClone = %v, want ErrNotFound", err)
	}
	for _, err := range []error{side.StopClone("on"), side.Attach("nobody")} {
		if !errors.Is(err, justrunit.ErrNotFound) {
			t.Errorf("StopClone/Attach of an unknown clone = %v, want ErrNotFound", err)
		}
	}
	waitFor(t, "the stopped clone's listener is closed", func() (bool, string) {
		c, err := net.DialTimeout("tcp", lnAddr, time.Second)
		if err == nil {
			_ = c.Close()
			return false, "it accepts"
		}
		return true, ""
	})
}

// TestNoNextTier checks a target without an out-proxy: the replay
// methods say so.
func TestNoNextTier(t *testing.T) {
	s := newSite(t, false)
	side := s.start(t, s.config("nonext", nil))
	if _, err := side.ServeClone(context.Background(), "c"); !errors.Is(err, justrunit.ErrUnsupported) || !strings.Contains(err.Error(), "no out-proxy") {
		t.Errorf("ServeClone = %v, want an error saying the target has no out-proxy", err)
	}
	if _, err := side.ReplayStats("c", false); !errors.Is(err, justrunit.ErrUnsupported) {
		t.Errorf("ReplayStats = %v, want ErrUnsupported", err)
	}
	if _, err := Start(context.Background(), s.config("nonext", nil), s.in, s.outOf(t)); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("Start with an out-proxy but no Out = %v, want ErrInvalid", err)
	}
}

// outOf returns an out-proxy that is never started.
func (s *site) outOf(t *testing.T) *httpproxy.OutProxy {
	out, err := httpproxy.NewOutProxy(httpproxy.OutConfig{Upstream: mustURL(t, "http://127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = out.Close() })
	return out
}

// gone reports whether process pid is gone (reaped).
func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

// openFDs returns this process's open descriptors, each with what it is.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := make(map[string]string)
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		fds[e.Name()] = l
	}
	return fds
}

// TestClose checks that Close leaves no process and no descriptor
// behind, and that the side refuses calls afterwards.
func TestClose(t *testing.T) {
	s := newSite(t, true)
	clone := newClone(t)
	use := func() *Side {
		side, err := Start(context.Background(), s.config("close", nil), s.in, s.out)
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		dial := func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", clone.Listener.Addr().String())
		}
		if err := side.AddCloneDial(context.Background(), "c", mustURL(t, "http://10.255.255.1:80"), dial, "elsewhere"); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := side.ServeCloneOn("c", ln); err != nil {
			t.Fatal(err)
		}
		before := clone.n.Load()
		s.get(t, s.inURL, "/x")
		waitFor(t, "the clone gets the copy", func() (bool, string) {
			return clone.n.Load() > before, ""
		})
		return side
	}
	// A first round opens what the runtime and the servers open once.
	if err := use().Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.client.CloseIdleConnections()
	fds := openFDs(t)

	side := use()
	pid := side.Pid()
	if err := side.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !gone(pid) {
		t.Errorf("the helper (pid %d) is still there after Close", pid)
	}
	if err := side.Close(); err != nil {
		t.Errorf("Close again = %v, want nil", err)
	}
	if _, err := side.CloneStats("c", false); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("CloneStats after Close = %v, want an error saying it is closed", err)
	}
	s.client.CloseIdleConnections()
	waitFor(t, "no descriptor left open", func() (bool, string) {
		var extra []string
		for fd, what := range openFDs(t) {
			if _, ok := fds[fd]; !ok {
				extra = append(extra, fd+" → "+what)
			}
		}
		return len(extra) == 0, strings.Join(extra, ", ")
	})
}

// TestHelperKilled kills the helper under a side: calls fail at once
// saying so, rather than hang, and Close still cleans up.
func TestHelperKilled(t *testing.T) {
	s := newSite(t, true)
	clone := newClone(t)
	side := s.start(t, s.config("killed", nil))
	if err := side.AddCloneDial(context.Background(), "c", mustURL(t, clone.URL), nil, ""); err != nil {
		t.Fatal(err)
	}
	pid := side.Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := side.CloneStats("c", false)
	if err == nil || errors.Is(err, justrunit.ErrNotFound) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("CloneStats after the helper was killed = %v, want an error saying it was killed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("CloneStats took %v to fail", d)
	}
	// The on-line path carries on.
	if got := s.get(t, s.inURL, "/still"); got != "online /still" {
		t.Errorf("on-line answer with the helper dead = %q", got)
	}
	if err := side.AddCloneDial(context.Background(), "d", mustURL(t, clone.URL), nil, ""); err == nil {
		t.Errorf("AddCloneDial after the helper was killed succeeded")
	}
	if err := side.Close(); err == nil || !strings.Contains(err.Error(), "before Close") || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Close = %v, want an error saying the helper had exited", err)
	}
	if !gone(pid) {
		t.Errorf("the helper (pid %d) was not reaped", pid)
	}
}

// TestCPUs pins the helper to one CPU: every one of its threads must run
// there, and the site's threads keep theirs.
func TestCPUs(t *testing.T) {
	allowed, err := prio.Affinity(0)
	if err != nil {
		t.Fatal(err)
	}
	ours := threadCPUs(t, "self")
	s := newSite(t, true)
	cpu := allowed[len(allowed)-1]
	cfg := s.config("pinned", nil)
	cfg.CPUs = []int{cpu}
	side := s.start(t, cfg)
	// The helper's runtime has started its threads by the time it is
	// ready; a clone makes it do some work, and maybe start more.
	clone := newClone(t)
	if err := side.AddCloneDial(context.Background(), "c", mustURL(t, clone.URL), nil, ""); err != nil {
		t.Fatal(err)
	}
	s.get(t, s.inURL, "/x")
	waitFor(t, "the clone gets the copy", func() (bool, string) { return clone.n.Load() == 1, "" })
	got := threadCPUs(t, strconv.Itoa(side.Pid()))
	if len(got) == 0 {
		t.Fatal("no thread of the helper found")
	}
	for tid, list := range got {
		if list != strconv.Itoa(cpu) {
			t.Errorf("helper thread %s runs on CPUs %q, want %d", tid, list, cpu)
		}
	}
	for tid, list := range threadCPUs(t, "self") {
		if want, ok := ours[tid]; ok && list != want {
			t.Errorf("site thread %s runs on CPUs %q after Start, want %q as before", tid, list, want)
		}
	}

	cfg.CPUs = []int{cpu, 1023}
	_, err = Start(context.Background(), cfg, s.in, s.out)
	if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "1023") {
		t.Errorf("Start on CPU 1023 = %v, want an error naming it", err)
	}
}

// TestCPUsOffTheSite starts a helper on a CPU the site's process does not
// run on, as a site does whose proxies run on the on-line hosts' CPUs and
// whose clone side runs on the sandbox's.
func TestCPUsOffTheSite(t *testing.T) {
	allowed, err := prio.Affinity(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(allowed) < 2 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs 2 CPUs, has %v; CI's machine has 2", allowed)
		}
		t.Skipf("needs 2 CPUs, has %v", allowed)
	}
	if err := prio.SetAffinity(allowed[:1]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := prio.SetAffinity(allowed); err != nil {
			t.Errorf("give the test its CPUs back: %v", err)
		}
	})
	s := newSite(t, false)
	cfg := s.config("off-the-site", nil)
	cfg.CPUs = allowed[1:]
	side := s.start(t, cfg)
	want := cpuList(allowed[1:])
	for tid, list := range threadCPUs(t, strconv.Itoa(side.Pid())) {
		if list != want {
			t.Errorf("helper thread %s runs on CPUs %q, want %s", tid, list, want)
		}
	}
}

// threadCPUs returns, per thread of process pid, its Cpus_allowed_list.
func threadCPUs(t *testing.T, pid string) map[string]string {
	t.Helper()
	dir := filepath.Join("/proc", pid, "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				out[e.Name()] = strings.TrimSpace(v)
			}
		}
	}
	return out
}

// TestStartFails checks that a helper that cannot start is reported with
// what it said, and one that hangs within the caller's deadline.
func TestStartFails(t *testing.T) {
	s := newSite(t, false)
	cfg := s.config("fails", nil)
	cfg.Command = []string{"/bin/sh", "-c", "echo boom >&2; exit 3", "sh"}
	_, err := Start(context.Background(), cfg, s.in, nil)
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Start of a failing helper = %v, want its exit status and stderr", err)
	}

	cfg.Command = []string{"/nonexistent/helper"}
	if _, err := Start(context.Background(), cfg, s.in, nil); err == nil || !strings.Contains(err.Error(), "/nonexistent/helper") {
		t.Errorf("Start of a missing program = %v, want an error naming it", err)
	}

	cfg.Command = []string{"/bin/sh", "-c", "exec sleep 60", "sh"}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Start(ctx, cfg, s.in, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start of a helper that never gets ready = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start took %v to give up", d)
	}

	cfg = s.config("invalid", nil)
	cfg.In.CloneLag = -time.Second
	_, err = Start(context.Background(), cfg, s.in, nil)
	var fe *justrunit.FieldError
	if !errors.Is(err, justrunit.ErrInvalid) || !errors.As(err, &fe) || fe.Field != "clone_lag" {
		t.Errorf("Start with a negative clone lag = %v, want the helper's field error on clone_lag", err)
	}
}

// TestWireErrors checks that errors keep their category across the wire.
func TestWireErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		is    error
		field string
	}{
		{"not found", fmt.Errorf("clone c: %w", justrunit.ErrNotFound), justrunit.ErrNotFound, ""},
		{"exists", fmt.Errorf("add clone c: %w", justrunit.ErrExists), justrunit.ErrExists, ""},
		{"field", fmt.Errorf("in-proxy: %w", justrunit.Invalid("clone_lag", -1, "must be positive")), justrunit.ErrInvalid, "clone_lag"},
		{"unsupported", errNoNextTier, justrunit.ErrUnsupported, ""},
		{"deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), context.DeadlineExceeded, ""},
		{"plain", errors.New("something else"), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rep reply
			if err := jsonRoundTrip(reply{ID: 7, Error: toWire(tc.err)}, &rep); err != nil {
				t.Fatal(err)
			}
			got := rep.Error.err()
			if got.Error() != tc.err.Error() {
				t.Errorf("message = %q, want %q", got, tc.err)
			}
			if tc.is != nil && !errors.Is(got, tc.is) {
				t.Errorf("errors.Is(%v, %v) = false", got, tc.is)
			}
			var fe *justrunit.FieldError
			if errors.As(got, &fe) != (tc.field != "") || (fe != nil && fe.Field != tc.field) {
				t.Errorf("field error = %v, want field %q", fe, tc.field)
			}
		})
	}
	if toWire(nil) != nil || (*wireError)(nil).err() != nil {
		t.Errorf("nil error does not travel as nil")
	}
}

// TestWireConfig checks that a configuration arrives as it left.
func TestWireConfig(t *testing.T) {
	inMasks, err := httpproxy.ParseMasks([]string{`ts=(\d+)`}, []string{"$.id"})
	if err != nil {
		t.Fatal(err)
	}
	outMasks, err := httpproxy.ParseMasks([]string{`sess=\w+`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Name: "w",
		In: httpproxy.InConfig{Online: mustURL(t, "http://10.0.0.1:80"), CloneLag: 150 * time.Millisecond, Compare: true,
			MaxCopyBody: 10, MaxInFlight: 11, MaxCloneBytes: 12, CopyTimeout: 3 * time.Second, MaxCompareBody: 13, Masks: inMasks},
		Out: &httpproxy.OutConfig{Upstream: mustURL(t, "http://10.0.0.2:5432"), Masks: outMasks, Window: 2 * time.Minute,
			MaxRecordBytes: 14, MaxBody: 15, MatchWait: -1, FallbackStatus: 504, PassThrough: []string{"GET"}, ReuseReads: true, StandIn: true},
	}
	w, err := newWireConfig(cfg, slog.LevelDebug)
	if err != nil {
		t.Fatal(err)
	}
	var back wireConfig
	if err := jsonRoundTrip(w, &back); err != nil {
		t.Fatal(err)
	}
	in, out, err := back.configs(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	masks := func(m httpproxy.Masks) string { r, j := maskSources(m); return fmt.Sprint(r, j) }
	in.Logger, out.Logger = nil, nil
	wantIn, wantOut := cfg.In, *cfg.Out
	if fmt.Sprintf("%+v", withoutMasks(in)) != fmt.Sprintf("%+v", withoutMasks(wantIn)) || masks(in.Masks) != masks(wantIn.Masks) {
		t.Errorf("in-proxy configuration = %+v, want %+v", in, wantIn)
	}
	gotOut := *out
	if masks(gotOut.Masks) != masks(wantOut.Masks) {
		t.Errorf("out-proxy masks = %s, want %s", masks(gotOut.Masks), masks(wantOut.Masks))
	}
	gotOut.Masks, wantOut.Masks = httpproxy.Masks{}, httpproxy.Masks{}
	if fmt.Sprintf("%+v", gotOut) != fmt.Sprintf("%+v", wantOut) {
		t.Errorf("out-proxy configuration = %+v, want %+v", gotOut, wantOut)
	}
	if back.LogLevel != slog.LevelDebug || back.Name != "w" {
		t.Errorf("name, log level = %q, %v; want w, DEBUG", back.Name, back.LogLevel)
	}
}

func withoutMasks(c httpproxy.InConfig) httpproxy.InConfig {
	c.Masks = httpproxy.Masks{}
	return c
}

// TestStderrLog checks that the helper's stderr reaches the site's log
// line by line, JSON records with their level and attributes.
func TestStderrLog(t *testing.T) {
	var buf syncBuffer
	l := &stderrLog{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), name: "s"}
	l.pid.Store(42)
	for _, p := range []string{`{"time":"x","level":"WARN","msg":"hel`, `lo","clone":"c1"}` + "\n" + "panic: boom\n", "no newline"} {
		if _, err := l.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	l.flush()
	out := buf.String()
	for _, want := range []string{
		`"level":"WARN","msg":"hello","clone_side":"s","clone_side_pid":42,"clone":"c1"`,
		`"msg":"clone side output","clone_side":"s","clone_side_pid":42,"line":"panic: boom"`,
		`"line":"no newline"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("forwarded log lacks %s:\n%s", want, out)
		}
	}
	if tail := l.Tail(); !strings.HasSuffix(tail, "panic: boom\nno newline") {
		t.Errorf("Tail() = %q", tail)
	}
}

// TestCPUList checks the CPU list format of errors.
func TestCPUList(t *testing.T) {
	for _, tc := range []struct {
		cpus []int
		want string
	}{{nil, ""}, {[]int{0}, "0"}, {[]int{0, 1, 2, 5, 7, 8}, "0-2,5,7-8"}} {
		if got := cpuList(tc.cpus); got != tc.want {
			t.Errorf("cpuList(%v) = %q, want %q", tc.cpus, got, tc.want)
		}
	}
}

// jsonRoundTrip encodes v and decodes it into out, as the wire does.
func jsonRoundTrip(v, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// TestCloseKillsStuckHelper checks Close's bound: a helper that ignores
// its control socket's end and SIGTERM is killed, and Close says so.
func TestCloseKillsStuckHelper(t *testing.T) {
	s := newSite(t, false)
	cfg := s.config("stuck", nil)
	// Says it is ready (one datagram on the control socket), then ignores
	// everything.
	cfg.Command = []string{"/bin/sh", "-c", `trap '' TERM; printf '{"id":0}' >&4; exec sleep 60`, "sh"}
	side, err := Start(context.Background(), cfg, s.in, nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	start := time.Now()
	err = side.Close()
	if d := time.Since(start); d < stopGrace || d > stopGrace+2*time.Second {
		t.Errorf("Close took %v, want about %v", d, stopGrace)
	}
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Close = %v, want an error saying the helper was killed", err)
	}
	if !gone(side.Pid()) {
		t.Errorf("the helper (pid %d) is still there", side.Pid())
	}
}
