// Package api is JustRunIt's daemon interface: the versioned JSON REST API
// under /api/v1/ (described by the OpenAPI document at /api/v1/openapi.json),
// bearer-token authentication, a server-sent event stream for live updates,
// Prometheus /metrics, and the embedded web dashboard at /. It also holds the
// Client the CLI uses to talk to a running daemon, and the study runner that
// runs studies created through the API with the study engine.
//
// The Server reads everything from a justrunit.Store, so every study in the
// store is visible whether this daemon or another process ran it. What the
// daemon can do beyond reading depends on what it is given: a StudyRunner to
// create and cancel studies, a SiteView for hosts and instances; without
// them those calls answer 503 with code "unavailable" and say what is
// missing. A SiteView that is also a Verifier lets the daemon check a
// study's answers on the on-line instance (POST /studies/{id}/verify).
// Calls for what is planned but not built (the manager's plans) answer 501
// "not_implemented".
package api

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/ui"
)

// Prefix is where the API lives; its version is part of the path.
const Prefix = "/api/v1"

// Log attribute keys.
const (
	keyMethod = "method"
	keyPath   = "path"
	keyErr    = "err"
	keyStudy  = "study"
)

// DefaultPollInterval is how often the event stream looks for new events in
// the store (which other processes may write to as well).
const DefaultPollInterval = 500 * time.Millisecond

// StudyRunner runs studies for the daemon. EngineRunner is the in-process
// implementation over the study engine.
type StudyRunner interface {
	// Start validates st, stores it (assigning its ID) and runs it in the
	// background; it returns once the study is stored. Bad settings give a
	// *justrunit.FieldError. The study must outlive ctx, which only bounds
	// the call itself.
	Start(ctx context.Context, st *justrunit.Study) error
	// Cancel asks a pending or running study to stop and returns without
	// waiting; the study records state cancelled when it has stopped. A
	// study this runner is not running gives an error wrapping
	// justrunit.ErrNotFound.
	Cancel(ctx context.Context, id string) error
}

// SiteView is the daemon's read view of the on-line site: its hosts (with
// power state) and instances. The site runtime implements it.
type SiteView interface {
	Hosts(ctx context.Context) ([]justrunit.Host, error)
	Instances(ctx context.Context) ([]justrunit.Instance, error)
}

// Planner makes placement plans of the site as it is now (dry runs) and
// applies them: the manager's consolidation/expansion step on demand.
type Planner interface {
	// Plan makes and keeps a dry-run plan.
	Plan(ctx context.Context) (PlanRecord, error)
	// Plans lists the plans made, newest first.
	Plans(ctx context.Context) ([]PlanRecord, error)
	// Apply applies the plan with id; unknown id gives an error wrapping
	// justrunit.ErrNotFound, an applied one justrunit.ErrExists.
	Apply(ctx context.Context, id string) (PlanRecord, error)
}

// PlanRecord is a plan as the API shows it.
type PlanRecord struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Summary is one line; Plan the planner's full plan (hosts, moves,
	// ordered steps).
	Summary string `json:"summary"`
	Plan    any    `json:"plan"`
	// State is PlanPlanned, PlanApplying, PlanApplied or PlanFailed.
	State string `json:"state"`
	// Applied is when the plan's steps all ran; Error why they stopped.
	Applied time.Time `json:"applied,omitzero"`
	Error   string    `json:"error,omitempty"`
}

// A plan's states (PlanRecord.State).
const (
	PlanPlanned  = "planned"
	PlanApplying = "applying"
	PlanApplied  = "applied"
	PlanFailed   = "failed"
)

// ServiceSampler is an optional ability of a SiteView (found by type
// assertion): the on-line response time of each service per monitoring
// interval, which the manager watches against the SLAs (the paper's
// Figure 3). The manager or the site runtime implements it.
type ServiceSampler interface {
	// ServiceSamples returns the samples that started at or after since,
	// oldest first.
	ServiceSamples(ctx context.Context, since time.Time) ([]ServiceSample, error)
}

