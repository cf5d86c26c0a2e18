// Package sitetest brings up a site of the auction example for an
// integration test: it writes the site file, starts the site on its
// platform (siterun.Up waits until every instance is ready), and when the
// test ends closes it and checks that nothing of it is left.
//
// It is a package of its own rather than part of testutil because it
// imports siterun, which imports platform/local, whose own tests import
// testutil: in testutil it would be an import cycle.
package sitetest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/siterun"
)

// Config says which site a test runs and how.
type Config struct {
	// Addrs names the loopback addresses the site file uses (listeners,
	// proxies); each gets a free port.
	Addrs []string
	// File is the site file, a text/template. It sees .Bin, the auction
	// example's binary (testutil.BuildAuction); .Data, a new directory for
	// an instance's state; and .Addr, the addresses of Addrs by name, as in
	// {{.Addr.app}}. A name it does not know fails the test.
	File string
	// Edit, if set, changes the loaded site before it comes up.
	Edit func(*site.Site)
	// Options are siterun.Up's. An empty StateDir is a new temporary
	// directory; a nil Logger discards, or writes to stderr under -v.
	Options siterun.Options
}

// Site is a site a test brought up.
type Site struct {
	*siterun.Site
	// Addr is each of Config.Addrs with its port.
	Addr map[string]string
	// StateDir is the platform's state directory, Options.StateDir.
	StateDir string
}

// Up writes the site file c describes, loads it and brings it up within
// ctx; it fails the test if any of that fails. When the test ends the site
// is closed, and an error closing it, or anything the local platform still
// holds under StateDir (processes, cgroups, namespaces, NAT rules,
// overlays: local.Leftovers), fails the test.
func Up(t testing.TB, ctx context.Context, c Config) *Site {
	t.Helper()
	addrs := freePorts(t, c.Addrs)
	path := writeFile(t, c.File, struct {
		Bin, Data string
		Addr      map[string]string
	}{testutil.BuildAuction(t), t.TempDir(), addrs})
	f, err := site.Load(path)
	if err != nil {
		t.Fatalf("load the site file: %v\n%s", err, c.File)
	}
	if c.Edit != nil {
		c.Edit(f)
	}
	opts := c.Options
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if testing.Verbose() {
			opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
	}
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	s, err := siterun.Up(ctx, f, opts)
	if err != nil {
		t.Fatalf("bring the site up: %v", err)
	}
	// Registered after every temporary directory above, so it runs before
	// they are removed.
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("close site: %v", err)
		}
		if left, err := local.Leftovers(local.Scope(opts.StateDir), opts.StateDir); err != nil || left.Total() != 0 {
			t.Errorf("left behind after the site closed: %v (%v)", left, err)
		}
	})
	return &Site{Site: s, Addr: addrs, StateDir: opts.StateDir}
}

// freePorts gives each name a loopback address with a port the kernel
// chose. The listeners stay open until all are chosen, so no two names
// share a port; the site takes them after they close.
func freePorts(t testing.TB, names []string) map[string]string {
	t.Helper()
	addrs := make(map[string]string, len(names))
	for _, name := range names {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[name] = l.Addr().String()
	}
	return addrs
}

// writeFile executes the site file template with data into a new
// directory and returns the file's path.
func writeFile(t testing.TB, file string, data any) string {
	t.Helper()
	tmpl, err := template.New("site.yaml").Option("missingkey=error").Parse(file)
	if err != nil {
		t.Fatalf("parse the site file template: %v", err)
	}
	var body strings.Builder
	if err := tmpl.Execute(&body, data); err != nil {
		t.Fatalf("execute the site file template: %v", err)
	}
	path := filepath.Join(t.TempDir(), "site.yaml")
	if err := os.WriteFile(path, []byte(body.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ClassesFile is a site of two auction tiers (app0 with an in-proxy and an
// out-proxy in front of data0) on host pm1 (CPU 0), of class old, and two
// sandbox hosts on CPU 1 of two emulated hardware classes, old (1.2 GHz)
// and new (2 GHz): for tests that compare host classes. Its Addrs are
// appIn, app, dataOut and data.
const ClassesFile = `platform: local
classes:
  std: {idle_watts: 100, max_watts: 200}
  old: {idle_watts: 90, max_watts: 160, freq_ghz: 1.2}
  new: {idle_watts: 100, max_watts: 200, freq_ghz: 2}
hosts:
  - {name: pm1, class: old, cores: 1, cpus: "0"}
  - {name: sb-old, class: old, cores: 1, cpus: "1", sandbox: true}
  - {name: sb-new, class: new, cores: 1, cpus: "1", sandbox: true}
services:
  - name: s
    tiers:
      - name: app
        instances:
          - {id: app0, host: pm1, addr: "{{.Addr.app}}", allocation: {cpu: 60}, in_proxy: {listen: "{{.Addr.appIn}}"},
             out_proxy: {listen: "{{.Addr.dataOut}}", next: "{{.Addr.data}}", pass_through: [GET]},
             command: [{{.Bin}}, app, --listen, "{{.Addr.app}}", --data, "http://{{.Addr.dataOut}}", --work, "2"]}
      - name: data
        instances:
          - {id: data0, host: pm1, addr: "{{.Addr.data}}", allocation: {cpu: 20}, state_dir: "{{.Data}}",
             command: [{{.Bin}}, data, --listen, "{{.Addr.data}}", --state-dir, "{{.Data}}"]}
`
