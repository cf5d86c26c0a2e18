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
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
)

// Out-proxy defaults, used where an OutConfig field is zero.
const (
	DefaultWindow         = time.Minute
	DefaultMaxRecordBytes = 64 << 20 // 64 MiB
	DefaultMaxBody        = 1 << 20  // 1 MiB
	DefaultMatchWait      = time.Second
	DefaultFallbackStatus = http.StatusServiceUnavailable
	// DefaultCloneName is the consumer name of the clone endpoint that
	// Start serves.
	DefaultCloneName = "clone"
	// maxCommits bounds the exchanges being keyed and added to the record
	// at once; beyond it an exchange is not recorded (and counted).
	maxCommits = 256
)

// UnmatchedHeader is set to "1" on the fallback answer to a clone's call
// that matched nothing in the record.
const UnmatchedHeader = "X-Justrunit-Unmatched"

// safeMethods are the methods that may be passed through to the real next
// tier for a clone: the safe (read-only) methods of RFC 9110, section 9.2.1.
var safeMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodOptions: true, http.MethodTrace: true,
}

// CheckPassThrough checks a pass-through list: only safe, read-only
// methods (any case, spaces trimmed) may pass through to the real next
// tier. field names the list in the error, e.g. "pass_through".
func CheckPassThrough(field string, methods []string) error {
	for i, m := range methods {
		if !safeMethods[strings.ToUpper(strings.TrimSpace(m))] {
			return justrunit.Invalid(fmt.Sprintf("%s[%d]", field, i), m,
				"only safe methods (GET, HEAD, OPTIONS, TRACE) may pass through: a clone's writes must not reach the on-line next tier")
		}
	}
	return nil
}

// OutConfig configures an OutProxy. Zero fields take the Default* values.
type OutConfig struct {
	// Upstream is the real next tier: scheme, host and port, no path (the
	// on-line instance's calls are forwarded unchanged, path included, and
	// a clone's passed-through calls go where they would).
	Upstream *url.URL
	// Masks hide values that differ between the on-line instance's calls
	// and a clone's (timestamps, generated ids, session tokens) when
	// computing the normalised key.
	Masks Masks
	// Window is how long an on-line exchange stays in the record, and how
	// far back a clone's call may match.
	Window time.Duration
	// MaxRecordBytes bounds the record's memory; the oldest exchanges are
	// evicted first.
	MaxRecordBytes int64
	// MaxBody is the largest request or response body recorded; an
	// exchange with a larger one is forwarded but not recorded.
	MaxBody int64
	// MatchWait is how long a clone's call waits for a matching on-line
	// exchange to be recorded when none is there yet (the clone can be
	// faster than the on-line instance). Negative: do not wait.
	MatchWait time.Duration
	// FallbackStatus is the status of the answer to an unmatched clone
	// call that is not passed through.
	FallbackStatus int
	// PassThrough lists the methods for which an unmatched clone call is
	// forwarded to the real next tier. Only safe methods (GET, HEAD,
	// OPTIONS, TRACE) are allowed, so that a clone's writes never reach
	// the on-line next tier.
	PassThrough []string
	// ReuseReads lets a clone's read (a safe method) that finds no
	// unconsumed on-line exchange be answered at once with the latest
	// exchange of the same key, instead of waiting (MatchWait) for the
	// on-line instance to make the call: an overloaded on-line instance
	// then does not hold the clone to its pace. Writes are always matched
	// one to one.
	ReuseReads bool
	// StandIn lets a clone's read (a safe method) that nothing recorded
	// matches, not even with ReuseReads, be answered at once with the
	// latest exchange of the same route (see Masks.Route: the same kind of
	// call, about another item), after that exchange's latency, instead
	// of waiting for the on-line instance or passing through to the real
	// next tier. A clone of an overloaded on-line instance is then neither
	// held to its pace nor adding load to the on-line next tier; the
	// answer's content is another call's, so the clone's work is the same
	// kind, not the same. Stand-ins count as unmatched (StoodIn). Writes
	// are never stood in for.
	StandIn bool
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
}

// OutProxy plays the next tier for clones. It has two faces: the on-line
// listener forwards the on-line instance's calls to the real next tier
// unchanged, byte for byte (see forward.go), and records each exchange; each clone's handler answers that
// clone's calls from the record, matched by normalised key and consumed in
// order, after the latency the next tier showed.
//
// Which callers are clones is decided by where they connect, never by what
// they send: the on-line instance is pointed at the on-line listener, each
// clone at a clone listener of its own (a clone's next-tier address is
// steered there by the sandbox's NAT), so a clone's call cannot be taken
// for an on-line one. Start serves the on-line listener and one clone
// listener; ServeClone and StopClone add and remove clone listeners at run
// time; CloneHandler lets a caller serve a clone itself.
type OutProxy struct {
	cfg   OutConfig
	log   *slog.Logger
	rec   *Record
	safe  map[string]bool
	pass  *httputil.ReverseProxy // clone pass-through
	trCl  *http.Transport
	commi atomic.Int64
	// committing counts the commit goroutines under way, for Close to
	// wait for.
	committing sync.WaitGroup
	sleep      sleeper // replays' waits
	// afterTake, for tests, runs after a clone's call first tried to take
	// its match, before it looks further or waits.
	afterTake func(*http.Request)

	recorded, notRecorded atomic.Int64
	// taps hand the exchanges recorded over to clones' replicas in other
	// processes (see Tap).
	taps tapSet
	// calls counts every clone's calls over the proxy's window (OutStats),
	// apart from the clones' own windows: those end at each experiment's
	// edges, and a stopped clone's go with it.
	calls callCounts

	closeOnce sync.Once // Close's work: once, and later calls wait for it

	mu         sync.Mutex
	windowFrom time.Time
	online     *fwdServer
	clones     map[string]*cloneEndpoint
	endpoints  uint64 // endpoints made, for their consumer names
	closed     bool
	// stopSweep is closed by Close to end the record's sweep, and
	// sweepDone by the sweep as it ends; both nil until Start.
	stopSweep, sweepDone chan struct{}
}

