package cloneside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// Subcommand is the argument that makes a program the clone side: Start
// runs os.Executable() with it unless Config.Command says otherwise, and
// RunIfHelper looks for it.
const Subcommand = "clone-side"

// Helper timings.
const (
	// defaultCallTimeout bounds a control call or a dial whose context
	// has no deadline.
	defaultCallTimeout = 15 * time.Second
	// defaultDialTimeout bounds a dial through the site whose context has
	// no deadline.
	defaultDialTimeout = 10 * time.Second
	// shutdownBound is how long the helper lets its proxies close once
	// told to stop, before it returns anyway (the process ends, and what
	// was still closing with it); less than Side.Close waits for it.
	shutdownBound = 2 * time.Second
)

// maxConfig bounds the configuration read from stdin.
const maxConfig = 1 << 20

// RunIfHelper runs this process as the clone side, and exits, when its
// first argument is Subcommand; otherwise it returns at once. A program
// that starts clone sides of itself without the justrunit command (a test
// binary: call it first thing in TestMain) calls it before anything else.
func RunIfHelper() {
	if len(os.Args) < 2 || os.Args[1] != Subcommand {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := Main(ctx, os.Stdin, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Subcommand, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Main is the clone side's process, as Start runs it: it reads its
// configuration (JSON) from stdin, builds an in-proxy that is never
// started and, when the target has a next tier, an out-proxy replica;
// feeds them what the site's taps hand over on descriptor 3; answers the
// site's control requests on descriptor 4, asking the site on descriptor
// 5 to dial the clones it cannot reach itself; and logs to stderr, one
// JSON object a line, which the site forwards to its log. It returns once
// the site closes the control socket (or dies: the socket ends with it)
// or ctx ends, with everything it made closed; it returns an error when
// it could not start or the hand-over broke.
func Main(ctx context.Context, stdin io.Reader, stderr io.Writer) error {
	// The hand-over's socket stays in blocking mode, out of the runtime's
	// poller: Receive polls it, so that the site's datagrams wake no
	// thread here (see httpproxy.Tap).
	handoff := os.NewFile(uintptr(fdHandoff), "hand-over")
	if handoff == nil {
		return fmt.Errorf("hand-over socket (descriptor %d): not open: run by cloneside.Start", fdHandoff)
	}
	conns := make([]*net.UnixConn, 0, 2)
	for _, d := range []struct {
		fd   int
		what string
	}{{fdControl, "control"}, {fdDial, "dial broker"}} {
		c, err := inherited(d.fd, d.what)
		if err != nil {
			for _, c := range conns {
				_ = c.Close()
			}
			_ = handoff.Close()
			return err
		}
		conns = append(conns, c)
	}
	ctl, dial := conns[0], conns[1]
	defer ctl.Close()
	defer dial.Close()
	h := &helper{ctl: ctl, broker: newCaller(dial)}
	ready := func(err error) error {
		rep := reply{ID: readyID, Error: toWire(err)}
		if err == nil {
			rep.Result, _ = json.Marshal(readyResult{Pid: os.Getpid()})
		}
		if serr := send(ctl, rep); serr != nil && err == nil {
			err = fmt.Errorf("say ready: %w", serr)
		}
		return err
	}
	var wc wireConfig
	b, err := io.ReadAll(io.LimitReader(stdin, maxConfig))
	if err == nil {
		err = json.Unmarshal(b, &wc)
	}
	if err != nil {
		_ = handoff.Close()
		return ready(fmt.Errorf("read the configuration from stdin: %w", err))
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: wc.LogLevel}))
	h.log = log
	in, out, err := start(wc, log)
	if err != nil {
		_ = handoff.Close()
		return ready(err)
	}
	h.in, h.out = in, out
	h.broker.start()
	recvCtx, stopRecv := context.WithCancel(context.Background())
	defer stopRecv()
	recvDone := make(chan error, 1)
	go func() { recvDone <- httpproxy.Receive(recvCtx, handoff, in, out) }()
	if err := ready(nil); err != nil {
		stopRecv()
		h.shutdown(nil, recvDone)
		return err
	}
	log.Debug("clone side ready", "pid", os.Getpid(), "next_tier", out != nil)

	reqCtx, stopReqs := context.WithCancel(context.Background())
	defer stopReqs()
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- h.serve(reqCtx) }()
	var result error
	for waiting := true; waiting; {
		select {
		case err := <-ctlDone:
			ctlDone, waiting = nil, false
			if err != nil {
				result = fmt.Errorf("read control requests: %w", err)
			}
		case <-ctx.Done():
			waiting = false
		case err := <-recvDone:
			recvDone = nil
			if err != nil { // the site closing its end ends Receive with nil
				result, waiting = fmt.Errorf("receive the hand-over: %w", err), false
			}
		}
	}
	stopReqs()
	stopRecv()
	h.shutdown(ctlDone, recvDone)
	if result != nil {
		log.Error("clone side stopped", "err", result)
	}
	return result
}

