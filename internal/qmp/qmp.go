// Package qmp is a small typed client for the QEMU Machine Protocol (QMP)
// over a unix socket: the commands the qemu platform needs to boot, clone
// (migrate with pause-before-switchover), snapshot disks and stop guests.
//
// Why not github.com/digitalocean/go-qemu: its qmp package is a thin
// untyped socket wrapper, and its typed raw API is generated from an old QEMU
// schema that lacks what live cloning needs (migrate-continue, the
// pause-before-switchover capability, the pre-switchover status). Using it
// would mean untyped JSON for exactly the commands that matter, plus a
// dependency tree, for what is ~250 lines here: one JSON request per line,
// replies matched by id, asynchronous events kept apart.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bounds on the connection, so that a QEMU that stops reading or sends
// garbage cannot block or exhaust the platform.
const (
	// MaxLineBytes is the longest QMP message (one JSON line) read; a
	// longer one ends the connection with ErrLineTooLong.
	MaxLineBytes = 16 << 20
	// DefaultWriteTimeout bounds the write of one command when the
	// context has no earlier deadline.
	DefaultWriteTimeout = 10 * time.Second
)

// ErrLineTooLong reports a QMP message longer than MaxLineBytes.
var ErrLineTooLong = fmt.Errorf("qmp message longer than %d MiB", MaxLineBytes>>20)

