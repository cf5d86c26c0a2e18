package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
)

// In-proxy defaults, used where an InConfig field is zero.
const (
	DefaultMaxCopyBody    = 1 << 20 // 1 MiB
	DefaultMaxInFlight    = 256
	DefaultMaxCloneBytes  = 64 << 20 // 64 MiB
	DefaultCopyTimeout    = 10 * time.Second
	DefaultMaxCompareBody = 1 << 20
	// DefaultShutdownGrace is how long Close lets on-line requests in
	// progress finish.
	DefaultShutdownGrace = 5 * time.Second
)

// MaxCloneLag is the longest CloneLag: half the out-proxy's default record
// window, so that a lagged clone still finds the on-line exchanges.
const MaxCloneLag = DefaultWindow / 2

// copyOverhead is what a copy in flight is charged besides its body
// (twice: as copied, and in the request as written).
const copyOverhead = 2 << 10

// InConfig configures an InProxy. Zero fields take the Default* values.
type InConfig struct {
	// Online is the on-line instance every request is forwarded to.
	Online *url.URL
	// MaxCopyBody is the largest request body copied to clones; a request
	// with a larger body is forwarded on-line as usual and counted as
	// SkippedLarge for every clone.
	MaxCopyBody int64
	// MaxInFlight bounds the copies in flight to one clone; a copy that
	// would exceed it is dropped and counted.
	MaxInFlight int
	// MaxCloneBytes bounds the memory held for one clone: its copies in
	// flight or waiting for their time (bodies plus a fixed charge per
	// copy) and, with Compare, the response bodies kept to compare its
	// responses — the clone's own, and the on-line ones they are to be
	// compared with (see Compare). Beyond it copies are dropped (Dropped)
	// and responses not compared (CompareDropped); nothing waits.
	MaxCloneBytes int64
	// CopyTimeout bounds one copy, from its dispatch to the end of the
	// clone's response; a copy that times out counts as an error.
	CopyTimeout time.Duration
	// Compare turns on the comparison of each clone response with the
	// on-line response (status and body, with Masks applied to both).
	// The on-line body kept for it is charged, once the on-line response
	// has ended, to the bytes (MaxCloneBytes) of every clone whose copy
	// of the request may still be compared with it — sent or waiting for
	// its time, or answered and waiting for the on-line response — each
	// clone charged its full size, until that clone's comparison is done
	// or given up (the copy failed or timed out, the clone was detached);
	// it is let go once no clone is charged for it. A clone that has no
	// room for it does not compare that response (CompareDropped). Before
	// that, while the on-line response is read and until its request's
	// copies have gone out, the kept body is charged to no clone: there
	// is at most one such per on-line connection (its responses are read
	// one at a time, in the order of its requests), of at most
	// MaxCompareBody.
	Compare bool
	// MaxCompareBody is the largest body compared, on-line or a clone's;
	// larger responses are not compared.
	MaxCompareBody int64
	// Masks hide values that legitimately differ when comparing.
	Masks Masks
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// ObserveOnline, when set, is called with every on-line response's
	// time (ok false for a failure), e.g. to export metrics. It runs on
	// the on-line path and must be fast.
	ObserveOnline func(d time.Duration, ok bool)
	// ObserveCopy, when set, is called for every copy to a clone with
	// whether it was sent (false: dropped). It must be fast.
	ObserveCopy func(sent bool)
	// CloneLag delays every copy by this much after the on-line arrival:
	// the copies keep the on-line inter-arrival times, shifted. Behind an
	// out-proxy this gives the on-line instance a head start, so that its
	// next-tier exchanges are in the record before the clone makes the
	// same calls; without it, a clone faster than the on-line instance
	// waits for the on-line instance at every next-tier call and is held
	// to its pace. Copies waiting for their time count in MaxCloneBytes
	// (not in MaxInFlight, which bounds the copies sent and unanswered).
	// The clone's response times count from the copy's dispatch at the
	// lagged arrival. 0: no lag.
	CloneLag time.Duration
}

// InProxy plays the previous tier. It forwards every request to the on-line
// instance unchanged and sends a copy of it to each attached clone as soon
// as the on-line request is on the wire (microseconds after it arrived),
// whatever the clone is doing: copies keep the on-line arrival times (open
// loop), they are not paced by the clone's answers; with a clone lag
// (InConfig.CloneLag) each copy goes out that much later, the spacing kept.
// Copies never wait on a clone: a copy that cannot be sent within the
// clone's bounds (copies and bytes in flight or queued) is dropped and
// counted. The proxy measures each clone's response times and throughput as
// the previous tier would see them (from the on-line arrival, or with a lag
// from the time the copy goes out), and the on-line instance's too.
//
// Start serves the proxy on an address. The on-line path forwards each
// connection byte for byte to a connection of its own to the on-line
// instance and parses the bytes only to observe them (forward.go). Clones are
// attached and detached at run time with AddClone and RemoveClone (or
// through ControlHandler); each clone's window is read and reset on its
// own with CloneStats.
type InProxy struct {
	cfg    InConfig
	log    *slog.Logger
	online *measure.Recorder
	// watchers get every on-line response time too (see Watch).
	watchers atomic.Pointer[[]*measure.Recorder]
	// unobserved counts the on-line exchanges of the window forwarded but
	// not measured (InStats.Unobserved).
	unobserved atomic.Int64

	closeOnce sync.Once // Close's work: once, and later calls wait for it

	mu     sync.Mutex // serialises clone changes, Start and Close
	clones atomic.Pointer[[]*clone]
	// taps hand the copies over to clones in other processes (see Tap).
	taps    tapSet
	copyIDs atomic.Uint64 // names each copy handed over for its on-line result
	srv     *fwdServer
	closed  bool
}