// inherited returns the socket this process inherited as descriptor fd.
func inherited(fd int, what string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), what)
	if f == nil {
		return nil, fmt.Errorf("%s socket (descriptor %d): not open: run by cloneside.Start", what, fd)
	}
	c, err := net.FileConn(f)
	_ = f.Close() // c holds a copy
	if err != nil {
		return nil, fmt.Errorf("%s socket (descriptor %d): %w: run by cloneside.Start", what, fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("%s socket (descriptor %d): a %T, not a unix socket", what, fd, c)
	}
	return uc, nil
}

// start builds the helper's proxies.
func start(wc wireConfig, log *slog.Logger) (*httpproxy.InProxy, *httpproxy.OutProxy, error) {
	inCfg, outCfg, err := wc.configs(log)
	if err != nil {
		return nil, nil, err
	}
	// Copies reach this process up to a poll late (httpproxy.Receive):
	// a lag of at least HandoffLag keeps their spacing, and keeps the
	// hand-over out of the clone's response times.
	if inCfg.CloneLag >= 0 { // a negative one is NewInProxy's error
		inCfg.CloneLag = max(inCfg.CloneLag, httpproxy.HandoffLag)
	}
	in, err := httpproxy.NewInProxy(inCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("in-proxy: %w", err)
	}
	if outCfg == nil {
		return in, nil, nil
	}
	out, err := httpproxy.NewOutProxy(*outCfg)
	if err == nil {
		if err = out.StartReplica(); err != nil {
			_ = out.Close()
		}
	}
	if err != nil {
		_ = in.Close()
		return nil, nil, fmt.Errorf("out-proxy: %w", err)
	}
	return in, out, nil
}

// helper is the clone side's state.
type helper struct {
	log    *slog.Logger
	in     *httpproxy.InProxy
	out    *httpproxy.OutProxy // nil: the target has no next tier
	ctl    *net.UnixConn
	broker *caller // asks the site to dial
	wg     sync.WaitGroup
}

// shutdown closes everything, waiting for the control reader (ctlDone)
// and the hand-over (recvDone) unless nil, for shutdownBound at most.
func (h *helper) shutdown(ctlDone, recvDone <-chan error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.ctl.Close() // ends serve, if still reading
		if ctlDone != nil {
			<-ctlDone
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _ = h.in.Close() }()
		go func() {
			defer wg.Done()
			if h.out != nil {
				_ = h.out.Close()
			}
		}()
		wg.Wait()
		_ = h.broker.c.Close() // dials still waiting fail
		h.wg.Wait()
		if recvDone != nil {
			<-recvDone
		}
	}()
	select {
	case <-done:
	case <-time.After(shutdownBound):
		h.log.Warn("clone side still closing; exiting anyway", "after", shutdownBound)
	}
}

// serve answers the control requests until the socket ends; it returns
// nil when the site closed it.
func (h *helper) serve(ctx context.Context) error {
	buf, oob := newBuffers()
	for {
		body, fds, err := recv(h.ctl, buf, oob)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		var req request
		if err := json.Unmarshal(body, &req); err != nil {
			closeFDs(fds)
			h.log.Warn("a control request did not parse: ignored", "err", err)
			continue
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			rep := h.handle(ctx, req, fds)
			if err := send(h.ctl, rep); err != nil && ctx.Err() == nil {
				h.log.Warn("could not answer a control request", "op", req.Op, "clone", req.Name, "err", err)
			}
		}()
	}
}

// errNoNextTier answers the replay operations of a target without one.
var errNoNextTier = fmt.Errorf("the target has no out-proxy: %w", justrunit.ErrUnsupported)

