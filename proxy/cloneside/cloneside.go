// Package cloneside runs the clone side of a target's proxies in a helper
// process of its own, on the sandbox hosts' CPUs.
//
// The site's on-line proxies carry the live requests; the work done for
// clones (sending them copies, reading their answers, replaying the
// out-proxy's record to them) slows the on-line path when done on the same
// threads. So the site hands each copy, on-line result and recorded
// exchange over as one datagram through an httpproxy.Tap, never waiting,
// and the helper feeds them to an in-proxy and an out-proxy replica of its
// own that own the clones (httpproxy.Receive).
//
// Start starts the helper; the Side it returns attaches and detaches
// clones, and reads their statistics, as the site's proxies would
// (experiment.Feed and experiment.Replay), through a control socket. A
// clone only the site can reach (inside a network of its own) is dialled by
// the site for the helper, which gets the connected socket. The helper
// ends when its Side is closed, when the site dies, or when the site
// closes its control socket.
package cloneside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// Site-side timings.
const (
	// DefaultStartTimeout bounds Start's wait for the helper to be ready.
	DefaultStartTimeout = 10 * time.Second
	// stopGrace is how long Close lets the helper end before it kills
	// it: the helper stops when its control socket ends, within its
	// shutdownBound; termGrace before the end, Close sends it SIGTERM
	// too, in case it missed that.
	stopGrace = 3 * time.Second
	termGrace = time.Second
	// maxDialTimeout bounds one dial the helper asks for.
	maxDialTimeout = time.Minute
	// exitWait is how long a call that lost the helper waits for its exit
	// status, to say how it ended.
	exitWait = time.Second
)

// Config is what a clone side is started with.
type Config struct {
	// In is the target's in-proxy configuration as the site runs it; the
	// helper's in-proxy takes its Online, CloneLag, Compare, MaxCopyBody,
	// MaxInFlight, MaxCloneBytes, CopyTimeout, MaxCompareBody and Masks.
	// Its Logger, ObserveOnline and ObserveCopy stay on the site.
	In httpproxy.InConfig
	// Out is the target's out-proxy configuration (its Logger stays on
	// the site); nil when the target has no next tier.
	Out *httpproxy.OutConfig
	// CPUs are the CPUs every thread of the helper runs on: the sandbox
	// hosts'. Nil: those this process may run on.
	CPUs []int
	// Command is the program and first arguments that run the helper
	// (Main); nil: this program (os.Executable) with Subcommand. Start
	// adds --name.
	Command []string
	// Name names the helper in logs and in its command line.
	Name string
	// Logger receives the helper's logs, each with the helper's name and
	// pid; nil discards them.
	Logger *slog.Logger
}