// NewInProxy checks cfg and returns a proxy that is not yet listening.
func NewInProxy(cfg InConfig) (*InProxy, error) {
	if cfg.Online == nil {
		return nil, justrunit.Invalid("online", nil, "missing on-line instance URL")
	}
	if _, err := ParseUpstream("online", cfg.Online.String()); err != nil {
		return nil, err
	}
	if path := cfg.Online.EscapedPath(); path != "" && path != "/" {
		return nil, justrunit.Invalid("online", cfg.Online.String(), "must not have a path: the in-proxy forwards requests unchanged, path included")
	}
	for _, l := range []struct {
		field string
		v     any
		neg   bool
	}{{"max_copy_body", cfg.MaxCopyBody, cfg.MaxCopyBody < 0}, {"max_in_flight", cfg.MaxInFlight, cfg.MaxInFlight < 0},
		{"max_clone_bytes", cfg.MaxCloneBytes, cfg.MaxCloneBytes < 0}, {"copy_timeout", cfg.CopyTimeout, cfg.CopyTimeout < 0},
		{"max_compare_body", cfg.MaxCompareBody, cfg.MaxCompareBody < 0}} {
		if l.neg {
			return nil, justrunit.Invalid(l.field, l.v, "must not be negative (0 takes the default)")
		}
	}
	if cfg.CloneLag < 0 || cfg.CloneLag > MaxCloneLag {
		return nil, justrunit.Invalid("clone_lag", cfg.CloneLag, "must be between 0 and %v", MaxCloneLag)
	}
	setDefault(&cfg.MaxCopyBody, DefaultMaxCopyBody)
	setDefault(&cfg.MaxInFlight, DefaultMaxInFlight)
	setDefault(&cfg.MaxCloneBytes, DefaultMaxCloneBytes)
	setDefault(&cfg.CopyTimeout, DefaultCopyTimeout)
	setDefault(&cfg.MaxCompareBody, DefaultMaxCompareBody)
	p := &InProxy{
		cfg:    cfg,
		log:    orDiscard(cfg.Logger),
		online: measure.NewRecorder(),
	}
	empty := []*clone{}
	p.clones.Store(&empty)
	return p, nil
}

// Start checks that the on-line instance's host resolves, then listens on
// addr (host:port; port 0 picks a free one) and serves the proxy there. It
// returns the address it listens on. On error nothing is left listening.
// ctx bounds the start only (the name's resolution): the proxy serves
// until Close, whatever becomes of ctx (see OutProxy.Start).
func (p *InProxy) Start(ctx context.Context, addr string) (net.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("start in-proxy: closed")
	}
	if p.srv != nil {
		return nil, fmt.Errorf("start in-proxy: %w: already listening on %s", justrunit.ErrExists, p.srv.ln.Addr())
	}
	if err := checkResolves(ctx, "online", p.cfg.Online); err != nil {
		return nil, err
	}
	ln, err := listenTCP("listen", addr)
	if err != nil {
		return nil, err
	}
	p.srv = forward(ln, p.cfg.Online, p, p.log, &p.clones)
	return ln.Addr(), nil
}

// Close stops serving (letting on-line requests in progress finish for
// DefaultShutdownGrace), detaches every clone and cancels its copies in
// flight. It ends the proxy's lifetime (see Start): it returns once the
// goroutines Start launched, the on-line listener's, have ended. The
// clones' copies (AddClone's) are cancelled, their connections closed,
// and end on their own. It is safe to call more than once, and at the
// same time: a later call waits for the first to end, and returns nil.
func (p *InProxy) Close() error {
	var err error
	p.closeOnce.Do(func() { err = p.close() })
	return err
}

func (p *InProxy) close() error {
	p.mu.Lock()
	p.closed = true
	s := p.srv
	p.srv = nil
	old := *p.clones.Load()
	empty := []*clone{}
	p.clones.Store(&empty)
	p.mu.Unlock()
	for _, c := range old {
		c.stop()
	}
	return s.close(DefaultShutdownGrace)
}

// AddClone attaches a clone called name at target: from now on every
// request that arrives is copied to it. The name must be new (else an error
// wrapping justrunit.ErrExists); target must be an http URL whose host
// resolves.
func (p *InProxy) AddClone(ctx context.Context, name string, target *url.URL) error {
	return p.AddCloneDial(ctx, name, target, nil, "")
}

// AddCloneDial is AddClone for a clone reached through dial rather than at
// target's address (a clone inside a network of its own, see
// justrunit.Clone.Dial): target is the address the clone listens on there
// — often the on-line instance's own — and where says where that is; the
// clone's statistics and listing show both, never target alone, which
// outside the clone's network may reach the on-line instance. A nil dial
// dials target.
func (p *InProxy) AddCloneDial(ctx context.Context, name string, target *url.URL, dial func(context.Context) (net.Conn, error), where string) error {
	if name == "" {
		return justrunit.Invalid("clone.name", name, "must not be empty")
	}
	if target == nil {
		return justrunit.Invalid("clone.url", nil, "missing")
	}
	if _, err := ParseUpstream("clone.url", target.String()); err != nil {
		return err
	}
	if dial == nil {
		if err := checkResolves(ctx, "clone.url", target); err != nil {
			return err
		}
	} else if target.Scheme != "http" {
		return justrunit.Invalid("clone.url", target.String(), "a clone reached through its own dial speaks http")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("add clone %s: in-proxy closed", name)
	}
	cur := *p.clones.Load()
	for _, c := range cur {
		if c.name == name {
			return fmt.Errorf("add clone %s: %w", name, justrunit.ErrExists)
		}
	}
	c := newClone(name, target, dial, p.cfg, p.log)
	c.shown = target.String()
	if dial != nil {
		c.shown += " (dialled: " + where + ")"
	}
	next := append(slices.Clip(cur), c)
	p.clones.Store(&next)
	p.log.Info("clone attached", logKeyClone, name, "url", c.shown)
	return nil
}

// RemoveClone detaches the clone called name: no further copies are sent
// and copies in flight are cancelled. It returns the clone's statistics for
// the window that ends, or an error wrapping justrunit.ErrNotFound.
func (p *InProxy) RemoveClone(name string) (CloneStats, error) {
	p.mu.Lock()
	cur := *p.clones.Load()
	i := slices.IndexFunc(cur, func(c *clone) bool { return c.name == name })
	if i < 0 {
		p.mu.Unlock()
		return CloneStats{}, fmt.Errorf("remove clone %s: %w", name, justrunit.ErrNotFound)
	}
	c := cur[i]
	next := slices.Delete(slices.Clone(cur), i, i+1)
	p.clones.Store(&next)
	p.mu.Unlock()
	st := c.stats(true)
	c.stop()
	p.log.Info("clone detached", logKeyClone, name)
	return st, nil
}

// Clones returns the names of the attached clones, in attach order.
func (p *InProxy) Clones() []string {
	var names []string
	for _, c := range *p.clones.Load() {
		names = append(names, c.name)
	}
	return names
}

