package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// The on-line path of both proxies is a connection-level forwarder. Each
// connection from the caller (the previous tier for the in-proxy, the
// on-line instance for the out-proxy) gets its own connection to the
// upstream (the on-line instance, the next tier), and bytes go on in each
// direction as they are read, before they are parsed: parsing only
// observes the stream, to find the requests (for the copies, the record),
// the responses (for the on-line response time, the comparison, the
// record) and where they end. So the upstream sees what the caller sent,
// byte for byte (headers, framing, pipelining, upgrades), and whatever the
// parsing makes of it (a request it cannot parse, a response without a
// request) changes nothing on the wire: from that point the connection is
// forwarded without being observed. What each proxy does with the
// exchanges it sees is its fwdHooks.
//
// Why not httputil.ReverseProxy, which both proxies used before: each
// request crossed five goroutines (the server's connection, the
// transport's round trip, its write and read loops, the body copy), each a
// wake-up on the on-line path, and was parsed and written out again. Here
// a request costs one wake-up per direction. In bench proxy runs back to
// back on a 2-CPU machine, the in-proxy with no clone went from 0.62-0.74x
// direct saturation throughput to 0.80-0.89x (nginx's proxy_pass alone:
// 0.80-0.94x in the same runs). The out-proxy's on-line face, which also
// records each exchange, went from 2.1-2.6x the time of a direct call
// (58-62 µs a call) to 1.9-2.1x (47-48 µs) in BenchmarkOutProxyOverhead.

const (
	// fwdBufSize is the read buffer of each direction of a connection.
	fwdBufSize = 32 << 10
	// fwdIdleTimeout closes a connection pair with no exchange in progress
	// and nothing read either way for this long (http.Server's IdleTimeout
	// before).
	fwdIdleTimeout = 120 * time.Second
	// fwdMaxPipelined bounds the requests forwarded on one connection and
	// not yet answered; beyond it the proxy stops reading the connection
	// until a response completes.
	fwdMaxPipelined = 64
	// fwdParseLag is how long a response waits for its request to be
	// parsed (the request's bytes are forwarded before it is parsed, so an
	// instance can answer first); after it, the bytes are taken as a
	// response to no request and the connection goes on unobserved.
	fwdParseLag = time.Second
	// fwdDialTimeout bounds the connection to the on-line instance.
	fwdDialTimeout = 5 * time.Second
)

// fwdHooks is what a proxy does with the exchanges its forwarder sees. The
// forwarder calls request and bodyRead from a connection's requests
// goroutine, response and failed from its responses goroutine, in the
// order of the exchanges.
type fwdHooks interface {
	// fwdRequest is called with each request parsed (ex.req, ex.arrival
	// and ex.clones set), before its body is read, and returns the reader
	// to read the body through: ex.req.Body or a tee of it.
	fwdRequest(ex *exchange) io.Reader
	// fwdBodyRead is called after the body was read to its end (err nil)
	// or cut short. It is not called for a CONNECT or an upgrade, whose
	// connection goes on unobserved.
	fwdBodyRead(ex *exchange, err error)
	// fwdResponse reads ex's response (after any 1xx) from br to its end —
	// the bytes are forwarded already — and ends the exchange. It returns
	// errUpgraded after a 101, and the error that cut a response short.
	fwdResponse(br *bufio.Reader, ex *exchange) error
	// fwdFailed ends an exchange that got no response.
	fwdFailed(ex *exchange)
	// fwdUnreachable is called for a request that could not be forwarded
	// because the upstream could not be reached (req is nil when it was
	// not parsed); the caller gets a 502.
	fwdUnreachable(req *http.Request, err error)
}

// fwdServer accepts the callers' connections and forwards each.
type fwdServer struct {
	hooks fwdHooks
	log   *slog.Logger
	// clones, when set (the in-proxy), are the clones attached now; each
	// request is copied to those attached when its bytes were read.
	clones *atomic.Pointer[[]*clone]
	ln     net.Listener
	dial   dialFunc
	wg     sync.WaitGroup
	done   chan struct{} // closed by close

	mu    sync.Mutex
	conns map[*fwdConn]struct{}
}

