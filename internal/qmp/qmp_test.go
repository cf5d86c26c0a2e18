package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit/internal/qmp/qmptest"
)

// fakeQEMU serves QMP on a unix socket: it answers from replies (command →
// return value, or an error for "fail"), emits an event before every reply,
// and reports migration statuses from statuses one query at a time.
func fakeQEMU(t *testing.T, statuses []string) string {
	t.Helper()
	const event = `{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`
	return qmptest.Serve(t, event, func(execute string, args json.RawMessage) (any, string) {
		switch execute {
		case "fail":
			return nil, "no such thing"
		case "query-status":
			return map[string]any{"running": true, "status": "running"}, ""
		case "query-migrate":
			st := statuses[0]
			if len(statuses) > 1 {
				statuses = statuses[1:]
			}
			return map[string]any{"status": st, "downtime": 16, "total-time": 48, "ram": map[string]any{"transferred": 1 << 20}}, ""
		case "echo":
			var a map[string]any
			_ = json.Unmarshal(args, &a)
			return a, ""
		case "human-monitor-command":
			var a struct {
				Line string `json:"command-line"`
			}
			_ = json.Unmarshal(args, &a)
			if strings.Contains(a.Line, "bad") {
				return "Could not set up host forwarding rule 'bad'\r\n", ""
			}
			return "", ""
		}
		return map[string]any{}, ""
	})
}

func TestClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fakeQEMU(t, []string{"setup", "active", "pre-switchover", "completed"}))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()

	st, err := c.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Errorf("QueryStatus() = %+v, %v; want running", st, err)
	}
	var echo map[string]any
	if err := c.Execute(ctx, "echo", map[string]any{"uri": "unix:/x"}, &echo); err != nil || echo["uri"] != "unix:/x" {
		t.Errorf("Execute(echo) = %v, %v", echo, err)
	}
	var qe *Error
	if err := c.Execute(ctx, "fail", nil, nil); !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "fail" {
		t.Errorf("Execute(fail) = %v, want a *Error of class GenericError", err)
	}
	m, err := c.WaitMigration(ctx, time.Millisecond, "pre-switchover")
	if err != nil || m.Status != "pre-switchover" {
		t.Errorf("WaitMigration(pre-switchover) = %+v, %v", m, err)
	}
	m, err = c.WaitMigration(ctx, time.Millisecond, "completed")
	if err != nil || m.Downtime != 16 || m.TotalTime != 48 || m.RAM == nil || m.RAM.Transferred != 1<<20 {
		t.Errorf("WaitMigration(completed) = %+v, %v", m, err)
	}
	select {
	case ev := <-c.Events():
		if ev.Name != "STOP" {
			t.Errorf("event = %q, want STOP", ev.Name)
		}
	default:
		t.Error("no event delivered")
	}
}

func TestWaitMigrationFailed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fakeQEMU(t, []string{"active", "failed"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WaitMigration(ctx, time.Millisecond, "completed"); err == nil {
		t.Error("WaitMigration after a failed migration = nil, want an error")
	}
}

func TestClosedConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fakeQEMU(t, []string{"none"}))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-c.Done()
	if err := c.Execute(ctx, "query-status", nil, nil); err == nil {
		t.Error("Execute on a closed connection = nil, want an error")
	}
}

func TestDialTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, filepath.Join(t.TempDir(), "absent.sock")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial(absent) = %v, want DeadlineExceeded", err)
	}
}

func TestHMP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fakeQEMU(t, []string{"none"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.HMP(ctx, "hostfwd_add n0 tcp:127.0.0.1:1-:80"); err != nil {
		t.Errorf("HMP(ok) = %v, want nil", err)
	}
	if err := c.HMP(ctx, "hostfwd_add bad"); err == nil || !strings.Contains(err.Error(), "Could not set up host forwarding") {
		t.Errorf("HMP(bad) = %v, want the monitor's message as an error", err)
	}
}

// serve runs handle on the first connection to a unix socket in a
// temporary directory and returns the socket's path.
func serve(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c)
	}()
	return sock
}

// greet sends the greeting and answers qmp_capabilities.
func greet(c net.Conn) *bufio.Reader {
	fmt.Fprintln(c, `{"QMP": {"version": {}, "capabilities": []}}`)
	br := bufio.NewReader(c)
	line, _ := br.ReadBytes('\n')
	var req struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(line, &req)
	fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", req.ID)
	return br
}

// dialBounded runs Dial and fails the test if it has not returned within
// a few seconds (the bug it guards against is a Dial that never returns).
func dialBounded(t *testing.T, ctx context.Context, sock string) (*Client, error) {
	t.Helper()
	type res struct {
		c   *Client
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := Dial(ctx, sock); ch <- res{c, err} }()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("Dial did not return")
		return nil, nil
	}
}

// TestDialSilentCancel: a QEMU that accepts but never greets must not hold
// Dial past a cancel of a context that has no deadline.
func TestDialSilentCancel(t *testing.T) {
	release := make(chan struct{})
	sock := serve(t, func(c net.Conn) { <-release })
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := dialBounded(t, ctx, sock); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial(silent server, cancelled) = %v, want context.Canceled", err)
	}
}

// TestExecuteWriteStuck: a QEMU that stops reading must not block Execute
// past its context.
func TestExecuteWriteStuck(t *testing.T) {
	big := strings.Repeat("x", 4<<20) // more than the socket's buffers hold
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			sock := serve(t, func(c net.Conn) {
				greet(c)
				<-release // never reads again
			})
			defer close(release)
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer dcancel()
			c, err := dialBounded(t, dctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := tc.ctx()
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- c.Execute(ctx, "echo", map[string]any{"v": big}, nil) }()
			select {
			case err := <-errc:
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "write") {
					t.Errorf("Execute(stuck peer) = %v, want a write error, %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Execute to a peer that does not read did not return")
			}
		})
	}
}

// TestLineTooLong: a reply longer than MaxLineBytes ends the connection
// with ErrLineTooLong instead of being buffered without bound.
func TestLineTooLong(t *testing.T) {
	huge := `{"return": "` + strings.Repeat("y", MaxLineBytes) + `"}` + "\n"
	t.Run("reply", func(t *testing.T) {
		sock := serve(t, func(c net.Conn) {
			br := greet(c)
			if _, err := br.ReadBytes('\n'); err != nil {
				return
			}
			_, _ = io.WriteString(c, huge)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := dialBounded(t, ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrLineTooLong) {
			t.Errorf("Execute(reply of %d bytes) = %v, want ErrLineTooLong", len(huge), err)
		}
	})
	t.Run("greeting", func(t *testing.T) {
		sock := serve(t, func(c net.Conn) { _, _ = io.WriteString(c, huge) })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := dialBounded(t, ctx, sock); !errors.Is(err, ErrLineTooLong) {
			t.Errorf("Dial(greeting of %d bytes) = %v, want ErrLineTooLong", len(huge), err)
		}
	})
}