// InStats is what an in-proxy measured in one window.
type InStats struct {
	// Online is the on-line instance's response times and throughput as
	// the previous tier saw them through the proxy. Responses with a 5xx
	// status (including 502 when the instance could not be reached) count
	// as errors.
	Online measure.Summary `json:"online"`
	// Unobserved counts the on-line exchanges forwarded but not measured,
	// neither as answered nor as errors, because the proxy could not
	// parse their response or one before it on their connection (a
	// transfer coding Go refuses, a malformed header, a body after a
	// HEAD's response, a connection that turned into HTTP/2): the bytes
	// went on to the previous tier unchanged, and the rest of the
	// connection with them, unobserved. It is a lower bound: requests
	// that follow on such a connection are not seen at all. Many of them
	// mean Online describes only part of the load.
	Unobserved int64 `json:"unobserved"`
	// Clones has one entry per attached clone, in attach order.
	Clones []CloneStats `json:"clones"`
}

// Clone returns the statistics of the clone called name.
func (s InStats) Clone(name string) (CloneStats, bool) {
	for _, c := range s.Clones {
		if c.Name == name {
			return c, true
		}
	}
	return CloneStats{}, false
}

// CloneStats is what an in-proxy measured for one clone in one window.
type CloneStats struct {
	Name   string `json:"name"`
	Target string `json:"url"`
	// Sent counts copies dispatched to the clone.
	Sent int64 `json:"sent"`
	// Dropped counts copies not sent because the clone was at its bound of
	// copies or bytes in flight (one copy while it answers nothing, see
	// NotAnswering), because it refused connections a moment
	// ago (a dead clone is retried every 250 ms, not dialled for every
	// copy), or because the request did not reach the on-line instance in
	// full (the previous tier did not send all of it, or forwarding it
	// failed), or because the proxy stopped observing its connection.
	Dropped int64 `json:"dropped"`
	// SkippedLarge counts requests not copied because their body exceeded
	// the copy limit.
	SkippedLarge int64 `json:"skipped_large"`
	// InFlight is the copies in flight now; InFlightBytes the bytes
	// charged now to the clone's bound (InConfig.MaxCloneBytes): the
	// copies in flight or queued and, with Compare, the response bodies
	// kept for its comparisons, its own and the on-line ones it is
	// charged for. They are not windowed.
	InFlight      int64 `json:"in_flight"`
	InFlightBytes int64 `json:"in_flight_bytes"`
	// Queued counts the copies waiting for their time (CloneLag) now, not
	// windowed; their bytes, and those of the on-line bodies they hold
	// for comparison, are in InFlightBytes.
	Queued int64 `json:"queued,omitempty"`
	// Compared counts copies whose response was compared with the on-line
	// one; Mismatched those that differed (status, or masked body).
	// MismatchRate is Mismatched / Compared, 0 when none were compared.
	Compared     int64   `json:"compared"`
	Mismatched   int64   `json:"mismatched"`
	MismatchRate float64 `json:"mismatch_rate"`
	// CompareDropped counts copies whose response was not compared
	// because the clone was at its bound of bytes (MaxCloneBytes) when
	// its body, or the on-line body it was to be compared with, was to be
	// charged for the comparison.
	CompareDropped int64 `json:"compare_dropped"`
	// Response is the clone's response times (from the on-line arrival,
	// or with a clone lag from the time the copy goes out, to the end of
	// the clone's response body) and throughput. A
	// transport error, a timeout or a 5xx status counts as an error.
	Response measure.Summary `json:"response"`
	// NotAnswering is true while the clone answers nothing: no copy for a
	// whole copy timeout, while copies timed out without an answer (hung,
	// or overloaded past answering). One copy at a time goes to it then,
	// the others are dropped, until it answers one. Not windowed.
	NotAnswering bool `json:"not_answering,omitempty"`
}

// Apply copies the clone's measurements into o: samples, errors,
// throughput, response time, dropped copies, offered load, window start
// and length.
func (s CloneStats) Apply(o *justrunit.Observation) {
	o.Start = s.Response.Start
	o.Window = justrunit.Duration(s.Response.Duration())
	o.Samples = s.Response.Count
	o.Errors = s.Response.Errors
	o.Throughput = s.Response.Throughput
	o.RT = s.Response.RT
	o.Dropped = s.Dropped
	o.Offered = s.Offered()
}

// Offered is the rate at which copies came for the clone over the window
// (sent, dropped, or skipped as too large), per second; 0 for an empty
// window.
func (s CloneStats) Offered() float64 {
	d := s.Response.Duration().Seconds()
	if d <= 0 {
		return 0
	}
	return float64(s.Sent+s.Dropped+s.SkippedLarge) / d
}

// CloneStats returns the statistics of the clone called name for its
// current window, and ends that window (starting a new one) when reset.
// Other clones' windows and the on-line window are not touched, so several
// experiments can share one in-proxy. It returns an error wrapping
// justrunit.ErrNotFound when no such clone is attached.
func (p *InProxy) CloneStats(name string, reset bool) (CloneStats, error) {
	for _, c := range *p.clones.Load() {
		if c.name == name {
			return c.stats(reset), nil
		}
	}
	return CloneStats{}, fmt.Errorf("clone %s: %w", name, justrunit.ErrNotFound)
}

// Watch returns a recorder of its own that gets every on-line response
// time from now on, so that a reader can window the on-line instance
// without ending anybody else's window (ResetOnline's); stop ends the
// watch.
func (p *InProxy) Watch() (r *measure.Recorder, stop func()) {
	r = measure.NewRecorder()
	p.mu.Lock()
	defer p.mu.Unlock()
	var cur []*measure.Recorder
	if ws := p.watchers.Load(); ws != nil {
		cur = *ws
	}
	next := append(slices.Clip(cur), r)
	p.watchers.Store(&next)
	return r, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		ws := *p.watchers.Load()
		next := slices.DeleteFunc(slices.Clone(ws), func(x *measure.Recorder) bool { return x == r })
		p.watchers.Store(&next)
	}
}

// ResetOnline ends the on-line instance's window, returns it and starts a
// new one; the clones' windows are not touched (an SLA monitor reads the
// on-line side while experiments read the clones').
func (p *InProxy) ResetOnline() measure.Summary { return p.online.Reset() }

// Stats returns the current window's statistics without ending it.
func (p *InProxy) Stats() InStats { return p.stats(false) }

// Reset ends the current window, returns its statistics and starts a new
// one, for the on-line instance and every clone.
func (p *InProxy) Reset() InStats { return p.stats(true) }

func (p *InProxy) stats(reset bool) InStats {
	var s InStats
	if reset {
		s.Online = p.online.Reset()
		s.Unobserved = p.unobserved.Swap(0)
	} else {
		s.Online = p.online.Snapshot()
		s.Unobserved = p.unobserved.Load()
	}
	for _, c := range *p.clones.Load() {
		s.Clones = append(s.Clones, c.stats(reset))
	}
	return s
}