// forward serves ln, forwarding each connection to upstream.
func forward(ln net.Listener, upstream *url.URL, hooks fwdHooks, log *slog.Logger, clones *atomic.Pointer[[]*clone]) *fwdServer {
	s := &fwdServer{hooks: hooks, log: log, clones: clones, ln: ln, done: make(chan struct{}), conns: map[*fwdConn]struct{}{}}
	s.dial = dialerFor(upstream, fwdDialTimeout)
	s.wg.Add(2)
	go s.accept()
	go s.janitor()
	return s
}

// hostPort is u's host and port, the scheme's port when it has none.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func (s *fwdServer) accept() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, or a connection reset before it was
			// accepted: retry, backing off as http.Server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", logKeyAddr, s.ln.Addr().String(), logKeyErr, err, "retry_in", backoff)
			select {
			case <-s.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		fc := &fwdConn{s: s, client: c, pending: make(chan *exchange, fwdMaxPipelined), done: make(chan struct{})}
		fc.lastActive.Store(time.Now().UnixNano())
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			c.Close()
			return
		default:
		}
		s.conns[fc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go fc.requests()
	}
}

// janitor closes the connections that have been idle for fwdIdleTimeout.
func (s *fwdServer) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(fwdIdleTimeout / 8)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.closeWhere(func(fc *fwdConn) bool {
				return fc.inFlight.Load() == 0 && now.UnixNano()-fc.lastActive.Load() > int64(fwdIdleTimeout)
			})
		}
	}
}

// closeWhere closes the connections f picks and returns how many remain.
func (s *fwdServer) closeWhere(f func(*fwdConn) bool) int {
	s.mu.Lock()
	var picked []*fwdConn
	for fc := range s.conns {
		if f(fc) {
			picked = append(picked, fc)
		}
	}
	n := len(s.conns) - len(picked)
	s.mu.Unlock()
	for _, fc := range picked {
		fc.close()
	}
	return n
}

// close stops accepting at once, lets the exchanges in progress end for up
// to grace, then closes every connection and waits for their goroutines.
func (s *fwdServer) close(grace time.Duration) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	close(s.done)
	s.mu.Unlock()
	err := s.ln.Close()
	deadline := time.Now().Add(grace)
	for s.closeWhere(func(fc *fwdConn) bool { return fc.inFlight.Load() == 0 }) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.closeWhere(func(*fwdConn) bool { return true })
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// fwdConn is one connection from the previous tier and its connection to
// the on-line instance. requests reads the first and forwards to the
// second; responses the other way.
type fwdConn struct {
	s      *fwdServer
	client net.Conn
	// pending are the requests forwarded and not yet answered, in order;
	// requests closes it when it stops parsing.
	pending chan *exchange
	// inFlight counts the exchanges from their request's parsing to the
	// end of their response.
	inFlight   atomic.Int32
	lastActive atomic.Int64 // unix ns of the last bytes read either way
	done       chan struct{}

	mu         sync.Mutex
	up         net.Conn // nil until the first bytes from the client
	dialErr    error
	cancelDial context.CancelFunc // while dialling
	closed     bool
}

// exchange is one on-line request on its way through a connection.
type exchange struct {
	req     *http.Request // what the response is parsed against (HEAD has no body)
	arrival time.Time
	// The in-proxy's: the clones attached when the request arrived, its
	// copy to them (nil: none), the clones it was too large for, and the
	// on-line result to compare with (nil unless comparing).
	clones []*clone
	copy   *pendingCopy
	skip   []*clone
	online *onlineResult
	// The out-proxy's: the exchange being recorded (nil: not recorded).
	rec *pending
}

// close closes both connections; the goroutines reading them end.
func (fc *fwdConn) close() {
	fc.mu.Lock()
	if fc.closed {
		fc.mu.Unlock()
		return
	}
	fc.closed = true
	up := fc.up
	if fc.cancelDial != nil {
		fc.cancelDial()
	}
	fc.mu.Unlock()
	close(fc.done)
	fc.client.Close()
	if up != nil {
		up.Close()
	}
}

