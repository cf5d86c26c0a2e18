package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawConn dials the proxy at base (http://host:port) for writing requests
// by hand.
func rawConn(t *testing.T, base string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// Pipelined requests, a HEAD among them, reach the on-line instance in
// order on one connection, their responses come back in order, and each
// exchange is measured and copied.
func TestInProxyPipelinedAndHead(t *testing.T) {
	online := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "11")
		_, _ = io.WriteString(w, "path="+r.URL.Path[:6])
	})
	clone := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: online.URL})
	if err := p.AddClone(context.Background(), "c1", clone.URL); err != nil {
		t.Fatal(err)
	}
	c, br := rawConn(t, base)
	paths := []string{"/one/a", "/two/b", "/thr/c"}
	var reqs strings.Builder
	for i, path := range paths {
		m := "GET"
		if i == 1 {
			m = "HEAD"
		}
		fmt.Fprintf(&reqs, "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", m, path)
	}
	if _, err := io.WriteString(c, reqs.String()); err != nil { // one write: pipelined
		t.Fatal(err)
	}
	for i, path := range paths {
		m := "GET"
		if i == 1 {
			m = "HEAD"
		}
		resp, body := readResp(t, br, m)
		want := "path=" + path
		if m == "HEAD" {
			want = ""
		}
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("response %d = %d %q, want 200 %q", i, resp.StatusCode, body, want)
		}
	}
	waitFor(t, 5*time.Second, "three copies", func() bool { return clone.count() == 3 })
	waitFor(t, 5*time.Second, "three on-line exchanges measured", func() bool { return p.Stats().Online.Count == 3 })
	if s := p.Stats().Online; s.Errors != 0 {
		t.Errorf("on-line errors = %d, want 0", s.Errors)
	}
}

// An upgraded connection is forwarded both ways, unparsed, and the
// exchange that upgraded it is measured.
func TestInProxyUpgrade(t *testing.T) {
	online := upgradeEcho(t)
	clone := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: online.URL})
	if err := p.AddClone(context.Background(), "c1", clone.URL); err != nil {
		t.Fatal(err)
	}
	c, br := rawConn(t, base)
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade response = %v, %v; want 101", resp, err)
	}
	// The new protocol's bytes, some that look like an HTTP request, some
	// that do not: the proxy must not parse them, only pass them on.
	if _, err := io.WriteString(c, "GET /not-a-request HTTP/1.1\nHost: x\n\n\x00\x01 not http\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"echo: GET /not-a-request HTTP/1.1\n", "echo: Host: x\n", "echo: \n", "echo: \x00\x01 not http\n"} {
		if line, err := br.ReadString('\n'); err != nil || line != want {
			t.Fatalf("after the upgrade got %q, %v; want %q", line, err, want)
		}
	}
	waitFor(t, 5*time.Second, "the upgrade measured", func() bool { return p.Stats().Online.Count == 1 })
	if cs, _ := p.CloneStats("c1", false); clone.count() != 0 || cs.Sent+cs.Dropped != 0 {
		t.Errorf("clone got %d requests (%d sent, %d dropped); an upgrade has none to copy", clone.count(), cs.Sent, cs.Dropped)
	}
}

// Bytes that are not HTTP reach the on-line instance unchanged, and its
// answer reaches the previous tier: the instance judges what it is sent.
func TestInProxyForwardsUnparsable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad")
	}()
	p, base := startIn(t, InConfig{Online: mustURL(t, "http://"+ln.Addr().String())})
	c, br := rawConn(t, base)
	if _, err := io.WriteString(c, "BOGUS\x7f\x00 what\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-got:
		if line != "BOGUS\x7f\x00 what\n" {
			t.Fatalf("on-line instance got %q, want the bytes unchanged", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the bytes did not reach the on-line instance")
	}
	if b, err := io.ReadAll(br); err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 400") {
		t.Fatalf("previous tier got %q, %v; want the instance's 400", b, err)
	}
	if s := p.Stats().Online; s.Count != 0 || s.Errors != 0 {
		t.Errorf("on-line = %d ok, %d errors; an unparsed exchange is not measured", s.Count, s.Errors)
	}
}

