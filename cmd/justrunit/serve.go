package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/api"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/store/sqlite"
)

func init() { addCommand(newServeCmd) }

// Serve defaults.
const (
	defaultServeAddr       = "127.0.0.1:7070"
	defaultShutdownTimeout = 30 * time.Second
	tokenFileName          = "token"
)

// serveOptions are the serve command's flags.
type serveOptions struct {
	addr            string
	tokenFile       string
	token           string
	tlsCert         string
	tlsKey          string
	names           []string
	noAuth          bool
	metricsPublic   bool
	site            string
	manage          time.Duration
	shutdownTimeout time.Duration
}

// daemonSite is what a running site gives the daemon: the experimenter
// factory for studies and the view of hosts and instances (which can also
// verify a study on the on-line instance, api.Verifier).
type daemonSite struct {
	NewRunner api.RunnerFactory
	// Check vets a study against the site before the daemon stores it.
	Check func(context.Context, *justrunit.Study) error
	View  api.SiteView
	// Planner is set when the daemon runs the manager (--manage).
	Planner api.Planner
	// Stop, when set, stops what acts on the site on its own (the
	// manager), and returns once it has or with an error when ctx ends
	// first, unless it is applying a plan to the on-line instances, which
	// it waits for to its end. Shutdown calls it with the daemon's studies
	// (stopServing).
	Stop func(ctx context.Context) error
	// Close stops the site runtime (proxies, instances it launched).
	Close func() error
}

// startSite starts the site named by --site for the daemon. It is nil until
// the site runtime exists; the file that adds the runtime sets it in its
// init function.
var startSite func(ctx context.Context, g *globals, path string, store justrunit.Store, reg *metrics.Set, manage time.Duration) (*daemonSite, error)

func newServeCmd(g *globals) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: REST API, dashboard and Prometheus metrics",
		Long: `Run the JustRunIt daemon. It owns the study store in the data directory and serves

  /api/v1/...              the REST API (OpenAPI document at /api/v1/openapi.json)
  /metrics                 Prometheus metrics, names prefixed justrunit_
  /                        the web dashboard

Every API call needs the bearer token ("Authorization: Bearer TOKEN"). The token
is read from --token or $JUSTRUNIT_TOKEN, else from --token-file; when that file
is missing or empty a new token is written there, readable by its owner only.
Open the dashboard and paste the token, or open http://ADDR/#token=TOKEN once.

The daemon listens on loopback by default. A non-loopback address needs a token
(--no-auth is refused there) and should use TLS (--tls-cert, --tls-key).

Before the CLI sends its token it asks GET /healthz to prove the daemon holds it.
Over plain http the daemon gives that proof, bound to the name the client dialled,
only to clients that dialled its own address, so that no server passing calls on
can pass a proof on. Clients that reach it by another name (a DNS name, an SSH
tunnel's port) need that name given with --name to get proofs; without it, a CLI
given the token ($JUSTRUNIT_TOKEN) sends it unchecked.

A daemon without a token (--no-auth) answers only requests to localhost or a
loopback address. Calls with a body send it as JSON (Content-Type: application/json);
a POST a browser sends from another site's page is refused.

While it runs, "justrunit study list/show/export" on this machine read through it.
On SIGINT or SIGTERM it stops taking calls, stops its running studies (stored as
interrupted) and on-line verifications (the instance's allocation restored), waits
for them, then stops the site and exits. The site is never stopped under a study or
verification: if one is still stopping after --shutdown-timeout, the daemon says so
and exits leaving the site up ("justrunit platform gc", with --platform qemu for a
qemu site and the same --data-dir, removes what it leaves; the daemon names the command).
A study left running by a daemon that was killed is marked interrupted when the
daemon starts again.`,
		Example: `  # Serve on loopback with a generated token in ~/.justrunit/token
  justrunit serve

  # Serve on all interfaces with TLS
  justrunit serve --addr 0.0.0.0:7443 --tls-cert cert.pem --tls-key key.pem --token-file /etc/justrunit/token

  # Call the API
  curl -H "Authorization: Bearer $(cat ~/.justrunit/token)" http://127.0.0.1:7070/api/v1/studies`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), g, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", defaultServeAddr, "address to listen on, HOST:PORT")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token, created (mode 0600) with a new token when missing (default DATA_DIR/token)")
	f.StringVar(&o.token, "token", "", "the API token (visible to other users in the process list; prefer $JUSTRUNIT_TOKEN or --token-file)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM); serve https with --tls-key")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	f.StringArrayVar(&o.names, "name", nil, "a further name clients reach the daemon by, HOST or HOST:PORT (any port when none): a DNS name, a port forwarded to it (repeatable); over plain http the daemon proves it holds the token only to clients that dialled its address or one of these")
	f.BoolVar(&o.noAuth, "no-auth", false, "serve without a token; loopback addresses only")
	f.BoolVar(&o.metricsPublic, "metrics-public", false, "serve /metrics without a token (the API still needs it)")
	f.StringVar(&o.site, "site", "", "site file to run (instances and proxies) so the daemon can run studies on it")
	f.DurationVar(&o.manage, "manage", 0, "with --site, run the manager with this monitoring interval (e.g. 1m): SLA monitor, studies, plans applied")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout, "how long to wait for calls, studies, verifications and the manager to stop on shutdown; the site is stopped only once they have (else it is left up; a plan being applied to on-line instances, by the manager or through the API, is waited for to its end)")
	return cmd
}