// ServiceSample is one service's on-line response time over one interval.
type ServiceSample struct {
	Service  string             `json:"service"`
	Start    time.Time          `json:"start"`
	Interval justrunit.Duration `json:"interval"`
	// RTMean is the mean response time over the interval in milliseconds;
	// Requests the responses it averages.
	RTMean   float64 `json:"rt_mean_ms"`
	Requests int64   `json:"requests"`
	// Value is the interval's value of the SLA's metric (rt_p95 in ms,
	// error_rate as a fraction, ...), what the monitor judges.
	Value float64        `json:"value"`
	SLA   *justrunit.SLA `json:"sla,omitempty"`
}

// Config is what a Server needs. Store is required; so is Token unless
// NoAuth is set.
type Config struct {
	// Store is where studies, matrices and events are read from.
	Store justrunit.Store
	// Token is the bearer token every /api/v1 call and /metrics needs.
	Token string
	// NoAuth serves without a token. The serve command allows it on a
	// loopback address only.
	NoAuth bool
	// MetricsPublic serves /metrics without a token (for a scraper that
	// cannot send one); the API still needs it.
	MetricsPublic bool
	// Logger is optional; slog.Default() when nil.
	Logger *slog.Logger
	// Runner creates and cancels studies; nil means this daemon cannot run
	// studies (POST /studies answers 503).
	Runner StudyRunner
	// Site shows hosts and instances; nil means the daemon runs no site.
	Site SiteView
	// Planner makes and applies placement plans; nil means the daemon
	// runs no manager (the plan routes answer 503).
	Planner Planner
	// Metrics is the registry served at /metrics; nil serves 503 there.
	Metrics *prometheus.Registry
	// PollInterval is how often event streams poll the store;
	// DefaultPollInterval when 0.
	PollInterval time.Duration
	// Version is shown by /api/v1/info; the module version when empty.
	Version string
	// Listen is the address the daemon listens on (its listener's, port
	// bound): GET /healthz proves the token (Health.Proof) only to a
	// client whose Host is that address or one of Names, unless the call
	// came over TLS (see hostNames). Nil proves it to any Host, for a
	// program that serves the API behind a check of its own.
	Listen net.Addr
	// Names are the further names clients reach the daemon by, HOST or
	// HOST:PORT (any port when none): a DNS name, the address of a port
	// forwarded to it. Each must pass CheckName; they need Listen.
	Names []string
}

// Server serves the API, /metrics and the dashboard. It is an http.Handler.
type Server struct {
	cfg     Config
	names   *hostNames // nil: every Host is the daemon's
	log     *slog.Logger
	handler http.Handler
	started time.Time
	id      string
	// done ends event streams and on-line verifications when the server
	// closes, so http.Server's Shutdown does not wait for them.
	done   context.Context
	cancel context.CancelFunc

	// ops are the calls under way that act on the site (see beginOp);
	// opsChanged is closed and replaced whenever one ends.
	opsMu      sync.Mutex
	ops        map[int]op
	opsSeq     int
	opsChanged chan struct{}
	closed     bool
}

