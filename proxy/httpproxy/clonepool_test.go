package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCloneConnections checks the copies' connections: kept alive and
// reused; a clone that closes each connection after its response, or
// closes idle ones, still gets every copy and answers it without an error
// counted (a copy written to a connection the clone had closed is sent
// again on a new one); and a body larger than a socket's buffer arrives
// whole.
func TestCloneConnections(t *testing.T) {
	type cloneServer struct {
		name  string
		setup func(s *http.Server, w http.ResponseWriter)
	}
	for _, tt := range []cloneServer{
		{"keep-alive", nil},
		{"close after each", func(_ *http.Server, w http.ResponseWriter) { w.Header().Set("Connection", "close") }},
		{"closes idle", nil}, // IdleTimeout below
	} {
		t.Run(tt.name, func(t *testing.T) {
			var conns atomic.Int64
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}}
			if tt.name == "closes idle" {
				srv.IdleTimeout = time.Millisecond
			}
			var got atomic.Int64
			srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got.Add(1)
				if tt.setup != nil {
					tt.setup(srv, w)
				}
				_, _ = w.Write([]byte("ok"))
			})
			go srv.Serve(ln)
			defer srv.Close()

			const n = 20
			var pause time.Duration
			if tt.name == "closes idle" {
				pause = 3 * time.Millisecond // past the clone's IdleTimeout
			}
			p := copiesOneByOne(t, "http://"+ln.Addr().String(), n, pause)
			cs, _ := p.CloneStats("c", false)
			if cs.Sent != n || cs.Response.Count != n || cs.Response.Errors != 0 || got.Load() != n {
				t.Errorf("sent %d, answered %d, errors %d, clone got %d; want %d answered, no error", cs.Sent, cs.Response.Count, cs.Response.Errors, got.Load(), n)
			}
			switch k := conns.Load(); {
			case tt.name == "keep-alive" && k != 1:
				t.Errorf("%d connections to the clone, want 1 kept alive", k)
			case tt.name != "keep-alive" && k < n/2:
				t.Errorf("%d connections to the clone, want about one per copy", k)
			}
		})
	}

	t.Run("large body", func(t *testing.T) {
		clone := newBackend(t, nil)
		online := newBackend(t, nil)
		const size = 16 << 20
		// A copy is charged twice its body (the body, and the request as
		// written) plus copyOverhead: room for both copies in flight at
		// once, as they are when the first is slow to go out (under -race
		// it took 1.6 s once, and the second was dropped at 4 × size).
		p, base := startIn(t, InConfig{Online: online.URL, MaxCopyBody: size, MaxCloneBytes: 2 * (2*size + copyOverhead)})
		if err := p.AddClone(context.Background(), "c", clone.URL); err != nil {
			t.Fatal(err)
		}
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		c := testClient()
		for range 2 { // the second goes on a kept-alive connection
			resp, err := c.Post(base+"/up", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		// 32 MiB of copies take about 3 s under -race here.
		waitFor(t, 30*time.Second, "both copies", func() bool {
			if cs, _ := p.CloneStats("c", false); cs.Dropped != 0 {
				t.Fatalf("a copy was dropped: clone stats %+v", cs)
			}
			return len(clone.requests()) == 2
		})
		for i, r := range clone.requests() {
			if !bytes.Equal(r.body, body) {
				t.Errorf("copy %d: %d bytes, want the %d sent", i, len(r.body), len(body))
			}
		}
		cs, _ := p.CloneStats("c", false)
		if cs.Response.Errors != 0 || !strings.Contains(cs.Target, clone.URL.Host) {
			t.Errorf("clone stats %+v, want no error", cs)
		}
	})

	// A clone that answers before it has read a large body: the rest of
	// the request must not run into the next copy, and nothing stays in
	// flight.
	t.Run("answers early", func(t *testing.T) {
		var n atomic.Int64
		early := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			if r.ContentLength > 0 {
				w.WriteHeader(http.StatusRequestEntityTooLarge) // body unread
				return
			}
			_, _ = w.Write([]byte("ok"))
		}))
		defer early.Close()
		online := newBackend(t, nil)
		const size = 16 << 20
		p, base := startIn(t, InConfig{Online: online.URL, MaxCopyBody: size, MaxCloneBytes: 4 * size})
		if err := p.AddClone(context.Background(), "c", mustURL(t, early.URL)); err != nil {
			t.Fatal(err)
		}
		c := testClient()
		resp, err := c.Post(base+"/up", "application/octet-stream", bytes.NewReader(make([]byte, size)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		waitFor(t, 10*time.Second, "the large copy to end", func() bool {
			cs, _ := p.CloneStats("c", false)
			return cs.InFlight == 0 && cs.Response.Count+cs.Response.Errors == 1
		})
		for i := range 3 {
			if code, _ := get(t, c, base+"/x"); code != 200 {
				t.Fatalf("on-line GET %d: %d", i, code)
			}
		}
		waitFor(t, 5*time.Second, "the small copies", func() bool {
			cs, _ := p.CloneStats("c", false)
			return cs.InFlight == 0 && cs.Response.Count == 4 && n.Load() == 4
		})
		if cs, _ := p.CloneStats("c", false); cs.Response.Errors != 0 {
			t.Errorf("%d copies failed, want none", cs.Response.Errors)
		}
	})

	// A clone that answers one request per connection and closes the
	// connection on the next without answering: a copy that fails so on
	// a reused connection, before any byte came back, goes once more on a
	// new one, and is answered.
	t.Run("closes on the next request", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var requests atomic.Int64
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					br := bufio.NewReader(conn)
					for i := 0; ; i++ {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						requests.Add(1)
						if i > 0 {
							return // the second request: closed, unanswered
						}
						_, _ = io.Copy(io.Discard, req.Body)
						_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					}
				}()
			}
		}()
		const n = 5
		p := copiesOneByOne(t, "http://"+ln.Addr().String(), n, 0)
		cs, _ := p.CloneStats("c", false)
		if cs.Response.Count != n || cs.Response.Errors != 0 {
			t.Errorf("answered %d, errors %d; want %d answered, no error", cs.Response.Count, cs.Response.Errors, n)
		}
		// Every copy after the first was sent twice: on the reused
		// connection, which the clone closed, then on a new one.
		if got := requests.Load(); got != 2*n-1 {
			t.Errorf("the clone read %d requests, want %d", got, 2*n-1)
		}
	})

	// The same with a copy larger than the socket takes at once: the
	// rest of it is written by a goroutine of its own while the
	// connection's reader, finding the connection closed, sends the copy
	// again. The two must not share the flight (the race detector saw
	// its deadline read by one and written by the other).
	t.Run("closes on the next large request", func(t *testing.T) {
		up := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			_, _ = http.ReadRequest(br) // the next one: closed with its body unread (a reset), unanswered
		})
		online := newBackend(t, nil)
		const size = 8 << 20
		p, base := startIn(t, InConfig{Online: online.URL, MaxCopyBody: size, MaxCloneBytes: 4 * (2*size + copyOverhead)})
		if err := p.AddClone(context.Background(), "c", up); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, size)
		c := testClient()
		const n = 6
		for i := range n {
			resp, err := c.Post(base+"/up", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			waitFor(t, 20*time.Second, "the copy's answer", func() bool {
				cs, _ := p.CloneStats("c", false)
				return cs.Response.Count+cs.Response.Errors == int64(i+1)
			})
		}
		if cs, _ := p.CloneStats("c", false); cs.Response.Count != n || cs.Response.Errors != 0 {
			t.Errorf("answered %d, errors %d; want %d answered, no error", cs.Response.Count, cs.Response.Errors, n)
		}
	})
}

