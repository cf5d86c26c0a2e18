package httpproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
)

// The hand-over of the clone side. The on-line proxies and the clones
// they feed can live in different processes: the site's process carries
// the on-line requests, and a helper on the sandbox's CPUs (package
// cloneside) does everything a clone needs. Measured on a 2-CPU machine,
// the clone-side work done on the threads that carry the on-line requests
// (sending each copy, reading the clone's answers, replaying the record
// to it) cost the on-line app tier 8–22% at p95; handing each copy over
// as one datagram and doing nothing more for it cost nothing measurable
// (docs/MEASUREMENTS.md, "Where the process's time goes during an
// experiment").
//
// A Tap is the on-line side's end of a SOCK_SEQPACKET Unix socket pair.
// The in-proxy writes each copyable request to it as one datagram as soon
// as the request is forwarded (and, comparing, each on-line response once
// read); the out-proxy each exchange it records. A write never waits: a
// datagram the socket has no room for is dropped and counted, and the
// other end learns how many (each copy carries the count of copies
// dropped before it). Receive, on the other end, feeds the datagrams to
// an InProxy that was never started (its clones get the copies as if it
// had forwarded them) and an OutProxy started as a replica (its record
// gets the exchanges).
//
// Neither end is in the Go runtime's poller, and Receive polls its end
// (every few milliseconds, see pollEvery) rather than wait on it: a datagram then wakes no
// thread of the other process. Waking one costs the sender an
// inter-processor interrupt per datagram, which on a virtual machine is a
// trip through the hypervisor: on this project's 2-CPU development VM,
// waking the clone side on each of a request's four or so datagrams cost
// the on-line process about 60 µs of CPU per request (perf, "bench
// online"). A copy is delivered up to a poll late, which the clone side's
// lag (at least HandoffLag) absorbs.
//
// Why not a stream socket: a non-blocking write to one may take part of
// a message, and the rest would then have to wait on the on-line path. A
// datagram goes whole or not at all. A connected pair's datagrams are
// bounded by the sender's buffer only, which NewTap raises.

// HandoffPoll is how often Receive looks for datagrams at the least, and
// HandoffLag the least clone lag (InConfig.CloneLag) of the in-proxy it
// feeds: a copy reaches Receive up to a poll (and a scheduling delay)
// after it was handed over, and goes to its clone at its arrival plus the
// lag, so that the copies keep their spacing and the clone's response
// times do not count the hand-over. With a longer lag Receive polls less
// often (pollEvery), each poll being a wake-up on the sandbox's CPU that
// takes it from the clone for a moment.
const (
	HandoffPoll = 2 * time.Millisecond
	HandoffLag  = 10 * time.Millisecond
	maxPoll     = 25 * time.Millisecond
)

// pollEvery is how often Receive looks for datagrams for an in-proxy with
// clone lag lag: an eighth of it, within HandoffPoll and 25 ms.
func pollEvery(lag time.Duration) time.Duration {
	return min(max(lag/8, HandoffPoll), maxPoll)
}

// tapSndBuf is the send buffer NewTap asks for: room for a few copies of
// the largest body copied (DefaultMaxCopyBody) and a burst of small ones.
// Without the privilege to go past net.core.wmem_max, the kernel's
// maximum is kept, and larger datagrams count as TooLarge.
const tapSndBuf = 16 << 20

// The kinds of datagram.
const (
	msgCopy     = 'c' // a request's copy
	msgSkip     = 's' // a request not copied: its body was too large
	msgResult   = 'r' // the on-line response a copy's answer is compared with
	msgExchange = 'x' // an on-line exchange with the next tier
)

// Tap is the on-line proxies' end of the hand-over to a clone side in
// another process (see Receive). Make one with NewTap, add it to an
// InProxy and an OutProxy (AddTap), close it when done.
type Tap struct {
	f        *os.File
	rc       syscall.RawConn
	dropped  atomic.Int64 // copies (and skips) not handed over
	sent     atomic.Int64
	tooLarge atomic.Int64
	other    atomic.Int64 // results and exchanges not handed over
	closed   atomic.Bool
}