// handle carries out one control request; fds are the descriptors it
// came with, which handle closes unless it keeps them.
func (h *helper) handle(ctx context.Context, req request, fds []int) reply {
	timeout := defaultCallTimeout
	if req.TimeoutNs > 0 {
		timeout = time.Duration(req.TimeoutNs)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		result any
		err    error
	)
	if req.Op != opServeOn {
		closeFDs(fds)
	}
	if h.out == nil {
		switch req.Op {
		case opServeOn:
			closeFDs(fds)
			fallthrough
		case opServeClone, opAttach, opStopClone, opReplayStats:
			return reply{ID: req.ID, Error: toWire(fmt.Errorf("%s %s: %w", req.Op, req.Name, errNoNextTier))}
		}
	}
	switch req.Op {
	case opAddClone:
		var u *url.URL
		if u, err = url.Parse(req.URL); err != nil {
			err = justrunit.Invalid("clone.url", req.URL, "not a URL: %v", err)
			break
		}
		var dial func(context.Context) (net.Conn, error)
		if req.Dial {
			dial = h.dialer(req.Name)
		}
		err = h.in.AddCloneDial(ctx, req.Name, u, dial, req.Where)
	case opRemoveClone:
		result, err = h.in.RemoveClone(req.Name)
	case opCloneStats:
		result, err = h.in.CloneStats(req.Name, req.Reset)
	case opServeClone:
		result, err = h.out.ServeClone(ctx, req.Name)
	case opServeOn:
		err = h.serveOn(req.Name, fds)
	case opAttach:
		err = h.out.Attach(req.Name)
	case opStopClone:
		err = h.out.StopClone(req.Name)
	case opReplayStats:
		result, err = h.out.ReplayStats(req.Name, req.Reset)
	default:
		err = justrunit.Invalid("op", req.Op, "unknown operation")
	}
	rep := reply{ID: req.ID, Error: toWire(err)}
	if err == nil && result != nil {
		if rep.Result, err = json.Marshal(result); err != nil {
			rep.Error = toWire(fmt.Errorf("%s %s: encode the result: %w", req.Op, req.Name, err))
		}
	}
	return rep
}

// serveOn serves the clone called name on the listener that came as fds.
func (h *helper) serveOn(name string, fds []int) error {
	if len(fds) != 1 {
		closeFDs(fds)
		return justrunit.Invalid("listener", len(fds), "want one descriptor")
	}
	f := os.NewFile(uintptr(fds[0]), "clone "+name+" listener")
	ln, err := net.FileListener(f)
	_ = f.Close() // ln holds a copy
	if err != nil {
		return fmt.Errorf("serve clone %s: the listener handed over: %w", name, err)
	}
	if err := h.out.ServeCloneOn(name, ln); err != nil {
		_ = ln.Close()
		return err
	}
	return nil
}

// dialer returns the dial of a clone that only the site can reach: it
// asks the site (the dial broker) and gets the connected socket back.
func (h *helper) dialer(name string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		timeout := timeoutOf(ctx, defaultDialTimeout)
		// The site bounds its dial by timeout; a bit more here covers its
		// answer's way back should the site not answer at all.
		ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
		defer cancel()
		m, err := h.broker.call(ctx, func(id uint64) any {
			return dialRequest{ID: id, Name: name, TimeoutNs: int64(timeout)}
		})
		if err != nil {
			return nil, fmt.Errorf("dial clone %s through the site: %w", name, err)
		}
		var rep dialReply
		if err := json.Unmarshal(m.body, &rep); err != nil {
			closeFDs(m.fds)
			return nil, fmt.Errorf("dial clone %s through the site: the answer did not parse: %w", name, err)
		}
		if rep.Error != nil || len(m.fds) != 1 {
			closeFDs(m.fds)
			if rep.Error != nil {
				return nil, fmt.Errorf("dial clone %s through the site: %w", name, rep.Error.err())
			}
			return nil, fmt.Errorf("dial clone %s through the site: %d descriptors came, want 1", name, len(m.fds))
		}
		f := os.NewFile(uintptr(m.fds[0]), "clone "+name)
		c, err := net.FileConn(f)
		_ = f.Close() // c holds a copy
		if err != nil {
			return nil, fmt.Errorf("dial clone %s through the site: the socket handed over: %w", name, err)
		}
		return c, nil
	}
}
