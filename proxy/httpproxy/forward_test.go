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
	online := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		line, _ := brw.ReadString('\n')
		_, _ = io.WriteString(conn, "echo: "+line)
	})
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
	// Not an HTTP request: the proxy must not parse it, only pass it on.
	if _, err := io.WriteString(c, "\x00\x01 not http\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "echo: \x00\x01 not http\n" {
		t.Fatalf("after the upgrade got %q, %v; want the echo", line, err)
	}
	waitFor(t, 5*time.Second, "the upgrade measured", func() bool { return p.Stats().Online.Count == 1 })
	if n := clone.count(); n != 0 {
		t.Errorf("clone got %d requests; an upgrade has none to copy", n)
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