// TapStats is what a Tap counted.
type TapStats struct {
	// Sent counts the copies handed over, Dropped those the socket had no
	// room for (the clone side counts them as dropped for its clones),
	// TooLarge those larger than a datagram may be (counted as
	// SkippedLarge there).
	Sent, Dropped, TooLarge int64
	// Lost counts on-line results and exchanges not handed over.
	Lost int64
}

// NewTap makes f, one end of a SOCK_SEQPACKET pair, a Tap. f must be in
// blocking mode (as os.NewFile leaves a socket made without
// SOCK_NONBLOCK), so that it is not in the runtime's poller: the tap
// never waits on it, each write is non-blocking by itself. NewTap raises
// its send buffer so that a copy of the largest body fits in one
// datagram. The Tap owns f.
func NewTap(f *os.File) (*Tap, error) {
	rc, err := checkHandoff(f)
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, tapSndBuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, tapSndBuf) // capped at wmem_max
		}
	})
	return &Tap{f: f, rc: rc}, nil
}

// checkHandoff checks that f is a SOCK_SEQPACKET socket in blocking mode.
func checkHandoff(f *os.File) (syscall.RawConn, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		fl, nerr := unix.FcntlInt(fd, unix.F_GETFL, 0)
		switch nb := fl&unix.O_NONBLOCK != 0; {
		case err != nil:
			serr = os.NewSyscallError("getsockopt", err)
		case typ != unix.SOCK_SEQPACKET:
			serr = errors.New("the socket is not SOCK_SEQPACKET: a copy must go whole or not at all")
		case nerr != nil:
			serr = nerr
		case nb:
			serr = errors.New("the socket is non-blocking, so likely in the runtime's poller: hand over one made blocking (os.NewFile of a socketpair's descriptor)")
		}
	}); err != nil {
		return nil, err
	}
	return rc, serr
}

// Close closes the tap's socket: the other end's Receive ends.
func (t *Tap) Close() error {
	t.closed.Store(true)
	return t.f.Close()
}

// Stats returns what the tap counted since it was made.
func (t *Tap) Stats() TapStats {
	return TapStats{Sent: t.sent.Load(), Dropped: t.dropped.Load(), TooLarge: t.tooLarge.Load(), Lost: t.other.Load()}
}