// New checks cfg and builds the Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, justrunit.Invalid("store", nil, "the API needs a store")
	}
	if cfg.Token == "" && !cfg.NoAuth {
		return nil, justrunit.Invalid("token", nil, "empty; give a token or serve without authentication explicitly (NoAuth)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Version == "" {
		cfg.Version = moduleVersion()
	}
	names, err := newHostNames(cfg.Listen, cfg.Names)
	if err != nil {
		return nil, justrunit.Invalid("names", cfg.Names, "%v", err)
	}
	s := &Server{cfg: cfg, names: names, log: cfg.Logger, started: time.Now(), id: rand.Text(), ops: map[int]op{}, opsChanged: make(chan struct{})}
	s.done, s.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		h := rt.handler
		if rt.auth {
			h = s.authenticate(h)
		}
		mux.Handle(rt.method+" "+rt.pattern, h)
	}
	mux.Handle(Prefix+"/", s.authenticate(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, &Error{Status: http.StatusNotFound, Code: CodeNotFound,
			Message: "no such API call " + r.Method + " " + r.URL.Path + "; see " + Prefix + "/openapi.json"})
	}))
	mux.Handle("/", ui.Handler())
	h := s.refuseCrossOrigin(mux)
	if cfg.NoAuth {
		h = s.requireLoopbackHost(h)
	}
	s.handler = securityHeaders(h)
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Close ends the open event streams and cancels the on-line verifications
// under way (each restores its instance's allocation as it stops), and
// refuses calls that would act on the site from then on. Call it before
// http.Server.Shutdown so the shutdown does not wait for the streams, then
// Wait before stopping the site. It does not stop the runner.
func (s *Server) Close() {
	s.opsMu.Lock()
	s.closed = true
	s.opsMu.Unlock()
	s.cancel()
}

// op is a call under way that acts on the site: an on-line verification
// (cancellable: Close cancels it) or a plan being applied (not: it runs to
// its end).
type op struct {
	what        string
	cancellable bool
}

// Wait waits for the calls that act on the site to return: on-line
// verifications (which Close cancels) and plans being applied (which run
// to their end). When ctx ends first, it waits on for the plans being
// applied, whose half-applied steps would be worse than a late shutdown
// (as the manager's own are waited for), then returns an error naming
// the calls still running, if any; the site must then not be stopped
// under them.
func (s *Server) Wait(ctx context.Context) error {
	warned := false
	for {
		s.opsMu.Lock()
		applying := false
		for _, o := range s.ops {
			applying = applying || !o.cancellable
		}
		n, changed := len(s.ops), s.opsChanged
		s.opsMu.Unlock()
		if n == 0 {
			return nil
		}
		if ctx.Err() != nil && !applying {
			return fmt.Errorf("calls acting on the site still running: %s: %w", strings.Join(s.runningOps(), ", "), ctx.Err())
		}
		done := ctx.Done()
		if ctx.Err() != nil {
			if !warned {
				warned = true
				s.log.Warn("shutdown: a plan is being applied to the on-line instances; waiting for it to end past the shutdown timeout", "calls", strings.Join(s.runningOps(), ", "))
			}
			done = nil // only the plans are waited for now
		}
		select {
		case <-changed:
		case <-done:
		}
	}
}

func (s *Server) runningOps() []string {
	s.opsMu.Lock()
	defer s.opsMu.Unlock()
	var out []string
	for _, o := range s.ops {
		out = append(out, o.what)
	}
	slices.Sort(out)
	return out
}

// errClosing is why a verification stopped when the daemon shut down.
var errClosing = errors.New("the daemon is shutting down")

// beginOp registers a call that acts on the site (what names it for
// people), so Wait waits for it; once Close has been called it refuses.
// With cancelOnClose the returned context also ends, with cause
// errClosing, when the server closes; without, it does not end when the
// caller hangs up either, so the operation is never left half done. Call
// end when the call returns.
func (s *Server) beginOp(r *http.Request, what string, cancelOnClose bool) (ctx context.Context, end func(), err error) {
	s.opsMu.Lock()
	defer s.opsMu.Unlock()
	if s.closed {
		return nil, nil, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: what + " refused: " + errClosing.Error() + "; nothing was changed"}
	}
	s.opsSeq++
	id := s.opsSeq
	s.ops[id] = op{what: what, cancellable: cancelOnClose}
	base := r.Context()
	stop := func() bool { return true }
	if !cancelOnClose {
		// Nor does a caller that hangs up stop it halfway.
		base = context.WithoutCancel(base)
	}
	ctx, cancel := context.WithCancelCause(base)
	if cancelOnClose {
		stop = context.AfterFunc(s.done, func() { cancel(errClosing) })
	}
	return ctx, func() {
		stop()
		cancel(nil)
		s.opsMu.Lock()
		defer s.opsMu.Unlock()
		delete(s.ops, id)
		close(s.opsChanged)
		s.opsChanged = make(chan struct{})
	}, nil
}