// Side is a running clone side: the site's handle on the helper process.
// Its methods are those of the site's in-proxy and out-proxy for clones
// (experiment.Feed and experiment.Replay), carried out by the helper; they
// may be called concurrently. Errors keep their category across the
// process boundary (errors.Is finds justrunit.ErrNotFound and the others).
// Once the helper has exited, every call fails saying so.
type Side struct {
	name   string
	log    *slog.Logger
	feed   *httpproxy.InProxy
	replay *httpproxy.OutProxy
	tap    *httpproxy.Tap
	proc   *proc
	stderr *stderrLog
	ctl    *caller
	pid    int

	// The dial broker: the helper's requests to dial a clone.
	dialConn   *net.UnixConn
	dialCtx    context.Context
	stopDials  context.CancelFunc
	dialsRead  chan struct{} // closed when the broker stops reading
	dialsAlive sync.WaitGroup

	mu sync.Mutex
	// fed are the clones attached (or being attached) to the helper's
	// in-proxy, with their dials; the tap is on feed while there is one.
	fed map[string]*fedClone
	// served are the clones the helper's out-proxy answers (or is about
	// to); the tap is on replay while there is one.
	served map[string]bool
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// fedClone is a clone attached to the helper's in-proxy.
type fedClone struct {
	dial func(context.Context) (net.Conn, error) // nil: the helper dials it
}

// Interface guards: what experiment.Feed and experiment.Replay ask for
// (package experiment is above this one, so the method sets are spelt out).
var (
	_ interface {
		AddCloneDial(ctx context.Context, name string, target *url.URL, dial func(context.Context) (net.Conn, error), where string) error
		RemoveClone(name string) (httpproxy.CloneStats, error)
		CloneStats(name string, reset bool) (httpproxy.CloneStats, error)
	} = (*Side)(nil)
	_ interface {
		ServeClone(ctx context.Context, name string) (string, error)
		ServeCloneOn(name string, ln net.Listener) error
		Attach(name string) error
		StopClone(name string) error
		ReplayStats(name string, reset bool) (httpproxy.ReplayStats, error)
	} = (*Side)(nil)
)

// Start starts a clone side for the target whose on-line proxies are feed
// (its in-proxy) and replay (its out-proxy; nil when it has none, as
// cfg.Out is) and returns once the helper is ready, for ctx and
// DefaultStartTimeout at most. The helper runs until Close, whatever
// becomes of ctx; it is killed should this process die. On error nothing is
// left: the helper is killed and reaped, the sockets closed.
func Start(ctx context.Context, cfg Config, feed *httpproxy.InProxy, replay *httpproxy.OutProxy) (*Side, error) {
	switch {
	case feed == nil:
		return nil, justrunit.Invalid("feed", nil, "missing the target's in-proxy")
	case cfg.Out == nil && replay != nil:
		return nil, justrunit.Invalid("out", nil, "missing: the target has an out-proxy")
	case cfg.Out != nil && replay == nil:
		return nil, justrunit.Invalid("replay", nil, "missing: the configuration has an out-proxy (out) but the target's is not given")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wc, err := newWireConfig(cfg, lowestLevel(cfg.Logger))
	if err != nil {
		return nil, err
	}
	conf, err := json.Marshal(wc)
	if err != nil {
		return nil, fmt.Errorf("clone side %s: encode the configuration: %w", cfg.Name, err)
	}
	argv := cfg.Command
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("clone side %s: find this program: %w", cfg.Name, err)
		}
		argv = []string{exe, Subcommand}
	}
	argv = append(append([]string(nil), argv...), "--name="+cfg.Name, siteFlag+strconv.Itoa(os.Getpid()))

	s := &Side{
		name: cfg.Name, log: log, feed: feed, replay: replay,
		fed: make(map[string]*fedClone), served: make(map[string]bool),
		dialsRead: make(chan struct{}),
	}
	var closers []func()
	fail := func(err error) (*Side, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		return nil, fmt.Errorf("start clone side %s: %w", cfg.Name, err)
	}
	// The site's ends, and the helper's (descriptors 3, 4 and 5). The
	// hand-over's are in blocking mode, out of the runtime's poller on
	// both sides (see httpproxy.Tap).
	var site [3]*net.UnixConn
	var child [3]*os.File
	tapEnd, handoff, err := blockingPair("hand-over")
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { _ = tapEnd.Close(); _ = handoff.Close() })
	child[0] = handoff
	for i, what := range []string{"control", "dial broker"} {
		sc, cf, err := seqpacketPair(what)
		if err != nil {
			return fail(err)
		}
		site[i+1], child[i+1] = sc, cf
		closers = append(closers, func() { _ = sc.Close(); _ = cf.Close() })
	}
	s.tap, err = httpproxy.NewTap(tapEnd)
	if err != nil {
		return fail(err)
	}
	s.dialConn = site[2]
	s.ctl = newCaller(site[1])
	ready := s.ctl.expect(readyID)

	s.stderr = &stderrLog{log: log, name: cfg.Name}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(conf)
	cmd.Stderr = s.stderr
	cmd.ExtraFiles = child[:]
	// Its own process group, so that a terminal's Ctrl-C reaches the site
	// alone, which stops its helpers in order; killed should the site die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second // stdin and stderr's copying, should a descendant hold them
	s.proc, err = launch(cmd, cfg.CPUs)
	if err != nil {
		return fail(fmt.Errorf("run %v: %w", argv, err))
	}
	s.pid = cmd.Process.Pid
	s.stderr.pid.Store(int64(s.pid))
	closers = append(closers, func() {
		_ = cmd.Process.Kill()
		select {
		case <-s.proc.exited:
		default: // not reaped: its pid is still its group's
			_ = syscall.Kill(-s.pid, syscall.SIGKILL)
		}
		<-s.proc.exited
	})
	for _, f := range child {
		_ = f.Close() // the helper has them; its ends close with it
	}
	s.ctl.start()

	wctx, cancel := context.WithTimeout(ctx, DefaultStartTimeout)
	defer cancel()
	m, err := s.ctl.wait(wctx, readyID, ready)
	if err == nil {
		var rep reply
		if err = json.Unmarshal(m.body, &rep); err == nil {
			err = rep.Error.err()
		}
		closeFDs(m.fds)
	}
	if err != nil {
		switch {
		case errors.Is(err, errLost):
			err = fmt.Errorf("not ready: %s", s.ended(exitWait))
		case wctx.Err() != nil && ctx.Err() == nil:
			err = fmt.Errorf("not ready after %v%s", DefaultStartTimeout, s.stderrTail())
		case ctx.Err() != nil:
			err = fmt.Errorf("not ready: %w%s", err, s.stderrTail())
		}
		return fail(err)
	}
	s.dialCtx, s.stopDials = context.WithCancel(context.Background())
	go s.serveDials()
	log.Debug("clone side started", logKeySide, s.name, logKeySidePid, s.pid, "cpus", cfg.CPUs)
	return s, nil
}

