// Package qmptest serves QMP on a unix socket for tests: a stand-in for a
// QEMU monitor that answers each command from a function.
package qmptest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
)

// Reply answers one command: its return value, or, when errDesc is not
// empty, a GenericError with that description.
type Reply func(execute string, args json.RawMessage) (ret any, errDesc string)

// Serve listens on a unix socket in a directory of t's, greets the first
// client as QEMU 7 does and answers its commands with reply, writing
// before (a line of JSON, such as an event; "" for none) ahead of every
// answer. It returns the socket's path; the listener closes with t.
func Serve(t testing.TB, before string, reply Reply) string {
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
			if before != "" {
				fmt.Fprintln(c, before)
			}
			ret, errDesc := reply(req.Execute, req.Arguments)
			var b []byte
			if errDesc != "" {
				b, _ = json.Marshal(map[string]any{"error": map[string]any{"class": "GenericError", "desc": errDesc}, "id": req.ID})
			} else {
				b, _ = json.Marshal(map[string]any{"return": ret, "id": req.ID})
			}
			fmt.Fprintln(c, string(b))
		}
	}()
	return sock
}
