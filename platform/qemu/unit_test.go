package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/qmp"
	"github.com/justrunit/justrunit/internal/qmp/qmptest"
)

// These tests boot no VM: they run anywhere, also under -short.

// bounded fails the test when f has not returned within a few seconds
// (what they guard against is a loop or a wait that never ends).
func bounded(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
	}
}

func TestLimitsForBounds(t *testing.T) {
	p := &Platform{o: Options{Period: DefaultPeriod, MemoryMiB: DefaultMemoryMiB}, refFreq: 2}
	for _, tc := range []struct {
		a             justrunit.Allocation
		cpus          string
		quota, period int64
		field         string // of the error; "" for none
	}{
		{a: justrunit.Allocation{CPU: 0.1}, cpus: "0", quota: 1000, period: 1000000},
		{a: justrunit.Allocation{CPU: 0.2}, cpus: "0", quota: 1280, period: 640000},
		{a: justrunit.Allocation{CPU: 0.01}, cpus: "0", field: "allocation.cpu"}, // needs a 10 s period
		{a: justrunit.Allocation{CPU: 1e-13}, cpus: "0", field: "allocation.cpu"},
		{a: justrunit.Allocation{CPU: math.Inf(1)}, cpus: "0", field: "allocation.cpu"},
		// freq without cpu scales all of the host's CPUs: "0-3" is 4.
		{a: justrunit.Allocation{Freq: 1}, cpus: "0-3", quota: 40000, period: 20000},
		{a: justrunit.Allocation{Freq: 1}, cpus: "0,2-3", quota: 30000, period: 20000},
		{a: justrunit.Allocation{Freq: 0.001}, cpus: "0", field: "allocation.freq"},
		{a: justrunit.Allocation{CPU: 0.1, Freq: 1}, cpus: "0", field: "allocation.freq"},
	} {
		var err error
		var quota, period int64
		bounded(t, "limitsFor", func() {
			l, e := p.limitsFor("allocation", tc.a, tc.cpus)
			quota, period, err = l.QuotaUS, int64(l.PeriodUS), e
		})
		if tc.field != "" {
			var fe *justrunit.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Errorf("limitsFor(%+v, %s) = %v, want an error on %s", tc.a, tc.cpus, err, tc.field)
			}
			continue
		}
		if err != nil || quota != tc.quota || period != tc.period {
			t.Errorf("limitsFor(%+v, %s) = quota %d period %d, %v; want %d %d", tc.a, tc.cpus, quota, period, err, tc.quota, tc.period)
		}
		if period > 1000000 || quota < 1000 {
			t.Errorf("limitsFor(%+v) = quota %d period %d: outside the kernel's bounds", tc.a, quota, period)
		}
	}
}

func TestCheckAlloc(t *testing.T) {
	p := &Platform{o: Options{Period: DefaultPeriod, MemoryMiB: DefaultMemoryMiB}, refFreq: 2}
	for _, tc := range []struct {
		a     justrunit.Allocation
		field string
	}{
		{justrunit.Allocation{}, ""},
		{justrunit.Allocation{CPU: 50, Freq: 1.5, MemoryMiB: 128}, ""},
		{justrunit.Allocation{CPU: MinCPUShare}, ""},
		{justrunit.Allocation{CPU: 0.05}, "a.cpu"},
		{justrunit.Allocation{CPU: 1e-13}, "a.cpu"},
		{justrunit.Allocation{CPU: -1}, "a.cpu"},
		{justrunit.Allocation{CPU: math.NaN()}, "a.cpu"},
		{justrunit.Allocation{CPU: math.Inf(1)}, "a.cpu"},
		{justrunit.Allocation{Freq: math.NaN()}, "a.freq"},
		{justrunit.Allocation{Freq: math.Inf(1)}, "a.freq"},
		{justrunit.Allocation{Freq: math.Inf(-1)}, "a.freq"},
	} {
		err := p.checkAlloc("a", tc.a)
		var fe *justrunit.FieldError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("checkAlloc(%+v) = %v, want nil", tc.a, err)
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
			t.Errorf("checkAlloc(%+v) = %v, want an error on %s", tc.a, err, tc.field)
		}
	}
}

