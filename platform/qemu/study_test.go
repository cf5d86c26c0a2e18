package qemu

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/platform/qemu/guest"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

// TestAuctionStudyQemu runs a study of the auction app tier on the qemu
// platform the same way as on the local platform (siterun.Up, RunStudy):
// only the site file differs — platform: qemu, and commands that run in
// the guest (ports inside = the forwarded ports outside; the host, where
// the proxies listen, is 10.0.2.2 from inside).
func TestAuctionStudyQemu(t *testing.T) {
	needQEMU(t)
	if testing.Short() {
		t.Skip("boots two guests and runs a study for about a minute")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cache := filepath.Join(os.TempDir(), "justrunit-qemu-test-cache")
	bin := filepath.Join(cache, "auction")
	if err := guest.GoBuild(ctx, "../..", "./examples/auction", bin); err != nil {
		t.Fatalf("build the auction example: %v", err)
	}
	im, err := guest.Build(ctx, guest.Config{CacheDir: cache, Services: map[string]string{"auction": bin}})
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("", "jri-qemu-study-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	// The registered qemu platform boots <state dir>/image by default,
	// where "justrunit image build" links the image it builds.
	if err := os.Symlink(im.Dir, filepath.Join(state, "image")); err != nil {
		t.Fatal(err)
	}

	var ports []int
	for range 4 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		l.Close() // only to pick a free port for the site
	}
	appIn, app, dataOut, data := ports[0], ports[1], ports[2], ports[3]
	body := fmt.Sprintf(`platform: qemu
classes:
  std: {idle_watts: 100, max_watts: 200}
hosts:
  - {name: pm1, class: std, cores: 1}
  - {name: sandbox, class: std, cores: 1, sandbox: true}
services:
  - name: auction0
    sla: rt_mean<=200
    bottleneck: app
    tiers:
      - name: app
        instances:
          - id: app0
            host: pm1
            command: [/bin/auction, app, --listen, ":%[2]d", --data, "http://10.0.2.2:%[3]d", --work, "0"]
            addr: 127.0.0.1:%[2]d
            in_proxy: {listen: 127.0.0.1:%[1]d}
            out_proxy: {listen: 127.0.0.1:%[3]d, next: 127.0.0.1:%[4]d}
      - name: data
        instances:
          - id: data0
            host: pm1
            command: [/bin/auction, data, --listen, ":%[4]d", --state-dir, /data, --seed-items, "200", --seed-users, "200"]
            addr: 127.0.0.1:%[4]d
`, appIn, app, dataOut, data)
	path := filepath.Join(t.TempDir(), "site.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := site.Load(path)
	if err != nil {
		t.Fatalf("site file: %v\n%s", err, body)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	start := time.Now()
	s, err := siterun.Up(ctx, f, siterun.Options{StateDir: state, Logger: log, ReadyTimeout: time.Minute})
	if err != nil {
		t.Fatalf("site up: %v", err)
	}
	t.Logf("site up (2 guests) in %v", time.Since(start).Round(time.Millisecond))
	defer func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("close site: %v", err)
		}
		if ents, _ := os.ReadDir(filepath.Join(state, "vms")); len(ents) > 1 {
			t.Errorf("left behind after the site closed: %v", ents)
		}
	}()

	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		// 5 req/s: under TCG the app answered about 6.6 req/s at 100%
		// of a core on a slower day's machine, so that at 15 req/s every
		// point was saturated and the study measured nothing.
		_, _ = loadgen.Run(loadCtx, loadgen.Config{Target: fmt.Sprintf("http://127.0.0.1:%d", appIn), Rate: 5,
			Mix: loadgen.Browsing, Seed: 7, Timeout: 5 * time.Second, Items: 200, Users: 200})
	}()
	defer func() { stopLoad(); <-loadDone }()

	// Under TCG a clone at 20% of a core may answer nothing in a 4 s
	// window at this load: saturated, the point is then unmeasurable and
	// the study goes on.
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 40")
	st := &justrunit.Study{
		Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTMean, justrunit.Throughput},
		WarmUp:  justrunit.Duration(2 * time.Second), Window: justrunit.Duration(4 * time.Second),
		TimeBound: justrunit.Duration(40 * time.Second), Slots: 1, Interpolator: "linear", CheckThreshold: 0.5,
	}
	start = time.Now()
	m, err := s.RunStudy(ctx, st, siterun.StudyOptions{RelCI: 0.5, MinSamples: 10})
	if err != nil {
		t.Fatalf("study: %v", err)
	}
	var out strings.Builder
	_ = m.Render(&out)
	t.Logf("study on qemu took %v, %d experiments:\n%s", time.Since(start).Round(time.Millisecond), st.Experiments, out.String())
	if len(m.Measured()) < 1 {
		t.Errorf("study measured %d points in %d experiments, want at least one", len(m.Measured()), st.Experiments)
	}
	is, _ := s.Platform.Instances(ctx)
	if len(is) != 2 {
		t.Errorf("after the study the platform runs %v, want only app0 and data0", is)
	}
}