// An on-line instance that cannot be reached gets the previous tier a 502,
// counted as an on-line error; the instance answering a request it was
// sent with "Expect: 100-continue" passes its 100 on.
func TestInProxyUnreachableAndContinue(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := mustURL(t, "http://"+ln.Addr().String())
	ln.Close()
	p, base := startIn(t, InConfig{Online: dead})
	status, _ := get(t, testClient(), base+"/x")
	if status != http.StatusBadGateway {
		t.Errorf("status with the on-line instance down = %d, want 502", status)
	}
	if s := p.Stats().Online; s.Errors != 1 || s.Count != 0 {
		t.Errorf("on-line = %d ok, %d errors; want the 502 counted as one error", s.Count, s.Errors)
	}

	online := newBackend(t, nil)
	clone := newBackend(t, nil)
	p2, base2 := startIn(t, InConfig{Online: online.URL})
	if err := p2.AddClone(context.Background(), "c1", clone.URL); err != nil {
		t.Fatal(err)
	}
	c, br := rawConn(t, base2)
	if _, err := io.WriteString(c, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("first response = %v, %v; want 100 Continue", resp, err)
	}
	if _, err := io.WriteString(c, "body"); err != nil {
		t.Fatal(err)
	}
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("final response = %d %q, want 200 ok", resp.StatusCode, body)
	}
	waitFor(t, 5*time.Second, "the copy", func() bool { return clone.count() == 1 })
	if got := clone.requests()[0]; string(got.body) != "body" {
		t.Errorf("clone got body %q, want %q", got.body, "body")
	}
}

// Close lets an exchange in progress end, then closes the connections.
func TestInProxyCloseWaitsForExchange(t *testing.T) {
	release := make(chan struct{})
	online := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		_, _ = io.WriteString(w, "late")
	})
	p, base := startIn(t, InConfig{Online: online.URL})
	c, br := rawConn(t, base)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the request on-line", func() bool { return online.count() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with an exchange in progress", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "late" {
		t.Fatalf("response = %d %q, want 200 late", resp.StatusCode, body)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the exchange ended")
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), time.Second); err == nil {
		t.Error("the proxy still accepts connections after Close")
	}
}

// TestForwardUnparsedResponse checks that a response the proxies cannot
// parse reaches the caller whole, sent in two parts with a pause between
// (the proxy sees the first part's error before the second comes), and
// that the connection goes on, unobserved: the exchange is counted as
// neither answered nor failed (in-proxy) and as not recorded (out-proxy).
func TestForwardUnparsedResponse(t *testing.T) {
	for _, tt := range []struct {
		name         string
		req          string // the first request
		part1, part2 string // its answer
		next         string // the second request, answered "ok"
	}{
		{"gzip then chunked", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"header line without a colon", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 5\r\n\r\n", "hello", "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"bad chunk size", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "hello\r\n0\r\n\r\n", "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"},
		// h2c with prior knowledge: the preface is parsed as a request,
		// the server's SETTINGS frame (MAX_CONCURRENT_STREAMS 10: a
		// newline) is no HTTP/1 response. What follows is HTTP/2, not
		// parsed: here, bytes the server echoes.
		{"h2c prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x0a", "\x00\x00\x00\x04\x01\x00\x00\x00\x00", ""},
	} {
		up := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
			if tt.next == "" {
				if _, err := io.ReadFull(br, make([]byte, len(tt.req))); err != nil {
					return
				}
			} else if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, tt.part1)
			time.Sleep(50 * time.Millisecond)
			_, _ = io.WriteString(c, tt.part2)
			if tt.next == "" { // echo what comes next
				_, _ = io.Copy(c, br)
				return
			}
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		})
		exchange := func(t *testing.T, base string) {
			c, br := rawConn(t, base)
			if _, err := io.WriteString(c, tt.req); err != nil {
				t.Fatal(err)
			}
			want := tt.part1 + tt.part2
			got := make([]byte, len(want))
			if n, err := io.ReadFull(br, got); err != nil || string(got) != want {
				t.Fatalf("the caller got %q, %v; want all of %q", got[:n], err, want)
			}
			if tt.next == "" {
				if _, err := io.WriteString(c, "ping\n"); err != nil {
					t.Fatal(err)
				}
				if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
					t.Fatalf("after the preface got %q, %v; want the echo", line, err)
				}
				return
			}
			if _, err := io.WriteString(c, tt.next); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("second request on the connection: %v; want it forwarded", err)
			}
			if b := mustRead(resp.Body); resp.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("second response = %d %q, want 200 ok", resp.StatusCode, b)
			}
		}
		t.Run(tt.name+"/in-proxy", func(t *testing.T) {
			p, base := startIn(t, InConfig{Online: up})
			exchange(t, base)
			waitFor(t, 5*time.Second, "the exchange counted as unobserved", func() bool { return p.Stats().Unobserved >= 1 })
			if s := p.Stats().Online; s.Count != 0 || s.Errors != 0 {
				t.Errorf("on-line = %d ok, %d errors; want neither: the proxy saw no answer it could judge", s.Count, s.Errors)
			}
		})
		t.Run(tt.name+"/out-proxy", func(t *testing.T) {
			p, online, _ := startOut(t, OutConfig{Upstream: up, MatchWait: -1})
			exchange(t, online)
			waitFor(t, 5*time.Second, "the exchange counted as not recorded", func() bool { return p.Stats().NotRecorded >= 1 })
			if s := p.Stats(); s.Recorded != 0 {
				t.Errorf("recorded %d exchanges, want none", s.Recorded)
			}
		})
	}
}

