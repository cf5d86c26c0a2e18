package httpproxy

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqpacketPair returns both ends of a SOCK_SEQPACKET Unix socket pair,
// in blocking mode as a Tap and Receive want them.
func seqpacketPair(t *testing.T) (tapEnd, recvEnd *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "tap"), os.NewFile(uintptr(fds[1]), "receive")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// cloneSide is the clone side of a handover, in this process: an
// in-proxy never started and an out-proxy replica fed by Receive.
type cloneSide struct {
	in   *InProxy
	out  *OutProxy
	recv *os.File
	done chan error
}

func startCloneSide(t *testing.T, recv *os.File, in InConfig, out *OutConfig) *cloneSide {
	t.Helper()
	cs := &cloneSide{done: make(chan error, 1)}
	var err error
	if cs.in, err = NewInProxy(in); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.in.Close() })
	if out != nil {
		if cs.out, err = NewOutProxy(*out); err != nil {
			t.Fatal(err)
		}
		if err := cs.out.StartReplica(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.out.Close() })
	}
	cs.recv = recv
	return cs
}

// receive starts receiving what the tap hands over.
func (cs *cloneSide) receive() {
	go func() { cs.done <- Receive(context.Background(), cs.recv, cs.in, cs.out) }()
}

// TestHandoverClonedTier is TestInOutClonedTier with the clone side
// handed over: the on-line proxies hand every copy, on-line response and
// recorded exchange to a tap, and the clone is fed, compared and answered
// by proxies that only receive them (as a helper process's do).
func TestHandoverClonedTier(t *testing.T) {
	nt := newNextTier(t, 5*time.Millisecond)
	masks, err := ParseMasks(nil, []string{"$.ts"})
	if err != nil {
		t.Fatal(err)
	}
	outCfg := OutConfig{Upstream: nt.URL, Masks: masks}
	out, outOnline, _ := startOut(t, outCfg)
	onlineApp := app(t, outOnline)
	inCfg := InConfig{Online: onlineApp.URL, Compare: true}
	in, base := startIn(t, inCfg)

	tapEnd, recvEnd := seqpacketPair(t)
	tap, err := NewTap(tapEnd)
	if err != nil {
		t.Fatal(err)
	}
	cs := startCloneSide(t, recvEnd, inCfg, &outCfg)
	cloneOut, err := cs.out.ServeClone(context.Background(), "clone")
	if err != nil {
		t.Fatal(err)
	}
	cloneApp := app(t, "http://"+cloneOut)
	if err := cs.in.AddClone(context.Background(), "clone", cloneApp.URL); err != nil {
		t.Fatal(err)
	}
	if err := cs.out.Attach("clone"); err != nil {
		t.Fatal(err)
	}
	cs.receive()
	out.AddTap(tap)
	in.AddTap(tap)

	c := testClient()
	const n = 30
	for i := range n {
		if code, body := get(t, c, fmt.Sprintf("%s/item/%d", base, i)); code != 201 || !strings.Contains(body, `"id"`) {
			t.Fatalf("on-line answer %d %q", code, body)
		}
	}
	waitFor(t, 10*time.Second, "the clone's answers compared", func() bool {
		st, _ := cs.in.CloneStats("clone", false)
		return st.Compared == n
	})
	st, _ := cs.in.CloneStats("clone", false)
	if st.Sent != n || st.Mismatched != 0 || st.Response.Errors != 0 || st.Dropped != 0 {
		t.Errorf("clone stats %+v, want %d copies sent, every answer equal to the on-line one", st, n)
	}
	rs, err := cs.out.ReplayStats("clone", false)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Matched != n || rs.Unmatched != 0 {
		t.Errorf("replay stats %+v, want %d matched", rs, n)
	}
	if m := nt.methods(); m["POST"] != n || len(m) != 1 {
		t.Errorf("next tier saw %v, want the %d on-line writes only", m, n)
	}
	if ts := tap.Stats(); ts.Sent != n || ts.Dropped != 0 || ts.Lost != 0 {
		t.Errorf("tap stats %+v, want %d sent and nothing dropped or lost", ts, n)
	}
	if st, _ := in.Stats().Clone("clone"); st.Name != "" {
		t.Errorf("the on-line in-proxy has a clone of its own: %+v", st)
	}

	// Taken off, the tap gets nothing more; closed, the clone side ends.
	in.RemoveTap(tap)
	out.RemoveTap(tap)
	get(t, c, base+"/item/last")
	if ts := tap.Stats(); ts.Sent != n {
		t.Errorf("tap sent %d copies after it was removed, want %d", ts.Sent, n)
	}
	tap.Close()
	select {
	case err := <-cs.done:
		if err != nil {
			t.Errorf("Receive after the tap closed: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Receive did not end after the tap closed")
	}
}

// TestHandoverDrops checks that copies the socket had no room for are
// counted as dropped for the clone side's clones, and that the on-line
// path never waits for the other side.
func TestHandoverDrops(t *testing.T) {
	online := newBackend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	clone := newBackend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	inCfg := InConfig{Online: online.URL}
	in, base := startIn(t, inCfg)
	tapEnd, recvEnd := seqpacketPair(t)
	tap, err := NewTap(tapEnd)
	if err != nil {
		t.Fatal(err)
	}
	// A small buffer, and nobody reading yet: the socket fills up.
	rc, _ := tapEnd.SyscallConn()
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) })
	in.AddTap(tap)
	c := testClient()
	body := strings.Repeat("x", 2000)
	const n = 40
	start := time.Now()
	for i := range n {
		resp, err := c.Post(fmt.Sprintf("%s/item/%d", base, i), "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	ts := tap.Stats()
	if ts.Dropped == 0 || ts.Sent+ts.Dropped != n {
		t.Fatalf("tap stats %+v with a full socket, want some of %d copies dropped and the rest sent", ts, n)
	}
	t.Logf("%d requests through a full tap in %v: %+v", n, time.Since(start), ts)

	cs := startCloneSide(t, recvEnd, inCfg, nil)
	if err := cs.in.AddClone(context.Background(), "clone", clone.URL); err != nil {
		t.Fatal(err)
	}
	cs.receive()
	waitFor(t, 5*time.Second, "the queued copies read", func() bool {
		var n int
		_ = rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		return n == 0
	})
	get(t, c, base+"/last") // its datagram carries the count of those dropped
	waitFor(t, 5*time.Second, "the last copy answered", func() bool { return int64(clone.count()) == ts.Sent+1 })
	st, _ := cs.in.CloneStats("clone", false)
	if st.Dropped != ts.Dropped || st.Sent != ts.Sent+1 {
		t.Errorf("clone stats %+v, want the tap's %d drops counted, and its %d queued copies and the last one sent", st, ts.Dropped, ts.Sent)
	}
}

// TestDecodeGarbage checks that a datagram cut short or made up is an
// error, never a panic or a huge allocation.
func TestDecodeGarbage(t *testing.T) {
	in, err := NewInProxy(InConfig{Online: mustURL(t, "http://127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r := &receiver{in: in, pending: map[uint64]pendingResult{}}
	b := encPool.Get().(*enc)
	b.reset(msgCopy)
	b.u64(0)
	b.u64(0)
	b.i64(time.Now().UnixNano())
	for _, s := range []string{"GET", "h", "/p", "", "q=1"} {
		b.str(s)
	}
	b.header(http.Header{"A": {"1", "2"}, "B": {"3"}})
	b.bytes([]byte("body"))
	whole := append([]byte(nil), b.b...)
	if err := r.handle(whole); err != nil {
		t.Fatalf("a whole copy: %v", err)
	}
	for i := 1; i < len(whole); i++ {
		if err := r.handle(whole[:i]); err == nil {
			t.Fatalf("a copy cut to %d of %d bytes parsed", i, len(whole))
		}
	}
	for _, g := range [][]byte{{'?'}, {msgExchange, 0xff, 0xff, 0xff, 0xff}, {msgResult}, {msgCopy, 1}} {
		if err := r.handle(g); err == nil {
			t.Errorf("garbage %q parsed", g)
		}
	}
}

// TestTapRefusesPolledSocket checks that NewTap and Receive refuse a
// socket in non-blocking mode (one the runtime's poller may watch, whose
// datagrams would wake the process) and one that is not SOCK_SEQPACKET.
func TestTapRefusesPolledSocket(t *testing.T) {
	tapEnd, recvEnd := seqpacketPair(t)
	for _, f := range []*os.File{tapEnd, recvEnd} {
		if err := unix.SetNonblock(int(f.Fd()), true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewTap(tapEnd); err == nil || !strings.Contains(err.Error(), "non-blocking") {
		t.Errorf("NewTap on a non-blocking socket = %v, want an error saying so", err)
	}
	in, err := NewInProxy(InConfig{Online: mustURL(t, "http://127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := Receive(context.Background(), recvEnd, in, nil); err == nil || !strings.Contains(err.Error(), "non-blocking") {
		t.Errorf("Receive on a non-blocking socket = %v, want an error saying so", err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	stream := os.NewFile(uintptr(fds[0]), "stream")
	defer stream.Close()
	defer unix.Close(fds[1])
	if _, err := NewTap(stream); err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
		t.Errorf("NewTap on a stream socket = %v, want an error saying it is not SOCK_SEQPACKET", err)
	}
}

// TestPollEvery checks the hand-over's poll period: an eighth of the
// lag, within HandoffPoll and 25 ms.
func TestPollEvery(t *testing.T) {
	for _, tc := range []struct{ lag, want time.Duration }{
		{0, HandoffPoll},
		{HandoffLag, HandoffPoll},
		{80 * time.Millisecond, 10 * time.Millisecond},
		{time.Second, 25 * time.Millisecond},
	} {
		if got := pollEvery(tc.lag); got != tc.want {
			t.Errorf("pollEvery(%v) = %v, want %v", tc.lag, got, tc.want)
		}
	}
}
