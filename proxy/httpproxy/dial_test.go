package httpproxy

import (
	"context"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestInProxyCloneDial: a clone attached with its own dial gets its copies
// through it, whatever its URL's address says (a clone inside a network
// of its own is named by the address it listens on there).
func TestInProxyCloneDial(t *testing.T) {
	online := newBackend(t, nil)
	clone := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: online.URL})
	var dials atomic.Int64
	dial := func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", clone.Listener.Addr().String())
	}
	// Port 1 on a documentation address: reached, it would not answer.
	if err := p.AddCloneDial(context.Background(), "c", &url.URL{Scheme: "http", Host: "192.0.2.1:1"}, dial, "a test's dial"); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats().Clones[0].Target; got != "http://192.0.2.1:1 (dialled: a test's dial)" {
		t.Errorf("clone listed as %q, want its address and how it is dialled", got)
	}
	for range 3 {
		do(t, testClient(), "GET", base+"/x", "")
	}
	waitFor(t, 5*time.Second, "the copies", func() bool { return clone.count() == 3 })
	if dials.Load() == 0 {
		t.Error("the clone's dial was not used")
	}
	if err := p.AddCloneDial(context.Background(), "d", &url.URL{Scheme: "https", Host: "127.0.0.1:1"}, dial, ""); err == nil {
		t.Error("AddCloneDial(https) = nil, want an error: a dialled clone speaks http")
	}
}

// TestOutProxyServeCloneOn: a clone's calls on a listener someone else
// opened are answered from the record, and StopClone closes it.
func TestOutProxyServeCloneOn(t *testing.T) {
	nt := newNextTier(t, 0)
	p, online, _ := startOut(t, OutConfig{Upstream: nt.URL, MatchWait: -1})
	c := testClient()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ServeCloneOn("c", ln); err != nil {
		t.Fatal(err)
	}
	if err := p.ServeCloneOn("c", ln); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("ServeCloneOn twice = %v, want already served", err)
	}
	on := do(t, c, "GET", online+"/item/1", "")
	waitFor(t, 5*time.Second, "recorded", func() bool { return p.Stats().Recorded == 1 })
	if a := do(t, c, "GET", "http://"+ln.Addr().String()+"/item/1", ""); a.status != 200 || a.body != on.body {
		t.Errorf("clone call = %d %q, want the recorded %q", a.status, a.body, on.body)
	}
	if nt.count() != 1 {
		t.Errorf("next tier got %d calls, want the on-line one only", nt.count())
	}
	if err := p.StopClone("c"); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		conn.Close()
		t.Error("the listener is still open after StopClone")
	}
}
