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
	"strings"
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
// parsing makes of it (a request or a response it cannot parse, a response
// without a request) changes nothing on the wire: from that point the
// connection is forwarded without being observed, and the exchanges it
// could not follow to their end are counted as unobserved, not failed (the
// caller may well have had its answer). What each proxy does with the
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
	// before). A connection forwarded unobserved (upgraded, or not parsed)
	// is left to its ends' timeouts: the proxy cannot tell whether it is
	// idle, and a websocket may rightly be silent for minutes.
	fwdIdleTimeout = 120 * time.Second
	// fwdMaxPipelined bounds the requests forwarded on one connection and
	// not yet answered; beyond it the proxy stops reading the connection
	// until a response completes.
	fwdMaxPipelined = 64
	// fwdParseLag is how long a response waits for its request to be
	// parsed (the request's bytes are forwarded before it is parsed, so an
	// instance can answer first); after it, the bytes are taken as a
	// response to no request and the connection goes on unobserved. It is
	// also how long the requests after one that offered to switch
	// protocols wait for that request's final status (whether they are
	// HTTP requests or the new protocol's bytes depends on it) before the
	// connection goes on unobserved; they are forwarded meanwhile.
	fwdParseLag = time.Second
	// fwdDialTimeout bounds the connection to the on-line instance.
	fwdDialTimeout = 5 * time.Second
	// fwdMaxHead bounds the bytes the parser reads for one request or
	// response head (http.Server's default MaxHeaderBytes), on the
	// on-line path and on the clones' connections (see headBound): a head
	// that has not ended by then, a huge header line or bytes without a
	// newline, is not parsed; the on-line connection goes on unobserved,
	// a clone's copy fails. Without it the parser would buffer the head's
	// lines without bound. What else it reads is bounded already: the
	// read buffer holds at most its size (fwdBufSize, poolBufSize), Go's
	// parser refuses a chunk-size line over 4 KiB and a trailer that does
	// not fit in the read buffer.
	fwdMaxHead = http.DefaultMaxHeaderBytes
)

// fwdHooks is what a proxy does with the exchanges its forwarder sees. The
// forwarder calls request and bodyRead from a connection's requests
// goroutine, response from its responses goroutine, in the order of the
// exchanges; failed and unobserved from either, once per exchange that
// response did not end.
type fwdHooks interface {
	// fwdRequest is called with each request parsed (ex.req, ex.arrival
	// and ex.clones set), before its body is read, and returns the reader
	// to read the body through: ex.req.Body or a tee of it.
	fwdRequest(ex *exchange) io.Reader
	// fwdBodyRead is called after the body was read to its end and
	// forwarded in full (err nil), or with the error that cut either
	// short. It is not called for a request that opens a tunnel (see
	// opensTunnel).
	fwdBodyRead(ex *exchange, err error)
	// fwdResponse is called with the head of ex's final response, a 101
	// or after any 1xx (see readResponse); it reads the response's body
	// from br to its end — the bytes are forwarded already — and ends the
	// exchange at out.lastRead(). It returns errUpgraded after a 101 (the
	// exchange ended), or the error that cut the body short, leaving the
	// exchange for the forwarder to end with fwdFailed or fwdUnobserved.
	fwdResponse(br *bufio.Reader, out *fwdReader, ex *exchange, resp *http.Response) error
	// fwdFailed ends an exchange that got no response, or part of one:
	// the upstream's connection ended or failed, or the caller's did.
	fwdFailed(ex *exchange)
	// fwdUnobserved ends an exchange whose response the proxy could not
	// follow (it could not parse it, or one before it): the bytes went on
	// to the caller unparsed, and what they said is unknown.
	fwdUnobserved(ex *exchange)
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
		fc := &fwdConn{s: s, client: c, pending: make(chan *exchange, fwdMaxPipelined), done: make(chan struct{}), unobserved: make(chan struct{})}
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
			s.closeIdle(now)
		}
	}
}

// closeIdle closes the connections idle at now: no exchange in progress,
// nothing read either way for fwdIdleTimeout, and not forwarded unparsed.
func (s *fwdServer) closeIdle(now time.Time) {
	s.closeWhere(func(fc *fwdConn) bool {
		return !fc.relaying.Load() && fc.inFlight.Load() == 0 && now.UnixNano()-fc.lastActive.Load() > int64(fwdIdleTimeout)
	})
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
	// relaying is set once either direction is forwarded unparsed: the
	// proxy can no longer tell whether the connection is idle.
	relaying atomic.Bool
	// unobserved is closed when the responses are no longer parsed; the
	// requests' side then stops parsing too, and ends what it handed on.
	unobserved     chan struct{}
	unobservedOnce sync.Once

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
	// verdict, for a request that offered to switch protocols, is closed
	// once its final response's head was read (or the response failed);
	// switched then tells whether what follows is no longer HTTP. Only the
	// responses' side sets them (settle).
	verdict  chan struct{}
	switched bool
	settled  bool
}