// copyReq is one on-line request as sent to every clone.
type copyReq struct {
	method  string
	host    string
	path    string
	rawPath string
	query   string
	header  http.Header // read-only once dispatched; shared by the clones
	arrival time.Time
	body    []byte
	online  *onlineResult // nil unless comparing
}

// onlineResult is the on-line response, for comparison, and the holds the
// clones comparing with it took on it. Its kept body is charged to every
// clone that may still read it (see onlineHold) and let go once none may:
// it is held uncharged only while the response is read and until its
// request's copies have gone out, by the on-line connection's own
// goroutines.
type onlineResult struct {
	done chan struct{} // closed once the result is set

	mu sync.Mutex
	// ok, status and body are set once, before done is closed; body is
	// nil when ok is false, and set to nil again (under mu) once no hold
	// is charged for it and none can come.
	ended  bool
	ok     bool
	status int
	body   []byte
	copied bool          // the copies went out (or were given up): no more holds
	holds  []*onlineHold // taken before the result was set
	paid   int           // holds charged for body and not released
	// taps got the copy, called id, and get the result once set.
	taps []*Tap
	id   uint64
}

// handOver sends the result to taps, which were handed its request's copy
// called id: now if it is set, else once it is.
func (o *onlineResult) handOver(taps []*Tap, id uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ended {
		o.taps, o.id = taps, id
		return
	}
	for _, t := range taps {
		t.sendResult(id, o.ok, o.status, o.body)
	}
}

// onlineHold is one copy's claim on the on-line result its clone's
// response is to be compared with: from the moment the result is set (or
// the copy is accepted, if later) its kept body is charged to the clone's
// bytes, until release; a clone that has no room for it then does not
// compare that response. The fields are under o.mu.
type onlineHold struct {
	o        *onlineResult
	c        *clone
	charged  int64 // the bytes charged to c
	paid     bool  // counted in o.paid
	full     bool  // no room in c's bytes: not compared
	released bool
}

// finish sets the result, once: ok false when there is nothing to compare
// with (no response, or one not kept). It charges the body to the clones
// holding the result; it never waits.
func (o *onlineResult) finish(ok bool, status int, body []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return
	}
	o.ended, o.ok, o.status = true, ok, status
	if ok {
		o.body = body
	}
	for _, t := range o.taps {
		t.sendResult(o.id, ok, status, body)
	}
	o.taps = nil
	for _, h := range o.holds {
		if !h.released {
			o.charge(h)
		}
	}
	o.holds = nil
	o.trim()
	close(o.done)
}

// hold is taken by clone c for a copy it accepted, which will be compared
// with the result; o may be nil (not comparing), and so is the hold then.
// It is called before markCopied, by whoever dispatches the copies.
func (o *onlineResult) hold(c *clone) *onlineHold {
	if o == nil {
		return nil
	}
	h := &onlineHold{o: o, c: c}
	o.mu.Lock()
	if o.ended {
		o.charge(h)
	} else {
		o.holds = append(o.holds, h)
	}
	o.mu.Unlock()
	return h
}

// markCopied tells o that its request's copies went out, or will not: no
// hold is taken after it.
func (o *onlineResult) markCopied() {
	o.mu.Lock()
	o.copied = true
	o.trim()
	o.mu.Unlock()
}

// charge charges the result's body to h's clone, or marks h full when the
// clone has no room for it. o.mu is held and the result is set.
func (o *onlineResult) charge(h *onlineHold) {
	if !o.ok {
		return // nothing kept, nothing to compare
	}
	n := int64(cap(o.body))
	if n > 0 && !h.c.reserve(n) {
		h.full = true
		return
	}
	h.charged, h.paid = n, true
	o.paid++
}

// trim lets the body go once nobody may read it: the result is set, no
// more holds can come and none is charged for it. o.mu is held.
func (o *onlineResult) trim() {
	if o.ended && o.copied && o.paid == 0 {
		o.body = nil
	}
}

// dropped reports whether h's clone had no room for the result's body:
// its response is not compared. It is meaningful once o.done is closed.
func (h *onlineHold) dropped() bool {
	h.o.mu.Lock()
	defer h.o.mu.Unlock()
	return h.full
}

// release ends h: the clone will not read the result, and its charge is
// given back. h may be nil; a second release does nothing.
func (h *onlineHold) release() {
	if h == nil {
		return
	}
	o := h.o
	o.mu.Lock()
	if h.released {
		o.mu.Unlock()
		return
	}
	h.released = true
	n := h.charged
	h.charged = 0
	if h.paid {
		h.paid = false
		o.paid--
		o.trim()
	}
	o.mu.Unlock()
	h.c.inFlB.Add(-n)
}

// copyable reports whether r can be copied: it opens no tunnel (see
// opensTunnel), and offers no protocol upgrade but h2c. A websocket's
// opening request has nothing to copy (the protocol that follows cannot
// be replayed); an h2c offer, which Java's HttpClient makes on the first
// request of every cleartext connection, is a plain request to a server
// that declines it, and one answered over HTTP/2 by a server that takes
// it: the copy (without the offer, a hop-by-hop field) is that request
// either way.
func copyable(r *http.Request) bool {
	if opensTunnel(r) {
		return false
	}
	for _, v := range r.Header["Upgrade"] {
		for proto := range strings.SplitSeq(v, ",") {
			if !strings.EqualFold(strings.TrimSpace(proto), "h2c") {
				return false
			}
		}
	}
	return true
}

// prepareCopy makes req's copy for clones (those attached when it
// arrived): a pendingCopy to fire once the request has been forwarded in
// full (nil when nothing is copied), or the clones that skip it because
// its body is too large. With Compare, ex gets the on-line result to compare with.
func (p *InProxy) prepareCopy(req *http.Request, ex *exchange, clones []*clone) (pc *pendingCopy, skip []*clone) {
	taps := p.tapList()
	if len(clones) == 0 && len(taps) == 0 || !copyable(req) {
		return nil, nil
	}
	if req.ContentLength > p.cfg.MaxCopyBody {
		for _, t := range taps {
			t.sendSkip()
		}
		return nil, clones
	}
	cr := &copyReq{
		method:  req.Method,
		host:    req.Host,
		path:    req.URL.Path,
		rawPath: req.URL.RawPath,
		query:   req.URL.RawQuery,
		header:  copyHeader(req.Header),
		arrival: ex.arrival,
	}
	if p.cfg.Compare {
		ex.online = &onlineResult{done: make(chan struct{})}
		cr.online = ex.online
	}
	pc = &pendingCopy{cr: cr, clones: clones, taps: taps, observe: p.cfg.ObserveCopy}
	if len(taps) > 0 && p.cfg.Compare {
		pc.id = p.copyIDs.Add(1)
	}
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		pc.tee = &teeBody{rc: req.Body, bodyCopy: bodyCopy{limit: p.cfg.MaxCopyBody}}
	}
	return pc, nil
}