// lowestLevel is the lowest level log takes, the helper's; Warn for nil,
// so that its errors are still in the tail of its output.
func lowestLevel(log *slog.Logger) slog.Level {
	if log == nil {
		return slog.LevelWarn
	}
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if log.Enabled(context.Background(), l) {
			return l
		}
	}
	return slog.LevelError
}

// seqpacketPair returns the two ends of a new SOCK_SEQPACKET socket pair:
// the site's, and the helper's as a file to hand to the process.
func seqpacketPair(what string) (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s socket pair: %w", what, os.NewSyscallError("socketpair", err))
	}
	f := os.NewFile(uintptr(fds[0]), what)
	c, err := net.FileConn(f)
	_ = f.Close() // c holds a copy
	if err != nil {
		_ = unix.Close(fds[1])
		return nil, nil, fmt.Errorf("%s socket pair: %w", what, err)
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), what), nil
}

// blockingPair makes a SOCK_SEQPACKET pair whose ends are in blocking
// mode, in no poller: a hand-over's (see httpproxy.Tap).
func blockingPair(what string) (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s socket pair: %w", what, os.NewSyscallError("socketpair", err))
	}
	return os.NewFile(uintptr(fds[0]), what), os.NewFile(uintptr(fds[1]), what), nil
}

// Pid returns the helper's process id.
func (s *Side) Pid() int { return s.pid }

// stderrTail is "; its stderr ends:" and the helper's last lines, or
// empty.
func (s *Side) stderrTail() string {
	if t := s.stderr.Tail(); t != "" {
		return "; its stderr ends:\n" + t
	}
	return ""
}

// lostErr is the error of op once the control connection was lost: it
// says how the helper ended (waiting a moment for it) and what it wrote
// last; it wraps errLost, not the socket's error, which says nothing more.
func (s *Side) lostErr(op string) error {
	return fmt.Errorf("clone side %s: %s: %w: %s", s.name, op, errLost, s.ended(exitWait))
}

// ended says how the helper ended, waiting for it for wait at most, with
// the last lines it wrote.
func (s *Side) ended(wait time.Duration) string {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.proc.exited:
	case <-t.C:
		select {
		case <-s.proc.exited:
		default:
			return fmt.Sprintf("the helper (pid %d) closed its control socket%s", s.pid, s.stderrTail())
		}
	}
	how := "exited"
	if s.proc.waitErr != nil {
		how = fmt.Sprintf("exited (%v)", s.proc.waitErr)
	}
	return fmt.Sprintf("the helper (pid %d) %s%s", s.pid, how, s.stderrTail())
}

// call sends req to the helper (with fds, which stay the caller's) and
// returns its result. It waits for ctx, and defaultCallTimeout at most
// when ctx has no deadline.
func (s *Side) call(ctx context.Context, req request, fds ...int) (json.RawMessage, error) {
	op := req.Op
	if req.Name != "" {
		op += " " + req.Name
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("clone side %s: %s: %w", s.name, op, errClosed)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultCallTimeout)
		defer cancel()
	}
	m, err := s.ctl.call(ctx, func(id uint64) any {
		req.ID, req.TimeoutNs = id, int64(timeoutOf(ctx, defaultCallTimeout))
		return req
	}, fds...)
	switch {
	case errors.Is(err, errLost):
		return nil, s.lostErr(op)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("clone side %s: %s: no answer in time: %w", s.name, op, err)
	case err != nil:
		return nil, fmt.Errorf("clone side %s: %s: %w", s.name, op, err)
	}
	closeFDs(m.fds) // none expected
	var rep reply
	if err := json.Unmarshal(m.body, &rep); err != nil {
		return nil, fmt.Errorf("clone side %s: %s: the answer did not parse: %w", s.name, op, err)
	}
	if rep.Error != nil {
		return nil, rep.Error.err() // the helper's proxies name the operation
	}
	return rep.Result, nil
}

