package manager_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit/examples/auction/loadgen"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/internal/testutil/sitetest"
	"github.com/justrunit/justrunit/manager"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/store/sqlite"
)

// TestRespondSite runs the manager's response (dry) on a site of the
// local platform whose data tier is unlimited, as in the auction example,
// and whose sandbox host is half the size of the on-line one: the study
// stays within the sandbox's room, the plan leaves the unlimited tier
// where it is, and the study is stored with the manager's owner (so that
// another justrunit process does not take it for an interrupted one).
func TestRespondSite(t *testing.T) {
	testutil.NeedRoot(t)
	if testing.Short() {
		t.Skip("runs a site and a study")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The SLA is loose: the least allocation studied meets it, so the
	// decision asks for more CPU and the manager plans.
	s := sitetest.Up(t, ctx, sitetest.Config{
		Addrs: []string{"appIn", "app", "dataOut", "data"},
		File: `platform: local
classes:
  std: {idle_watts: 100, max_watts: 200}
hosts:
  - {name: pm1, class: std, cores: 1, cpus: "0"}
  - {name: sb, class: std, cores: 0.5, cpus: "1", sandbox: true}
services:
  - name: s
    sla: rt_mean<=5000
    bottleneck: app
    tiers:
      - name: app
        instances:
          - {id: app0, host: pm1, addr: "{{.Addr.app}}", allocation: {cpu: 30}, in_proxy: {listen: "{{.Addr.appIn}}"},
             out_proxy: {listen: "{{.Addr.dataOut}}", next: "{{.Addr.data}}", pass_through: [GET]},
             command: [{{.Bin}}, app, --listen, "{{.Addr.app}}", --data, "http://{{.Addr.dataOut}}"]}
      - name: data
        instances:
          - {id: data0, host: pm1, addr: "{{.Addr.data}}", state_dir: "{{.Data}}",
             command: [{{.Bin}}, data, --listen, "{{.Addr.data}}", --state-dir, "{{.Data}}"]}
`})
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	go loadgen.Run(loadCtx, loadgen.Config{Target: "http://" + s.Addr["appIn"], Rate: 60, Mix: loadgen.Browsing, Seed: 5, Timeout: 5 * time.Second})

	var mu sync.Mutex
	var events []manager.Event
	owner := sqlite.OwnerID()
	mgr, err := manager.New(manager.Config{Site: s.Site, Store: store, Owner: owner, Interval: time.Second,
		WarmUp: time.Second, Window: 3 * time.Second, Experiments: 2, DryRun: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(e manager.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			t.Logf("[%s] %s", e.Kind, e.Message)
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	// Live traffic to copy: wait until the app tier's in-proxy has seen some.
	feed, _ := s.InProxy("app0")
	for feed.Stats().Online.Count < 20 {
		select {
		case <-ctx.Done():
			t.Fatalf("no live traffic at the app tier's in-proxy: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := mgr.Respond(ctx, "s"); err != nil {
		t.Fatalf("Respond: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	find := func(kind string) *manager.Event {
		for i := range events {
			if events[i].Kind == kind {
				return &events[i]
			}
		}
		t.Fatalf("no %s event", kind)
		return nil
	}
	if msg := find(manager.EventStudy).Message; !strings.Contains(msg, "cpu 40..50%") || !strings.Contains(msg, "50% sandbox host sb has free rather than the 100%") {
		t.Errorf("study event %q, want the range 40..50%% and why it stops at 50%%", msg)
	}
	pl, ok := find(manager.EventPlan).Data["plan"].(planner.Plan)
	if !ok {
		t.Fatalf("plan event without a plan: %+v", find(manager.EventPlan))
	}
	if pl.Placement["data0"] != "pm1" || pl.Placement["app0"] != "pm1" || len(pl.Moves) != 0 || len(pl.Allocations) != 1 || pl.Allocations[0].ID != "app0" {
		t.Errorf("plan:\n%s\nwant app0's allocation raised where it is, data0 left unlimited on pm1", pl)
	}
	studies, err := store.Studies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(studies) != 1 {
		t.Fatalf("%d studies stored, want 1", len(studies))
	}
	if studies[0].Owner != owner {
		t.Errorf("the study is stored with owner %q, want %q: another justrunit process would mark it interrupted while it runs", studies[0].Owner, owner)
	}
}