// The in-proxy's fwdHooks: each request is copied to the clones attached
// when it arrived, each response ends the on-line exchange's measurement.

func (p *InProxy) fwdRequest(ex *exchange) io.Reader {
	ex.copy, ex.skip = p.prepareCopy(ex.req, ex, ex.clones)
	if ex.copy != nil && ex.copy.tee != nil {
		return ex.copy.tee
	}
	return ex.req.Body
}

func (p *InProxy) fwdBodyRead(ex *exchange, err error) {
	switch {
	case ex.copy != nil && err == nil:
		ex.copy.fire()
	case ex.copy != nil: // the previous tier did not send the whole body
		for _, c := range ex.copy.clones {
			c.drop()
		}
		for _, t := range ex.copy.taps {
			t.dropped.Add(1)
		}
	case ex.skip != nil:
		for _, c := range ex.skip {
			c.skippedLarge.Add(1)
		}
	}
	if ex.online != nil {
		ex.online.markCopied() // the clones that compare hold it now
	}
	ex.copy, ex.skip, ex.clones = nil, nil, nil // done with; the exchange lives on until its response
}

func (p *InProxy) fwdFailed(ex *exchange) { p.endExchange(ex, time.Now(), false) }

func (p *InProxy) fwdUnobserved(ex *exchange) {
	p.unobserved.Add(1)
	if ex.online != nil {
		ex.online.finish(false, 0, nil) // nothing to compare with
	}
}

func (p *InProxy) fwdUnreachable(req *http.Request, err error) {
	var method, uri string
	if req != nil {
		method, uri = req.Method, req.RequestURI
	}
	p.log.Warn("on-line request failed", logKeyMethod, method, logKeyURI, uri, logKeyErr, err)
	p.observeOnline(0, false)
}

// fwdResponse reads the body of ex's response, whose head is resp, and
// records the exchange.
func (p *InProxy) fwdResponse(br *bufio.Reader, out *fwdReader, ex *exchange, resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		p.endExchange(ex, out.lastRead(), true)
		return errUpgraded
	}
	var body io.Reader = resp.Body
	if ex.online != nil && resp.ContentLength <= p.cfg.MaxCompareBody {
		// finishes ex.online with the body once read to its end
		body = &responseTee{rc: resp.Body, bodyCopy: bodyCopy{limit: p.cfg.MaxCompareBody}, status: resp.StatusCode, o: ex.online}
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err // the forwarder ends ex
	}
	p.endExchange(ex, out.lastRead(), resp.StatusCode < 500)
	return nil
}

// endExchange records an exchange's on-line response time, from its
// request's arrival to end, and its outcome.
func (p *InProxy) endExchange(ex *exchange, end time.Time, ok bool) {
	p.observeOnline(end.Sub(ex.arrival), ok)
	if ex.online != nil {
		ex.online.finish(false, 0, nil) // no-op when the response was read in full
	}
}

// observeOnline records one on-line response time (ok false: a failure)
// for the proxy's own window, its watchers and ObserveOnline.
func (p *InProxy) observeOnline(d time.Duration, ok bool) {
	if ok {
		p.online.Record(d)
	} else {
		p.online.RecordError()
	}
	if ws := p.watchers.Load(); ws != nil {
		for _, r := range *ws {
			if ok {
				r.Record(d)
			} else {
				r.RecordError()
			}
		}
	}
	if f := p.cfg.ObserveOnline; f != nil {
		f(d, ok)
	}
}

// pendingCopy is a request's copy waiting to be dispatched. It goes out
// once the on-line request has been forwarded in full, microseconds after
// its arrival for a request without a body: the on-line request is on the
// wire before any copy work competes with it for the CPUs. A request the
// on-line instance could not be sent (it is unreachable, or the previous
// tier did not send the whole body) is not copied. Its clone response time
// counts from the arrival.
type pendingCopy struct {
	cr     *copyReq
	clones []*clone
	taps   []*Tap
	id     uint64 // names the copy handed over to taps for its on-line result; 0: not compared
	// observe is InConfig.ObserveCopy, told of each copy handed to a tap.
	observe func(sent bool)
	tee     *teeBody // nil: no body
}

// fire dispatches the copy, to the proxy's clones and to its taps; the
// request's body, if any, has been read to its end through tee.
func (pc *pendingCopy) fire() {
	if pc.tee != nil && pc.tee.over {
		for _, c := range pc.clones {
			c.skippedLarge.Add(1)
		}
		for _, t := range pc.taps {
			t.sendSkip()
		}
		return
	}
	if pc.tee != nil {
		pc.cr.body = pc.tee.buf
	}
	dispatch(pc.cr, pc.clones)
	for _, t := range pc.taps {
		sent := t.sendCopy(pc.cr, pc.id)
		if f := pc.observe; f != nil {
			f(sent)
		}
	}
	if pc.id != 0 {
		pc.cr.online.handOver(pc.taps, pc.id)
	}
}

// bodyCopy keeps a copy of the bytes read through it, up to a limit.
type bodyCopy struct {
	limit int64
	buf   []byte
	over  bool // the limit was passed: buf is nil
}

// Write keeps p; it never fails, so that a copy through it reads the
// whole body.
func (b *bodyCopy) Write(p []byte) (int, error) {
	b.keep(p)
	return len(p), nil
}

func (b *bodyCopy) keep(p []byte) {
	if len(p) == 0 || b.over {
		return
	}
	if int64(len(b.buf)+len(p)) > b.limit {
		b.over, b.buf = true, nil
		return
	}
	b.buf = append(b.buf, p...)
}

// responseTee keeps a copy of the on-line response body, up to a limit.
type responseTee struct {
	bodyCopy
	rc     io.ReadCloser
	status int
	o      *onlineResult
}

func (t *responseTee) Read(b []byte) (int, error) {
	n, err := t.rc.Read(b)
	t.keep(b[:n])
	if err == io.EOF {
		t.o.finish(!t.over, t.status, t.buf)
	}
	return n, err
}

func (t *responseTee) Close() error {
	t.o.finish(false, 0, nil)
	return t.rc.Close()
}

// teeBody keeps a copy of a request body, up to a limit, while the
// request is forwarded; only the goroutine parsing the connection reads it.
type teeBody struct {
	bodyCopy
	rc io.ReadCloser
}