// route is one API call; the OpenAPI document lists the same set (a test
// keeps them in step).
type route struct {
	method, pattern string
	auth            bool
	handler         http.HandlerFunc
}

func (s *Server) routes() []route {
	return []route{
		{"GET", "/healthz", false, s.handleHealth},
		{"GET", Prefix + "/openapi.json", false, handleOpenAPI},
		{"GET", Prefix + "/info", true, s.handleInfo},
		{"GET", Prefix + "/studies", true, s.handleListStudies},
		{"POST", Prefix + "/studies", true, s.handleCreateStudy},
		{"GET", Prefix + "/studies/{id}", true, s.handleGetStudy},
		{"POST", Prefix + "/studies/{id}/cancel", true, s.handleCancelStudy},
		{"POST", Prefix + "/studies/{id}/verify", true, s.handleVerify},
		{"GET", Prefix + "/studies/{id}/matrix", true, s.handleMatrix},
		{"GET", Prefix + "/studies/{id}/observations", true, s.handleObservations},
		{"GET", Prefix + "/studies/{id}/checks", true, s.handleChecks},
		{"GET", Prefix + "/studies/{id}/export", true, s.handleExport},
		{"GET", Prefix + "/events", true, s.handleEvents},
		{"GET", Prefix + "/events/stream", true, s.handleEventStream},
		{"GET", Prefix + "/site", true, s.handleSite},
		{"GET", Prefix + "/hosts", true, s.handleHosts},
		{"GET", Prefix + "/instances", true, s.handleInstances},
		{"GET", Prefix + "/services/samples", true, s.handleServiceSamples},
		{"GET", Prefix + "/plans", true, s.handlePlans},
		{"POST", Prefix + "/plans", true, s.handlePlans},
		{"POST", Prefix + "/plans/{id}/apply", true, s.handlePlans},
		{"GET", "/metrics", !s.cfg.MetricsPublic, s.handleMetrics},
	}
}

// Health is what GET /healthz answers, without authentication: enough to
// tell a JustRunIt daemon is listening and, asked with a challenge, to
// prove that it holds the token before a client sends it.
type Health struct {
	Status  string `json:"status"`
	Service string `json:"service"`
	// Daemon identifies this run of the daemon (Server.ID); its state
	// file names it too.
	Daemon string `json:"daemon"`
	// Proof answers the request's challenge parameter:
	// HealthProof(token, Daemon, Host, challenge), Host the request's. It
	// is absent without a challenge, when the daemon runs without a token
	// and when the Host is not one of the daemon's (ProofRefused says so).
	Proof string `json:"proof,omitempty"`
	// ProofRefused says why a challenge got no proof from a daemon that
	// holds a token: the client dialled a name the daemon does not know
	// for its own (see Config.Names).
	ProofRefused string `json:"proof_refused,omitempty"`
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", Service: "justrunit", Daemon: s.id}
	challenge := r.URL.Query().Get("challenge")
	if len(challenge) > maxChallenge {
		s.writeError(w, r, justrunit.Invalid("challenge", len(challenge), "at most %d characters", maxChallenge))
		return
	}
	switch {
	case challenge == "" || s.cfg.Token == "":
	case r.TLS == nil && s.names != nil && !s.names.owns(r.Host, "80"):
		h.ProofRefused = "Host " + strconv.Quote(r.Host) + " is not a name of this daemon: it proves it holds its token only to a client " +
			"that dialled its address or a name it was given (serve --name), so that no server elsewhere can pass its proof on"
	default:
		h.Proof = HealthProof(s.cfg.Token, s.id, r.Host, challenge)
	}
	writeJSON(w, http.StatusOK, h)
}

// ID returns the random identifier of this Server (Health.Daemon), which
// the daemon's state file records so that a client can tell it from
// another daemon holding the same token.
func (s *Server) ID() string { return s.id }

