package manager_test

import (
	"bytes"
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

	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

// TestEvaluateUpgrade compares two emulated hardware classes for the
// auction's app tier under live load: the faster class answers faster.
func TestEvaluateUpgrade(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs a site and two experiments")
	}
	dir := t.TempDir()
	bin := testutil.BuildAuction(t)
	var addrs []string
	for range 4 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close() // the kernel picked a free port; the site takes it
	}
	appIn, app, dataOut, data := addrs[0], addrs[1], addrs[2], addrs[3]
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o755)
	body := fmt.Sprintf(`platform: local
classes:
  std: {idle_watts: 100, max_watts: 200}
  old: {idle_watts: 90, max_watts: 160, freq_ghz: 1.2}
  new: {idle_watts: 100, max_watts: 200, freq_ghz: 2.4}
hosts:
  - {name: pm1, class: std, cores: 1, cpus: "0"}
  - {name: sb-old, class: old, cores: 1, cpus: "1", sandbox: true}
  - {name: sb-new, class: new, cores: 1, cpus: "1", sandbox: true}
services:
  - name: s
    tiers:
      - name: app
        instances:
          - {id: app0, host: pm1, addr: "%[2]s", allocation: {cpu: 60}, in_proxy: {listen: "%[1]s"},
             out_proxy: {listen: "%[3]s", next: "%[4]s", pass_through: [GET]},
             command: [%[5]s, app, --listen, "%[2]s", --data, "http://%[3]s", --work, "2"]}
      - name: data
        instances:
          - {id: data0, host: pm1, addr: "%[4]s", allocation: {cpu: 20}, state_dir: "%[6]s",
             command: [%[5]s, data, --listen, "%[4]s", --state-dir, "%[6]s"]}
`, appIn, app, dataOut, data, bin, state)
	path := filepath.Join(dir, "site.yaml")
	os.WriteFile(path, []byte(body), 0o600)
	f, err := site.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := siterun.Up(ctx, f, siterun.Options{StateDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + appIn, Rate: 40, Mix: loadgen.Browsing, Seed: 3, Timeout: 5 * time.Second})

	rep, err := manager.EvaluateUpgrade(ctx, s, "app0", nil, 2*time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Render(&out)
	t.Logf("\n%s", out.String())
	if len(rep.Options) != 2 {
		t.Fatalf("%d options, want 2", len(rep.Options))
	}
	old, nw := rep.Options[0], rep.Options[1]
	if old.Class != "old" {
		old, nw = nw, old
	}
	if !old.Emulated || !nw.Emulated || !strings.Contains(out.String(), "(emulated)") {
		t.Errorf("emulated frequency not stated: %+v %+v", old, nw)
	}
	if nw.Observation.RT.Mean >= old.Observation.RT.Mean {
		t.Errorf("mean response time on the 2.4 GHz class %.1f ms ≥ %.1f ms on the 1.2 GHz class", nw.Observation.RT.Mean, old.Observation.RT.Mean)
	}
	if rep.Recommended == "" || old.Observation.Energy.Source == "" {
		t.Errorf("report = %+v", rep)
	}
}