// write sends b as one datagram without waiting: it reports
// unix.EAGAIN when the socket has no room, unix.EMSGSIZE when b can never
// fit, or another error.
func (t *Tap) write(b []byte) error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	var serr error
	err := t.rc.Write(func(fd uintptr) bool {
		for {
			serr = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, nil)
			if serr != unix.EINTR {
				return true // never wait for room: that is the on-line path's time
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// sendCopy hands cr over, and reports whether it went; id names the copy
// for its on-line result (0: not compared).
func (t *Tap) sendCopy(cr *copyReq, id uint64) bool {
	b := encPool.Get().(*enc)
	b.reset(msgCopy)
	b.u64(uint64(t.dropped.Load()))
	b.u64(id)
	b.i64(cr.arrival.UnixNano())
	b.str(cr.method)
	b.str(cr.host)
	b.str(cr.path)
	b.str(cr.rawPath)
	b.str(cr.query)
	b.header(cr.header)
	b.bytes(cr.body)
	err := t.write(b.b)
	encPool.Put(b)
	switch {
	case err == nil:
		t.sent.Add(1)
		return true
	case errors.Is(err, unix.EMSGSIZE):
		t.tooLarge.Add(1)
		t.sendSkip()
	default:
		t.dropped.Add(1)
	}
	return false
}

// sendSkip tells the other side that a request was not copied, its body
// being too large.
func (t *Tap) sendSkip() {
	var b [9]byte
	b[0] = msgSkip
	binary.LittleEndian.PutUint64(b[1:], uint64(t.dropped.Load()))
	if t.write(b[:]) != nil {
		t.dropped.Add(1) // not copied either way; counted as dropped there
	}
}

// sendResult hands over the on-line response to the copy called id.
func (t *Tap) sendResult(id uint64, ok bool, status int, body []byte) {
	b := encPool.Get().(*enc)
	b.reset(msgResult)
	b.u64(id)
	if ok {
		b.u8(1)
	} else {
		b.u8(0)
	}
	b.u32(uint32(status))
	b.bytes(body)
	if t.write(b.b) != nil {
		t.other.Add(1) // the copy's answer is not compared
	}
	encPool.Put(b)
}

// sendExchange hands over a recorded exchange.
func (t *Tap) sendExchange(ex *Exchange) {
	b := encPool.Get().(*enc)
	b.reset(msgExchange)
	b.str(ex.Key)
	b.str(ex.Route)
	b.str(ex.Method)
	b.str(ex.URI)
	b.i64(ex.Start.UnixNano())
	b.i64(int64(ex.Latency))
	b.u32(uint32(ex.Status))
	b.header(ex.Header)
	b.bytes(ex.Body)
	if t.write(b.b) != nil {
		t.other.Add(1)
	}
	encPool.Put(b)
}

// Config returns the proxy's configuration, defaults filled in: what a
// clone side in another process is started with.
func (p *InProxy) Config() InConfig { return p.cfg }

// Config returns the proxy's configuration, defaults filled in.
func (p *OutProxy) Config() OutConfig { return p.cfg }

// AddTap hands a copy of every request that arrives from now on to t (see
// Tap), with Compare the on-line response too, besides copying it to the
// proxy's own clones. Adding a tap twice does nothing.
func (p *InProxy) AddTap(t *Tap) { p.taps.add(t) }

// RemoveTap stops handing copies to t.
func (p *InProxy) RemoveTap(t *Tap) { p.taps.remove(t) }

func (p *InProxy) tapList() []*Tap { return p.taps.list() }

// AddTap hands every exchange recorded from now on to t (see Tap).
// Adding a tap twice does nothing.
func (p *OutProxy) AddTap(t *Tap) { p.taps.add(t) }

// RemoveTap stops handing exchanges to t.
func (p *OutProxy) RemoveTap(t *Tap) { p.taps.remove(t) }

func (p *OutProxy) tapList() []*Tap { return p.taps.list() }

// tapSet is a proxy's taps: read on the on-line path without a lock,
// changed under one.
type tapSet struct {
	mu   sync.Mutex
	taps atomic.Pointer[[]*Tap]
}

func (s *tapSet) list() []*Tap {
	if ts := s.taps.Load(); ts != nil {
		return *ts
	}
	return nil
}

func (s *tapSet) add(t *Tap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.list(); !slices.Contains(cur, t) {
		next := append(slices.Clip(cur), t)
		s.taps.Store(&next)
	}
}

func (s *tapSet) remove(t *Tap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := slices.DeleteFunc(slices.Clone(s.list()), func(x *Tap) bool { return x == t })
	s.taps.Store(&next)
}

// StartReplica starts an out-proxy with no on-line face: nothing it
// forwards is recorded, its record is fed by Receive from the on-line
// out-proxy of another process, and it answers clones only (ServeClone,
// ServeCloneOn). Close ends it.
func (p *OutProxy) StartReplica() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return fmt.Errorf("start out-proxy replica: closed")
	case p.stopSweep != nil:
		return fmt.Errorf("start out-proxy replica: %w: already started", justrunit.ErrExists)
	}
	p.stopSweep, p.sweepDone = make(chan struct{}), make(chan struct{})
	go p.sweep(p.stopSweep, p.sweepDone)
	return nil
}

// Receive reads what a Tap hands over on f (the pair's other end, in
// blocking mode as NewTap's) until the tap's side closes it or ctx ends:
// copies go to in's clones (in was never started: its clones are fed from
// here only), on-line results to the copies they answer, and exchanges
// into out's record (out, started with StartReplica, may be nil). It
// polls f (see Tap) every eighth of in's CloneLag, every HandoffPoll at
// the most often, so that lag should be at least HandoffLag. It returns nil when the other side closed f, else the error
// that ended it; f is closed either way.
func Receive(ctx context.Context, f *os.File, in *InProxy, out *OutProxy) error {
	defer f.Close()
	rc, err := checkHandoff(f)
	if err != nil {
		return fmt.Errorf("receive copies: %w", err)
	}
	r := &receiver{in: in, out: out, pending: map[uint64]pendingResult{}}
	defer r.end()
	if in.cfg.Compare {
		r.keep = in.cfg.CopyTimeout + in.cfg.CloneLag + time.Second
	}
	size := max(in.cfg.MaxCopyBody, in.cfg.MaxCompareBody)
	if out != nil {
		size = max(size, out.cfg.MaxBody)
	}
	buf := make([]byte, size+1<<20) // a body and its head
	poll := time.NewTicker(pollEvery(in.cfg.CloneLag))
	defer poll.Stop()
	lastSweep := time.Now()
	for {
		// Read what is there, without waiting.
		for {
			var n, flags int
			var rerr error
			if err := rc.Read(func(fd uintptr) bool {
				n, _, flags, _, rerr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_DONTWAIT)
				return true
			}); err != nil {
				return fmt.Errorf("receive copies: %w", err)
			}
			switch {
			case rerr == unix.EAGAIN || rerr == unix.EINTR:
			case rerr != nil:
				return fmt.Errorf("receive copies: %w", os.NewSyscallError("recvmsg", rerr))
			case n == 0:
				return nil // the tap's side closed its end
			case flags&unix.MSG_TRUNC != 0:
				in.log.Warn("a handed-over datagram was larger than the receive buffer: skipped", "bytes", n)
				continue
			default:
				if err := r.handle(buf[:n]); err != nil {
					in.log.Warn("a handed-over datagram did not parse: skipped", logKeyErr, err)
				}
				continue
			}
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-poll.C:
			if r.keep > 0 && now.Sub(lastSweep) > time.Second {
				r.sweep(now)
				lastSweep = now
			}
		}
	}
}