// upstream returns the connection to the on-line instance, dialling it the
// first time (the dial's error is kept: the request gets a 502) and
// starting the goroutine that forwards its responses.
func (fc *fwdConn) upstream() (net.Conn, error) {
	// Only the requests goroutine calls this: no two dials race.
	fc.mu.Lock()
	up, err, closed := fc.up, fc.dialErr, fc.closed
	fc.mu.Unlock()
	switch {
	case up != nil || err != nil:
		return up, err
	case closed:
		return nil, net.ErrClosed
	}
	ctx, cancel := context.WithCancel(context.Background())
	fc.mu.Lock()
	fc.cancelDial = cancel // a close while dialling ends the dial
	fc.mu.Unlock()
	up, err = fc.s.dial(ctx)
	cancel()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.cancelDial = nil
	switch {
	case err != nil:
		fc.dialErr = err
		return nil, err
	case fc.closed:
		up.Close()
		return nil, net.ErrClosed
	}
	fc.up = up
	fc.s.wg.Add(1)
	go fc.responses(up)
	return up, nil
}

// upWriter writes to the on-line instance, connecting on the first write.
type upWriter struct{ fc *fwdConn }

func (w upWriter) Write(b []byte) (int, error) {
	up, err := w.fc.upstream()
	if err != nil {
		return 0, err
	}
	return up.Write(b)
}

// fwdReader reads from src and writes what it read to dst before handing
// it on: the bytes are forwarded before anyone parses them. After a failed
// write it keeps reading (the parsing may still need the bytes) and keeps
// the write's error.
type fwdReader struct {
	src  net.Conn
	dst  io.Writer
	last *atomic.Int64
	werr error
	// Each read notes its time and, with clones set (the in-proxy's
	// requests), the clones attached then, before it forwards the bytes: a
	// request parsed from them arrived then and is copied to those clones,
	// not to one attached after the on-line instance had it.
	clones  *atomic.Pointer[[]*clone]
	readAt  time.Time
	readFor []*clone
}

func (f *fwdReader) Read(b []byte) (int, error) {
	n, err := f.src.Read(b)
	if n > 0 {
		now := time.Now()
		f.last.Store(now.UnixNano())
		f.readAt = now
		if f.clones != nil {
			f.readFor = *f.clones.Load()
		}
		if f.werr == nil {
			if _, werr := f.dst.Write(b[:n]); werr != nil {
				f.werr = werr
			}
		}
	}
	return n, err
}

// requests reads the caller's requests, which its fwdReader has forwarded
// by the time they are parsed, and hands each to the hooks.
func (fc *fwdConn) requests() {
	defer fc.s.wg.Done()
	in := &fwdReader{src: fc.client, dst: upWriter{fc}, last: &fc.lastActive, clones: fc.s.clones}
	br := bufio.NewReaderSize(in, fwdBufSize)
	end := fc.parseRequests(in, br)
	close(fc.pending) // the responses' side ends after the exchanges pending
	switch end {
	case endClosed:
		return
	case endRaw:
		_, _ = io.Copy(io.Discard, br) // forwarded by in, unobserved
	}
	fc.halfClose(in)
}

// requestsEnd is how the parsing of a connection's requests ended.
type requestsEnd int

const (
	endEOF    requestsEnd = iota // the previous tier sent its last bytes
	endRaw                       // what follows is forwarded unparsed
	endClosed                    // the connection was closed
)

// parseRequests parses the requests on br until the connection ends or
// carries something else than HTTP requests as this proxy parses them.
func (fc *fwdConn) parseRequests(in *fwdReader, br *bufio.Reader) requestsEnd {
	hooks := fc.s.hooks
	for {
		req, err := http.ReadRequest(br)
		if fc.dialFailed(in, req) {
			return endClosed
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || in.werr != nil {
				return endEOF
			}
			// Not HTTP as this proxy parses it: the instance judges it.
			fc.s.log.Debug("on-line request not parsed; forwarding the connection unobserved", logKeyErr, err)
			return endRaw
		}
		ex := &exchange{req: req, arrival: in.readAt, clones: in.readFor}
		body := hooks.fwdRequest(ex)
		fc.inFlight.Add(1)
		select {
		case fc.pending <- ex:
		case <-fc.done:
			return endClosed
		}
		if !copyable(req) { // CONNECT or an upgrade: what follows is not HTTP requests
			return endRaw
		}
		_, err = io.Copy(io.Discard, body)
		hooks.fwdBodyRead(ex, err)
		if err != nil || in.werr != nil {
			fc.close() // the responses' side counts the exchange as failed
			return endClosed
		}
	}
}