// Info is what GET /api/v1/info answers: the daemon's version and which of
// its parts are present.
type Info struct {
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Runner is true when the daemon can run studies; Site when it runs a
	// site; Samples when its site has per-service samples; Verify when it
	// can verify a study on the on-line instance (a Site may say why it
	// refuses to: VerifyRefused() string); Manager when its manager runs.
	Runner  bool `json:"runner"`
	Site    bool `json:"site"`
	Samples bool `json:"samples"`
	Verify  bool `json:"verify"`
	Manager bool `json:"manager"`
	// Missing explains, for people, what the daemon cannot do and why.
	Missing []string `json:"missing,omitempty"`
}

func (s *Server) info() Info {
	in := Info{Version: s.cfg.Version, Started: s.started, Runner: s.cfg.Runner != nil, Site: s.cfg.Site != nil, Manager: s.cfg.Planner != nil}
	_, in.Samples = s.cfg.Site.(ServiceSampler)
	_, in.Verify = s.cfg.Site.(Verifier)
	if v, ok := s.cfg.Site.(interface{ VerifyRefused() string }); ok && in.Verify {
		if why := v.VerifyRefused(); why != "" {
			in.Verify = false
			in.Missing = append(in.Missing, why)
		}
	}
	switch {
	case !in.Runner && !in.Site:
		in.Missing = append(in.Missing, msgNoRunner)
	case !in.Runner:
		in.Missing = append(in.Missing, msgNoExperimenter)
	}
	if !in.Site {
		in.Missing = append(in.Missing, msgNoSite)
	}
	if !in.Manager {
		in.Missing = append(in.Missing, msgNoManager)
	}
	return in
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.info())
}

// What a daemon without its parts cannot do, said once for the API and the
// dashboard.
const (
	msgNoRunner       = "this daemon runs no site, so it cannot run studies yet: a study needs the site runtime (clones, proxies), which this daemon was not started with; stored studies are shown read-only"
	msgNoExperimenter = "this daemon's site runtime gives it no experimenter, so it cannot run studies yet; stored studies are shown read-only"
	msgNoSite         = "this daemon runs no site: hosts, instances and their power state need the site runtime, which this daemon was not started with"
	msgNoSamples      = "no per-service response-time samples: they come from the manager's SLA monitor, which is not running in this daemon"
	msgNoManager      = "this daemon runs no manager (SLA monitor, consolidation and expansion plans): start it with --site and --manage"
	msgNoVerifySite   = "this daemon runs no site, so it cannot verify a study on the on-line instance: start it with \"justrunit serve --site SITE.yaml\", or run \"justrunit study verify --site SITE.yaml ID\"; nothing was changed"
	msgNoVerifier     = "this daemon's site runtime cannot set the on-line instance's allocation, so it cannot verify a study; nothing was changed"
)

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Metrics == nil {
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "no metrics registry configured"})
		return
	}
	promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{ErrorLog: slogPromLogger{s.log}}).ServeHTTP(w, r)
}

type slogPromLogger struct{ l *slog.Logger }

func (p slogPromLogger) Println(v ...any) { p.l.Warn("metrics", "msg", v) }

func (s *Server) handlePlans(w http.ResponseWriter, r *http.Request) {
	p := s.cfg.Planner
	if p == nil {
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: msgNoManager + "; nothing was planned or changed"})
		return
	}
	switch id := r.PathValue("id"); {
	case id != "":
		// Close does not cancel a plan being applied (one half applied
		// is worse than a shutdown a little later): the daemon waits.
		ctx, end, err := s.beginOp(r, "plan "+id+" being applied", false)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		defer end()
		rec, err := p.Apply(ctx, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, rec)
	case r.Method == http.MethodPost:
		rec, err := p.Plan(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, rec)
	default:
		recs, err := p.Plans(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, orEmpty(recs))
	}
}

// securityHeaders sets headers every answer carries: no framing, no MIME
// sniffing, and a content policy that allows the dashboard's own scripts only.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		h.ServeHTTP(w, r)
	})
}

func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