// receiver is Receive's state.
type receiver struct {
	in      *InProxy
	out     *OutProxy
	dropped uint64 // the tap's count of dropped copies, last seen
	// pending are the copies compared, waiting for their on-line result,
	// kept for keep at most.
	pending map[uint64]pendingResult
	keep    time.Duration
}

type pendingResult struct {
	o     *onlineResult
	since time.Time
}

func (r *receiver) handle(b []byte) error {
	d := dec{b: b[1:]}
	switch b[0] {
	case msgCopy:
		r.catchUp(d.u64())
		id := d.u64()
		cr := &copyReq{arrival: time.Unix(0, d.i64())}
		cr.method, cr.host, cr.path, cr.rawPath, cr.query = d.str(), d.str(), d.str(), d.str(), d.str()
		cr.header = d.header()
		cr.body = d.bytes()
		if d.err != nil {
			return d.err
		}
		clones := *r.in.clones.Load()
		if id != 0 && r.keep > 0 {
			cr.online = &onlineResult{done: make(chan struct{})}
			r.pending[id] = pendingResult{cr.online, time.Now()}
		}
		dispatch(cr, clones)
		if cr.online != nil {
			cr.online.markCopied()
		}
	case msgSkip:
		r.catchUp(d.u64())
		if d.err != nil {
			return d.err
		}
		for _, c := range *r.in.clones.Load() {
			c.skippedLarge.Add(1)
		}
	case msgResult:
		id := d.u64()
		ok := d.u8() == 1
		status := int(d.u32())
		body := d.bytes()
		if d.err != nil {
			return d.err
		}
		if pr, found := r.pending[id]; found {
			delete(r.pending, id)
			pr.o.finish(ok, status, body)
		}
	case msgExchange:
		ex := &Exchange{Key: d.str(), Route: d.str(), Method: d.str(), URI: d.str()}
		ex.Start = time.Unix(0, d.i64())
		ex.Latency = time.Duration(d.i64())
		ex.Status = int(d.u32())
		ex.Header = d.header()
		ex.Body = d.bytes()
		if d.err != nil {
			return d.err
		}
		if r.out != nil {
			if r.out.rec.Add(ex) {
				r.out.recorded.Add(1)
			} else {
				r.out.notRecorded.Add(1)
			}
		}
	default:
		return fmt.Errorf("unknown datagram kind %q", b[0])
	}
	return nil
}

