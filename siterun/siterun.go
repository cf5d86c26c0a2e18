// Package siterun brings a site up on its platform: it launches every
// instance of the site file, puts the in- and out-proxies the file declares
// on their paths, and tears it all down again. It also hands the
// experimenter what it needs to study one instance: the instance, a sandbox
// host, and the instance's proxies.
package siterun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/experiment"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/manager/planner"
	"github.com/justrunit/justrunit/platform/local"
	"github.com/justrunit/justrunit/proxy/httpproxy"
	"github.com/justrunit/justrunit/site"
)

// DefaultReadyTimeout bounds the wait for a launched instance to accept
// connections.
const DefaultReadyTimeout = 30 * time.Second

// Options configure Up.
type Options struct {
	// StateDir is where the platform keeps its files. Required.
	StateDir string
	// ReadyTimeout bounds the wait for each instance; 0 is DefaultReadyTimeout.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
	// Metrics, when set, receives the proxies' figures: on-line response
	// times, copies sent and dropped, and (per experiment) the out-proxy's
	// match rate.
	Metrics *metrics.Set
}

// Site is a running site.
type Site struct {
	File     *site.Site
	Platform justrunit.Platform
	log      *slog.Logger

	metrics   *metrics.Set
	mu        sync.Mutex
	online    chan struct{}            // see lockOnline; made under mu
	sandboxes map[string]chan struct{} // see claimSandbox; under mu
	leftovers map[string]closer        // by sandbox host, see closeRunner; under mu
	rates     map[string]int           // studies exporting each target's match rate, see PrepareStudy; under mu
	launched  []string
	in        map[string]*httpproxy.InProxy
	out       map[string]*httpproxy.OutProxy
	closePlat func() error

	// unrestored holds, by on-line instance, the allocation a fidelity
	// check could not restore (see setBack); under mu.
	unrestored map[string]justrunit.Allocation
}

// ErrSiteChanged means a plan was made from a site that has changed since:
// applied now, its steps would not do what it planned.
var ErrSiteChanged = errors.New("the site changed since the plan was made")

// ApplyPlan applies plan (see planner.Apply) to the site's platform, one
// plan at a time and never during a fidelity check (lockOnline): a plan's
// steps are ordered so that no host runs over capacity between them, from
// the placements it was made from, and steps of another plan in between
// would upset that order; a check restores the allocation it found. from
// is the site's planner.State when the plan was made: if the site is no
// longer in it, nothing is applied and the error wraps ErrSiteChanged.
// The daemon's plans and the manager's go through here. An allocation the
// plan sets replaces the one a failed check's restore left owed (setBack).
func (s *Site) ApplyPlan(ctx context.Context, plan planner.Plan, from string) ([]planner.Step, error) {
	unlock, err := s.lockOnline(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return nil, err
	}
	if now := planner.State(hosts, insts); now != from {
		return nil, fmt.Errorf("%w (%s)", ErrSiteChanged, firstDifference(from, now))
	}
	done, err := planner.Apply(ctx, plan, s.Platform)
	for _, st := range done {
		if st.Kind == planner.SetAllocation {
			s.forgetUnrestored(st.Instance)
		}
	}
	return done, err
}

// firstDifference names the first line of states a and b (see
// planner.State) that differs.
func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("then %q, now %q", x, y)
		}
	}
	return "no difference"
}

// lockOnline waits until no fidelity check (Verify) or plan (ApplyPlan)
// changes the site's on-line instances, and holds them until unlock: a
// check reads an instance's allocation, changes it and restores what it
// read, which a change in between would undo, or have the check restore a
// stale allocation for good. Whoever holds a sandbox host claims it first
// (a paired check, the manager applying a plan with its study open): no
// holder of this lock waits for a sandbox host.
func (s *Site) lockOnline(ctx context.Context) (unlock func(), err error) {
	s.mu.Lock()
	if s.online == nil {
		s.online = make(chan struct{}, 1)
	}
	c := s.online
	s.mu.Unlock()
	select {
	case c <- struct{}{}:
	default:
		s.log.Info("on-line instances being changed by a fidelity check or a plan; waiting")
		select {
		case c <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the fidelity check or plan changing the on-line instances: %w", context.Cause(ctx))
		}
	}
	var once sync.Once
	return func() { once.Do(func() { <-c }) }, nil
}