// dialFailed answers a request that could not be forwarded because the
// upstream could not be reached with a 502, tells the hooks, and reports
// whether that happened (the connection is then done).
func (fc *fwdConn) dialFailed(in *fwdReader, req *http.Request) bool {
	fc.mu.Lock()
	err := fc.dialErr
	fc.mu.Unlock()
	if err == nil {
		return false
	}
	fc.s.hooks.fwdUnreachable(req, err)
	const resp = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 21\r\nConnection: close\r\n\r\nupstream unreachable\n"
	_ = fc.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(fc.client, resp)
	fc.halfCloseClient()
	// Let the previous tier read the answer before the close: a close
	// with its unread bytes in our socket would reset the connection.
	_ = fc.client.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, fc.client, 1<<20)
	fc.close()
	return true
}

// halfClose tells the on-line instance the previous tier sent its last
// bytes; the responses' side ends the connection when the instance closes.
// After a failure to forward, it closes the connection instead.
func (fc *fwdConn) halfClose(in *fwdReader) {
	fc.mu.Lock()
	up := fc.up
	fc.mu.Unlock()
	cw, ok := up.(interface{ CloseWrite() error })
	if in.werr != nil || !ok || cw.CloseWrite() != nil {
		fc.close()
	}
}

func (fc *fwdConn) halfCloseClient() {
	if cw, ok := fc.client.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// responses reads the on-line instance's responses, which its fwdReader
// has forwarded to the previous tier by the time they are parsed, and
// measures each exchange from its request's arrival to its response's
// last byte.
func (fc *fwdConn) responses(up net.Conn) {
	defer fc.s.wg.Done()
	defer fc.close()
	out := &fwdReader{src: up, dst: fc.client, last: &fc.lastActive}
	br := bufio.NewReaderSize(out, fwdBufSize)
	for {
		if _, err := br.Peek(1); err != nil {
			fc.failPending(err)
			return
		}
		ex := fc.nextExchange()
		if ex == nil { // bytes that answer no request parsed
			fc.failPending(errors.New("response to no request"))
			_, _ = io.Copy(io.Discard, br)
			return
		}
		err := fc.s.hooks.fwdResponse(br, ex)
		fc.inFlight.Add(-1)
		if err != nil || out.werr != nil {
			fc.failPending(err)
			if err == errUpgraded {
				_, _ = io.Copy(io.Discard, br)
			}
			return
		}
	}
}

// errUpgraded ends the parsing of a connection that switched protocols.
var errUpgraded = errors.New("switched protocols")

// nextExchange returns the exchange the next response answers, waiting up
// to fwdParseLag for its request to be parsed, or nil when there is none.
func (fc *fwdConn) nextExchange() *exchange {
	select {
	case ex := <-fc.pending:
		return ex
	default:
	}
	t := time.NewTimer(fwdParseLag)
	defer t.Stop()
	select {
	case ex := <-fc.pending:
		return ex
	case <-t.C:
		return nil
	case <-fc.done:
		return nil
	}
}

// failPending counts the exchanges still waiting for a response as
// failed, after err ended the connection's responses. The previous tier
// sees the connection close, as it would have seen the instance's.
func (fc *fwdConn) failPending(err error) {
	n := 0
	for {
		var ex *exchange
		select {
		case ex = <-fc.pending:
		default:
		}
		if ex == nil {
			break
		}
		n++
		fc.inFlight.Add(-1)
		fc.s.hooks.fwdFailed(ex)
	}
	if n > 0 {
		level := slog.LevelWarn
		if errors.Is(err, net.ErrClosed) {
			level = slog.LevelDebug // closed by the proxy
		}
		fc.s.log.Log(context.Background(), level, "on-line connection ended with requests unanswered", "unanswered", n, logKeyErr, err)
	}
}
