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
	"time"

	"golang.org/x/sys/unix"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// The helper's inherited descriptors (exec.Cmd.ExtraFiles start at 3).
const (
	fdHandoff = 3 // the copies, results and exchanges a Tap hands over
	fdControl = 4 // the site's requests, the helper's replies
	fdDial    = 5 // the helper's dial requests, the site's connections
)

// maxMessage bounds one control or dial datagram; they carry names,
// addresses and statistics, a few KiB at most.
const maxMessage = 64 << 10

// maxFDs is the most descriptors one datagram carries (one: a listener or
// a connection); the control buffer has room for a few more, so that a
// datagram with too many is noticed and its descriptors closed.
const maxFDs = 4

// The control operations.
const (
	opAddClone    = "add_clone"
	opRemoveClone = "remove_clone"
	opCloneStats  = "clone_stats"
	opServeClone  = "serve_clone"
	opServeOn     = "serve_clone_on"
	opAttach      = "attach"
	opStopClone   = "stop_clone"
	opReplayStats = "replay_stats"
)

// readyID is the id of the helper's first reply, sent unasked once it is
// ready (or with the error that kept it from being ready).
const readyID = 0

// request is one control request from the site to the helper.
type request struct {
	ID    uint64 `json:"id"`
	Op    string `json:"op"`
	Name  string `json:"name,omitempty"`
	URL   string `json:"url,omitempty"`
	Where string `json:"where,omitempty"`
	// Dial says the clone is reached through the site's dial (the dial
	// broker) rather than at URL.
	Dial  bool `json:"dial,omitempty"`
	Reset bool `json:"reset,omitempty"`
	// TimeoutNs is what is left of the caller's deadline.
	TimeoutNs int64 `json:"timeout_ns,omitempty"`
}