// Error is an error QEMU returned for a command.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event ("STOP", "MIGRATION", ...).
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// Client is a QMP connection. Its methods are safe for concurrent use;
// commands are sent in order and their replies matched by id.
type Client struct {
	conn net.Conn

	// wmu serialises writes; it is never held with mu, so a write that
	// blocks (until its deadline) does not stop replies being delivered.
	wmu sync.Mutex

	mu      sync.Mutex
	nextID  int
	pending map[string]chan reply
	err     error // set when the reader stops

	events chan Event
	done   chan struct{}
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     string          `json:"id"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
}

// Dial connects to the QMP socket at path, retrying until it appears or ctx
// ends, reads the greeting and leaves capability negotiation mode. It
// gives up when ctx ends, also while QEMU is silent.
func Dial(ctx context.Context, path string) (*Client, error) {
	var conn net.Conn
	var d net.Dialer
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp dial %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	c := &Client{conn: conn, pending: map[string]chan reply{}, events: make(chan Event, 64), done: make(chan struct{})}
	br := bufio.NewReaderSize(conn, 64<<10)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	// A cancel (not only a deadline) must end the wait for the greeting:
	// it moves the read deadline to the past. stop() waiting for the
	// callback keeps it from firing after the deadline is reset below.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	_, err := readLine(br) // {"QMP": {...}} greeting
	if !stop() {
		<-fired
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", ctxErr(ctx, err))
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readLine reads one newline-terminated message of at most MaxLineBytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > MaxLineBytes {
			return nil, ErrLineTooLong
		}
		line = append(line, frag...)
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

func (c *Client) read(br *bufio.Reader) {
	defer close(c.done)
	for {
		line, err := readLine(br)
		if err != nil {
			// Whatever follows a line too long cannot be framed: the
			// connection is over, and closing it unblocks writers too.
			c.conn.Close()
			c.mu.Lock()
			c.err = fmt.Errorf("qmp connection closed: %w", err)
			for id, ch := range c.pending {
				close(ch)
				delete(c.pending, id)
			}
			c.mu.Unlock()
			close(c.events)
			return
		}
		var r reply
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		if r.Event != "" {
			select {
			case c.events <- Event{Name: r.Event, Data: r.Data}:
			default: // nobody is listening; events are advisory
			}
			continue
		}
		c.mu.Lock()
		ch := c.pending[r.ID]
		delete(c.pending, r.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// Events delivers asynchronous events; it is closed when the connection
// ends. Events that arrive while the channel is full are dropped.
func (c *Client) Events() <-chan Event { return c.events }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Done is closed when the connection has ended (e.g. QEMU exited).
func (c *Client) Done() <-chan struct{} { return c.done }

// Execute runs command with args (marshalled to JSON; nil for none) and
// unmarshals its return value into out (nil to ignore it). The write of
// the command ends when ctx does, or after DefaultWriteTimeout; a write
// that fails after sending part of the command ends the connection, whose
// stream can no longer be framed.
func (c *Client) Execute(ctx context.Context, command string, args, out any) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, c.err)
	}
	c.nextID++
	id := strconv.Itoa(c.nextID)
	ch := make(chan reply, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if n, err := c.write(ctx, append(b, '\n')); err != nil {
		c.forget(id)
		if n > 0 {
			c.conn.Close()
		}
		return fmt.Errorf("qmp %s: write: %w", command, err)
	}
	select {
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	case r, ok := <-ch:
		if !ok {
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		if r.Error != nil {
			r.Error.Command = command
			return r.Error
		}
		if out != nil && len(r.Return) > 0 {
			if err := json.Unmarshal(r.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
		}
		return nil
	}
}

// write writes b under a deadline: ctx's, or DefaultWriteTimeout from now
// if that is sooner; a cancel of ctx ends it too. It returns the bytes
// written.
func (c *Client) write(ctx context.Context, b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	dl := time.Now().Add(DefaultWriteTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.conn.SetWriteDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, err := c.conn.Write(b)
	if !stop() {
		<-fired // so that it cannot cut the next write short
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// ctx's deadline, or its cancel, rather than DefaultWriteTimeout.
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		} else if d, ok := ctx.Deadline(); ok && d.Equal(dl) {
			err = context.DeadlineExceeded
		}
	}
	return n, err
}

// ctxErr is err, or ctx's error when err is a deadline that ctx set (the
// connection's deadline can pass a moment before ctx reports it).
func ctxErr(ctx context.Context, err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if _, ok := ctx.Deadline(); ok {
		return context.DeadlineExceeded
	}
	return err
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "inmigrate", "postmigrate", ...
}

// QueryStatus returns the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Cont resumes a paused (or post-migration) VM; after a migration it also
// re-activates the block devices the migration inactivated.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Stop pauses the VM.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Quit makes QEMU exit at once. The reply may be lost as QEMU exits.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	var qe *Error
	if err != nil && !errors.As(err, &qe) {
		return nil // the connection closed under the reply: QEMU is gone
	}
	return err
}

// Capability is a migration capability and whether it is on.
type Capability struct {
	Name  string `json:"capability"`
	State bool   `json:"state"`
}

// MigrateSetCapabilities turns migration capabilities on or off. Source and
// destination must agree on those that change the stream.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps ...Capability) error {
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// MigrationParameters are the migration parameters the platform sets; zero
// fields are left unchanged.
type MigrationParameters struct {
	// MaxBandwidth is in bytes per second (QEMU's default is 128 MiB/s,
	// far below what a unix socket carries).
	MaxBandwidth int64 `json:"max-bandwidth,omitempty"`
	// DowntimeLimit is the pause QEMU aims for at switch-over, in ms.
	DowntimeLimit int64 `json:"downtime-limit,omitempty"`
}

// MigrateSetParameters sets migration parameters.
func (c *Client) MigrateSetParameters(ctx context.Context, p MigrationParameters) error {
	return c.Execute(ctx, "migrate-set-parameters", p, nil)
}

// Migrate starts migrating the VM to uri ("unix:/path", "exec:cmd", ...).
// It returns once the migration has started; poll QueryMigrate.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateContinue lets a migration paused in state from (e.g.
// "pre-switchover") go on.
func (c *Client) MigrateContinue(ctx context.Context, from string) error {
	return c.Execute(ctx, "migrate-continue", map[string]any{"state": from}, nil)
}

// MigrateCancel cancels the running migration.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// RAMStats are query-migrate's RAM counters.
type RAMStats struct {
	Transferred int64   `json:"transferred"`
	Total       int64   `json:"total"`
	Remaining   int64   `json:"remaining"`
	Duplicate   int64   `json:"duplicate"`
	Normal      int64   `json:"normal"`
	DirtySyncs  int64   `json:"dirty-sync-count"`
	Mbps        float64 `json:"mbps"`
}

// MigrationInfo is the reply of query-migrate.
type MigrationInfo struct {
	// Status is "none", "setup", "active", "pre-switchover", "device",
	// "completed", "failed", "cancelled", ...
	Status string `json:"status"`
	// TotalTime is the migration's wall time so far in ms.
	TotalTime int64 `json:"total-time"`
	// Downtime is the pause QEMU measured at switch-over in ms
	// (set when completed).
	Downtime int64 `json:"downtime"`
	// ExpectedDowntime is QEMU's estimate while active.
	ExpectedDowntime int64     `json:"expected-downtime"`
	SetupTime        int64     `json:"setup-time"`
	RAM              *RAMStats `json:"ram"`
	ErrorDesc        string    `json:"error-desc"`
}

// QueryMigrate returns the state of the current or last migration.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// WaitMigration polls query-migrate every interval until the status is one
// of want, or failed/cancelled (an error), or ctx ends.
func (c *Client) WaitMigration(ctx context.Context, interval time.Duration, want ...string) (MigrationInfo, error) {
	for {
		m, err := c.QueryMigrate(ctx)
		if err != nil {
			return m, err
		}
		for _, w := range want {
			if m.Status == w {
				return m, nil
			}
		}
		switch m.Status {
		case "failed", "cancelled":
			return m, fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return m, fmt.Errorf("wait for migration %v (status %s): %w", want, m.Status, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// BlockdevSnapshotSync moves the drive (device name or node name) onto a
// new qcow2 overlay at file whose backing file is the image it used so
// far; that image is frozen from then on.
func (c *Client) BlockdevSnapshotSync(ctx context.Context, device, file string) error {
	return c.Execute(ctx, "blockdev-snapshot-sync", map[string]any{
		"device": device, "snapshot-file": file, "format": "qcow2", "mode": "absolute-paths",
	}, nil)
}

// Balloon asks the guest's balloon driver to leave it bytes of memory.
func (c *Client) Balloon(ctx context.Context, bytes int64) error {
	return c.Execute(ctx, "balloon", map[string]any{"value": bytes}, nil)
}

// HumanMonitorCommand runs an HMP command (for the few with no QMP
// equivalent, such as hostfwd_add) and returns its output. HMP reports most
// failures as output text, not as a QMP error; see HMP.
func (c *Client) HumanMonitorCommand(ctx context.Context, line string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": line}, &out)
	return out, err
}

// HMP runs an HMP command that prints nothing when it succeeds (such as
// hostfwd_add); any output is its failure, returned as an error.
func (c *Client) HMP(ctx context.Context, line string) error {
	out, err := c.HumanMonitorCommand(ctx, line)
	if err != nil {
		return err
	}
	if msg := strings.TrimSpace(out); msg != "" {
		return fmt.Errorf("hmp %s: %s", line, msg)
	}
	return nil
}