// copiesOneByOne starts an in-proxy with the clone at cloneURL and sends n
// on-line requests, each once the copy of the one before was answered (or
// failed) and pause has passed, so that a kept-alive connection is idle
// when the next copy goes.
func copiesOneByOne(t *testing.T, cloneURL string, n int, pause time.Duration) *InProxy {
	t.Helper()
	online := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: online.URL})
	if err := p.AddClone(context.Background(), "c", mustURL(t, cloneURL)); err != nil {
		t.Fatal(err)
	}
	c := testClient()
	for i := range n {
		if code, _ := get(t, c, base+"/x"); code != 200 {
			t.Fatalf("on-line request %d: %d", i, code)
		}
		waitFor(t, 5*time.Second, "the copy's answer", func() bool {
			cs, _ := p.CloneStats("c", false)
			return cs.Response.Count+cs.Response.Errors == int64(i+1)
		})
		time.Sleep(pause)
	}
	return p
}

// TestCloneResponseHeadTooLarge checks that a clone answering a copy with
// a head that does not end (a header line of several MiB, the rest held
// back) fails the copy long before its timeout, counted as an error like
// any response the parser refuses: the parser stopped at fwdMaxHead
// instead of buffering the head. The connection is dropped, nothing stays
// in flight, and the next copy is answered on a new connection.
func TestCloneResponseHeadTooLarge(t *testing.T) {
	var conns atomic.Int64
	dropped := make(chan struct{})
	clone := scriptedServer(t, func(c net.Conn, br *bufio.Reader) {
		first := conns.Add(1) == 1
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if !first {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n"+bigHead) // fails once the proxy drops the connection
			_, _ = br.ReadByte()                                    // returns once it has
			close(dropped)
			return
		}
	})
	online := newBackend(t, nil)
	p, base := startIn(t, InConfig{Online: online.URL, CopyTimeout: time.Minute})
	if err := p.AddClone(context.Background(), "c", clone); err != nil {
		t.Fatal(err)
	}
	c := testClient()
	if code, _ := get(t, c, base+"/x"); code != 200 {
		t.Fatalf("on-line request: %d", code)
	}
	waitFor(t, 10*time.Second, "the copy failed, well before its one-minute timeout", func() bool {
		cs, _ := p.CloneStats("c", false)
		return cs.Response.Errors == 1
	})
	select {
	case <-dropped:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy kept the connection of the response it gave up on")
	}
	if code, _ := get(t, c, base+"/y"); code != 200 {
		t.Fatalf("on-line request: %d", code)
	}
	waitFor(t, 10*time.Second, "the next copy answered", func() bool {
		cs, _ := p.CloneStats("c", false)
		return cs.Response.Count == 1
	})
	if cs, _ := p.CloneStats("c", false); cs.Response.Errors != 1 || cs.InFlight != 0 || cs.InFlightBytes != 0 || conns.Load() != 2 {
		t.Errorf("clone stats %+v over %d connections; want 1 answered, 1 error, nothing in flight, 2 connections", cs, conns.Load())
	}
}