// TestWaitListening: a service counts as listening when it holds the
// connection open, or when it speaks first (SMTP, SSH, MySQL); not when
// the connection is closed at once (slirp before the guest listens).
func TestWaitListening(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(c net.Conn)
		ok     bool
	}{
		{"silent", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }, true},
		{"greeting", func(c net.Conn) { _, _ = io.WriteString(c, "220 ready\r\n"); _, _ = io.Copy(io.Discard, c) }, true},
		{"closes", func(c net.Conn) {}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); tc.handle(c) }()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if !tc.ok {
				ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
			}
			defer cancel()
			err = waitListening(ctx, l.Addr().String(), nil)
			if (err == nil) != tc.ok {
				t.Errorf("waitListening(%s) = %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
}

// TestSiteCPUs checks that the cpusets a site gives its hosts reach the
// platform's layout (and that a sandbox on CPUs of its own stays there).
func TestSiteCPUs(t *testing.T) {
	t.Setenv("JUSTRUNIT_QEMU_IMAGE", "")
	hosts := []justrunit.Host{
		{Name: "pm1", Cores: 2, On: true},
		{Name: "pm2", Cores: 2, On: true},
		{Name: "sandbox", Cores: 2, On: true, Sandbox: true},
	}
	c := justrunit.PlatformConfig{StateDir: "/x", Hosts: hosts,
		HostCPUs: map[string]string{"pm1": "0-1", "pm2": "2-3", "sandbox": "6-7"}}
	o, err := optionsFrom(c)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := layoutHosts(o.Hosts, []int{0, 1, 2, 3, 4, 5, 6, 7})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range hs {
		got[h.Name] = h.CPUs
	}
	for name, want := range c.HostCPUs {
		if got[name] != want {
			t.Errorf("host %s has cpus %q, want the site's %q", name, got[name], want)
		}
	}
	c.HostCPUs["pm9"] = "5"
	if _, err := optionsFrom(c); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("optionsFrom(cpus of an unknown host) = %v, want ErrInvalid", err)
	}
}