// validate checks the flags that do not need I/O; errors name the flag.
func (o *serveOptions) validate() error {
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return justrunit.Invalid("--addr", o.addr, "want HOST:PORT, e.g. 127.0.0.1:7070")
	}
	for _, n := range o.names {
		if err := api.CheckName(n); err != nil {
			return justrunit.Invalid("--name", n, "%v", err)
		}
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return justrunit.Invalid("--tls-key", o.tlsKey, "give both --tls-cert and --tls-key, or neither")
	}
	if o.noAuth && (o.token != "" || o.tokenFile != "") {
		return justrunit.Invalid("--no-auth", true, "contradicts --token/--token-file")
	}
	if o.noAuth && !api.IsLoopback(o.addr) {
		return justrunit.Invalid("--addr", o.addr, "is not a loopback address; refusing to serve it without a token (drop --no-auth)")
	}
	if o.shutdownTimeout <= 0 {
		return justrunit.Invalid("--shutdown-timeout", o.shutdownTimeout, "must be > 0")
	}
	switch {
	case o.manage < 0:
		return justrunit.Invalid("--manage", o.manage, "must not be negative: give the manager's monitoring interval, e.g. 1m (0: no manager)")
	case o.manage > 0 && o.site == "":
		return justrunit.Invalid("--manage", o.manage, "needs --site: the manager manages the site the daemon runs")
	case o.manage > 0 && o.manage < minManageInterval:
		return justrunit.Invalid("--manage", o.manage, "at least %v: each of the manager's experiments takes a quarter of it to warm up and half of it to measure", minManageInterval)
	}
	return nil
}

// minManageInterval is the shortest --manage interval.
const minManageInterval = time.Second

// token returns the API token and, when it came from a file, the file.
func (o *serveOptions) resolveToken(g *globals, log *slog.Logger) (token, file string, err error) {
	if o.noAuth {
		return "", "", nil
	}
	if o.token != "" {
		return o.token, "", nil
	}
	if t := os.Getenv(api.EnvToken); t != "" {
		return t, "", nil
	}
	file = o.tokenFile
	if file == "" {
		file = filepath.Join(g.dataDir, tokenFileName)
	}
	if file, err = filepath.Abs(file); err != nil {
		return "", "", err
	}
	token, created, err := api.LoadOrCreateToken(file)
	if err != nil {
		return "", "", err
	}
	if created {
		log.Info("generated a new API token", "file", file)
	}
	return token, file, nil
}