// sandboxNames returns the names of cfg's sandbox hosts, sorted.
func sandboxNames(cfg experiment.Config) []string {
	if cfg.Classes == nil {
		return []string{cfg.Sandbox.Name}
	}
	var names []string
	for _, ch := range cfg.Classes {
		names = append(names, ch.Host.Name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// claimExperiment returns ExperimentConfig(ctx, id, space, sandbox) once
// it holds its sandbox hosts (claimSandboxes): read after any wait for
// another study, the target's allocation and host are those the clones
// start from. The clones are fed and answered by a clone side of their own
// (startCloneSide). release stops it and gives the hosts back.
func (s *Site) claimExperiment(ctx context.Context, id string, space justrunit.Space, sandbox string) (cfg experiment.Config, release func(), err error) {
	first, err := s.ExperimentConfig(ctx, id, space, sandbox)
	if err != nil {
		return cfg, nil, err
	}
	if release, err = s.claimSandboxes(ctx, first); err != nil {
		return cfg, nil, err
	}
	cfg, err = s.ExperimentConfig(ctx, id, space, sandbox)
	if then, now := sandboxNames(first), sandboxNames(cfg); err == nil && !slices.Equal(then, now) {
		err = fmt.Errorf("%w: the sandbox hosts to use changed while waiting for them (then %s, now %s); try again",
			ErrSiteChanged, strings.Join(then, ","), strings.Join(now, ","))
	}
	if err != nil {
		release()
		return experiment.Config{}, nil, err
	}
	stop, err := s.startCloneSide(ctx, id, &cfg)
	if err != nil {
		release()
		return experiment.Config{}, nil, err
	}
	hosts := release
	return cfg, func() { stop(); hosts() }, nil
}

// claimSandboxes claims the sandbox hosts of cfg (claimSandbox), in the
// order of their names so that two studies claiming the same hosts cannot
// each wait for the other. release gives them all back.
func (s *Site) claimSandboxes(ctx context.Context, cfg experiment.Config) (release func(), err error) {
	names := sandboxNames(cfg)
	var releases []func()
	release = func() {
		for _, r := range slices.Backward(releases) {
			r()
		}
	}
	for _, n := range names {
		r, err := s.claimSandbox(ctx, n)
		if err != nil {
			release()
			return nil, err
		}
		releases = append(releases, r)
	}
	return release, nil
}

// claimSandbox waits until no other study or paired check of this site
// uses sandbox host name, and claims it: clones sharing a sandbox's CPUs
// would measure each other's load. What an earlier study could not remove
// from the host (leave) is removed first; if it still cannot be, the
// claim fails. The daemon's studies, the manager's and paired checks all
// come through here (claimSandboxes). release gives it back; calling it
// again does nothing.
func (s *Site) claimSandbox(ctx context.Context, name string) (release func(), err error) {
	s.mu.Lock()
	if s.sandboxes == nil {
		s.sandboxes = map[string]chan struct{}{}
	}
	c := s.sandboxes[name]
	if c == nil {
		c = make(chan struct{}, 1)
		s.sandboxes[name] = c
	}
	s.mu.Unlock()
	select {
	case c <- struct{}{}:
	default:
		s.log.Info("sandbox host busy with another study or check; waiting", "sandbox", name)
		select {
		case c <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for sandbox host %s, which another study or check uses: %w", name, context.Cause(ctx))
		}
	}
	var once sync.Once
	release = func() { once.Do(func() { <-c }) }
	if err := s.removeLeftovers(ctx, name); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// closer is what closeRunner closes: an *experiment.Runner.
type closer interface {
	Close(ctx context.Context) error
}

// closeRunner closes r, whose clones run on sandbox hosts names, and gives
// the hosts back (release); what r cannot remove it leaves on them.
func (s *Site) closeRunner(ctx context.Context, r closer, names []string, release func()) error {
	defer release()
	if err := r.Close(ctx); err != nil {
		return s.leave(r, names, err)
	}
	return nil
}

// openRunner opens an experiment.Runner of n slots on cfg, whose sandbox
// hosts the caller claimed; on error it gives them back (release), and
// leaves on them what the failed Open could not remove.
func (s *Site) openRunner(ctx context.Context, cfg experiment.Config, n int, release func()) (*experiment.Runner, error) {
	r, err := experiment.Open(ctx, cfg, n)
	if err == nil {
		return r, nil
	}
	if r != nil {
		err = s.leave(r, sandboxNames(cfg), err)
	}
	release()
	return nil, err
}

// leave marks sandbox hosts names as holding what r could not remove (r
// keeps it, and its Close tries again; err says what it is): the next claim
// of one of them removes it first (claimSandbox), so that no study
// measures next to it. It returns err, saying so.
func (s *Site) leave(r closer, names []string, err error) error {
	s.mu.Lock()
	if s.leftovers == nil {
		s.leftovers = map[string]closer{}
	}
	for _, n := range names {
		s.leftovers[n] = r
	}
	s.mu.Unlock()
	return fmt.Errorf("%w; what is left stays on sandbox host %s until the next study or check there removes it, or the site is stopped and \"justrunit platform gc\" run",
		err, strings.Join(names, ", "))
}

// removeLeftovers removes what an earlier study left on sandbox host name
// (leave), if anything.
func (s *Site) removeLeftovers(ctx context.Context, name string) error {
	s.mu.Lock()
	r := s.leftovers[name]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	s.log.Info("removing the clones an earlier study or check left on the sandbox host", "sandbox", name)
	if err := r.Close(ctx); err != nil {
		return fmt.Errorf("sandbox host %s still holds what an earlier study or check could not remove: %w; stop the site and run \"justrunit platform gc\"", name, err)
	}
	s.mu.Lock()
	for n, x := range s.leftovers {
		if x == r { // r removed all it had, on every host
			delete(s.leftovers, n)
		}
	}
	s.mu.Unlock()
	return nil
}

// Up launches the site: per service, the last tier first (so that each
// tier's next tier is listening when it starts), each instance's out-proxy,
// the instance, and then its in-proxy. On error everything started is
// stopped again.
func Up(ctx context.Context, f *site.Site, opts Options) (*Site, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if opts.StateDir == "" {
		return nil, justrunit.Invalid("state_dir", nil, "required")
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := prio.SetNice(ProxyNice); err != nil {
		log.Warn("cannot raise the priority of the proxies' process; clones may slow the on-line path", "err", err)
	}
	p, closePlat, err := newPlatform(f, opts, log)
	if err != nil {
		return nil, err
	}
	// What a crashed or killed run of this state directory left behind
	// (instances still serving on the site's ports, clones, namespaces,
	// NAT rules) goes first: "platform gc" at every start.
	if c, ok := p.(justrunit.Cleaner); ok {
		if err := c.Cleanup(ctx); err != nil {
			return nil, errors.Join(fmt.Errorf("remove what an earlier run left behind: %w (see justrunit platform gc)", err), closePlat())
		}
	}
	s := &Site{File: f, Platform: p, log: log, metrics: opts.Metrics, in: map[string]*httpproxy.InProxy{}, out: map[string]*httpproxy.OutProxy{}, closePlat: closePlat}
	if err := s.up(ctx, opts); err != nil {
		return nil, errors.Join(err, s.Close(context.WithoutCancel(ctx)))
	}
	s.pinProxies()
	return s, nil
}

// newPlatform makes the site's platform. The local platform is built
// directly so that the site's cpusets and clone settings reach it; other
// platforms get the site's hosts and their cpusets through
// justrunit.PlatformConfig.
func newPlatform(f *site.Site, opts Options, log *slog.Logger) (justrunit.Platform, func() error, error) {
	if f.Platform != "local" {
		p, err := justrunit.NewPlatform(f.Platform, platformConfig(f, opts, log))
		if err != nil {
			return nil, nil, err
		}
		closer := func() error { return nil }
		if c, ok := p.(interface{ Close() error }); ok {
			closer = c.Close
		}
		return p, closer, nil
	}
	// Frequencies are emulated relative to this machine's clock (the local
	// platform's default reference): a class's freq_ghz is what its hosts
	// imitate, so classes compare with each other on one machine.
	cfg := local.Config{Logger: log, StateDir: opts.StateDir, ColdClones: f.Clones == site.ClonesCold, LiveClones: f.Clones == site.ClonesLive, IdleClones: f.CloneClass == site.CloneClassIdle}
	hosts := f.PlatformHosts()
	for i, h := range f.Hosts {
		cfg.Hosts = append(cfg.Hosts, local.HostConfig{Host: hosts[i], CPUs: h.CPUs})
	}
	p, err := local.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return p, p.Close, nil
}

// platformConfig is what a registered platform receives for site f: its
// hosts and, per host, the cpuset the site file gives it.
func platformConfig(f *site.Site, opts Options, log *slog.Logger) justrunit.PlatformConfig {
	c := justrunit.PlatformConfig{Logger: log, StateDir: opts.StateDir, Hosts: f.PlatformHosts()}
	for _, h := range f.Hosts {
		if h.CPUs != "" {
			if c.HostCPUs == nil {
				c.HostCPUs = map[string]string{}
			}
			c.HostCPUs[h.Name] = h.CPUs
		}
	}
	return c
}

func (s *Site) up(ctx context.Context, opts Options) error {
	launcher, ok := s.Platform.(justrunit.Launcher)
	if !ok {
		return fmt.Errorf("platform %s: %w: it cannot launch instances", s.Platform.Name(), justrunit.ErrUnsupported)
	}
	for _, svc := range s.File.Services {
		for _, tier := range slices.Backward(svc.Tiers) {
			for _, in := range tier.Instances {
				if err := s.launch(ctx, launcher, svc.Name, tier.Name, in, opts); err != nil {
					return fmt.Errorf("service %s tier %s: %w", svc.Name, tier.Name, err)
				}
			}
		}
	}
	return nil
}

func (s *Site) launch(ctx context.Context, l justrunit.Launcher, service, tier string, in site.Instance, opts Options) error {
	if op := in.OutProxy; op != nil {
		masks, err := op.Masks()
		if err != nil {
			return fmt.Errorf("out-proxy of %s: %w", in.ID, err)
		}
		p, err := httpproxy.NewOutProxy(httpproxy.OutConfig{
			Upstream:    &url.URL{Scheme: "http", Host: op.Next},
			Masks:       masks,
			ReuseReads:  true,
			PassThrough: op.PassThrough,
			StandIn:     op.StandIn,
			Logger:      s.log.With("proxy", "out", "instance", in.ID),
		})
		if err != nil {
			return fmt.Errorf("out-proxy of %s: %w", in.ID, err)
		}
		if _, _, err := p.Start(ctx, op.Listen, ""); err != nil {
			return fmt.Errorf("out-proxy of %s: %w", in.ID, err)
		}
		s.mu.Lock()
		s.out[in.ID] = p
		s.mu.Unlock()
	}
	spec, err := s.File.Spec(in.ID)
	if err != nil {
		return err
	}
	if _, err := l.Launch(ctx, spec); err != nil {
		return fmt.Errorf("launch %s: %w", in.ID, err)
	}
	s.mu.Lock()
	s.launched = append(s.launched, in.ID)
	s.mu.Unlock()
	if err := waitListening(ctx, in.Addr, opts.ReadyTimeout); err != nil {
		return fmt.Errorf("instance %s: %w", in.ID, err)
	}
	s.log.Info("instance up", "instance", in.ID, "addr", in.Addr, "allocation", spec.Alloc)
	if in.InProxy != nil {
		cfg := httpproxy.InConfig{
			Online:   &url.URL{Scheme: "http", Host: in.Addr},
			Logger:   s.log.With("proxy", "in", "instance", in.ID),
			CloneLag: in.Lag(),
		}
		if m := opts.Metrics; m != nil {
			rt := m.ServiceResponseTime.WithLabelValues(service, tier)
			sent, dropped := m.ProxyCopiesSent.WithLabelValues(service, in.ID), m.ProxyCopiesDropped.WithLabelValues(service, in.ID)
			cfg.ObserveOnline = func(d time.Duration, ok bool) {
				if ok {
					rt.Observe(d.Seconds())
				}
			}
			cfg.ObserveCopy = func(ok bool) {
				if ok {
					sent.Inc()
				} else {
					dropped.Inc()
				}
			}
		}
		p, err := httpproxy.NewInProxy(cfg)
		if err != nil {
			return fmt.Errorf("in-proxy of %s: %w", in.ID, err)
		}
		if _, err := p.Start(ctx, in.InProxy.Listen); err != nil {
			return fmt.Errorf("in-proxy of %s: %w", in.ID, err)
		}
		s.mu.Lock()
		s.in[in.ID] = p
		s.mu.Unlock()
	}
	return nil
}

// waitListening polls addr until it accepts a TCP connection, for at most
// timeout. When ctx ends first, the error wraps its cause (a Ctrl-C is not
// a readiness timeout).
func waitListening(ctx context.Context, addr string, timeout time.Duration) error {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(tctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-tctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("wait for %s to listen: %w", addr, context.Cause(ctx))
			}
			return fmt.Errorf("not listening on %s after %v: %w", addr, timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// InProxy returns the in-proxy in front of instance id.
func (s *Site) InProxy(id string) (*httpproxy.InProxy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.in[id]
	return p, ok
}

// OutProxy returns the out-proxy behind instance id.
func (s *Site) OutProxy(id string) (*httpproxy.OutProxy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.out[id]
	return p, ok
}

// ExperimentConfig returns the experimenter's configuration for studying
// instance id over space: the instance as the platform runs it, the
// sandbox host (the named one, or the first powered-on one when sandbox is
// empty; with a hostclass parameter, the first powered-on sandbox host of
// each of its classes, with the class's frequency, and no sandbox may be
// named), and the instance's proxies. Window is left for the caller.
func (s *Site) ExperimentConfig(ctx context.Context, id string, space justrunit.Space, sandbox string) (experiment.Config, error) {
	in, _, _, err := s.File.Instance(id)
	if err != nil {
		return experiment.Config{}, justrunit.Invalid("target", id, "no such instance in the site")
	}
	insts, err := s.Platform.Instances(ctx)
	if err != nil {
		return experiment.Config{}, err
	}
	i := slices.IndexFunc(insts, func(x justrunit.Instance) bool { return x.ID == id })
	if i < 0 {
		return experiment.Config{}, fmt.Errorf("instance %s: %w on the platform", id, justrunit.ErrNotFound)
	}
	hosts, err := s.Platform.Hosts(ctx)
	if err != nil {
		return experiment.Config{}, err
	}
	cfg := experiment.Config{Platform: s.Platform, Target: insts[i], Space: space, Logger: s.log}
	if k := space.Param("hostclass"); k >= 0 {
		if sandbox != "" {
			return experiment.Config{}, justrunit.Invalid("sandbox", sandbox, "a study over hostclass runs on a sandbox host of each class; name none")
		}
		cfg.Classes = map[string]experiment.ClassHost{}
		for _, label := range space.Params[k].Labels {
			h := slices.IndexFunc(hosts, func(h justrunit.Host) bool { return h.Sandbox && h.On && h.Class == label })
			if h < 0 {
				return experiment.Config{}, justrunit.Invalid(fmt.Sprintf("parameters[%d]", k), label, "no powered-on sandbox host of class %s in the site", label)
			}
			cfg.Classes[label] = experiment.ClassHost{Host: hosts[h], FreqGHz: s.File.Classes[label].FreqGHz}
		}
	} else {
		h := slices.IndexFunc(hosts, func(h justrunit.Host) bool { return h.Sandbox && h.On && (sandbox == "" || h.Name == sandbox) })
		if h < 0 {
			if sandbox != "" {
				return experiment.Config{}, justrunit.Invalid("sandbox", sandbox, "not a powered-on sandbox host of the site")
			}
			return experiment.Config{}, justrunit.Invalid("hosts", nil, "no powered-on sandbox host")
		}
		cfg.Sandbox = hosts[h]
	}
	feed, ok := s.InProxy(id)
	if !ok {
		return experiment.Config{}, justrunit.Invalid("target", id, "has no in_proxy in the site file: nothing can copy its live traffic")
	}
	cfg.Feed = feed
	if out, ok := s.OutProxy(id); ok {
		cfg.Replay, cfg.NextTier = out, in.OutProxy.Listen
	}
	return cfg, nil
}

// Close removes what studies left on the sandbox hosts (leave), stops the
// proxies, destroys every launched instance and closes the platform. It is
// safe to call more than once.
func (s *Site) Close(ctx context.Context) error {
	s.mu.Lock()
	in, out, launched := s.in, s.out, s.launched
	s.in, s.out, s.launched = map[string]*httpproxy.InProxy{}, map[string]*httpproxy.OutProxy{}, nil
	closePlat := s.closePlat
	s.closePlat = nil
	var left []closer
	for _, r := range s.leftovers {
		if !slices.Contains(left, r) {
			left = append(left, r)
		}
	}
	s.leftovers = nil
	s.mu.Unlock()
	s.unpinProxies()
	var errs []error
	for _, r := range left {
		errs = append(errs, r.Close(ctx))
	}
	for _, p := range in {
		errs = append(errs, p.Close())
	}
	for _, id := range slices.Backward(launched) {
		if err := s.Platform.Destroy(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("destroy %s: %w", id, err))
		}
	}
	for _, p := range out {
		errs = append(errs, p.Close())
	}
	if closePlat != nil {
		errs = append(errs, closePlat())
	}
	return errors.Join(errs...)
}