// catchUp counts, for every clone, the copies the tap dropped since the
// last datagram: total is its running count.
func (r *receiver) catchUp(total uint64) {
	if total <= r.dropped {
		return
	}
	n := int64(total - r.dropped)
	r.dropped = total
	for _, c := range *r.in.clones.Load() {
		c.dropped.Add(n)
	}
}

// sweep gives up the on-line results that did not come (their datagram
// found no room): those copies' answers are not compared.
func (r *receiver) sweep(now time.Time) {
	for id, pr := range r.pending {
		if now.Sub(pr.since) > r.keep {
			delete(r.pending, id)
			pr.o.finish(false, 0, nil)
		}
	}
}

// end gives up every result still awaited.
func (r *receiver) end() {
	for id, pr := range r.pending {
		delete(r.pending, id)
		pr.o.finish(false, 0, nil)
	}
}

// enc builds a datagram: fixed-size integers little-endian, strings and
// byte slices with a 32-bit length first, a header as a count of fields,
// each a name and a count of values.
type enc struct{ b []byte }

var encPool = sync.Pool{New: func() any { return &enc{b: make([]byte, 0, 4<<10)} }}

func (e *enc) reset(kind byte) { e.b = append(e.b[:0], kind) }
func (e *enc) u8(v byte)       { e.b = append(e.b, v) }
func (e *enc) u32(v uint32)    { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64)    { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) i64(v int64)     { e.u64(uint64(v)) }
func (e *enc) str(s string)    { e.u32(uint32(len(s))); e.b = append(e.b, s...) }
func (e *enc) bytes(p []byte)  { e.u32(uint32(len(p))); e.b = append(e.b, p...) }

func (e *enc) header(h http.Header) {
	e.u32(uint32(len(h)))
	for k, vs := range h {
		e.str(k)
		e.u32(uint32(len(vs)))
		for _, v := range vs {
			e.str(v)
		}
	}
}

// dec reads what enc wrote; the first short read sets err, and every read
// after it returns zero values.
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = errors.New("datagram cut short")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *dec) i64() int64 { return int64(d.u64()) }

func (d *dec) str() string { return string(d.take(int(d.u32()))) }

// bytes returns a copy: the datagram's buffer is reused.
func (d *dec) bytes() []byte {
	n := int(d.u32())
	if n == 0 {
		return nil
	}
	return slices.Clone(d.take(n))
}

func (d *dec) header() http.Header {
	n := int(d.u32())
	if d.err != nil {
		return nil
	}
	if n > len(d.b) { // each field takes bytes: a larger count is garbage
		d.err = errors.New("datagram cut short")
		return nil
	}
	h := make(http.Header, n)
	for range n {
		k := d.str()
		m := int(d.u32())
		if d.err != nil || m > len(d.b) {
			d.err = errors.New("datagram cut short")
			return nil
		}
		vs := make([]string, m)
		for i := range vs {
			vs[i] = d.str()
		}
		h[k] = vs
	}
	return h
}