// cloneEndpoint is one clone's face of the out-proxy: its counters and,
// when the proxy serves it, its listener.
type cloneEndpoint struct {
	name string
	// consumer is the endpoint's name in the record, its own: a clone
	// served again under the same name starts afresh, whatever calls to
	// the one before are still under way.
	consumer string
	// since, unix ns, is when the endpoint was made or, later, its clone
	// attached (Attach): on-line calls that started before it are not its
	// clone's (see Record.take). It only moves forward (see
	// Record.takeOrWait).
	since          atomic.Int64
	srv            *server           // nil when the caller serves CloneHandler
	calls          callCounts        // over the clone's window (ReplayStats)
	proxyCalls     *callCounts       // over the proxy's (OutStats)
	reused         atomic.Int64      // matched reads answered with an earlier exchange
	waited, waitNs atomic.Int64      // calls that waited for their on-line match, and how long
	replayed       *measure.Recorder // the next-tier latencies the answers were replayed with
	from           atomic.Int64      // window start, unix ns

	// takeMu is held (read) while the endpoint takes from the record, so
	// that once stop has set stopped, no call takes, and the consumer
	// can be forgotten for good.
	takeMu   sync.RWMutex
	stopped  bool
	stopping chan struct{} // closed by stop: calls waiting for a match give up
	stopOnce sync.Once
}

// callKind is what became of a clone's call: matched in the record, or
// unmatched; an unmatched call may also have been stood in for (answered
// with another call of its route) or passed through to the next tier.
type callKind int

const (
	callMatched callKind = iota
	callUnmatched
	callStoodIn
	callPassed
	callKinds
)

// callCounts counts calls by kind.
type callCounts [callKinds]atomic.Int64

// count counts a call of kind k in the clone's window and the proxy's.
func (ep *cloneEndpoint) count(k callKind) {
	ep.calls[k].Add(1)
	ep.proxyCalls[k].Add(1)
}

// take takes the next exchange with key for the endpoint from rec (none
// while earlier calls of the endpoint wait for key); live is false, and
// nothing taken, once the endpoint is stopped.
func (ep *cloneEndpoint) take(rec *Record, key string) (ex *Exchange, ok, live bool) {
	ep.takeMu.RLock()
	defer ep.takeMu.RUnlock()
	if ep.stopped {
		return nil, false, false
	}
	ex, ok = rec.take(ep.consumer, key, ep.sinceTime())
	return ex, ok, true
}

// sinceTime returns since as a time.
func (ep *cloneEndpoint) sinceTime() time.Time { return time.Unix(0, ep.since.Load()) }

// attach moves since to t, unless it is later already.
func (ep *cloneEndpoint) attach(t time.Time) {
	ns := t.UnixNano()
	for {
		old := ep.since.Load()
		if old >= ns || ep.since.CompareAndSwap(old, ns) {
			return
		}
	}
}

// wait is take that, when nothing matches yet, waits up to d for a match
// to be recorded, or until ctx ends or the endpoint stops: a clone may
// call the next tier before the on-line instance's call has ended. The
// endpoint's calls waiting for the same key are served first come first
// served: the record hands each the next exchange as it is recorded, one
// that started after the endpoint's since as it is then (an Attach while
// the call waits counts). No call waits or takes after stop, and an
// exchange handed to a call that ended or was stopped meanwhile is put
// back. queued reports whether the call waited: it did not when it took
// at once, and not after stop. An exchange taken at once is the caller's
// to put back, whatever ctx says.
func (ep *cloneEndpoint) wait(ctx context.Context, rec *Record, key string, d time.Duration) (ex *Exchange, ok, queued bool) {
	if d <= 0 {
		ex, ok, _ = ep.take(rec, key)
		return ex, ok, false
	}
	ep.takeMu.RLock()
	if ep.stopped {
		ep.takeMu.RUnlock()
		return nil, false, false
	}
	ex, ok, w := rec.takeOrWait(ep.consumer, key, ep.sinceTime)
	ep.takeMu.RUnlock()
	if w == nil {
		return ex, ok, false
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-w.ready:
	case <-timer.C:
	case <-ctx.Done():
	case <-ep.stopping:
	}
	ex, ok = rec.endWait(w)
	if ok && (ctx.Err() != nil || ep.isStopped()) {
		rec.untake(ep.consumer, ex) // no answer from it: the next call's
		return nil, false, true
	}
	return ex, ok, true
}