// unitPlatform is a platform whose state directory is a file, so that a
// VM's directory cannot be made: Launch and Clone fail after they have
// reserved a port, and start no QEMU.
func unitPlatform(t *testing.T) (*Platform, string) {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(state, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image")
	if err := os.MkdirAll(img, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "image.json"), []byte(`{"hash":"test","disk_mib":16}`), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	p := &Platform{o: Options{StateDir: state, Image: img, MemoryMiB: DefaultMemoryMiB, Period: DefaultPeriod, Logger: log},
		log: log, refFreq: 2, vms: map[string]*vm{}, usedHP: map[int]bool{},
		hosts: []*HostConfig{
			{Host: justrunit.Host{Name: "pm1", Cores: 1, On: true}, CPUs: "0"},
			{Host: justrunit.Host{Name: "sandbox", Cores: 1, On: true, Sandbox: true}, CPUs: "0"},
		}}
	return p, img
}

// TestFailureReleasesPort: a Launch or Clone that fails gives back the
// host port it reserved.
func TestFailureReleasesPort(t *testing.T) {
	ctx := context.Background()
	p, img := unitPlatform(t)
	_, err := p.Launch(ctx, justrunit.InstanceSpec{ID: "a", Host: "pm1", Addr: "10.0.2.15:80", Dir: img, Command: []string{"/bin/true"}})
	if err == nil {
		t.Fatal("Launch into a state directory that is a file succeeded")
	}
	if len(p.usedHP) != 0 || len(p.vms) != 0 {
		t.Errorf("after a failed Launch: ports %v, VMs %v still reserved", p.usedHP, p.vms)
	}

	src := &vm{inst: justrunit.Instance{ID: "a", Host: "pm1"}, proc: &qproc{done: make(chan struct{})}}
	p.vms["a"] = src
	if _, err := p.Clone(ctx, "a", "sandbox", justrunit.CloneOptions{}); err == nil {
		t.Fatal("Clone into a state directory that is a file succeeded")
	}
	if len(p.usedHP) != 0 || len(p.vms) != 1 {
		t.Errorf("after a failed Clone: ports %v, VMs %v still reserved", p.usedHP, p.vms)
	}
}

// TestTrimConsole: a console log over its limit keeps its last half in
// LOG.1 and is emptied, and a writer appending to it (as QEMU does) goes on
// at its new start; tail reads across both files; a log under the limit,
// or gone, is left alone.
func TestTrimConsole(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "qemu-1.console.log")
	w, err := os.OpenFile(log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	line := func(i int) string { return fmt.Sprintf("line %04d\n", i) } // 10 bytes
	for i := range 100 {
		if _, err := w.WriteString(line(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := trimConsole(log, 2000); err != nil { // 1000 bytes: under the limit
		t.Fatal(err)
	}
	if st, _ := os.Stat(log); st.Size() != 1000 {
		t.Fatalf("a log under its limit was changed: %d bytes", st.Size())
	}
	if err := trimConsole(log, 400); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(log); st.Size() != 0 {
		t.Errorf("after a trim the log has %d bytes, want 0", st.Size())
	}
	kept, _ := os.ReadFile(log + ".1")
	if want := strings.Join([]string{line(80), line(81)}, ""); !strings.HasPrefix(string(kept), want) || len(kept) != 200 {
		t.Errorf("%s.1 = %q, want the last 200 bytes (lines 80-99)", log, kept)
	}
	if _, err := w.WriteString(line(100)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(log); string(b) != line(100) {
		t.Errorf("the writer's next line went to %q, want the start of the emptied log", b)
	}
	if got, want := tail(log, 30), strings.TrimSpace(line(98)+line(99)+line(100)); got != want {
		t.Errorf("tail across the trim = %q, want %q", got, want)
	}
	if err := trimConsole(filepath.Join(dir, "gone.console.log"), 400); err != nil {
		t.Errorf("trim of a log that is gone: %v", err)
	}
}

// TestCloseEndsOperations: closing cancels a Launch, Clone or Migrate under
// way and waits for it to end before the VMs are destroyed, so that none
// adds a VM behind Close; afterwards none begins.
func TestCloseEndsOperations(t *testing.T) {
	p, img := unitPlatform(t)
	p.opsCtx, p.cancelOps = context.WithCancel(context.Background())
	p.mu.Lock()
	ctx, done := p.beginLocked(context.Background())
	p.closed = true
	p.mu.Unlock()
	ended := make(chan struct{})
	go func() { p.endOps(); close(ended) }()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("closing did not cancel the operation under way")
	}
	select {
	case <-ended:
		t.Fatal("closing went on while an operation was under way")
	case <-time.After(50 * time.Millisecond):
	}
	done()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("closing did not go on once the operation ended")
	}
	_, err := p.Launch(context.Background(), justrunit.InstanceSpec{ID: "a", Host: "pm1", Addr: "10.0.2.15:80", Dir: img, Command: []string{"/bin/true"}})
	if err == nil || !strings.Contains(err.Error(), "platform closed") {
		t.Errorf("Launch on a closed platform = %v, want refused", err)
	}
	p.vms["a"] = &vm{inst: justrunit.Instance{ID: "a", Host: "pm1"}, proc: &qproc{done: make(chan struct{})}}
	if err := p.Migrate(context.Background(), "a", "sandbox"); err == nil || !strings.Contains(err.Error(), "platform closed") {
		t.Errorf("Migrate on a closed platform = %v, want refused", err)
	}
}

// TestSourceCmd: a command that changes a source's state is sent and its
// reply awaited even when the caller's context has ended, and the caller
// then learns that it ended.
func TestSourceCmd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := sourceCmd(ctx, func(c context.Context) error {
		if c.Err() != nil {
			return c.Err()
		}
		ran = true
		return nil
	})
	if !ran || !errors.Is(err, context.Canceled) {
		t.Errorf("sourceCmd under a cancelled context: ran %v, err %v; want it run and context.Canceled", ran, err)
	}
	fail := errors.New("refused")
	if err := sourceCmd(context.Background(), func(context.Context) error { return fail }); !errors.Is(err, fail) {
		t.Errorf("sourceCmd = %v, want the command's error", err)
	}
}

// fakeMigrationSource serves QMP on a unix socket, answering every command
// with an empty return and query-migrate with statuses, one per query (the
// last repeats).
func fakeMigrationSource(t *testing.T, statuses ...string) *qmp.Client {
	t.Helper()
	sock := qmptest.Serve(t, "", func(execute string, _ json.RawMessage) (any, string) {
		if execute != "query-migrate" {
			return map[string]any{}, ""
		}
		st := statuses[0]
		if len(statuses) > 1 {
			statuses = statuses[1:]
		}
		return map[string]any{"status": st, "total-time": 48}, ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := qmp.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// TestCutMigration checks how a migration cut by its bound is judged: one
// that completed all the same has switched over and is carried through;
// one cancelled, failed or never started is undone.
func TestCutMigration(t *testing.T) {
	for _, tc := range []struct {
		statuses  []string
		completed bool
	}{
		{[]string{"completed"}, true},
		{[]string{"active", "completed"}, true},
		{[]string{"active", "cancelling", "cancelled"}, false},
		{[]string{"failed"}, false},
		{[]string{""}, false}, // QEMU 7.2: never migrated
	} {
		bounded(t, "cutMigration", func() {
			m, completed := cutMigration(fakeMigrationSource(t, tc.statuses...))
			if completed != tc.completed || m.Status != tc.statuses[len(tc.statuses)-1] {
				t.Errorf("statuses %q: cutMigration = %q, %v; want %q, %v", tc.statuses, m.Status, completed, tc.statuses[len(tc.statuses)-1], tc.completed)
			}
		})
	}
}
