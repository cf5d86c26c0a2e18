package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU serves QMP on a unix socket: it answers from replies (command →
// return value, or an error for "fail"), emits an event before every reply,
// and reports migration statuses from statuses one query at a time.
func fakeQEMU(t *testing.T, statuses []string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}`)
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct {
				Execute   string          `json:"execute"`
				ID        string          `json:"id"`
				Arguments json.RawMessage `json:"arguments"`
			}
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				continue
			}
			fmt.Fprintln(c, `{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`)
			var ret any = map[string]any{}
			switch req.Execute {
			case "fail":
				fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "no such thing"}, "id": %q}`+"\n", req.ID)
				continue
			case "query-status":
				ret = map[string]any{"running": true, "status": "running"}
			case "query-migrate":
				st := statuses[0]
				if len(statuses) > 1 {
					statuses = statuses[1:]
				}
				ret = map[string]any{"status": st, "downtime": 16, "total-time": 48, "ram": map[string]any{"transferred": 1 << 20}}
			case "echo":
				var a map[string]any
				_ = json.Unmarshal(req.Arguments, &a)
				ret = a
			}
			b, _ := json.Marshal(map[string]any{"return": ret, "id": req.ID})
			fmt.Fprintln(c, string(b))
		}
	}()
	return sock
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