// reply is the helper's answer to the request with the same id.
type reply struct {
	ID     uint64          `json:"id"`
	Error  *wireError      `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// readyResult is the result of the ready reply.
type readyResult struct {
	Pid int `json:"pid"`
}

// dialRequest asks the site to dial the clone called Name.
type dialRequest struct {
	ID        uint64 `json:"id"`
	Name      string `json:"name"`
	TimeoutNs int64  `json:"timeout_ns,omitempty"`
}

// dialReply carries the connected socket as SCM_RIGHTS, or Error.
type dialReply struct {
	ID    uint64     `json:"id"`
	Error *wireError `json:"error,omitempty"`
}

// wireError is an error on the wire: its message, its category (so that
// errors.Is finds justrunit.ErrNotFound and the others on the other side)
// and, for a *justrunit.FieldError, its parts.
type wireError struct {
	Msg      string `json:"msg"`
	Kind     string `json:"kind,omitempty"`
	Field    string `json:"field,omitempty"`
	FieldMsg string `json:"field_msg,omitempty"`
	Value    string `json:"value,omitempty"`
	HasValue bool   `json:"has_value,omitempty"`
}

// errorKinds are the categories that keep their identity across the
// wire, most specific first.
var errorKinds = []struct {
	kind string
	err  error
}{
	{"not_found", justrunit.ErrNotFound},
	{"exists", justrunit.ErrExists},
	{"invalid", justrunit.ErrInvalid},
	{"unsupported", justrunit.ErrUnsupported},
	{"not_implemented", justrunit.ErrNotImplemented},
	{"deadline_exceeded", context.DeadlineExceeded},
	{"canceled", context.Canceled},
}

// toWire returns err as it travels; nil for nil.
func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Msg: err.Error()}
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			w.Kind = k.kind
			break
		}
	}
	var fe *justrunit.FieldError
	if errors.As(err, &fe) {
		w.Field, w.FieldMsg = fe.Field, fe.Msg
		if fe.Value != nil {
			w.Value, w.HasValue = fmt.Sprint(fe.Value), true
		}
	}
	return w
}

// err rebuilds the error; nil for nil.
func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	e := &remoteError{msg: w.Msg}
	if w.Field != "" {
		fe := &justrunit.FieldError{Field: w.Field, Msg: w.FieldMsg}
		if w.HasValue {
			fe.Value = w.Value
		}
		e.cause = fe
		return e
	}
	for _, k := range errorKinds {
		if k.kind == w.Kind {
			e.cause = k.err
			break
		}
	}
	return e
}

// remoteError is an error that happened on the other side of a socket:
// its message as it was, and its category (or field error) for errors.Is
// and errors.As.
type remoteError struct {
	msg   string
	cause error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.cause }

// wireConfig is the helper's configuration as it travels (JSON on the
// helper's stdin): masks as their sources, durations in nanoseconds.
type wireConfig struct {
	Name     string     `json:"name"`
	LogLevel slog.Level `json:"log_level"`
	In       wireIn     `json:"in"`
	Out      *wireOut   `json:"out,omitempty"`
}

// wireIn is httpproxy.InConfig on the wire.
type wireIn struct {
	Online         string   `json:"online"`
	CloneLagNs     int64    `json:"clone_lag_ns,omitempty"`
	Compare        bool     `json:"compare,omitempty"`
	MaxCopyBody    int64    `json:"max_copy_body,omitempty"`
	MaxInFlight    int      `json:"max_in_flight,omitempty"`
	MaxCloneBytes  int64    `json:"max_clone_bytes,omitempty"`
	CopyTimeoutNs  int64    `json:"copy_timeout_ns,omitempty"`
	MaxCompareBody int64    `json:"max_compare_body,omitempty"`
	MaskRegexps    []string `json:"mask_regex,omitempty"`
	MaskJSON       []string `json:"mask_json,omitempty"`
}

// wireOut is httpproxy.OutConfig on the wire.
type wireOut struct {
	Upstream       string   `json:"upstream"`
	MaskRegexps    []string `json:"mask_regex,omitempty"`
	MaskJSON       []string `json:"mask_json,omitempty"`
	WindowNs       int64    `json:"window_ns,omitempty"`
	MaxRecordBytes int64    `json:"max_record_bytes,omitempty"`
	MaxBody        int64    `json:"max_body,omitempty"`
	MatchWaitNs    int64    `json:"match_wait_ns,omitempty"`
	FallbackStatus int      `json:"fallback_status,omitempty"`
	PassThrough    []string `json:"pass_through,omitempty"`
	ReuseReads     bool     `json:"reuse_reads,omitempty"`
	StandIn        bool     `json:"stand_in,omitempty"`
}

// maskSources returns the sources ParseMasks rebuilds m from.
func maskSources(m httpproxy.Masks) (regexps, jsonPaths []string) {
	for _, re := range m.Regexps {
		regexps = append(regexps, re.String())
	}
	for _, p := range m.JSONPaths {
		jsonPaths = append(jsonPaths, p.String())
	}
	return regexps, jsonPaths
}

// newWireConfig returns cfg as it travels. The loggers and observers of
// the proxies' configurations stay behind.
func newWireConfig(cfg Config, level slog.Level) (wireConfig, error) {
	if cfg.In.Online == nil {
		return wireConfig{}, justrunit.Invalid("in.online", nil, "missing on-line instance URL")
	}
	w := wireConfig{Name: cfg.Name, LogLevel: level, In: wireIn{
		Online:         cfg.In.Online.String(),
		CloneLagNs:     int64(cfg.In.CloneLag),
		Compare:        cfg.In.Compare,
		MaxCopyBody:    cfg.In.MaxCopyBody,
		MaxInFlight:    cfg.In.MaxInFlight,
		MaxCloneBytes:  cfg.In.MaxCloneBytes,
		CopyTimeoutNs:  int64(cfg.In.CopyTimeout),
		MaxCompareBody: cfg.In.MaxCompareBody,
	}}
	w.In.MaskRegexps, w.In.MaskJSON = maskSources(cfg.In.Masks)
	if o := cfg.Out; o != nil {
		if o.Upstream == nil {
			return wireConfig{}, justrunit.Invalid("out.upstream", nil, "missing next-tier URL")
		}
		w.Out = &wireOut{
			Upstream:       o.Upstream.String(),
			WindowNs:       int64(o.Window),
			MaxRecordBytes: o.MaxRecordBytes,
			MaxBody:        o.MaxBody,
			MatchWaitNs:    int64(o.MatchWait),
			FallbackStatus: o.FallbackStatus,
			PassThrough:    o.PassThrough,
			ReuseReads:     o.ReuseReads,
			StandIn:        o.StandIn,
		}
		w.Out.MaskRegexps, w.Out.MaskJSON = maskSources(o.Masks)
	}
	return w, nil
}

// configs rebuilds the proxies' configurations, logging to log.
func (w wireConfig) configs(log *slog.Logger) (httpproxy.InConfig, *httpproxy.OutConfig, error) {
	online, err := url.Parse(w.In.Online)
	if err != nil {
		return httpproxy.InConfig{}, nil, justrunit.Invalid("in.online", w.In.Online, "not a URL: %v", err)
	}
	inMasks, err := httpproxy.ParseMasks(w.In.MaskRegexps, w.In.MaskJSON)
	if err != nil {
		return httpproxy.InConfig{}, nil, fmt.Errorf("in-proxy masks: %w", err)
	}
	in := httpproxy.InConfig{
		Online:         online,
		CloneLag:       time.Duration(w.In.CloneLagNs),
		Compare:        w.In.Compare,
		MaxCopyBody:    w.In.MaxCopyBody,
		MaxInFlight:    w.In.MaxInFlight,
		MaxCloneBytes:  w.In.MaxCloneBytes,
		CopyTimeout:    time.Duration(w.In.CopyTimeoutNs),
		MaxCompareBody: w.In.MaxCompareBody,
		Masks:          inMasks,
		Logger:         log,
	}
	if w.Out == nil {
		return in, nil, nil
	}
	up, err := url.Parse(w.Out.Upstream)
	if err != nil {
		return httpproxy.InConfig{}, nil, justrunit.Invalid("out.upstream", w.Out.Upstream, "not a URL: %v", err)
	}
	outMasks, err := httpproxy.ParseMasks(w.Out.MaskRegexps, w.Out.MaskJSON)
	if err != nil {
		return httpproxy.InConfig{}, nil, fmt.Errorf("out-proxy masks: %w", err)
	}
	out := &httpproxy.OutConfig{
		Upstream:       up,
		Masks:          outMasks,
		Window:         time.Duration(w.Out.WindowNs),
		MaxRecordBytes: w.Out.MaxRecordBytes,
		MaxBody:        w.Out.MaxBody,
		MatchWait:      time.Duration(w.Out.MatchWaitNs),
		FallbackStatus: w.Out.FallbackStatus,
		PassThrough:    w.Out.PassThrough,
		ReuseReads:     w.Out.ReuseReads,
		StandIn:        w.Out.StandIn,
		Logger:         log,
	}
	return in, out, nil
}

// send writes v as one datagram on c, with fds as SCM_RIGHTS.
func send(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("message of %d bytes: larger than %d", len(b), maxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// newBuffers returns a datagram and a control buffer for recv.
func newBuffers() (buf, oob []byte) {
	return make([]byte, maxMessage+1), make([]byte, unix.CmsgSpace(4*maxFDs))
}

// recv reads one datagram from c into buf and returns it with the
// descriptors it carried, which the caller owns (they are close-on-exec).
// It returns io.EOF once the other end is closed. A datagram cut short is
// an error, its descriptors closed.
func recv(c *net.UnixConn, buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		fds = rights(oob[:oobn])
	}
	switch {
	case err != nil:
		closeFDs(fds)
		return nil, nil, err
	case n == 0 && oobn == 0:
		return nil, nil, io.EOF
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > maxMessage:
		closeFDs(fds)
		return nil, nil, fmt.Errorf("datagram cut short (%d bytes, flags %#x)", n, flags)
	}
	return buf[:n], fds, nil
}

// rights returns the descriptors in control messages oob.
func rights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if f, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

// closeFDs closes descriptors received and not used.
func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// timeoutOf is what is left of ctx's deadline, def when it has none.
func timeoutOf(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return def
}
