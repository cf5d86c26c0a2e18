package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var urlRE = regexp.MustCompile(`url=(http://\S+)`)

// start runs a tier command until the test ends and returns its URL.
func start(t *testing.T, ctx context.Context, wg *sync.WaitGroup, args ...string) string {
	t.Helper()
	var stderr lockedBuffer
	errc := make(chan error, 1)
	wg.Go(func() { errc <- run(ctx, args, io.Discard, &stderr) })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := urlRE.FindStringSubmatch(stderr.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-errc:
			t.Fatalf("auction %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("auction %s did not start:\n%s", strings.Join(args, " "), stderr.String())
	return ""
}

func TestCommands(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	data := start(t, ctx, &wg, "data", "--listen", "127.0.0.1:0", "--state-dir", t.TempDir(), "--seed-items", "100", "--seed-users", "20")
	app := start(t, ctx, &wg, "app", "--listen", "127.0.0.1:0", "--data", data, "--work", "0.1")
	web := start(t, ctx, &wg, "web", "--listen", "127.0.0.1:0", "--app", app)

	var out bytes.Buffer
	err := run(ctx, []string{"load", "--target", web, "--steps", "300ms@20,300ms@40", "--interval", "200ms",
		"--items", "100", "--users", "20", "--json"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	var intervals int
	var last map[string]any
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		last = nil
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("load --json printed %q: %v", sc.Text(), err)
		}
		if last["type"] == "interval" {
			intervals++
		}
	}
	if intervals < 3 || last["type"] != "summary" || last["errors"] != 0.0 || last["completed"].(float64) < 10 {
		t.Errorf("load --json: %d intervals, last line %v; want >= 3 intervals and a summary without errors", intervals, last)
	}
	if d := last["duration_s"].(float64); d < 0.55 || d > 0.65 {
		t.Errorf("load --steps 300ms@20,300ms@40: duration %.2f s, want 0.6", d)
	}

	out.Reset()
	if err := run(ctx, []string{"load", "--target", web, "--rate", "20", "--duration", "200ms", "--items", "100", "--users", "20"}, &out, io.Discard); err != nil {
		t.Fatalf("load: %v", err)
	}
	if !strings.Contains(out.String(), "summary:") || !strings.Contains(out.String(), "p95_ms") {
		t.Errorf("load printed:\n%s\nwant a table and a summary", out.String())
	}
}

func TestBadUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"nope"}, "unknown command"},
		{[]string{"data"}, "--state-dir is required"},
		{[]string{"app", "--data", "localhost:1"}, "--data"},
		{[]string{"web", "--app", "x"}, "--app"},
		{[]string{"load", "--mix", "x"}, "--mix"},
		{[]string{"load", "--steps", "10s"}, "--steps"},
		{[]string{"load", "--rate", "-1"}, "rate"},
		{[]string{"load", "--nope"}, "not defined"},
	} {
		err := run(t.Context(), tt.args, io.Discard, io.Discard)
		if err == nil || (tt.want == "" && !errors.Is(err, flag.ErrHelp)) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}