// callInto is call, decoding the result into v.
func (s *Side) callInto(ctx context.Context, req request, v any) error {
	res, err := s.call(ctx, req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(res, v); err != nil {
		return fmt.Errorf("clone side %s: %s %s: the result did not parse: %w", s.name, req.Op, req.Name, err)
	}
	return nil
}

// AddCloneDial attaches the clone called name, at target, to the helper's
// in-proxy: from now on it gets a copy of every on-line request. With a
// nil dial the helper dials target itself; otherwise the site dials the
// clone for it with dial (a clone in a network of its own, see
// httpproxy.InProxy.AddCloneDial), and hands it the connected socket. The
// name must be new (else an error wrapping justrunit.ErrExists).
func (s *Side) AddCloneDial(ctx context.Context, name string, target *url.URL, dial func(context.Context) (net.Conn, error), where string) error {
	if target == nil {
		return justrunit.Invalid("clone.url", nil, "missing")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("clone side %s: add clone %s: closed", s.name, name)
	}
	if s.fed[name] != nil {
		s.mu.Unlock()
		return fmt.Errorf("add clone %s: %w", name, justrunit.ErrExists)
	}
	fc := &fedClone{dial: dial}
	s.fed[name] = fc // before the helper can ask for its dial
	if len(s.fed) == 1 {
		s.feed.AddTap(s.tap)
	}
	s.mu.Unlock()
	_, err := s.call(ctx, request{Op: opAddClone, Name: name, URL: target.String(), Where: where, Dial: dial != nil})
	if refused(err) {
		s.unfeed(name, fc)
	}
	return err
}

// refused reports whether err is the helper's answer (it did not do what
// was asked), not a call that ended without one (the helper may have).
func refused(err error) bool {
	var re *remoteError
	return errors.As(err, &re)
}

// unfeed forgets the clone called name (only as fc, unless nil) and takes
// the tap off the feed when it was the last.
func (s *Side) unfeed(name string, fc *fedClone) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.fed[name]
	if cur == nil || (fc != nil && cur != fc) || s.closed {
		return
	}
	delete(s.fed, name)
	if len(s.fed) == 0 {
		s.feed.RemoveTap(s.tap)
	}
}

// RemoveClone detaches the clone called name and returns its statistics
// for the window that ends, or an error wrapping justrunit.ErrNotFound.
func (s *Side) RemoveClone(name string) (httpproxy.CloneStats, error) {
	var st httpproxy.CloneStats
	err := detached(s.callInto(context.Background(), request{Op: opRemoveClone, Name: name}, &st))
	if err == nil || errors.Is(err, justrunit.ErrNotFound) {
		s.unfeed(name, nil)
	}
	return st, err
}

// errClosed is the error of a call on a closed Side.
var errClosed = errors.New("closed")

// detached makes the error of a detach (RemoveClone, StopClone) from a side
// that is closed or whose helper is gone wrap justrunit.ErrNotFound: its
// clones are detached already, and get nothing more from it. An
// experiment that could not remove everything closes its runner again
// later (siterun's leftovers), after the side has stopped.
func detached(err error) error {
	if errors.Is(err, errClosed) || errors.Is(err, errLost) {
		return fmt.Errorf("%w (%w: the clone side's clones are all detached)", err, justrunit.ErrNotFound)
	}
	return err
}

// CloneStats returns the statistics of the clone called name for its
// current window, and ends the window when reset; an error wrapping
// justrunit.ErrNotFound when no such clone is attached.
func (s *Side) CloneStats(name string, reset bool) (httpproxy.CloneStats, error) {
	var st httpproxy.CloneStats
	err := s.callInto(context.Background(), request{Op: opCloneStats, Name: name, Reset: reset}, &st)
	return st, err
}

// noNextTier is the error of a replay operation of a target without an
// out-proxy.
func (s *Side) noNextTier(op, name string) error {
	return fmt.Errorf("clone side %s: %s %s: %w", s.name, op, name, errNoNextTier)
}

// serving counts the clone called name as served, putting the tap on
// the out-proxy for the first; it returns false with the name served
// already, or the side closed.
func (s *Side) serving(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return fmt.Errorf("clone side %s: serve clone %s: closed", s.name, name)
	case s.served[name]:
		return fmt.Errorf("serve clone %s: %w", name, justrunit.ErrExists)
	}
	s.served[name] = true // before: the exchanges from now on are the clone's
	if len(s.served) == 1 {
		s.replay.AddTap(s.tap)
	}
	return nil
}

