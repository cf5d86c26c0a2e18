package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countConn counts the bytes read from its Conn.
type countConn struct {
	net.Conn
	n int
}

func (c *countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n += n
	return n, err
}

// TestFwdReaderHeadBound checks that the parser reads no more than
// fwdMaxHead bytes of a head that does not end, and that every byte is
// forwarded all the same, once relay takes over.
func TestFwdReaderHeadBound(t *testing.T) {
	head := "GET / HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 3<<20) + "\r\n\r\n"
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		_, _ = io.WriteString(a, head)
		a.Close()
	}()
	src := &countConn{Conn: b}
	var dst bytes.Buffer
	in := &fwdReader{src: src, dst: &dst, last: new(atomic.Int64)}
	br := bufio.NewReaderSize(in, fwdBufSize)
	in.startHead()
	_, err := http.ReadRequest(br)
	in.endHead()
	if !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("ReadRequest = %v, want %v", err, errHeadTooLarge)
	}
	if src.n > fwdMaxHead {
		t.Fatalf("the parser read %d bytes of the head, want at most %d", src.n, fwdMaxHead)
	}
	if dst.Len() != src.n {
		t.Fatalf("forwarded %d of the %d bytes read, want all", dst.Len(), src.n)
	}
	relay(br, in)
	if dst.String() != head {
		t.Fatalf("forwarded %d bytes, want the %d of the head unchanged", dst.Len(), len(head))
	}
}

// relayingConns counts the connections of s forwarded unparsed.
func relayingConns(s *fwdServer) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for fc := range s.conns {
		if fc.relaying.Load() {
			n++
		}
	}
	return n
}

// bigHead is a header line of several MiB, far over fwdMaxHead.
var bigHead = "X-Big: " + strings.Repeat("b", 3<<20)

// TestForwardResponseHeadTooLarge checks that a response whose head is
// several MiB reaches the caller byte for byte, that the proxy stops
// parsing it before its end (it is counted unobserved while the upstream
// still holds back the end of the head: the parser did not buffer it
// whole), and that the connection goes on, unobserved.
func TestForwardResponseHeadTooLarge(t *testing.T) {
	part1 := "HTTP/1.1 200 OK\r\n" + bigHead
	part2 := "\r\nContent-Length: 5\r\n\r\nhello"
	next := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for _, proxy := range []string{"in-proxy", "out-proxy"} {
		t.Run(proxy, func(t *testing.T) {
			gaveUp := make(chan struct{})
			up := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(c, part1)
				select {
				case <-gaveUp:
				case <-time.After(10 * time.Second):
				}
				_, _ = io.WriteString(c, part2)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(c, next)
			})
			var base string
			var unobserved func() bool
			if proxy == "in-proxy" {
				p, b := startIn(t, InConfig{Online: up})
				base, unobserved = b, func() bool { return p.Stats().Unobserved >= 1 }
			} else {
				p, b, _ := startOut(t, OutConfig{Upstream: up, MatchWait: -1})
				base, unobserved = b, func() bool { return p.Stats().NotRecorded >= 1 }
			}
			c, br := rawConn(t, base)
			if _, err := io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			want := part1 + part2
			got := make(chan []byte, 1)
			go func() { // the caller reads as the bytes come
				b := make([]byte, len(want))
				n, _ := io.ReadFull(br, b)
				got <- b[:n]
			}()
			waitFor(t, 5*time.Second, "the exchange counted unobserved before its head ended", unobserved)
			close(gaveUp)
			if b := <-got; string(b) != want {
				t.Fatalf("the caller got %d bytes, want the %d of the response unchanged", len(b), len(want))
			}
			if _, err := io.WriteString(c, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("second response = %d %q, want 200 ok", resp.StatusCode, body)
			}
		})
	}
}

// TestForwardRequestHeadTooLarge checks that a request whose head is
// several MiB reaches the upstream byte for byte and its answer the
// caller, that the proxy stops parsing the connection before the head
// ends (the parser did not buffer it whole), as it does for any request it
// cannot parse, and that the exchange is not measured.
func TestForwardRequestHeadTooLarge(t *testing.T) {
	part1 := "POST /1 HTTP/1.1\r\nHost: x\r\n" + bigHead
	part2 := "\r\nContent-Length: 4\r\n\r\nbody"
	answer := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
	for _, proxy := range []string{"in-proxy", "out-proxy"} {
		t.Run(proxy, func(t *testing.T) {
			gotReq := make(chan []byte, 1)
			up := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
				b := make([]byte, len(part1+part2))
				n, _ := io.ReadFull(br, b)
				gotReq <- b[:n]
				_, _ = io.WriteString(c, answer)
			})
			var base string
			var srv func() *fwdServer
			var measured func() bool
			if proxy == "in-proxy" {
				p, b := startIn(t, InConfig{Online: up})
				base, srv = b, func() *fwdServer { return p.srv }
				measured = func() bool { s := p.Stats().Online; return s.Count != 0 || s.Errors != 0 }
			} else {
				p, b, _ := startOut(t, OutConfig{Upstream: up, MatchWait: -1})
				base, srv = b, func() *fwdServer { return p.online }
				measured = func() bool { return p.Stats().Recorded != 0 }
			}
			c, br := rawConn(t, base)
			sent := make(chan error, 1)
			go func() { // the proxy forwards as it reads: the upstream reads as the bytes come
				_, err := io.WriteString(c, part1)
				sent <- err
			}()
			waitFor(t, 5*time.Second, "the connection forwarded unparsed before the head ended", func() bool { return relayingConns(srv()) == 1 })
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, part2); err != nil {
				t.Fatal(err)
			}
			if b := <-gotReq; string(b) != part1+part2 {
				t.Fatalf("the upstream got %d bytes, want the %d of the request unchanged", len(b), len(part1+part2))
			}
			b := make([]byte, len(answer))
			if n, err := io.ReadFull(br, b); err != nil || string(b) != answer {
				t.Fatalf("the caller got %q, %v; want the upstream's answer", b[:n], err)
			}
			if measured() {
				t.Errorf("the exchange was measured or recorded; the proxy could not parse it")
			}
		})
	}
}