func (t *teeBody) Read(b []byte) (int, error) {
	n, err := t.rc.Read(b)
	t.keep(b[:n])
	return n, err
}

func dispatch(cr *copyReq, clones []*clone) {
	for _, c := range clones {
		c.send(cr)
	}
}

// clone is one attached clone and its counters.
type clone struct {
	name    string
	target  *url.URL
	shown   string // target, and where it is dialled when not at its address
	cfg     InConfig
	log     *slog.Logger
	pool    *connPool
	ctx     context.Context
	cancel  context.CancelFunc
	rec     *measure.Recorder
	inFl    atomic.Int64
	inFlB   atomic.Int64
	queue   *lagQueue // nil without CloneLag
	sent    atomic.Int64
	dropped atomic.Int64

	skippedLarge, compared, mismatched, compareDropped atomic.Int64

	// refused counts consecutive refused connections; after
	// refusedToPause of them, copies are dropped until pausedUntil (unix
	// ns), so a dead clone costs no dialling on the proxy's CPUs.
	refused     atomic.Int64
	pausedUntil atomic.Int64

	// lastAnswer is when the clone last answered a copy (unix ns; when
	// it was attached, at first); stalled is set while it answers nothing
	// (see noAnswer), and bounds its copies in flight (see admit).
	lastAnswer atomic.Int64
	stalled    atomic.Bool
}

const (
	refusedToPause = 5
	refusedPause   = 250 * time.Millisecond

	// stalledInFlight is how many copies a clone that answers nothing
	// may have in flight (see admit).
	stalledInFlight = 1
)

func newClone(name string, target *url.URL, dial dialFunc, cfg InConfig, log *slog.Logger) *clone {
	ctx, cancel := context.WithCancel(context.Background())
	timeout := min(cfg.CopyTimeout, 2*time.Second)
	if dial == nil {
		dial = dialerFor(target, timeout)
	} else {
		dial = dialWithin(dial, timeout)
	}
	c := &clone{
		name:   name,
		target: target,
		cfg:    cfg,
		log:    log.With(logKeyClone, name),
		pool:   newConnPool(dial, cfg.MaxInFlight),
		ctx:    ctx,
		cancel: cancel,
		rec:    measure.NewRecorder(),
	}
	c.lastAnswer.Store(time.Now().UnixNano())
	if cfg.CloneLag > 0 {
		c.queue = &lagQueue{wake: make(chan struct{}, 1)}
		go c.pace()
	}
	return c
}

func (c *clone) stop() {
	c.cancel()
	c.pool.close()
}

// send starts sending cr to the clone now (or queues it for its time), or
// drops it when the clone is at its bounds. A copy sent or queued takes a
// hold on the on-line result when comparing. It never blocks.
func (c *clone) send(cr *copyReq) {
	if c.ctx.Err() != nil {
		return // detached between the snapshot and now
	}
	if until := c.pausedUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		c.drop() // the clone refuses connections: do not dial in vain
		return
	}
	charge := 2*int64(len(cr.body)) + copyOverhead // the body, and the request as written
	if c.queue != nil {
		if !c.reserve(charge) {
			c.drop()
			return
		}
		l := lagged{cr: cr, charge: charge, hold: cr.online.hold(c), due: cr.arrival.Add(c.cfg.CloneLag)}
		if !c.queue.push(l) {
			c.letGo(l) // detached since the check above
		}
		return
	}
	if !c.admit() {
		c.drop()
		return
	}
	if !c.reserve(charge) {
		c.inFl.Add(-1)
		c.drop()
		return
	}
	c.start(cr, charge, cr.online.hold(c), cr.arrival)
}

// admit takes a place in flight for a copy, or reports false when the
// clone has as many copies in flight as it may: MaxInFlight, or one while
// it answers nothing (stalled). Each copy in flight holds a connection of
// its own until it is answered or times out; so a clone that never answers
// is dialled once a copy timeout rather than MaxInFlight times at once
// every copy timeout, which on a 2-CPU machine put the on-line p99 at 2,000
// requests a second up from 2.9 ms to 4.4-9.4 ms in each second that it
// happened.
func (c *clone) admit() bool {
	limit := int64(c.cfg.MaxInFlight)
	if c.stalled.Load() {
		limit = stalledInFlight
	}
	if c.inFl.Add(1) > limit {
		c.inFl.Add(-1)
		return false
	}
	return true
}

// noAnswer notes a copy that timed out with no byte of an answer. When
// the clone has answered no copy for a whole copy timeout, it is taken for
// stalled (hung, or overloaded past answering anything): copies go to it
// one at a time (admit) until it answers one.
func (c *clone) noAnswer(now time.Time) {
	if now.Sub(time.Unix(0, c.lastAnswer.Load())) < c.cfg.CopyTimeout || c.stalled.Swap(true) {
		return
	}
	c.log.Warn("the clone has answered no copy for a whole copy timeout: one copy at a time goes to it until it answers, the others are dropped",
		"copy_timeout", c.cfg.CopyTimeout)
}

// reserve charges n more bytes to the clone's bound (MaxCloneBytes), or
// charges nothing and reports false when they do not fit.
func (c *clone) reserve(n int64) bool {
	if c.inFlB.Add(n) > c.cfg.MaxCloneBytes {
		c.inFlB.Add(-n)
		return false
	}
	return true
}

// start counts cr as sent and sends it, timing the clone's response from
// due; charge and hold are the copy's share of the clone's bounds, which
// its finish gives back. With an idle connection at hand, the request is
// written at once by the caller (the goroutine that parsed the on-line
// request, or the lag queue's): one write, no goroutine to start and wake.
func (c *clone) start(cr *copyReq, charge int64, hold *onlineHold, due time.Time) {
	c.sent.Add(1)
	if f := c.cfg.ObserveCopy; f != nil {
		f(true)
	}
	f, err := c.newFlight(cr, charge, hold, due)
	if err != nil {
		c.finish(f, nil, nil, err, time.Time{})
		return
	}
	pc := c.pool.take(f)
	if pc == nil {
		go c.dialAndSend(f)
		return
	}
	_ = pc.c.SetReadDeadline(f.deadline)
	switch n, err := pc.tryWrite(f.wire); {
	case err != nil:
		c.pool.failWrite(pc, err) // its readLoop fails the copy, or sends it again
		c.pool.endWrite(pc, false)
	case n < len(f.wire): // the socket is full: the rest may wait
		go c.finishWrite(pc, f.wire[n:], f.deadline)
	default:
		c.pool.endWrite(pc, true)
	}
}