// unserve forgets the clone called name and takes the tap off the
// out-proxy when it was the last.
func (s *Side) unserve(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.served[name] || s.closed {
		return
	}
	delete(s.served, name)
	if len(s.served) == 0 {
		s.replay.RemoveTap(s.tap)
	}
}

// ServeClone starts answering the calls of the clone called name from
// the record, on a new listener on 127.0.0.1 that the helper opens, and
// returns its address (host:port). The name must not be served already
// (else an error wrapping justrunit.ErrExists).
func (s *Side) ServeClone(ctx context.Context, name string) (string, error) {
	if s.replay == nil {
		return "", s.noNextTier("serve clone", name)
	}
	if err := s.serving(name); err != nil {
		return "", err
	}
	var addr string
	if err := s.callInto(ctx, request{Op: opServeClone, Name: name}, &addr); err != nil {
		if refused(err) {
			s.unserve(name)
		}
		return "", err
	}
	return addr, nil
}

// ServeCloneOn starts answering the calls of the clone called name on
// ln, which someone else opened (inside the clone's network): its socket
// is handed to the helper, which owns it once ServeCloneOn returns nil
// (ln is closed here then); on error ln is left open. ln must be a
// *net.TCPListener or *net.UnixListener, whose socket can be handed over.
func (s *Side) ServeCloneOn(name string, ln net.Listener) error {
	if s.replay == nil {
		return s.noNextTier("serve clone", name)
	}
	fl, ok := ln.(interface{ File() (*os.File, error) })
	if !ok {
		return justrunit.Invalid("listener", fmt.Sprintf("%T", ln), "cannot be handed to the clone side: want a *net.TCPListener or *net.UnixListener")
	}
	f, err := fl.File()
	if err != nil {
		return fmt.Errorf("clone side %s: serve clone %s: the listener's socket: %w", s.name, name, err)
	}
	defer f.Close() // the helper has its own copy once sent
	fd, err := fdOf(f)
	if err != nil {
		return fmt.Errorf("clone side %s: serve clone %s: the listener's socket: %w", s.name, name, err)
	}
	if err := s.serving(name); err != nil {
		return err
	}
	if _, err := s.call(context.Background(), request{Op: opServeOn, Name: name}, fd); err != nil {
		if refused(err) {
			s.unserve(name)
		}
		return err
	}
	_ = ln.Close() // the site's copy: the helper serves the socket
	return nil
}

// Attach says the clone called name gets copies of the live traffic from
// now on: it is answered from the on-line calls made from now. It returns
// an error wrapping justrunit.ErrNotFound for a name not served.
func (s *Side) Attach(name string) error {
	if s.replay == nil {
		return s.noNextTier("attach", name)
	}
	_, err := s.call(context.Background(), request{Op: opAttach, Name: name})
	return err
}

// StopClone stops answering the calls of the clone called name and
// closes its listener; an error wrapping justrunit.ErrNotFound for an
// unknown name.
func (s *Side) StopClone(name string) error {
	if s.replay == nil {
		return s.noNextTier("stop clone", name)
	}
	_, err := s.call(context.Background(), request{Op: opStopClone, Name: name})
	err = detached(err)
	if err == nil || errors.Is(err, justrunit.ErrNotFound) {
		s.unserve(name)
	}
	return err
}

// ReplayStats returns the match statistics of the clone called name for
// its current window, and ends the window when reset; an error wrapping
// justrunit.ErrNotFound for an unknown name.
func (s *Side) ReplayStats(name string, reset bool) (httpproxy.ReplayStats, error) {
	var st httpproxy.ReplayStats
	if s.replay == nil {
		return st, s.noNextTier("replay stats", name)
	}
	err := s.callInto(context.Background(), request{Op: opReplayStats, Name: name, Reset: reset}, &st)
	return st, err
}

// Close stops the clone side: it takes the tap off the on-line proxies,
// closes the sockets (the helper stops at its control socket's end),
// sends the helper SIGTERM if it has not ended after 2 s and SIGKILL after
// 3 s, and reaps it. It returns an error when the helper had to be killed
// or had ended on its own with a failure. It is safe to call more than
// once: later calls wait for the first and return nil.
func (s *Side) Close() error {
	first := false
	s.closeOnce.Do(func() { first = true; s.closeErr = s.close() })
	if !first {
		return nil
	}
	return s.closeErr
}