// stop ends the endpoint's calls' takes from the record: it returns once
// no take is under way, and none comes after.
func (ep *cloneEndpoint) stop() {
	ep.stopOnce.Do(func() {
		ep.takeMu.Lock()
		ep.stopped = true
		ep.takeMu.Unlock()
		close(ep.stopping)
	})
}

// isStopped reports whether stop was called.
func (ep *cloneEndpoint) isStopped() bool {
	select {
	case <-ep.stopping:
		return true
	default:
		return false
	}
}

// route is the route an on-line call is recorded under: empty (none) when
// no stand-ins are served, or for a write, which is never stood in for.
func (p *OutProxy) route(method, path, rawQuery string) string {
	if !p.cfg.StandIn || !p.readOnly(method) {
		return ""
	}
	return p.cfg.Masks.Route(method, path, rawQuery)
}

// readOnly reports whether a call with method reads only, so that an
// earlier answer to the same call may stand in for one not recorded yet.
func (p *OutProxy) readOnly(method string) bool { return safeMethods[method] }

// NewOutProxy checks cfg and returns a proxy that is not yet listening.
func NewOutProxy(cfg OutConfig) (*OutProxy, error) {
	if cfg.Upstream == nil {
		return nil, justrunit.Invalid("upstream", nil, "missing next-tier URL")
	}
	if _, err := ParseUpstream("upstream", cfg.Upstream.String()); err != nil {
		return nil, err
	}
	if path := cfg.Upstream.EscapedPath(); path != "" && path != "/" {
		// A path would apply to the clones' passed-through calls only, so
		// they would reach another resource than the on-line calls.
		return nil, justrunit.Invalid("upstream", cfg.Upstream.String(), "must not have a path: the out-proxy forwards the on-line instance's calls unchanged, path included")
	}
	for _, l := range []struct {
		field string
		v     any
		neg   bool
	}{{"window", cfg.Window, cfg.Window < 0}, {"max_record_bytes", cfg.MaxRecordBytes, cfg.MaxRecordBytes < 0}, {"max_body", cfg.MaxBody, cfg.MaxBody < 0}} {
		if l.neg {
			return nil, justrunit.Invalid(l.field, l.v, "must not be negative (0 takes the default)")
		}
	}
	setDefault(&cfg.Window, DefaultWindow)
	setDefault(&cfg.MaxRecordBytes, DefaultMaxRecordBytes)
	setDefault(&cfg.MaxBody, DefaultMaxBody)
	setDefault(&cfg.MatchWait, DefaultMatchWait)
	setDefault(&cfg.FallbackStatus, DefaultFallbackStatus)
	if cfg.FallbackStatus < 200 || cfg.FallbackStatus > 599 {
		return nil, justrunit.Invalid("fallback_status", cfg.FallbackStatus, "want an HTTP status 200..599")
	}
	if err := CheckPassThrough("pass_through", cfg.PassThrough); err != nil {
		return nil, err
	}
	safe := make(map[string]bool)
	for _, m := range cfg.PassThrough {
		safe[strings.ToUpper(strings.TrimSpace(m))] = true
	}
	p := &OutProxy{
		cfg:        cfg,
		log:        orDiscard(cfg.Logger),
		rec:        NewRecord(cfg.Window, cfg.MaxRecordBytes),
		safe:       safe,
		trCl:       newTransport(0),
		windowFrom: time.Now(),
		clones:     make(map[string]*cloneEndpoint),
	}
	p.pass = &httputil.ReverseProxy{
		Rewrite:    rewriteTo(cfg.Upstream),
		Transport:  p.trCl,
		BufferPool: &bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			level := slog.LevelWarn
			if r.Context().Err() != nil {
				level = slog.LevelDebug // the caller went away: not the instance's failure
			}
			p.log.Log(r.Context(), level, "clone's pass-through call failed", logKeyMethod, r.Method, logKeyURI, r.RequestURI, logKeyErr, err)
			w.WriteHeader(http.StatusBadGateway)
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

// Record returns the proxy's record of on-line exchanges.
func (p *OutProxy) Record() *Record { return p.rec }

// CloneHandler returns the handler for the calls of the clone called name,
// for a caller that serves it on a listener of its own. Each name consumes
// the record on its own and has its own counters (ReplayStats), so one
// out-proxy can serve several clones (at most MaxConsumers). A clone is
// answered from the on-line calls that started after its name was first
// served (here or by ServeClone or ServeCloneOn) or, once Attach is
// called, after that: the calls before are not its clone's. Once the
// clone is stopped (StopClone, Close), the handler answers every call
// with the fallback.
func (p *OutProxy) CloneHandler(name string) http.Handler {
	p.mu.Lock()
	ep := p.endpointLocked(name)
	p.mu.Unlock()
	return p.cloneHandler(ep)
}

func (p *OutProxy) cloneHandler(ep *cloneEndpoint) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serveClone(ep, w, r) })
}