// settle tells the requests' side, waiting after a request that offered
// to switch protocols, whether the connection switched; only the first
// call counts.
func (ex *exchange) settle(switched bool) {
	if ex.verdict == nil || ex.settled {
		return
	}
	ex.settled, ex.switched = true, switched
	close(ex.verdict)
}

// readResponse reads the head of ex's final response from br, which reads
// from out, past any 1xx (100 Continue, 103 Early Hints); the bytes are
// forwarded already. It returns errUpgraded after a 101, and
// errHeadTooLarge for a head over fwdMaxHead. Once the final status is
// known the requests' side, if it waits for it, goes on.
func readResponse(br *bufio.Reader, out *fwdReader, ex *exchange) (*http.Response, error) {
	defer out.endHead()
	for {
		out.startHead() // each 1xx head has its own allowance
		resp, err := http.ReadResponse(br, ex.req)
		switch {
		case err != nil:
			return nil, err
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return resp, errUpgraded
		case resp.StatusCode >= 200:
			ex.settle(false)
			return resp, nil
		}
	}
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
	fc.s.mu.Lock()
	delete(fc.s.conns, fc)
	fc.s.mu.Unlock()
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
// the write's error. It keeps src's first error too, so that a parsing
// error can be told from the connection's end or failure.
type fwdReader struct {
	src  net.Conn
	dst  io.Writer
	last *atomic.Int64
	werr error // writing to dst failed
	rerr error // reading src ended (io.EOF) or failed
	// Each read notes its time and, with clones set (the in-proxy's
	// requests), the clones attached then, before it forwards the bytes: a
	// request parsed from them arrived then and is copied to those clones,
	// not to one attached after the on-line instance had it.
	clones  *atomic.Pointer[[]*clone]
	readAt  time.Time
	readFor []*clone
	headBound
}

// lastRead is when the last bytes read arrived, before they were
// forwarded. Once a response's body was read to its end it is when the
// response ended, as an exchange's end is counted: both proxies end an
// on-line exchange there, not after the write that forwards the last
// bytes, because what they compare it with includes no such write — the
// in-proxy ends a clone's response when it has read it, and the
// out-proxy replays a recorded latency before its own write of the answer
// (counting the on-line write in the latency put it in a clone's calls
// twice: 0.2–0.4 ms each in the auction example on a 2-CPU machine). It
// is late by the time the last bytes waited in the socket while this
// side was busy, forwarding the bytes before them among other things.
func (f *fwdReader) lastRead() time.Time { return f.readAt }

// errHeadTooLarge is what the parser reads once a head it is parsing
// exceeds fwdMaxHead: the head is not parsed.
var errHeadTooLarge = errors.New("message head too large to parse")

// headBound bounds the bytes a reader hands a parser for one message head
// to fwdMaxHead: Go's parser buffers a head's lines whole, without a bound
// of its own. The forwarder's readers and the clones' connections (whose
// responses a clone, not a trusted peer, writes) read through one.
type headBound struct {
	// left, while inHead, is how many more bytes the parser may read for
	// the head it is parsing.
	inHead bool
	left   int
}

// startHead bounds what the parser reads from here to fwdMaxHead, until
// endHead: the parser is about to read a head. The bytes its read buffer
// holds already come on top.
func (h *headBound) startHead() { h.inHead, h.left = true, fwdMaxHead }

// endHead lifts startHead's bound: the head was read, or will not be.
func (h *headBound) endHead() { h.inHead = false }

// read reads from src into b, no more than the head being parsed may
// still take; once it has taken fwdMaxHead it fails with errHeadTooLarge
// without reading.
func (h *headBound) read(src io.Reader, b []byte) (int, error) {
	if !h.inHead {
		return src.Read(b)
	}
	if h.left <= 0 {
		return 0, errHeadTooLarge
	}
	n, err := src.Read(b[:min(len(b), h.left)])
	h.left -= n
	return n, err
}

// headReader is a reader under a headBound.
type headReader struct {
	r io.Reader
	headBound
}

func (h *headReader) Read(b []byte) (int, error) { return h.read(h.r, b) }

func (f *fwdReader) Read(b []byte) (int, error) {
	n, err := f.read(f.src, b)
	if err == errHeadTooLarge {
		// Not a read, nor the connection's error: the bytes stay in the
		// socket until the parsing gives up and relay reads (and
		// forwards) them, at once.
		return 0, err
	}
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
	if err != nil && f.rerr == nil {
		f.rerr = err
	}
	return n, err
}

// relay forwards the rest of r's stream unparsed (what br holds was
// forwarded when it was read) until src ends or dst fails.
func relay(br *bufio.Reader, r *fwdReader) {
	for r.werr == nil {
		if _, err := br.Peek(1); err != nil {
			return
		}
		_, _ = br.Discard(br.Buffered())
	}
}

// requests reads the caller's requests, which its fwdReader has forwarded
// by the time they are parsed, and hands each to the hooks.
func (fc *fwdConn) requests() {
	defer fc.s.wg.Done()
	in := &fwdReader{src: fc.client, dst: upWriter{fc}, last: &fc.lastActive, clones: fc.s.clones}
	br := bufio.NewReaderSize(in, fwdBufSize)
	end := fc.parseRequests(in, br)
	close(fc.pending) // the responses' side ends after the exchanges pending
	if fc.isUnobserved() {
		fc.endPending(nil, true) // nobody else will
	}
	switch end {
	case endClosed:
		return
	case endRaw:
		fc.relaying.Store(true)
		relay(br, in) // forwarded by in, unobserved
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
	var offered *exchange // the last request, when it offered to switch protocols
	for {
		if fc.isUnobserved() {
			return fc.stopParsing()
		}
		if offered != nil {
			if end, ok := fc.awaitVerdict(br, offered); !ok {
				return end
			}
			offered = nil
		}
		in.startHead()
		req, err := http.ReadRequest(br)
		in.endHead()
		if fc.dialFailed(in, req) {
			return endClosed
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || in.werr != nil {
				return endEOF
			}
			// Not HTTP as this proxy parses it, or a head over
			// fwdMaxHead: the instance judges it.
			fc.s.log.Debug("on-line request not parsed; forwarding the connection unobserved", logKeyErr, err)
			return endRaw
		}
		if fc.isUnobserved() {
			return fc.stopParsing() // its response could not be told from the others
		}
		ex := &exchange{req: req, arrival: in.readAt, clones: in.readFor}
		if !opensTunnel(req) && asksUpgrade(req.Header) {
			ex.verdict = make(chan struct{})
		}
		body := hooks.fwdRequest(ex)
		fc.inFlight.Add(1)
		select {
		case fc.pending <- ex:
		case <-fc.unobserved:
			fc.inFlight.Add(-1)
			hooks.fwdBodyRead(ex, errUnobserved)
			hooks.fwdUnobserved(ex)
			return fc.stopParsing()
		case <-fc.done:
			return endClosed
		}
		if opensTunnel(req) {
			return endRaw
		}
		_, err = io.Copy(io.Discard, body)
		if err == nil {
			err = in.werr // the on-line instance did not get it all
		}
		hooks.fwdBodyRead(ex, err)
		if err != nil {
			fc.close() // the responses' side counts the exchange as failed
			return endClosed
		}
		if ex.verdict != nil {
			offered = ex
		}
	}
}

// errUnobserved cuts short a request whose connection is no longer parsed.
var errUnobserved = errors.New("connection no longer observed")

// awaitVerdict is called after a request that offered to switch protocols
// (Upgrade), once the next bytes came: it waits for that request's
// response, which tells whether those bytes are HTTP requests. ok false:
// they are not (the instance switched, or did not answer within
// fwdParseLag, or the connection is no longer parsed), and parsing ends
// with end. The bytes are forwarded meanwhile as they come.
func (fc *fwdConn) awaitVerdict(br *bufio.Reader, offered *exchange) (end requestsEnd, ok bool) {
	if _, err := br.Peek(1); err != nil {
		return 0, true // the connection's end: ReadRequest sees it
	}
	t := time.NewTimer(fwdParseLag)
	defer t.Stop()
	select {
	case <-offered.verdict:
		if !offered.switched {
			return 0, true
		}
		return endRaw, false
	case <-fc.unobserved:
		return fc.stopParsing(), false
	case <-t.C:
		fc.s.log.Debug("request after an upgrade offer came before its answer; forwarding the connection unobserved")
		return endRaw, false
	case <-fc.done:
		return endClosed, false
	}
}

// isUnobserved reports whether the responses are no longer parsed.
func (fc *fwdConn) isUnobserved() bool {
	select {
	case <-fc.unobserved:
		return true
	default:
		return false
	}
}

// stopParsing ends the requests' parsing once the responses' is over: the
// exchanges handed on since the responses' side gave up are ended here.
func (fc *fwdConn) stopParsing() requestsEnd {
	fc.endPending(nil, true)
	return endRaw
}

// opensTunnel reports whether what follows r on its connection is not
// HTTP/1 requests, whatever the answer: r is a CONNECT, or HTTP/2's
// connection preface (h2c with prior knowledge).
func opensTunnel(r *http.Request) bool {
	return r.Method == http.MethodConnect || r.Method == "PRI" && r.ProtoMajor == 2
}

// asksUpgrade reports whether a message with header h offers or asks to
// switch protocols: an Upgrade field, or "upgrade" among its Connection
// options.
func asksUpgrade(h http.Header) bool {
	if len(h["Upgrade"]) > 0 {
		return true
	}
	for _, v := range h["Connection"] {
		for opt := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(opt), "upgrade") {
				return true
			}
		}
	}
	return false
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
// last byte. A response it cannot parse does not end the connection: the
// rest is forwarded unparsed, as a direct connection would have carried
// it.
func (fc *fwdConn) responses(up net.Conn) {
	defer fc.s.wg.Done()
	defer fc.close()
	out := &fwdReader{src: up, dst: fc.client, last: &fc.lastActive}
	br := bufio.NewReaderSize(out, fwdBufSize)
	hooks := fc.s.hooks
	for {
		if _, err := br.Peek(1); err != nil {
			fc.endPending(err, false)
			return
		}
		ex := fc.nextExchange()
		if ex == nil { // bytes that answer no request parsed
			fc.unobserve(errors.New("response to no request"))
			relay(br, out)
			return
		}
		resp, err := readResponse(br, out, ex)
		if err == nil || err == errUpgraded {
			err = hooks.fwdResponse(br, out, ex, resp)
		}
		ex.settle(err != nil) // unless the head settled it

		switch {
		case err == nil:
			fc.inFlight.Add(-1)
			if out.werr != nil { // the previous tier went away
				fc.endPending(out.werr, false)
				return
			}
		case err == errUpgraded:
			fc.inFlight.Add(-1)
			fc.unobserve(err)
			relay(br, out)
			return
		case out.rerr != nil || out.werr != nil:
			// The instance's connection ended or failed mid-response,
			// or the previous tier's did.
			hooks.fwdFailed(ex)
			fc.inFlight.Add(-1)
			fc.endPending(err, false)
			return
		default:
			// Not a response as Go's parser takes it (a transfer coding
			// it refuses, a malformed header, a head over fwdMaxHead, a
			// body after a HEAD's, not HTTP/1 at all): the previous tier
			// judges it, and gets every byte of it and of what follows.
			fc.s.log.Debug("on-line response not parsed; forwarding the connection unobserved", logKeyErr, err)
			hooks.fwdUnobserved(ex)
			fc.inFlight.Add(-1)
			fc.unobserve(err)
			relay(br, out)
			return
		}
	}
}

// unobserve stops the parsing of the connection's responses (the
// requests' side stops at its next request) and ends the exchanges
// pending as unobserved.
func (fc *fwdConn) unobserve(err error) {
	fc.relaying.Store(true)
	fc.unobservedOnce.Do(func() { close(fc.unobserved) })
	fc.endPending(err, true)
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

// endPending ends the exchanges still waiting for a response: as failed
// after err ended the connection's responses (the previous tier sees the
// connection close, as it would have seen the instance's), or as
// unobserved when the responses go on unparsed.
func (fc *fwdConn) endPending(err error, unobserved bool) {
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
		if unobserved {
			fc.s.hooks.fwdUnobserved(ex)
		} else {
			fc.s.hooks.fwdFailed(ex)
		}
	}
	if n == 0 {
		return
	}
	switch {
	case unobserved:
		fc.s.log.Debug("on-line connection forwarded unobserved with requests unanswered", "unobserved", n, logKeyErr, err)
	case errors.Is(err, net.ErrClosed): // closed by the proxy
		fc.s.log.Debug("on-line connection ended with requests unanswered", "unanswered", n, logKeyErr, err)
	default:
		fc.s.log.Warn("on-line connection ended with requests unanswered", "unanswered", n, logKeyErr, err)
	}
}