// flight is one copy on its way to a clone.
type flight struct {
	cr       *copyReq
	req      *http.Request
	wire     []byte // req as written
	charge   int64
	hold     *onlineHold // nil unless comparing
	due      time.Time
	deadline time.Time
	retried  bool
	werr     error // writing req failed (set under the pool's lock)
}

// retry returns f to send again on a new connection, until deadline.
// f's own fields stay as they are: the goroutine that wrote f may still
// read its deadline, or record a failed write on it.
func (f *flight) retry(deadline time.Time) *flight {
	return &flight{cr: f.cr, req: f.req, wire: f.wire, charge: f.charge, hold: f.hold, due: f.due, deadline: deadline, retried: true}
}

func (c *clone) newFlight(cr *copyReq, charge int64, hold *onlineHold, due time.Time) (*flight, error) {
	req := &http.Request{
		Method:     cr.method,
		URL:        joinURL(c.target, cr.path, cr.rawPath, cr.query),
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     cr.header,
		Host:       cr.host,
	}
	if len(cr.body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(cr.body))
		req.ContentLength = int64(len(cr.body))
	}
	var wire bytes.Buffer
	wire.Grow(len(cr.body) + 512)
	err := req.Write(&wire)
	return &flight{cr: cr, req: req, wire: wire.Bytes(), charge: charge, hold: hold, due: due, deadline: time.Now().Add(c.cfg.CopyTimeout)}, err
}

// finishWrite writes the rest of a request the socket had no room for
// (or all of it on a new connection).
func (c *clone) finishWrite(pc *poolConn, rest []byte, deadline time.Time) {
	_ = pc.c.SetWriteDeadline(deadline)
	_, err := pc.c.Write(rest)
	if err != nil {
		c.pool.failWrite(pc, err)
	} else {
		_ = pc.c.SetWriteDeadline(time.Time{}) // or the next tryWrite fails
	}
	c.pool.endWrite(pc, err == nil)
}

// dialAndSend sends f on a new connection and starts the connection's
// readLoop.
func (c *clone) dialAndSend(f *flight) {
	ctx, cancel := context.WithDeadline(c.ctx, f.deadline)
	pc, err := c.pool.open(ctx, f)
	cancel()
	if err != nil {
		if c.ctx.Err() == nil && errors.Is(err, syscall.ECONNREFUSED) && c.refused.Add(1) >= refusedToPause {
			c.pausedUntil.Store(time.Now().Add(refusedPause).UnixNano())
			c.refused.Store(0)
		}
		c.finish(f, nil, nil, err, time.Time{})
		return
	}
	go c.readLoop(pc)
	_ = pc.c.SetReadDeadline(f.deadline)
	c.finishWrite(pc, f.wire, f.deadline)
}

// readLoop reads pc's responses for as long as the connection lasts: each
// ends the copy pc carries, and pc goes back to the idle ones. A copy that
// fails on a reused connection before any response byte came back (the
// clone closed it while it was idle) is sent once more on a new one.
func (c *clone) readLoop(pc *poolConn) {
	for {
		_, err := pc.br.Peek(1)
		f, werr := c.pool.flightOf(pc)
		switch {
		case f == nil: // idle: the clone closed it, or sent what answers nothing
			c.pool.discard(pc)
			return
		case err != nil:
			c.pool.discard(pc)
			if werr != nil {
				err = werr
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				c.noAnswer(time.Now())
			}
			if pc.reused && !f.retried && idleClosed(err) && c.ctx.Err() == nil {
				// A flight of its own: the goroutine that sent f may
				// still read it, or fail its write on the old connection.
				c.dialAndSend(f.retry(time.Now().Add(c.cfg.CopyTimeout)))
				return
			}
			c.finish(f, nil, nil, err, time.Time{})
			return
		}
		resp, body, err := c.readResponse(pc, f)
		end := time.Now()
		if err != nil {
			c.pool.discard(pc)
			c.finish(f, nil, nil, err, end)
			return
		}
		// The connection is idle again before the copy is counted as
		// answered: whoever then sends the next copy finds it.
		kept := false
		if resp.Close {
			c.pool.discard(pc)
		} else {
			kept = c.pool.put(pc)
		}
		c.finish(f, resp, body, nil, end)
		if !kept {
			return
		}
	}
}

// readResponse reads f's response on pc (past any 1xx) to its end,
// keeping the body when it is to be compared with the on-line one (nil
// when not comparing). A head over fwdMaxHead fails the copy, as any
// response the parser refuses.
func (c *clone) readResponse(pc *poolConn, f *flight) (*http.Response, *keptBody, error) {
	var resp *http.Response
	var err error
	// Copies carry no Expect, but 103 may come; each 1xx head has its own
	// allowance.
	for err == nil && (resp == nil || resp.StatusCode < 200) {
		pc.head.startHead()
		resp, err = http.ReadResponse(pc.br, f.req)
	}
	pc.head.endHead()
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	var kept *keptBody
	if f.cr.online != nil {
		kept = &keptBody{c: c}
		if resp.Body != http.NoBody && resp.ContentLength > 0 {
			kept.grow(resp.ContentLength) // the whole body's room, charged before it comes
		}
		body = io.TeeReader(resp.Body, kept)
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		kept.release()
		return nil, nil, err
	}
	return resp, kept, nil
}

// keptBody keeps a clone's response body to compare with the on-line one,
// up to MaxCompareBody, and charges its buffer to the clone's bytes
// (MaxCloneBytes) before the buffer grows: the proxy holds it for the
// clone as it holds the copies, as long as the comparison waits for the
// on-line response. A body the clone's bytes have no room for is let go,
// and the response is not compared (CompareDropped).
type keptBody struct {
	c       *clone
	buf     []byte
	charged int64 // cap(buf), charged to the clone's bytes
	over    bool  // larger than MaxCompareBody: not compared
	full    bool  // no room in the clone's bytes: not compared
}

// Write keeps p; it never fails, so that the body is read to its end
// whether it is kept or not.
func (k *keptBody) Write(p []byte) (int, error) {
	if n := len(k.buf) + len(p); n > cap(k.buf) && k.keeping() {
		k.grow(int64(n))
	}
	if k.keeping() {
		k.buf = append(k.buf, p...)
	}
	return len(p), nil
}

func (k *keptBody) keeping() bool { return !k.over && !k.full }

// grow makes the buffer room for n bytes in all (doubling, up to
// MaxCompareBody), charging the clone for the room first.
func (k *keptBody) grow(n int64) {
	limit := k.c.cfg.MaxCompareBody
	if n > limit {
		k.over = true
		k.release()
		return
	}
	size := min(max(n, 2*int64(cap(k.buf))), limit)
	if !k.c.reserve(size - k.charged) {
		k.full = true
		k.release()
		return
	}
	buf := make([]byte, len(k.buf), size)
	copy(buf, k.buf)
	k.buf, k.charged = buf, size
}

