package local

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/prio"
)

// TestMain removes the test server built for the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if serverBin != "" {
		os.RemoveAll(filepath.Dir(serverBin))
	}
	os.Exit(code)
}

// needRoot skips a test that needs root, or fails it under CI=true.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root; CI runs as root, so this is a setup error")
		}
		t.Skip("needs root; run as root (cgroups, network namespaces, nftables)")
	}
}

var (
	buildOnce  sync.Once
	serverBin  string
	buildError error
)

// testServer builds internal/testserver's command once per test binary, or
// returns $JRI_TESTSERVER: a prebuilt one, where there is no Go toolchain (the
// cgroup v2 guest internal/v2guest runs these tests in).
func testServer(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("JRI_TESTSERVER"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "jri-testserver-")
		if err != nil {
			buildError = err
			return
		}
		serverBin = filepath.Join(dir, "jri-testserver")
		// The go command that runs the tests is on PATH (go test puts its
		// GOROOT's bin first).
		cmd := exec.Command("go", "build", "-o", serverBin, "github.com/justrunit/justrunit/internal/testserver/cmd/jri-testserver")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildError = fmt.Errorf("go build testserver: %v\n%s", err, out)
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return serverBin
}

// newPlatform makes a platform with a fresh state directory and checks at
// the end that Close left nothing of its scope behind.
func newPlatform(t *testing.T, opts ...func(*Config)) *Platform {
	t.Helper()
	needRoot(t)
	sd := t.TempDir()
	cfg := Config{StateDir: sd, ReadyTimeout: 15 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close() error: %v", err)
		}
		r, err := Leftovers(p.Scope(), sd)
		if err != nil {
			t.Errorf("Leftovers() error: %v", err)
		}
		if r.Total() != 0 {
			t.Errorf("after Close, left behind: %s: %+v", r, r)
		}
	})
	return p
}

// freePort returns a TCP port free on 127.0.0.1 right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type serverOpts struct {
	id, host, next string
	stateDir       string
	alloc          justrunit.Allocation
	env            []string
	args           []string // more flags for the test server
}

// launchServer launches the test server and waits until it answers.
func launchServer(t *testing.T, p *Platform, o serverOpts) *justrunit.Instance {
	t.Helper()
	bin := testServer(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{bin, "-addr", addr}
	if o.stateDir != "" {
		args = append(args, "-state", o.stateDir)
	}
	if o.next != "" {
		args = append(args, "-next", o.next)
	}
	args = append(args, o.args...)
	if o.host == "" {
		o.host = "pm1"
	}
	in, err := p.Launch(context.Background(), justrunit.InstanceSpec{ID: o.id, Host: o.host, Command: args, StateDir: o.stateDir, Addr: addr, Alloc: o.alloc, Env: o.env})
	if err != nil {
		t.Fatalf("Launch(%s) error: %v", o.id, err)
	}
	t.Cleanup(func() { _ = p.Destroy(context.Background(), o.id) })
	waitHTTP(t, "http://"+addr+"/health", 10*time.Second)
	return in
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering after %v: %v", url, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 20 * time.Second}

// getBody GETs url and returns status and body.
func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// getJSON GETs url and decodes its JSON answer.
func getJSON(t *testing.T, url string) map[string]any {
	t.Helper()
	code, body := getBody(t, url)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("GET %s: %v in %q", url, err, body)
	}
	return m
}

func put(t *testing.T, url, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(body))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT %s: %s", url, resp.Status)
	}
}

// checkIdleClass checks that every thread of clone is in the idle
// scheduling class if idle (else none is), and no thread of its original.
func checkIdleClass(t *testing.T, p *Platform, clone, orig string, idle bool) {
	t.Helper()
	for _, c := range []struct {
		id   string
		idle bool
	}{{clone, idle}, {orig, false}} {
		in, err := p.get(c.id)
		if err != nil {
			t.Fatal(err)
		}
		tids, err := in.group.Threads()
		if err != nil || len(tids) == 0 {
			t.Fatalf("threads of %s: %v, %v", c.id, tids, err)
		}
		for _, tid := range tids {
			idle, err := prio.Idle(tid)
			if err != nil {
				t.Errorf("thread %d of %s: %v", tid, c.id, err)
			} else if idle != c.idle {
				t.Errorf("thread %d of %s: idle scheduling class %v, want %v", tid, c.id, idle, c.idle)
			}
		}
	}
}