func (p *OutProxy) endpointLocked(name string) *cloneEndpoint {
	ep := p.clones[name]
	if ep == nil {
		p.endpoints++
		ep = &cloneEndpoint{
			name:       name,
			consumer:   name + "#" + strconv.FormatUint(p.endpoints, 10),
			replayed:   measure.NewRecorder(),
			stopping:   make(chan struct{}),
			proxyCalls: &p.calls,
		}
		ep.from.Store(time.Now().UnixNano())
		ep.since.Store(time.Now().UnixNano())
		if p.closed {
			ep.stop() // a handler for after Close answers with the fallback
		}
		p.clones[name] = ep
	}
	return ep
}

// Start checks that the next tier's host resolves, then serves the on-line
// handler on onlineAddr and, unless cloneAddr is empty, the clone called
// DefaultCloneName on cloneAddr. It returns the addresses (clone nil when
// not served). On error nothing is left listening.
//
// ctx bounds the start only (the name's resolution), as for the
// in-proxy: what Start launches, the listeners and the record's sweep
// (which drops the exchanges that leave the window, traffic or not),
// runs until Close, whatever becomes of ctx. A proxy has one lifetime,
// its owner's to end: the daemon's context ends at the first signal,
// and the site's proxies must carry the on-line path until the daemon
// has stopped its studies and closes the site.
func (p *OutProxy) Start(ctx context.Context, onlineAddr, cloneAddr string) (online, clone net.Addr, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, fmt.Errorf("start out-proxy: closed")
	}
	if p.online != nil {
		return nil, nil, fmt.Errorf("start out-proxy: %w: already listening", justrunit.ErrExists)
	}
	if err := checkResolves(ctx, "upstream", p.cfg.Upstream); err != nil {
		return nil, nil, err
	}
	ln, err := listenTCP("listen", onlineAddr)
	if err != nil {
		return nil, nil, err
	}
	if cloneAddr != "" {
		a, err := p.listenCloneLocked(DefaultCloneName, cloneAddr)
		if err != nil {
			_ = ln.Close()
			return nil, nil, err
		}
		clone = a
	}
	p.online = forward(ln, p.cfg.Upstream, p, p.log, nil)
	p.stopSweep, p.sweepDone = make(chan struct{}), make(chan struct{})
	go p.sweep(p.stopSweep, p.sweepDone)
	return ln.Addr(), clone, nil
}

// sweepEvery is how often the record drops what left a window of w
// without traffic: a fraction of the window, within 10ms..1s.
func sweepEvery(w time.Duration) time.Duration {
	return min(max(w/8, 10*time.Millisecond), time.Second)
}

// sweep drops the exchanges that leave the window, even with no traffic
// (see Record.sweep), until stop is closed (Close); it closes done as it
// returns.
func (p *OutProxy) sweep(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(sweepEvery(p.cfg.Window))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			p.rec.sweep(now)
		}
	}
}

// ServeClone starts answering the calls of the clone called name on a new
// listener on 127.0.0.1 with a port the kernel picks, and returns its
// address (host:port). The name must not be served already (else an error
// wrapping justrunit.ErrExists).
func (p *OutProxy) ServeClone(ctx context.Context, name string) (string, error) {
	return p.ServeCloneAt(ctx, name, "127.0.0.1:0")
}