func runServe(ctx context.Context, g *globals, o *serveOptions, out io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := g.logger
	if log == nil {
		log = slog.Default()
	}
	token, tokenFile, err := o.resolveToken(g, log)
	if err != nil {
		return err
	}
	var tlsCfg *tls.Config
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return justrunit.Invalid("--tls-cert", o.tlsCert, "cannot load the certificate and key: %v", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	} else if !api.IsLoopback(o.addr) {
		log.Warn("serving plain http on a non-loopback address: the token travels in clear; use --tls-cert and --tls-key", "addr", o.addr)
	}

	store, err := sqlite.Open(ctx, filepath.Join(g.dataDir, "justrunit.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	if n, err := store.RecoverInterrupted(ctx); err != nil {
		return err
	} else if n > 0 {
		log.Warn("marked studies interrupted: the process running them (or due to) died", "count", n)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	set := metrics.New(reg)

	cfg := api.Config{Store: store, Token: token, NoAuth: o.noAuth, MetricsPublic: o.metricsPublic,
		Logger: log, Metrics: reg}
	var runner *api.EngineRunner
	var stopSite func(context.Context) error // the manager's stop, with --manage
	// leaveSite is set when the shutdown's bound ends with something still
	// acting on the site: it is then left up rather than torn down under it.
	leaveSite := false
	gc := ""
	if o.site != "" {
		gc = siteGCCommand(g, o.site)
		setCleanupHint(gc)
		if startSite == nil {
			return fmt.Errorf("serve --site: %w: the daemon cannot run a site yet (it needs the site runtime); "+
				"serve without --site to browse stored studies", justrunit.ErrNotImplemented)
		}
		site, err := startSite(ctx, g, o.site, store, set, o.manage)
		if err != nil {
			return err
		}
		defer func() {
			if leaveSite {
				return
			}
			if err := site.Close(); err != nil {
				log.Error("stop the site", "err", err)
			}
		}()
		cfg.Site = site.View
		cfg.Planner = site.Planner
		stopSite = site.Stop
		if site.NewRunner != nil {
			runner, err = api.NewEngineRunner(api.EngineRunnerConfig{Store: store, NewRunner: site.NewRunner, Check: site.Check,
				Logger: log, Owner: sqlite.OwnerID(), Metrics: set})
			if err != nil {
				return err
			}
			cfg.Runner = runner
		}
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	cfg.Listen, cfg.Names = ln.Addr(), o.names
	srv, err := api.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsCfg)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	url := api.LocalURL(scheme, ln.Addr())
	state := api.DaemonState{URL: url, PID: os.Getpid(), TokenFile: tokenFile, Daemon: srv.ID(), Started: time.Now()}
	if tlsCfg != nil {
		state.CAFile, _ = filepath.Abs(o.tlsCert)
		state.ServerName = api.ServerName(tlsCfg.Certificates[0].Leaf, url)
	}
	removeState, err := api.WriteState(g.dataDir, state)
	if err != nil {
		ln.Close()
		return err
	}
	defer func() {
		if err := removeState(); err != nil {
			log.Warn("remove the daemon state file", "err", err)
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	fmt.Fprintf(out, "JustRunIt daemon on %s: dashboard %s/, API %s%s/, metrics %s/metrics\n", url, url, url, api.Prefix, url)
	switch {
	case o.noAuth:
		fmt.Fprintln(out, "No authentication (--no-auth).")
	case tokenFile != "":
		fmt.Fprintf(out, "Token in %s.\n", tokenFile)
	}
	log.Info("serving", "url", url, "addr", ln.Addr().String(), "tls", tlsCfg != nil, "site", o.site != "")

	var err2 error
	select {
	case err2 = <-serveErr:
		err2 = fmt.Errorf("serve: %w", err2)
	case <-ctx.Done():
		log.Info("shutting down")
	}
	if err := stopServing(o.shutdownTimeout, log, srv, hs, runner, stopSite); err != nil {
		if o.site != "" {
			leaveSite = true
			log.Error("shutdown: studies or verifications still act on the site after --shutdown-timeout; "+
				"leaving the site up rather than tearing it down under them: once this process has exited, "+
				"\""+gc+"\" removes what it leaves", "timeout", o.shutdownTimeout, "err", err)
			err = fmt.Errorf("%w; the site was left up (run \"%s\" once this process has exited)", err, gc)
		}
		err2 = errors.Join(err2, err)
	}
	log.Info("stopped")
	return err2
}

// stopServing stops the daemon's calls and studies within timeout, in the
// order that keeps the site safe to stop afterwards: it ends the event
// streams and cancels the on-line verifications (srv.Close), stops taking
// calls and waits for those open (hs.Shutdown), stops the studies, which are
// stored as interrupted and remove their clones (runner.Close, at the same
// time), as does the manager with its own (stopSite, when set), and waits
// for the calls that act on the site (srv.Wait). It
// returns nil when nothing acts on the site any more, so the site may be
// stopped; else an error naming what still runs, and the site must be left
// alone. Calls still open when the time is up are cut off, except a plan
// being applied, which srv.Wait waits for to its end.
func stopServing(timeout time.Duration, log *slog.Logger, srv *api.Server, hs *http.Server, runner *api.EngineRunner, stopSite func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	srv.Close()
	studies, manager := make(chan error, 1), make(chan error, 1)
	go func() {
		if runner == nil {
			studies <- nil
			return
		}
		studies <- runner.Close(ctx)
	}()
	go func() {
		if stopSite == nil {
			manager <- nil
			return
		}
		manager <- stopSite(ctx)
	}()
	if err := hs.Shutdown(ctx); err != nil {
		log.Warn("calls still open at shutdown", "err", err)
		hs.Close()
	}
	return errors.Join(<-studies, <-manager, srv.Wait(ctx))
}

// siteGCCommand returns the command that removes what a run of the site
// in path leaves on its platform (see gcCommand). It reads only the file's
// platform; a file it cannot read is taken for a local site, as one
// without a platform is: the site runtime reports what is wrong with it.
func siteGCCommand(g *globals, path string) string {
	var f struct {
		Platform string `yaml:"platform"`
	}
	if b, err := os.ReadFile(path); err == nil {
		_ = yaml.Unmarshal(b, &f)
	}
	if f.Platform == "" {
		f.Platform = "local"
	}
	return gcCommand(g, f.Platform, platformStateDir(g, f.Platform))
}

// openReader returns where "study list/show/export" read from: the daemon
// for the data directory (or the one $JUSTRUNIT_SERVER names) when one
// answers, else the store file itself. Call the returned close when done.
func openReader(ctx context.Context, g *globals) (api.Reader, func() error, error) {
	c, err := api.Discover(ctx, api.DiscoverOptions{DataDir: g.dataDir})
	if err == nil {
		return c, func() error { return nil }, nil
	}
	if !errors.Is(err, api.ErrNoDaemon) {
		return nil, nil, err
	}
	s, err := openStore(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	return s, s.Close, nil
}
