package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/internal/testutil"
	"github.com/justrunit/justrunit/site"
	"github.com/justrunit/justrunit/store/sqlite"
)

// startServe runs "justrunit serve" with args on a loopback port chosen by
// the system until the test ends, and returns the daemon's state once it
// is up, and a function that stops it and returns its error.
func startServe(t *testing.T, dir string, args ...string) (api.DaemonState, func() error) {
	t.Helper()
	t.Setenv(api.EnvServer, "")
	t.Setenv(api.EnvToken, "")
	t.Setenv(api.EnvTokenFile, "")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCmd()
	cmd.SetOut(&strings.Builder{})
	cmd.SetArgs(append([]string{"--data-dir", dir, "--log-level", "warn", "serve", "--addr", "127.0.0.1:0"}, args...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("serve did not stop within 30s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { stop() })
	var st api.DaemonState
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("serve ended early: %v", err)
		default:
		}
		if _, err := api.Discover(context.Background(), api.DiscoverOptions{DataDir: dir, Timeout: time.Second}); err == nil {
			b, err := os.ReadFile(filepath.Join(dir, api.StateFile))
			if err != nil || json.Unmarshal(b, &st) != nil {
				t.Fatalf("state file %s: %v", b, err)
			}
			return st, stop
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not come up within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServe(t *testing.T) {
	dir := t.TempDir()
	id := storedStudy(t, dir)
	// A study left running by a process that died is shown interrupted.
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(dir, "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	cpu, _ := justrunit.ParseParameter("cpu=60..100 step 20")
	orphan := &justrunit.Study{Target: "app0", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}}, Window: justrunit.Duration(time.Second),
		TimeBound: justrunit.Duration(time.Minute), Slots: 1, CheckThreshold: 0.1, State: justrunit.StudyRunning,
		Owner: fmt.Sprintf("%d@%s", 1<<22+7, host), Started: time.Now().Add(-time.Minute)}
	if err := s.CreateStudy(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	s.Close()

	st, stop := startServe(t, dir)
	if !strings.HasPrefix(st.URL, "http://127.0.0.1:") {
		t.Errorf("daemon URL %s, want loopback http", st.URL)
	}
	tokFile := filepath.Join(dir, "token")
	fi, err := os.Stat(tokFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v; want mode 0600", fi, err)
	}
	resp, err := http.Get(st.URL + "/api/v1/studies")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/studies without token = %d, want 401", resp.StatusCode)
	}
	// It proves it holds the token to a client that dialled its address,
	// not to one that dialled another name (a server passing calls on).
	for _, host := range []string{strings.TrimPrefix(st.URL, "http://"), "relay.example.test:7070"} {
		req, _ := http.NewRequest("GET", st.URL+"/healthz?challenge=c0ffee", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var h api.Health
		err = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		own := host == strings.TrimPrefix(st.URL, "http://")
		if err != nil || (h.Proof != "") != own || (h.ProofRefused != "") == own {
			t.Errorf("GET /healthz with a challenge, Host %s = %+v, %v; want a proof: %v", host, h, err, own)
		}
	}

	// The study commands' reader goes through the daemon while it runs.
	g := &globals{dataDir: dir}
	r, closeR, err := openReader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.(*api.Client); !ok {
		t.Errorf("openReader with a daemon running = %T, want *api.Client", r)
	}
	e, err := api.LoadExport(ctx, r, id)
	if err != nil || e.Matrix == nil || len(e.Observations) != 3 {
		t.Fatalf("export through the daemon = %+v, %v", e, err)
	}
	o, err := r.Study(ctx, orphan.ID)
	if err != nil || o.State != justrunit.StudyInterrupted {
		t.Errorf("orphaned study = %+v, %v; want interrupted", o, err)
	}
	closeR()

	if err := stop(); err != nil {
		t.Fatalf("serve after SIGINT-like cancel = %v, want nil", err)
	}
	if _, err := os.Stat(filepath.Join(dir, api.StateFile)); !os.IsNotExist(err) {
		t.Errorf("state file left after shutdown: %v", err)
	}
	// Without the daemon the reader is the store.
	r, closeR, err = openReader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	defer closeR()
	if _, ok := r.(*sqlite.Store); !ok {
		t.Errorf("openReader without a daemon = %T, want *sqlite.Store", r)
	}
}

func TestServeFlags(t *testing.T) {
	if def := newServeCmd(&globals{}).Flags().Lookup("addr").DefValue; !api.IsLoopback(def) {
		t.Errorf("default --addr %s is not loopback", def)
	}
	dir := t.TempDir()
	tests := []struct {
		args  []string
		field string
		err   error
	}{
		{[]string{"--addr", "0.0.0.0:7070", "--no-auth"}, "--addr", justrunit.ErrInvalid},
		{[]string{"--addr", ":7070", "--no-auth"}, "--addr", justrunit.ErrInvalid},
		{[]string{"--addr", "7070"}, "--addr", justrunit.ErrInvalid},
		{[]string{"--tls-cert", "c.pem"}, "--tls-key", justrunit.ErrInvalid},
		{[]string{"--name", "http://jri.example.test"}, "--name", justrunit.ErrInvalid},
		{[]string{"--name", "jri.example.test:0"}, "--name", justrunit.ErrInvalid},
		{[]string{"--no-auth", "--token-file", "x"}, "--no-auth", justrunit.ErrInvalid},
		{[]string{"--addr", "127.0.0.1:0", "--site", "missing.yaml"}, "", fs.ErrNotExist},
		{[]string{"--manage", "1m"}, "--manage", justrunit.ErrInvalid},
		{[]string{"--manage", "-1m", "--site", "missing.yaml"}, "--manage", justrunit.ErrInvalid},
		{[]string{"--manage", "1ms", "--site", "missing.yaml"}, "--manage", justrunit.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := run(t, append([]string{"--data-dir", dir, "--log-level", "warn", "serve"}, tt.args...)...)
			if !errors.Is(err, tt.err) {
				t.Fatalf("serve %v = %v, want %v", tt.args, err, tt.err)
			}
			var fe *justrunit.FieldError
			if tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Errorf("serve %v = %v, want an error naming %s", tt.args, err, tt.field)
			}
		})
	}
}

// TestServeTLS checks that the CLI on the daemon's machine finds a TLS
// daemon and trusts its certificate: on loopback, on an unspecified address
// (the state file names loopback, not 0.0.0.0, which no certificate names),
// and with a certificate for the daemon's public name only.
func TestServeTLS(t *testing.T) {
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, tt := range []struct {
		name string
		addr string
		dns  []string
		ips  []net.IP
	}{
		{"loopback", "127.0.0.1:0", nil, loopback},
		{"all addresses", "0.0.0.0:0", nil, loopback},
		{"certificate for a public name", "0.0.0.0:0", []string{"justrunit.example.test"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, cert, key := testutil.SelfSigned(t, dir, tt.dns, tt.ips)
			st, stop := startServe(t, dir, "--addr", tt.addr, "--tls-cert", cert, "--tls-key", key)
			if !strings.HasPrefix(st.URL, "https://127.0.0.1:") {
				t.Fatalf("daemon URL %s, want https on 127.0.0.1", st.URL)
			}
			// Discover trusts the daemon's certificate named in its state file.
			c, err := api.Discover(context.Background(), api.DiscoverOptions{DataDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Studies(context.Background()); err != nil {
				t.Errorf("Studies over TLS: %v", err)
			}
			// Plain http to the TLS port gets nothing useful.
			if resp, err := http.Get(strings.Replace(st.URL, "https", "http", 1) + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Errorf("plain http to the TLS listener answered 200")
				}
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// stubSite stands in for the site runtime (the real one needs root and the
// example's instances) behind "serve --site": its on-line verification
// measures until cancelled and then takes restore to put the instance back;
// its studies' experimenters take restore to remove their clones. Close
// records whether either was still under way.
type stubSite struct {
	restore time.Duration
	started chan struct{} // closed when a verification or experiment starts

	mu          sync.Mutex
	busy        int
	closed      bool
	closedUnder bool
}

func (s *stubSite) Hosts(context.Context) ([]justrunit.Host, error)         { return nil, nil }
func (s *stubSite) Instances(context.Context) ([]justrunit.Instance, error) { return nil, nil }

func (s *stubSite) enter() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy++; s.busy == 1 {
		close(s.started)
	}
}

func (s *stubSite) leave() {
	time.Sleep(s.restore)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy--
}

func (s *stubSite) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, spec api.VerifySpec) ([]api.Verification, error) {
	s.enter()
	defer s.leave()
	<-ctx.Done()
	return nil, ctx.Err()
}

// Run is the experimenter's: it measures until the study is stopped.
func (s *stubSite) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	<-ctx.Done()
	return justrunit.Observation{}, ctx.Err()
}

func (s *stubSite) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed, s.closedUnder = true, s.busy > 0
	return nil
}

func (s *stubSite) state() (busy int, closed, closedUnder bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.busy, s.closed, s.closedUnder
}

// TestServeShutdownWaitsForSite: on shutdown the daemon cancels what acts
// on the site (an on-line verification, a study), waits for it to stop and
// only then stops the site; when it is still stopping after
// --shutdown-timeout, the daemon exits with an error and leaves the site up
// rather than stopping it underneath.
func TestServeShutdownWaitsForSite(t *testing.T) {
	for _, tt := range []struct {
		name    string
		study   bool // else a verification
		manager bool // neither: the site's manager acts on it from the start
		restore time.Duration
		timeout string
		leftUp  bool
	}{
		{"verification stops in time", false, false, 300 * time.Millisecond, "10s", false},
		{"verification outlasts the timeout", false, false, 3 * time.Second, "500ms", true},
		{"study stops in time", true, false, 300 * time.Millisecond, "10s", false},
		{"study outlasts the timeout", true, false, 3 * time.Second, "500ms", true},
		{"manager stops in time", false, true, 300 * time.Millisecond, "10s", false},
		{"manager outlasts the timeout", false, true, 3 * time.Second, "500ms", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stub := &stubSite{restore: tt.restore, started: make(chan struct{})}
			old := startSite
			t.Cleanup(func() { startSite = old })
			startSite = func(context.Context, *globals, string, justrunit.Store, *metrics.Set, time.Duration) (*daemonSite, error) {
				ds := &daemonSite{View: stub, Close: stub.close,
					NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
						stub.enter()
						return stub, closerFunc(func() error { stub.leave(); return nil }), nil
					}}
				if tt.manager {
					stub.enter()
					stopped := make(chan struct{})
					var once sync.Once
					ds.Stop = func(ctx context.Context) error {
						once.Do(func() { go func() { stub.leave(); close(stopped) }() })
						select {
						case <-stopped:
							return nil
						case <-ctx.Done():
							return fmt.Errorf("the manager is still stopping: %w", ctx.Err())
						}
					}
				}
				return ds, nil
			}
			dir := t.TempDir()
			id := storedStudy(t, dir)
			_, stop := startServe(t, dir, "--site", "site.yaml", "--shutdown-timeout", tt.timeout)
			c, err := api.Discover(context.Background(), api.DiscoverOptions{DataDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			called := make(chan error, 1)
			go func() {
				if tt.manager {
					return
				}
				if tt.study {
					_, err := c.CreateStudy(context.Background(), api.StudyRequest{Target: "auction0/app", Parameters: []string{"cpu=60..100 step 20"},
						TimeBound: "10h", WarmUp: "0s", Window: "1h", Strategy: "grid"})
					called <- err
					return
				}
				_, err := c.Verify(context.Background(), id, api.VerifyRequest{Points: []string{"cpu=70"}})
				called <- err
			}()
			select {
			case <-stub.started:
			case err := <-called:
				// CreateStudy returns once the study is created; it
				// starts acting on the site after that.
				if !tt.study || err != nil {
					t.Fatalf("the call ended before it acted on the site: %v", err)
				}
				select {
				case <-stub.started:
				case <-time.After(10 * time.Second):
					t.Fatal("the study created acted on nothing")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("nothing acted on the site")
			}
			err = stop()
			busy, closed, under := stub.state()
			if under {
				t.Fatalf("the site was stopped while something still acted on it (%s)", tt.name)
			}
			if tt.leftUp {
				if closed || busy == 0 {
					t.Errorf("after the timeout: site closed %v, %d operations running; want it left up under the running one", closed, busy)
				}
				if err == nil || !strings.Contains(err.Error(), "left up") || !strings.Contains(err.Error(), "platform gc") {
					t.Errorf("serve = %v, want an error saying the site was left up and how to clean it", err)
				}
				deadline := time.Now().Add(10 * time.Second)
				for busy, _, _ = stub.state(); busy > 0 && time.Now().Before(deadline); busy, _, _ = stub.state() {
					time.Sleep(20 * time.Millisecond)
				}
				return
			}
			if err != nil {
				t.Errorf("serve = %v, want a clean shutdown", err)
			}
			if !closed || busy != 0 {
				t.Errorf("site closed %v with %d operations running; want closed after they stopped", closed, busy)
			}
			if !tt.study && !tt.manager {
				if err := <-called; !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "shutting down") {
					t.Errorf("the verification's answer = %v, want 503 saying the daemon is shutting down", err)
				}
			}
		})
	}
}

// TestServeRefusesUnknownTarget: the daemon refuses a study of an instance
// its site does not have, or cannot study (no in-proxy), with 400 naming
// the target, before it stores or starts anything.
func TestServeRefusesUnknownTarget(t *testing.T) {
	f := &site.Site{Services: []site.Service{{Name: "auction0", Tiers: []site.Tier{
		{Name: "web", Instances: []site.Instance{{ID: "web0"}}},
		{Name: "app", Instances: []site.Instance{{ID: "app0", InProxy: &site.InProxy{Listen: "127.0.0.1:18081"}}}},
	}}}}
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var started atomic.Int32
	runner, err := api.NewEngineRunner(api.EngineRunnerConfig{Store: store,
		Check: func(_ context.Context, st *justrunit.Study) error { return checkTarget(f, st.Target) },
		NewRunner: func(ctx context.Context, st *justrunit.Study) (justrunit.Runner, io.Closer, error) {
			started.Add(1)
			return nil, nil, errors.New("not in this test")
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close(ctx)
	srv, err := api.New(api.Config{Store: store, NoAuth: true, Runner: runner, Site: &stubSite{}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	c := api.NewClient(hs.URL, "")
	for target, want := range map[string]string{"nope": "no such instance on the daemon's site; its instances are web0, app0", "web0": "has no in_proxy"} {
		_, err := c.CreateStudy(ctx, api.StudyRequest{Target: target, Parameters: []string{"cpu=20..100 step 20"}, TimeBound: "1m"})
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Field != "target" || !strings.Contains(ae.Message, want) || !strings.Contains(ae.Message, target) {
			t.Errorf("POST /studies with target %s = %v, want 400 naming the target and saying %q", target, err, want)
		}
	}
	if all, _ := store.Studies(ctx); len(all) != 0 || started.Load() != 0 {
		t.Errorf("refused studies: %d stored, %d started; want none", len(all), started.Load())
	}
	if _, err := c.CreateStudy(ctx, api.StudyRequest{Target: "app0", Parameters: []string{"cpu=20..100 step 20"}, TimeBound: "1m"}); err != nil {
		t.Errorf("POST /studies with target app0 = %v, want it taken", err)
	}
}

// TestWaitManager: a stopped manager is waited for until the shutdown's
// bound, and past it while it applies a plan to the on-line instances.
func TestWaitManager(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ended := make(chan struct{})
	close(ended)
	if err := waitManager(context.Background(), ended, func() bool { return false }, log); err != nil {
		t.Errorf("manager ended: waitManager = %v, want nil", err)
	}
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	running := make(chan struct{})
	if err := waitManager(expired, running, func() bool { return false }, log); err == nil || !strings.Contains(err.Error(), "still stopping") {
		t.Errorf("manager idle past the bound: waitManager = %v, want an error saying it is still stopping", err)
	}
	applying := make(chan struct{})
	go func() { time.Sleep(100 * time.Millisecond); close(applying) }()
	if err := waitManager(expired, applying, func() bool { return true }, log); err != nil {
		t.Errorf("manager applying a plan past the bound: waitManager = %v, want nil once the plan ended", err)
	}
	select {
	case <-applying:
	default:
		t.Error("waitManager returned while the plan was still applied")
	}
}
