package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
)

// TestCloneInNetwork: a clone made InNetwork is reached only through its
// Dial, over its own loopback; its calls to the next tier reach the
// listener handed to Answer, opened inside its network before it ran,
// and nothing else; it leaves nothing behind.
func TestCloneInNetwork(t *testing.T) {
	p := newPlatform(t, coldClones)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	next, nextHits := countingServer(t, "", "from the on-line next tier")
	forbidden, forbiddenHits := countingServer(t, "0.0.0.0:0", "forbidden")
	orig := launchServer(t, p, serverOpts{id: "web", next: next.URL})
	origPid := getJSON(t, "http://"+orig.Addr+"/counter")["pid"]

	var answered atomic.Int64
	var handed net.Listener
	answer := func(ln net.Listener) error {
		handed = ln
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			answered.Add(1)
			io.WriteString(w, "from the out-proxy")
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return nil
	}
	nextAddr := strings.TrimPrefix(next.URL, "http://")
	cl, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{Alloc: justrunit.Allocation{CPU: 50}, InNetwork: true,
		Answer: map[string]func(net.Listener) error{nextAddr: answer}})
	if err != nil {
		t.Fatalf("Clone() error: %v", err)
	}
	if cl.Endpoint != "" || cl.Dial == nil || !strings.Contains(cl.Network, "network namespace") || handed == nil {
		t.Fatalf("clone = endpoint %q, network %q, dial set %v, listener handed %v; want no endpoint, a network, a dial and a listener",
			cl.Endpoint, cl.Network, cl.Dial != nil, handed != nil)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return cl.Dial(ctx) }}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := hc.Get("http://" + orig.Addr + path)
		if err != nil {
			t.Fatalf("GET %s from the clone: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/counter"); code != 200 || strings.Contains(body, fmt.Sprintf(`"pid":%v`, origPid)) {
		t.Errorf("through Dial: %d %s, want the clone's answer, not the original's (pid %v)", code, body, origPid)
	}
	if code, body := get("/next?path=/x"); code != 200 || body != "from the out-proxy" {
		t.Errorf("clone's next-tier call: %d %q, want the answer's listener", code, body)
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(forbidden.URL, "http://"))
	for _, target := range []string{"127.0.0.1:" + port, "192.0.2.1:" + port} {
		if code, body := get("/fetch?url=http://" + target + "/"); code == 200 {
			t.Errorf("clone reached %s: %q", target, body)
		}
	}
	if nextHits.Load() != 0 || forbiddenHits.Load() != 0 || answered.Load() != 1 {
		t.Errorf("next tier got %d calls, a host server %d, the answer %d; want 0, 0, 1", nextHits.Load(), forbiddenHits.Load(), answered.Load())
	}
	if err := p.Destroy(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Dial(ctx); err == nil {
		t.Error("Dial after Destroy connected")
	}
	handed.Close()
	checkNoLeftovers(t, p, regexp.MustCompile(regexp.QuoteMeta(cl.ID)))
	getJSON(t, "http://"+orig.Addr+"/counter") // the original is unharmed
}

// TestCloneInNetworkBadAnswer: an Answer address that is not IPv4
// host:port or is the clone's own, or one whose server refuses it, fails
// the clone and leaves nothing behind.
func TestCloneInNetworkBadAnswer(t *testing.T) {
	p := newPlatform(t, coldClones)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	orig := launchServer(t, p, serverOpts{id: "web"})
	refuse := errors.New("out-proxy closed")
	var closed atomic.Bool
	for _, tt := range []struct {
		addr string
		fn   func(net.Listener) error
		want error
	}{
		{"db.example:5432", func(net.Listener) error { return nil }, justrunit.ErrInvalid},
		{orig.Addr, func(net.Listener) error { return nil }, justrunit.ErrInvalid},
		{"127.0.0.1:5432", func(ln net.Listener) error {
			// the platform closes what it could not hand over
			go func() { _, err := ln.Accept(); closed.Store(err != nil) }()
			return refuse
		}, refuse},
	} {
		_, err := p.Clone(ctx, "web", "sandbox", justrunit.CloneOptions{InNetwork: true, Answer: map[string]func(net.Listener) error{tt.addr: tt.fn}})
		if !errors.Is(err, tt.want) {
			t.Errorf("Answer %s: Clone() = %v, want %v", tt.addr, err, tt.want)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !closed.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !closed.Load() {
		t.Error("the listener of a refused answer was left open")
	}
	checkNoLeftovers(t, p, regexp.MustCompile(`c\d+-web`))
}

// checkNoLeftovers fails t if anything of the clones whose IDs match re,
// or any clone link, is left on the machine.
func checkNoLeftovers(t *testing.T, p *Platform, re *regexp.Regexp) {
	t.Helper()
	r, err := Leftovers(p.Scope(), p.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, list := range [][]string{r.Cgroups, r.Netns, r.Links, r.Tables, r.Dirs, r.Mounts} {
		for _, o := range list {
			if re.MatchString(o) || strings.HasPrefix(o, linkPrefix) {
				t.Errorf("%s is left", o)
			}
		}
	}
}

// TestInsideDial: dialling into a clone's network connects, reports a
// refused connection, and gives up with its context while the clone's
// accept queue is full (its SYNs dropped), without holding a thread.
func TestInsideDial(t *testing.T) {
	p := newPlatform(t)
	cn, err := p.setupInsideNet("dialcheck", netip.MustParseAddrPort("127.0.0.1:8080"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.teardownNet(cn) })
	ctx := context.Background()
	if _, err := cn.dial(ctx); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial with nothing listening = %v, want connection refused", err)
	}
	// A listener that never accepts, with the shortest queue.
	var lfd int
	if err := cn.enter(func() error {
		var err error
		if lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: 8080, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		return unix.Listen(lfd, 0)
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; ; i++ {
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		start := time.Now()
		c, err := cn.dial(dctx)
		cancel()
		if err == nil {
			conns = append(conns, c)
			if i > 8 {
				t.Fatal("the accept queue never filled")
			}
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("dial to a full queue = %v after %v, want the context's deadline after 300ms", err, time.Since(start))
		}
		break
	}
	if len(conns) == 0 {
		t.Error("no dial connected before the queue filled")
	}
}