// release lets the buffer go and gives its charge back; k may be nil.
func (k *keptBody) release() {
	if k == nil {
		return
	}
	k.c.inFlB.Add(-k.charged)
	k.buf, k.charged = nil, 0
}

// finish ends f: it records the clone's response time (from f's due time
// to end) or its failure, compares the response (its body kept in body,
// nil when not comparing) with the on-line one, and releases f's, its
// hold's and body's share of the clone's bounds, once the comparison is
// done or given up.
func (c *clone) finish(f *flight, resp *http.Response, body *keptBody, err error, end time.Time) {
	release := func() {
		body.release()
		f.hold.release()
		c.inFlB.Add(-f.charge)
		c.inFl.Add(-1)
	}
	if c.ctx.Err() != nil { // detached
		release()
		return
	}
	if err != nil {
		c.rec.RecordError()
		c.log.Debug("copy failed", logKeyErr, err)
		release()
		return
	}
	c.refused.Store(0)
	c.lastAnswer.Store(end.UnixNano())
	if c.stalled.Swap(false) {
		c.log.Info("the clone answers again: copies go to it as they come again")
	}
	if resp.StatusCode >= 500 {
		c.rec.RecordError()
	} else {
		c.rec.Record(end.Sub(f.due))
	}
	if body == nil || !body.keeping() {
		if body != nil && body.full {
			c.compareDropped.Add(1)
		}
		release()
		return
	}
	go func() { // the on-line response may not have ended yet
		defer release()
		c.compare(f, resp.StatusCode, body.buf)
	}()
}

// compare waits (until f's deadline) for the on-line response to f's
// request and counts whether the clone's matches it, or that it was not
// compared because the clone had no room for the on-line body.
func (c *clone) compare(f *flight, status int, body []byte) {
	t := time.NewTimer(time.Until(f.deadline))
	defer t.Stop()
	select {
	case <-f.cr.online.done:
	case <-t.C:
		return
	case <-c.ctx.Done():
		return
	}
	if !f.cr.online.ok {
		return
	}
	if f.hold.dropped() {
		c.compareDropped.Add(1)
		return
	}
	// f.hold is charged for the on-line body: it is kept until released.
	c.compared.Add(1)
	if status != f.cr.online.status || !bytes.Equal(c.cfg.Masks.Body(body), c.cfg.Masks.Body(f.cr.online.body)) {
		c.mismatched.Add(1)
	}
}

// lagged is a copy waiting for its time.
type lagged struct {
	cr     *copyReq
	charge int64
	hold   *onlineHold // nil unless comparing
	due    time.Time
}

// letGo gives back the share of the clone's bounds of a lagged copy that
// will not be sent.
func (c *clone) letGo(l lagged) {
	l.hold.release()
	c.inFlB.Add(-l.charge)
}

// lagQueue holds the copies of a clone with a lag, in arrival order (which
// is also their due order, the lag being the same for all).
type lagQueue struct {
	mu     sync.Mutex
	q      []lagged
	closed bool          // the clone was detached: nothing more is queued
	wake   chan struct{} // signalled when the queue goes from empty to not
}

// push queues l, or reports false when the queue is closed.
func (q *lagQueue) push(l lagged) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.q = append(q.q, l)
	first := len(q.q) == 1
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// close closes the queue and returns the copies still in it.
func (q *lagQueue) close() []lagged {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	rest := q.q
	q.q = nil
	return rest
}

// head returns the oldest copy without removing it.
func (q *lagQueue) head() (lagged, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q) == 0 {
		return lagged{}, false
	}
	return q.q[0], true
}

func (q *lagQueue) pop() {
	q.mu.Lock()
	q.q[0] = lagged{}
	q.q = q.q[1:]
	if len(q.q) == 0 {
		q.q = nil // let the backing array go
	}
	q.mu.Unlock()
}

func (q *lagQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.q)
}

// pace sends the lagged copies at their due times until the clone is
// detached; copies still queued then are let go, their charges given back.
func (c *clone) pace() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer func() {
		for _, l := range c.queue.close() {
			c.letGo(l)
		}
	}()
	for {
		l, ok := c.queue.head()
		if !ok {
			select {
			case <-c.queue.wake:
				continue
			case <-c.ctx.Done():
				return
			}
		}
		if wait := time.Until(l.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-c.ctx.Done():
				return
			}
		}
		c.queue.pop()
		if c.ctx.Err() != nil {
			c.letGo(l)
			return // detached while the copy came due
		}
		if until := c.pausedUntil.Load(); until != 0 && time.Now().UnixNano() < until {
			c.letGo(l)
			c.drop() // the clone refuses connections: do not dial in vain
			continue
		}
		if !c.admit() {
			c.letGo(l)
			c.drop()
			continue
		}
		// The clone's response time counts from now, when the copy goes
		// out: the timer's lateness is the proxy's, not the clone's.
		c.start(l.cr, l.charge, l.hold, time.Now())
	}
}

// drop counts a copy that was not sent.
func (c *clone) drop() {
	c.dropped.Add(1)
	if f := c.cfg.ObserveCopy; f != nil {
		f(false)
	}
}

func (c *clone) stats(reset bool) CloneStats {
	s := CloneStats{
		Name:          c.name,
		Target:        c.shown,
		InFlight:      c.inFl.Load(),
		InFlightBytes: c.inFlB.Load(),
		NotAnswering:  c.stalled.Load(),
	}
	if c.queue != nil {
		s.Queued = int64(c.queue.len())
	}
	if reset {
		s.Response = c.rec.Reset()
		s.Sent = c.sent.Swap(0)
		s.Dropped = c.dropped.Swap(0)
		s.SkippedLarge = c.skippedLarge.Swap(0)
		s.Compared = c.compared.Swap(0)
		s.Mismatched = c.mismatched.Swap(0)
		s.CompareDropped = c.compareDropped.Swap(0)
	} else {
		s.Response = c.rec.Snapshot()
		s.Sent = c.sent.Load()
		s.Dropped = c.dropped.Load()
		s.SkippedLarge = c.skippedLarge.Load()
		s.Compared = c.compared.Load()
		s.Mismatched = c.mismatched.Load()
		s.CompareDropped = c.compareDropped.Load()
	}
	if s.Compared > 0 {
		s.MismatchRate = float64(s.Mismatched) / float64(s.Compared)
	}
	return s
}