func (s *Side) close() error {
	// Whether the helper had ended before it was asked to.
	var early bool
	select {
	case <-s.proc.exited:
		early = true
	default:
	}
	s.mu.Lock()
	s.closed = true
	if len(s.fed) > 0 {
		s.feed.RemoveTap(s.tap)
	}
	if len(s.served) > 0 {
		s.replay.RemoveTap(s.tap)
	}
	clear(s.fed)
	clear(s.served)
	s.mu.Unlock()
	_ = s.tap.Close()
	_ = s.ctl.c.Close() // the helper stops at its end
	var err error
	select {
	case <-s.proc.exited:
	case <-time.After(stopGrace - termGrace):
		_ = s.proc.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.proc.exited:
		case <-time.After(termGrace):
			_ = s.proc.cmd.Process.Kill()
			<-s.proc.exited
			err = fmt.Errorf("clone side %s: the helper (pid %d) did not stop within %v: killed%s", s.name, s.pid, stopGrace, s.stderrTail())
		}
	}
	s.stderr.flush()
	s.stopDials()
	_ = s.dialConn.Close()
	<-s.dialsRead
	s.dialsAlive.Wait()
	if err == nil && early {
		err = fmt.Errorf("clone side %s: before Close, %s", s.name, s.ended(0))
	}
	s.log.Debug("clone side stopped", logKeySide, s.name, logKeySidePid, s.pid)
	return err
}

// serveDials answers the helper's dial requests until the broker socket
// ends.
func (s *Side) serveDials() {
	defer close(s.dialsRead)
	buf, oob := newBuffers()
	for {
		body, fds, err := recv(s.dialConn, buf, oob)
		if err != nil {
			return
		}
		closeFDs(fds) // none expected
		var req dialRequest
		if err := json.Unmarshal(body, &req); err != nil {
			s.log.Warn("a dial request from the clone side did not parse: ignored", logKeySide, s.name, logKeyErr, err)
			continue
		}
		s.dialsAlive.Add(1)
		go func() {
			defer s.dialsAlive.Done()
			s.answerDial(req)
		}()
	}
}

// answerDial dials the clone req names and hands the connected socket to
// the helper.
func (s *Side) answerDial(req dialRequest) {
	rep := dialReply{ID: req.ID}
	fd, done, err := s.dialFor(req)
	if err != nil {
		rep.Error = toWire(err)
	}
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	}
	if err := send(s.dialConn, rep, fds...); err != nil && s.dialCtx.Err() == nil {
		s.log.Warn("could not hand a clone's connection to the clone side", logKeySide, s.name, "clone", req.Name, logKeyErr, err)
	}
	done()
}

// dialFor dials the clone req names and returns the connection's socket
// descriptor, and done to release it once sent.
func (s *Side) dialFor(req dialRequest) (fd int, done func(), err error) {
	s.mu.Lock()
	fc := s.fed[req.Name]
	s.mu.Unlock()
	nothing := func() {}
	if fc == nil || fc.dial == nil {
		return -1, nothing, fmt.Errorf("dial clone %s: %w: not attached with a dial", req.Name, justrunit.ErrNotFound)
	}
	timeout := time.Duration(req.TimeoutNs)
	if timeout <= 0 {
		timeout = defaultDialTimeout
	}
	timeout = min(timeout, maxDialTimeout)
	ctx, cancel := context.WithTimeout(s.dialCtx, timeout)
	defer cancel()
	conn, err := fc.dial(ctx)
	if err != nil {
		return -1, nothing, fmt.Errorf("dial clone %s: %w", req.Name, err)
	}
	fconn, ok := conn.(interface{ File() (*os.File, error) })
	if !ok {
		_ = conn.Close()
		return -1, nothing, fmt.Errorf("dial clone %s: %w: its dial returned a %T, whose socket cannot be handed over", req.Name, justrunit.ErrUnsupported, conn)
	}
	f, err := fconn.File()
	_ = conn.Close() // the file is a copy
	if err == nil {
		if fd, err = fdOf(f); err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		return -1, nothing, fmt.Errorf("dial clone %s: the connection's socket: %w", req.Name, err)
	}
	return fd, func() { _ = f.Close() }, nil
}

// fdOf returns f's descriptor, valid while f is open. Unlike f.Fd, it
// leaves the socket non-blocking: the descriptor shares its mode with
// the socket's other descriptors, a listener's still served here among
// them until the helper has it.
func fdOf(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil {
		return -1, err
	}
	return fd, nil
}
