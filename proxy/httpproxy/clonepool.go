package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"sync"
	"syscall"
	"time"
)

// The copies to a clone go out on a pool of keep-alive connections, one
// exchange at a time on each. A copy's request is written by whoever sends
// it (the goroutine that parsed the on-line request, or the lag queue's)
// in one non-blocking write when an idle connection is at hand; only a new
// connection, or a request the socket has no room for, gets a goroutine to
// dial or finish writing. Each connection has a goroutine that reads its
// responses for as long as it lasts. So a copy costs one write and one
// wake-up for its response, and nothing the on-line path waits for.
//
// http.Transport, used at first, hands each exchange to two goroutines of
// its connection and back; the copy's own goroutine writing and reading,
// used next, still had to be started and woken. In bench proxy runs on a
// 2-CPU machine the in-proxy's saturation throughput with a healthy clone
// went from 8.8-10.4k (http.Transport) to 13.4-14.7k requests per second
// (own goroutine; nginx with mirror: 7.8-9.7k); at 2,000 requests per
// second, writing at once took the in-proxy's context switches from 4.8
// to 4.2 per request and its CPU from 150-160 to 130-135 µs per request.

// dialFunc connects to one upstream.
type dialFunc func(ctx context.Context) (net.Conn, error)

// dialerFor returns a dial function for u's host and port, with TLS for
// https.
func dialerFor(u *url.URL, timeout time.Duration) dialFunc {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	addr := hostPort(u)
	if u.Scheme == "https" {
		td := &tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}}
		return func(ctx context.Context) (net.Conn, error) { return td.DialContext(ctx, "tcp", addr) }
	}
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

// dialWithin bounds each of dial's connections to timeout.
func dialWithin(dial dialFunc, timeout time.Duration) dialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return dial(ctx)
	}
}

// connPool holds a clone's connections: the idle ones, and every one so
// that close can end the exchanges in progress. Each connection has a
// goroutine that reads it for its whole life (readLoop): the copy's
// request is written by whoever sends it, at once when an idle connection
// is at hand, and the response is read by that goroutine.
type connPool struct {
	dial    dialFunc
	maxIdle int

	mu     sync.Mutex
	idle   []*poolConn
	all    map[*poolConn]struct{}
	closed bool
}

type poolConn struct {
	c   net.Conn
	raw syscall.RawConn // nil when the connection has none (TLS)
	// br reads c through head, which bounds each response head: the
	// clone writes it, and may write one without end.
	br   *bufio.Reader
	head headReader
	// flight is the copy the connection carries (nil while idle); it is
	// set under the pool's lock when the connection is taken, before the
	// request is written.
	flight  *flight
	reused  bool // the connection carried an exchange before flight
	writing bool // flight's request is still being written
	// parked: answered while writing (the clone did not wait for the
	// whole request); idle once the write ends.
	parked bool
	dead   bool // discarded: never idle again
}

// poolBufSize is each pooled connection's read buffer.
const poolBufSize = 4 << 10

func newConnPool(dial dialFunc, maxIdle int) *connPool {
	return &connPool{dial: dial, maxIdle: maxIdle, all: map[*poolConn]struct{}{}}
}

// take returns an idle connection, now carrying f, or nil.
func (p *connPool) take(f *flight) *poolConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if p.closed || n == 0 {
		return nil
	}
	pc := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	pc.flight, pc.reused, pc.writing = f, true, true
	return pc
}

// open dials a new connection carrying f; its readLoop is the caller's to
// start.
func (p *connPool) open(ctx context.Context, f *flight) (*poolConn, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	pc := &poolConn{c: c, head: headReader{r: c}, flight: f, writing: true}
	pc.br = bufio.NewReaderSize(&pc.head, poolBufSize)
	if sc, ok := c.(syscall.Conn); ok {
		pc.raw, _ = sc.SyscallConn()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	p.all[pc] = struct{}{}
	return pc, nil
}

// flightOf returns what pc carries, and the error writing its request
// failed with.
func (p *connPool) flightOf(pc *poolConn) (*flight, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.flight == nil {
		return nil, nil
	}
	return pc.flight, pc.flight.werr
}

// failWrite ends pc after writing its flight's request failed with err;
// its readLoop finds the error with the flight.
func (p *connPool) failWrite(pc *poolConn, err error) {
	p.mu.Lock()
	if pc.flight != nil {
		pc.flight.werr = err
	}
	p.mu.Unlock()
	pc.c.Close()
}

// endWrite ends the writing of pc's request (take and open begin it):
// after a failure pc is discarded; a connection answered meanwhile goes
// idle now.
func (p *connPool) endWrite(pc *poolConn, ok bool) {
	if !ok {
		p.discard(pc) // never idle again, answered or not
		return
	}
	p.mu.Lock()
	pc.writing = false
	if !pc.parked {
		p.mu.Unlock()
		return
	}
	pc.parked = false
	p.mu.Unlock()
	p.put(pc)
}

// put makes pc idle again, or closes it when there are enough idle ones
// or the pool is closed; it reports whether pc stays open. While a
// request is still being written on pc (the clone answered before reading
// all of it), pc waits for the write to end before it goes idle.
func (p *connPool) put(pc *poolConn) bool {
	_ = pc.c.SetReadDeadline(time.Time{})
	p.mu.Lock()
	pc.flight = nil
	switch {
	case pc.dead:
		p.mu.Unlock()
		return false
	case pc.writing:
		pc.parked = true
		p.mu.Unlock()
		return true
	case !p.closed && len(p.idle) < p.maxIdle:
		p.idle = append(p.idle, pc)
		p.mu.Unlock()
		return true
	}
	p.mu.Unlock()
	p.discard(pc)
	return false
}

// discard closes pc and forgets it.
func (p *connPool) discard(pc *poolConn) {
	p.mu.Lock()
	pc.dead = true
	delete(p.all, pc)
	if i := slices.Index(p.idle, pc); i >= 0 {
		p.idle = slices.Delete(p.idle, i, i+1)
	}
	p.mu.Unlock()
	pc.c.Close()
}

// close closes every connection, idle or in use: the exchanges in progress
// fail at once.
func (p *connPool) close() {
	p.mu.Lock()
	p.closed = true
	all := p.all
	p.all, p.idle = map[*poolConn]struct{}{}, nil
	p.mu.Unlock()
	for pc := range all {
		pc.c.Close()
	}
}

// tryWrite makes one attempt at writing b without waiting: it returns how
// much was written (0 when the socket is full or pc has no raw access).
func (pc *poolConn) tryWrite(b []byte) (int, error) {
	if pc.raw == nil {
		return 0, nil
	}
	var n int
	var werr error
	err := pc.raw.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), b)
		return true
	})
	if n < 0 {
		n = 0
	}
	if werr == syscall.EAGAIN {
		werr = nil
	}
	return n, errors.Join(err, werr)
}

// idleClosed reports whether err is how a connection the peer closed
// while idle fails its next exchange: nothing came back.
func idleClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