// ServeCloneAt is ServeClone on a given address.
func (p *OutProxy) ServeCloneAt(ctx context.Context, name, addr string) (string, error) {
	if name == "" {
		return "", justrunit.Invalid("clone.name", name, "must not be empty")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return "", fmt.Errorf("serve clone %s: out-proxy closed", name)
	}
	a, err := p.listenCloneLocked(name, addr)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// listenCloneLocked serves the clone called name on a new listener on addr.
func (p *OutProxy) listenCloneLocked(name, addr string) (net.Addr, error) {
	ln, err := listenTCP("clone_listen", addr)
	if err != nil {
		return nil, err
	}
	if err := p.serveCloneLocked(name, ln); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln.Addr(), nil
}

// ServeCloneOn starts answering the calls of the clone called name on ln,
// which someone else opened (inside the clone's own network, see
// justrunit.CloneOptions.Answer); the proxy closes it when it stops. The
// name must not be served already (else an error wrapping
// justrunit.ErrExists), and ln is left open on error.
func (p *OutProxy) ServeCloneOn(name string, ln net.Listener) error {
	if name == "" {
		return justrunit.Invalid("clone.name", name, "must not be empty")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("serve clone %s: out-proxy closed", name)
	}
	return p.serveCloneLocked(name, ln)
}

// serveCloneLocked serves the clone called name on ln.
func (p *OutProxy) serveCloneLocked(name string, ln net.Listener) error {
	ep, existed := p.clones[name]
	if existed && ep.srv != nil {
		return fmt.Errorf("serve clone %s: %w: already on %s", name, justrunit.ErrExists, ep.srv.ln.Addr())
	}
	if !existed {
		ep = p.endpointLocked(name)
	}
	ep.srv = serveOn(ln, p.cloneHandler(ep), p.log)
	p.log.Info("serving clone", logKeyClone, name, logKeyAddr, ln.Addr().String())
	return nil
}

// Attach tells the proxy that the clone called name gets copies of the
// live traffic from now on (its in-proxy attaches it): it is answered from
// the on-line calls that start from now, not from those made while it was
// being made, which are not its own (taking them, it would run behind the
// on-line instance by as many, for good). It returns an error wrapping
// justrunit.ErrNotFound for a name not served.
func (p *OutProxy) Attach(name string) error {
	p.mu.Lock()
	ep := p.clones[name]
	p.mu.Unlock()
	if ep == nil {
		return fmt.Errorf("attach clone %s: %w", name, justrunit.ErrNotFound)
	}
	ep.attach(time.Now())
	return nil
}

// StopClone stops answering the calls of the clone called name, closes its
// listener (if the proxy serves it, letting calls in progress end for
// DefaultShutdownGrace) and forgets its place in the record. Calls still
// under way then, and any a caller still makes through its CloneHandler,
// get the fallback answer. It returns an error wrapping
// justrunit.ErrNotFound for an unknown name.
func (p *OutProxy) StopClone(name string) error {
	p.mu.Lock()
	ep := p.clones[name]
	delete(p.clones, name)
	p.mu.Unlock()
	if ep == nil {
		return fmt.Errorf("stop clone %s: %w", name, justrunit.ErrNotFound)
	}
	ep.stop() // calls waiting for a match give up; none takes from now on
	err := ep.srv.close(DefaultShutdownGrace)
	// Only now: a call that took after it would take the consumer's place
	// again, for good (at MaxConsumers, every new clone matches nothing).
	p.rec.Forget(ep.consumer)
	return err
}

// ReplayStats returns the match statistics of the clone called name for
// its current window, and ends that window when reset; other clones'
// windows are not touched. It returns an error wrapping
// justrunit.ErrNotFound for an unknown name.
func (p *OutProxy) ReplayStats(name string, reset bool) (ReplayStats, error) {
	p.mu.Lock()
	ep := p.clones[name]
	p.mu.Unlock()
	if ep == nil {
		return ReplayStats{}, fmt.Errorf("clone %s: %w", name, justrunit.ErrNotFound)
	}
	return ep.stats(reset), nil
}

// Close stops serving: the on-line listener (letting the calls in
// progress finish for DefaultShutdownGrace) and every clone endpoint, as
// StopClone does, however it is served (the clones' calls waiting for a
// match get the fallback at once, and so does any call made later through
// a CloneHandler). The clones' counts stay readable.
//
// Close ends the proxy's lifetime (see Start): it returns once the
// goroutines Start launched have ended (the on-line listener's, the
// clone listeners' accept loops and the record's sweep) and the on-line
// exchanges being recorded are in the record. A clone's call still being
// answered when the grace is over is cut off, and its handler returns on
// its own. It is safe to call more than once, and at the same time: a
// later call waits for the first to end, and returns nil.
func (p *OutProxy) Close() error {
	var err error
	p.closeOnce.Do(func() { err = p.close() })
	return err
}

func (p *OutProxy) close() error {
	p.mu.Lock()
	p.closed = true
	online := p.online
	p.online = nil
	if p.stopSweep != nil {
		close(p.stopSweep)
	}
	sweepDone := p.sweepDone
	var srvs []*server
	eps := make([]*cloneEndpoint, 0, len(p.clones))
	for _, ep := range p.clones {
		srvs = append(srvs, ep.srv)
		ep.srv = nil
		eps = append(eps, ep)
	}
	p.mu.Unlock()
	for _, ep := range eps {
		ep.stop() // calls waiting for a match give up; none takes from now on
	}
	var wg sync.WaitGroup
	var onErr error
	wg.Add(1)
	go func() { defer wg.Done(); onErr = online.close(DefaultShutdownGrace) }()
	err := closeAll(DefaultShutdownGrace, srvs...)
	wg.Wait()
	// The on-line connections' goroutines have ended, so no commit starts
	// from now on.
	p.committing.Wait()
	if sweepDone != nil {
		<-sweepDone
	}
	for _, ep := range eps {
		p.rec.Forget(ep.consumer)
	}
	p.trCl.CloseIdleConnections()
	return errors.Join(onErr, err)
}

// ReplayStats is what the out-proxy counted for one clone in one window.
type ReplayStats struct {
	Name  string    `json:"name"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Matched counts the clone's calls answered from the record;
	// Unmatched the others, of which StoodIn were answered with the
	// latest exchange of their route (StandIn), PassedThrough forwarded
	// to the real next tier (safe methods only) and the rest answered
	// with the fallback status. A call that ended (its client went away)
	// while its answer's latency was replayed counts in none, and the
	// exchange it took is left for its retry.
	Matched       int64 `json:"matched"`
	Unmatched     int64 `json:"unmatched"`
	StoodIn       int64 `json:"stood_in"`
	PassedThrough int64 `json:"passed_through"`
	// MatchRate is Matched / (Matched + Unmatched), 1 when the clone made
	// no call.
	// Reused counts the matched reads answered with an earlier exchange of
	// the same key because the on-line instance had not made the call
	// (again) yet.
	Reused    int64   `json:"reused"`
	MatchRate float64 `json:"match_rate"`
	// Waited counts the calls that found no match at once and waited (up
	// to MatchWait) for the on-line instance to make the same call;
	// WaitMs is their mean wait. A clone faster than the on-line instance
	// is held to its pace by these waits. A call that ended while it
	// waited counts in neither.
	Waited int64   `json:"waited"`
	WaitMs float64 `json:"wait_mean_ms"`
	// NextTier is the distribution of the next-tier latencies the clone's
	// calls answered from the record (matched or stood in) were replayed
	// with: what the on-line next tier showed when the calls were
	// recorded, so the conditions the clone was measured under.
	NextTier justrunit.ResponseTime `json:"next_tier"`
}

// Apply copies the match rate and the next tier's replayed latencies into o.
func (s ReplayStats) Apply(o *justrunit.Observation) {
	o.MatchRate = s.MatchRate
	o.NextTier = nil
	if s.Matched+s.StoodIn > 0 { // answers replayed
		nt := s.NextTier
		o.NextTier = &nt
	}
}

func (ep *cloneEndpoint) stats(reset bool) ReplayStats {
	now := time.Now()
	load := func(a *atomic.Int64) int64 { return loadCount(a, reset) }
	s := ReplayStats{Name: ep.name, End: now}
	if reset {
		s.Start = time.Unix(0, ep.from.Swap(now.UnixNano()))
	} else {
		s.Start = time.Unix(0, ep.from.Load())
	}
	s.Matched, s.Unmatched = load(&ep.calls[callMatched]), load(&ep.calls[callUnmatched])
	s.StoodIn, s.PassedThrough = load(&ep.calls[callStoodIn]), load(&ep.calls[callPassed])
	s.Reused = load(&ep.reused)
	if reset {
		s.NextTier = ep.replayed.Reset().RT
	} else {
		s.NextTier = ep.replayed.Snapshot().RT
	}
	if s.Waited = load(&ep.waited); s.Waited > 0 {
		s.WaitMs = float64(load(&ep.waitNs)) / float64(s.Waited) / float64(time.Millisecond)
	} else if reset {
		ep.waitNs.Store(0)
	}
	s.MatchRate = matchRate(s.Matched, s.Unmatched)
	return s
}

// loadCount reads a counter, and zeroes it when reset.
func loadCount(a *atomic.Int64, reset bool) int64 {
	if reset {
		return a.Swap(0)
	}
	return a.Load()
}

func matchRate(matched, unmatched int64) float64 {
	if n := matched + unmatched; n > 0 {
		return float64(matched) / float64(n)
	}
	return 1
}

// OutStats is what an out-proxy counted in one window.
type OutStats struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Recorded counts on-line exchanges added to the record; NotRecorded
	// those forwarded but not recorded (body above MaxBody, response not
	// read in full or not parsed, the connection switched protocols or was
	// no longer parsed, or too many being recorded at once).
	Recorded    int64 `json:"recorded"`
	NotRecorded int64 `json:"not_recorded"`
	// Matched, Unmatched, StoodIn and PassedThrough count the calls of
	// every clone, stopped ones too, over the window (see ReplayStats for
	// what each means); MatchRate is Matched / (Matched + Unmatched), 1
	// when the clones made no call.
	Matched       int64   `json:"matched"`
	Unmatched     int64   `json:"unmatched"`
	StoodIn       int64   `json:"stood_in"`
	PassedThrough int64   `json:"passed_through"`
	MatchRate     float64 `json:"match_rate"`
	// Clones has the counts of each clone served now, by name, over its
	// own window (which ending the proxy's window does not end).
	Clones []ReplayStats `json:"clones"`
	// Record is the record's memory now (not windowed).
	Record RecordStats `json:"record"`
}

// Apply copies the match rate into o.
func (s OutStats) Apply(o *justrunit.Observation) { o.MatchRate = s.MatchRate }

// Stats returns the current window's counts without ending it.
func (p *OutProxy) Stats() OutStats { return p.stats(false) }

// Reset ends the current window, returns its counts and starts a new one.
func (p *OutProxy) Reset() OutStats { return p.stats(true) }

func (p *OutProxy) stats(reset bool) OutStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	s := OutStats{Start: p.windowFrom, End: now, Record: p.rec.Stats(), Clones: []ReplayStats{}}
	load := func(a *atomic.Int64) int64 { return loadCount(a, reset) }
	s.Recorded, s.NotRecorded = load(&p.recorded), load(&p.notRecorded)
	s.Matched, s.Unmatched = load(&p.calls[callMatched]), load(&p.calls[callUnmatched])
	s.StoodIn, s.PassedThrough = load(&p.calls[callStoodIn]), load(&p.calls[callPassed])
	if reset {
		p.windowFrom = now
	}
	for _, ep := range p.clones {
		s.Clones = append(s.Clones, ep.stats(false))
	}
	slices.SortFunc(s.Clones, func(a, b ReplayStats) int { return strings.Compare(a.Name, b.Name) })
	s.MatchRate = matchRate(s.Matched, s.Unmatched)
	return s
}

// pending is an on-line exchange being recorded. Its request's body is
// read on the connection's requests goroutine and its response on the
// responses one, and they end in either order: the next tier may answer
// before it has read the body (or the proxy has taken in the last bytes it
// forwarded), so whichever ends second commits the exchange, and the key
// is always computed from the whole body.
type pending struct {
	start          time.Time
	method, uri    string
	path, rawQuery string
	reqBody        *teeBody // nil: no body

	mu sync.Mutex
	// bodyDone is set once the request's body was read to its end and
	// forwarded in full, within MaxBody.
	bodyDone bool
	// answer is the response, read in full, while it waits for the body.
	answer *answered
	// ended is set once the exchange is committed or counted as not
	// recorded; nothing is done with it after.
	ended bool
}

// answered is an on-line response read in full at end.
type answered struct {
	resp *http.Response
	body []byte
	end  time.Time
}

// The out-proxy's fwdHooks: each on-line exchange whose bodies fit in
// MaxBody is recorded once its request's body and its response have both
// been read to their end.

func (p *OutProxy) fwdRequest(ex *exchange) io.Reader {
	r := ex.req
	switch {
	case opensTunnel(r), r.ContentLength > p.cfg.MaxBody:
		p.notRecorded.Add(1)
		return r.Body
	}
	pe := &pending{start: ex.arrival, method: r.Method, uri: r.RequestURI, path: r.URL.Path, rawQuery: r.URL.RawQuery}
	ex.rec = pe // set here only: read from both goroutines
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		pe.bodyDone = true
		return r.Body
	}
	pe.reqBody = &teeBody{bodyCopy: bodyCopy{limit: p.cfg.MaxBody}, rc: r.Body}
	return pe.reqBody
}

func (p *OutProxy) fwdBodyRead(ex *exchange, err error) {
	pe := ex.rec
	if pe == nil || pe.reqBody == nil {
		return
	}
	pe.mu.Lock()
	if pe.ended {
		pe.mu.Unlock()
		return
	}
	if err != nil || pe.reqBody.over { // no key: the body is not whole
		pe.ended, pe.answer = true, nil
		pe.mu.Unlock()
		p.notRecorded.Add(1)
		return
	}
	pe.bodyDone = true
	a := pe.answer
	pe.answer = nil
	pe.ended = a != nil
	pe.mu.Unlock()
	if a != nil { // answered while the body was still coming
		p.commit(pe, a)
	}
}

// fwdFailed counts ex as not recorded, once, whichever side ends it.
func (p *OutProxy) fwdFailed(ex *exchange) {
	pe := ex.rec
	if pe == nil {
		return
	}
	pe.mu.Lock()
	counted := pe.ended
	pe.ended, pe.answer = true, nil
	pe.mu.Unlock()
	if !counted {
		p.notRecorded.Add(1)
	}
}

func (p *OutProxy) fwdUnobserved(ex *exchange) { p.fwdFailed(ex) }

func (p *OutProxy) fwdUnreachable(req *http.Request, err error) {
	var method, uri string
	if req != nil {
		method, uri = req.Method, req.RequestURI
	}
	p.log.Warn("next-tier call failed", logKeyMethod, method, logKeyURI, uri, logKeyErr, err)
}

func (p *OutProxy) fwdResponse(br *bufio.Reader, out *fwdReader, ex *exchange, resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		p.fwdFailed(ex) // not recorded: what follows is not HTTP
		return errUpgraded
	}
	if ex.rec == nil || resp.ContentLength > p.cfg.MaxBody {
		p.fwdFailed(ex) // counted once, however often called
		_, err := io.Copy(io.Discard, resp.Body)
		return err
	}
	body := &bodyCopy{limit: p.cfg.MaxBody}
	_, err := io.Copy(io.Discard, io.TeeReader(resp.Body, body)) // Discard's pooled buffer: no 32 KiB one per call
	if err != nil {
		return err // the forwarder ends ex
	}
	if body.over {
		p.fwdFailed(ex)
		return nil
	}
	a := &answered{resp: resp, body: body.buf, end: out.lastRead()}
	pe := ex.rec
	pe.mu.Lock()
	if pe.ended {
		pe.mu.Unlock()
		return nil
	}
	if !pe.bodyDone { // the requests' side commits it once the body is whole
		pe.answer = a
		pe.mu.Unlock()
		return nil
	}
	pe.ended = true
	pe.mu.Unlock()
	p.commit(pe, a)
	return nil
}

// commit adds an exchange whose request's body and response were read in
// full to the record, off the on-line path: keying (masks, JSON, hashing)
// runs in its own goroutine, bounded in number.
func (p *OutProxy) commit(pe *pending, a *answered) {
	if p.commi.Add(1) > maxCommits {
		p.commi.Add(-1)
		p.notRecorded.Add(1)
		return
	}
	p.committing.Go(func() {
		defer p.commi.Add(-1)
		header := a.resp.Header
		for _, k := range hopHeaders {
			delete(header, k) // the connection's, not the exchange's: a replay has its own
		}
		if pe.method != http.MethodHead {
			delete(header, "Content-Length") // set again from the body when replayed
		}
		var reqBody []byte
		if pe.reqBody != nil {
			reqBody = pe.reqBody.buf // read in full before pe was committed
		}
		ex := &Exchange{
			Key:     p.cfg.Masks.Key(pe.method, pe.path, pe.rawQuery, reqBody),
			Route:   p.route(pe.method, pe.path, pe.rawQuery),
			Method:  pe.method,
			URI:     pe.uri,
			Start:   pe.start,
			Latency: a.end.Sub(pe.start),
			Status:  a.resp.StatusCode,
			Header:  header,
			Body:    a.body,
		}
		if p.rec.Add(ex) {
			p.recorded.Add(1)
		} else {
			p.notRecorded.Add(1)
		}
		for _, t := range p.tapList() {
			t.sendExchange(ex)
		}
	})
}

func (p *OutProxy) serveClone(ep *cloneEndpoint, w http.ResponseWriter, r *http.Request) {
	arrival := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, p.cfg.MaxBody+1))
	if err != nil {
		http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if int64(len(body)) <= p.cfg.MaxBody {
		key := p.cfg.Masks.Key(r.Method, r.URL.Path, r.URL.RawQuery, body)
		ex, ok, live := ep.take(p.rec, key)
		if !live { // stopped: no answer from the record any more
			p.stoppedCall(ep, w, r)
			return
		}
		if p.afterTake != nil {
			p.afterTake(r)
		}
		if !ok && ep.isStopped() {
			// Stopped since it took: no reused answer or stand-in from
			// the record either, as for any call after stop.
			p.stoppedCall(ep, w, r)
			return
		}
		reused := false
		if !ok && p.cfg.ReuseReads && p.readOnly(r.Method) {
			// A read the on-line instance has not made (again) yet: an
			// earlier answer to the same read stands in, rather than
			// holding the clone to the on-line instance's pace.
			ex, ok = p.rec.Latest(key)
			reused = ok
		}
		if !ok && p.cfg.StandIn && p.readOnly(r.Method) {
			// Nothing recorded of this call: another call of its route
			// stands in, rather than holding the clone to the on-line
			// instance's pace or loading the on-line next tier.
			if sub, found := p.rec.LatestRoute(p.cfg.Masks.Route(r.Method, r.URL.Path, r.URL.RawQuery)); found {
				if p.awaitLatency(r, sub, arrival) {
					ep.count(callUnmatched)
					ep.count(callStoodIn)
					ep.replayed.Record(sub.Latency)
					p.answer(w, r, sub)
				}
				return
			}
		}
		if !ok && !(p.cfg.ReuseReads && p.safe[r.Method]) {
			// With ReuseReads, a read that may pass through does not wait
			// for the on-line instance either.
			t := time.Now()
			var queued bool
			ex, ok, queued = ep.wait(r.Context(), p.rec, key, p.cfg.MatchWait)
			gone := r.Context().Err() != nil
			if queued && !gone {
				ep.waited.Add(1)
				ep.waitNs.Add(int64(time.Since(t)))
			}
			if !ok && gone {
				// The call ended while it waited (a match handed to it
				// was put back): nobody to answer, nothing to count,
				// and no read to pass through. One it took at once goes
				// on: awaitLatency fails at once, and puts it back.
				return
			}
		}
		if ok {
			if !p.awaitLatency(r, ex, arrival) {
				// The call ended before its answer: the exchange is its
				// retry's, where it was, and nothing was answered.
				if !reused {
					p.rec.untake(ep.consumer, ex)
				}
				return
			}
			if reused {
				ep.reused.Add(1)
			}
			ep.count(callMatched)
			ep.replayed.Record(ex.Latency)
			p.answer(w, r, ex)
			return
		}
	}
	if r.Context().Err() != nil {
		// The call ended before it was answered (it never waited, or its
		// body was over MaxBody): nothing to count, no read to pass
		// through.
		return
	}
	ep.count(callUnmatched)
	// Never an upgrade: ReverseProxy would tunnel a 101 both ways, and
	// the clone could then write to the real next tier.
	if p.safe[r.Method] && int64(len(body)) <= p.cfg.MaxBody && !asksUpgrade(r.Header) && !ep.isStopped() {
		ep.count(callPassed)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		p.pass.ServeHTTP(w, r)
		return
	}
	p.fallback(w, r, ep)
}

// stoppedCall answers a call of a stopped clone: with the fallback,
// counted as unmatched, unless its client went away (nobody to answer,
// nothing to count).
func (p *OutProxy) stoppedCall(ep *cloneEndpoint, w http.ResponseWriter, r *http.Request) {
	if r.Context().Err() != nil {
		return
	}
	ep.count(callUnmatched)
	p.fallback(w, r, ep)
}

// fallback answers a clone's call that nothing answers.
func (p *OutProxy) fallback(w http.ResponseWriter, r *http.Request, ep *cloneEndpoint) {
	p.log.Debug("unmatched clone call", logKeyClone, ep.name, logKeyMethod, r.Method, logKeyURI, r.RequestURI)
	w.Header().Set(UnmatchedHeader, "1")
	w.WriteHeader(p.cfg.FallbackStatus)
}

// awaitLatency waits until ex's latency has passed since the call's
// arrival (by a sleeper: a plain timer would add its lateness to every
// replayed call), and reports whether the call is still there to answer.
func (p *OutProxy) awaitLatency(r *http.Request, ex *Exchange, arrival time.Time) bool {
	return p.sleep.until(r.Context(), arrival.Add(ex.Latency)) == nil
}

// answer answers the call with ex.
func (p *OutProxy) answer(w http.ResponseWriter, r *http.Request, ex *Exchange) {
	h := w.Header()
	for k, vs := range ex.Header {
		h[k] = vs
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(ex.Status)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(ex.Body)))
	w.WriteHeader(ex.Status)
	_, _ = w.Write(ex.Body)
}