// TestForwardUpgradeDeclined checks that a request offering to switch
// protocols, answered without switching (Java's HttpClient offers h2c on
// the first request of every cleartext connection), is an exchange like
// any other, and so are the requests after it on its connection: measured
// and copied (the in-proxy), recorded (the out-proxy). A websocket offer
// is measured and recorded but not copied.
func TestForwardUpgradeDeclined(t *testing.T) {
	next := newBackend(t, nil) // takes no upgrade
	clone := newBackend(t, nil)
	in, inBase := startIn(t, InConfig{Online: next.URL})
	if err := in.AddClone(context.Background(), "c", clone.URL); err != nil {
		t.Fatal(err)
	}
	out, outBase, _ := startOut(t, OutConfig{Upstream: next.URL, MatchWait: -1})
	reqs := []string{
		"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
		"GET /after-h2c HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		"GET /after-ws HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for _, base := range []string{inBase, outBase} {
		c, br := rawConn(t, base)
		for _, r := range reqs {
			if _, err := io.WriteString(c, r); err != nil {
				t.Fatal(err)
			}
			if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%s: response %d %q, want 200 ok", strings.Fields(r)[1], resp.StatusCode, body)
			}
		}
	}
	waitFor(t, 5*time.Second, "the in-proxy's four exchanges measured", func() bool { return in.Stats().Online.Count == 4 })
	waitFor(t, 5*time.Second, "the out-proxy's four exchanges recorded", func() bool { return out.Stats().Recorded == 4 })
	waitFor(t, 5*time.Second, "three copies", func() bool { return clone.count() == 3 })
	copied := map[string]bool{}
	for _, r := range clone.requests() {
		copied[r.uri] = true
		if h := r.header; h.Get("Upgrade") != "" || h.Get("HTTP2-Settings") != "" || h.Get("Connection") != "" {
			t.Errorf("copy of %s carries the upgrade offer: %v", r.uri, h)
		}
	}
	if !copied["/h2c"] || !copied["/after-h2c"] || !copied["/after-ws"] || copied["/ws"] {
		t.Errorf("copied %v, want /h2c, /after-h2c and /after-ws, not the websocket offer", copied)
	}
	if s := in.Stats(); s.Online.Errors != 0 || s.Unobserved != 0 {
		t.Errorf("in-proxy %d errors, %d unobserved; want none", s.Online.Errors, s.Unobserved)
	}
}

// upgradeEcho is an on-line instance that switches every request's
// connection to a protocol that echoes each line.
func upgradeEcho(t *testing.T) *backend {
	return newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = io.WriteString(conn, "echo: "+line)
		}
	})
}

// TestForwardIdleSweep checks the idle connections' sweep: a kept-alive
// connection idle past fwdIdleTimeout is closed; an upgraded one, which
// the proxy cannot tell idle from silent (a websocket quiet for minutes),
// is not.
func TestForwardIdleSweep(t *testing.T) {
	p, base := startIn(t, InConfig{Online: upgradeEcho(t).URL})
	ws, wsr := rawConn(t, base)
	if _, err := io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(wsr, &http.Request{Method: "GET"}); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade response = %v, %v; want 101", resp, err)
	}

	plainUp := newBackend(t, nil)
	p2, base2 := startIn(t, InConfig{Online: plainUp.URL})
	plain, plainr := rawConn(t, base2)
	if _, err := io.WriteString(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	readResp(t, plainr, "GET")
	waitFor(t, 5*time.Second, "both exchanges measured", func() bool {
		return p.Stats().Online.Count == 1 && p2.Stats().Online.Count == 1
	})

	later := time.Now().Add(2 * fwdIdleTimeout)
	p.srv.closeIdle(later)
	p2.srv.closeIdle(later)
	if _, err := plainr.ReadByte(); err != io.EOF {
		t.Errorf("idle kept-alive connection: read %v, want it closed (EOF)", err)
	}
	if _, err := io.WriteString(ws, "still there\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := wsr.ReadString('\n'); err != nil || line != "echo: still there\n" {
		t.Errorf("upgraded connection after the sweep: got %q, %v; want the echo", line, err)
	}
}

// TestForwardForgetsEndedConnections checks that a connection that ended
// leaves nothing behind in the server's set.
func TestForwardForgetsEndedConnections(t *testing.T) {
	p, base := startIn(t, InConfig{Online: newBackend(t, nil).URL})
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 5 {
		if code, _ := get(t, c, base+"/x"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	waitFor(t, 5*time.Second, "the ended connections forgotten", func() bool {
		p.srv.mu.Lock()
		defer p.srv.mu.Unlock()
		return len(p.srv.conns) == 0
	})
}

// TestInProxyCopyDroppedWhenNotForwarded checks that a request the
// on-line instance did not get in full is not copied: the instance resets
// the connection while the proxy is still writing its first answer (more
// than the sockets hold, which the previous tier does not read), so the
// second request, pipelined, cannot be forwarded although the proxy reads
// all of it.
func TestInProxyCopyDroppedWhenNotForwarded(t *testing.T) {
	reset := make(chan struct{})
	up := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		go func() {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
			chunk := make([]byte, 1<<20)
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		time.Sleep(500 * time.Millisecond) // every buffer on the way fills
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close() // a reset
		close(reset)
	})
	clone := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: up})
	if err := p.AddClone(context.Background(), "c", clone.URL); err != nil {
		t.Fatal(err)
	}
	c, _ := rawConn(t, base)
	if _, err := io.WriteString(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	<-reset
	time.Sleep(50 * time.Millisecond)
	if _, err := io.WriteString(c, "POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\ncopy-me"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the second copy dropped", func() bool {
		cs, _ := p.CloneStats("c", false)
		return cs.Dropped == 1
	})
	for _, r := range clone.requests() {
		if r.uri == "/second" {
			t.Errorf("the clone got %s %s, which the on-line instance never got", r.method, r.uri)
		}
	}
}

// TestForwardPipelinedAfterUpgradeOffer checks that a request pipelined
// behind one offering h2c is observed once the offer's answer has shown
// its status, even when that answer's body takes longer than fwdParseLag.
func TestForwardPipelinedAfterUpgradeOffer(t *testing.T) {
	online := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first ")
		if r.URL.Path == "/slow" {
			http.NewResponseController(w).Flush()
			time.Sleep(fwdParseLag + 200*time.Millisecond)
		}
		_, _ = io.WriteString(w, "done")
	})
	p, base := startIn(t, InConfig{Online: online.URL})
	c, br := rawConn(t, base)
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"+
		"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "first done" {
			t.Fatalf("response %d = %d %q, want 200 %q", i, resp.StatusCode, body, "first done")
		}
	}
	waitFor(t, 5*time.Second, "both exchanges measured", func() bool { return p.Stats().Online.Count == 2 })
	if s := p.Stats(); s.Online.Errors != 0 || s.Unobserved != 0 {
		t.Errorf("%d errors, %d unobserved; want none", s.Online.Errors, s.Unobserved)
	}
}
