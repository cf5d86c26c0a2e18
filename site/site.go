// Package site reads and validates a site file: the on-line system JustRunIt
// manages — host classes and their power models, hosts (sandbox ones marked),
// services with their tiers and instances, where the in- and out-proxies sit
// on each instance's path, and each service's SLA.
//
// A site file is YAML:
//
//	platform: local
//	classes:
//	  std: {idle_watts: 100, max_watts: 200, freq_ghz: 2.4}
//	hosts:
//	  - {name: pm0, class: std, cores: 1}
//	  - {name: pm1, class: std, cores: 1, on: false}
//	  - {name: sandbox0, class: std, cores: 1, sandbox: true}
//	services:
//	  - name: auction0
//	    sla: rt_mean<=50
//	    tiers:
//	      - name: app
//	        instances:
//	          - id: app0
//	            host: pm0
//	            command: [auction, app, --listen, 127.0.0.1:8181, --data, http://127.0.0.1:8282]
//	            addr: 127.0.0.1:8181
//	            allocation: {cpu: 50}
//	            in_proxy: {listen: 127.0.0.1:8081}
//	            out_proxy: {listen: 127.0.0.1:8282, next: 127.0.0.1:8383, mask_json: [$.request_id]}
//
// Validation errors name the file, line and field.
package site

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/hostlayout"
	"github.com/justrunit/justrunit/internal/yamlfile"
	"github.com/justrunit/justrunit/manager/monitor"
	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// Site is a validated site file.
type Site struct {
	// Platform is the default platform of instances ("local", "qemu").
	Platform string `yaml:"platform"`
	// Clones says how the local platform clones: "auto" (the default: live
	// where criu works, cold otherwise), "live" (every clone live, or the
	// site does not come up and a clone that cannot be live fails) or
	// "cold" (every clone a cold start). The qemu platform's clones are
	// always live.
	Clones string `yaml:"clones"`
	// CloneClass is the scheduling class of the local platform's clones:
	// "normal" (the default) or "idle" (SCHED_IDLE: an on-line task that
	// wakes where a clone runs takes the CPU at once; see README for what
	// it does to the clone's figures).
	CloneClass string `yaml:"clone_class"`
	// Classes are the host classes by name.
	Classes map[string]Class `yaml:"classes"`
	Hosts   []Host           `yaml:"hosts"`
	// Services are the multi-tier applications on the hosts.
	Services []Service `yaml:"services"`
}

// Clones' scheduling classes (Site.CloneClass).
const (
	CloneClassNormal = "normal"
	CloneClassIdle   = "idle"
)

// How clones are made (Site.Clones).
const (
	ClonesAuto = "auto"
	ClonesLive = "live"
	ClonesCold = "cold"
)

// Class is a kind of host hardware: its power model and, where frequency is
// emulated, its reference frequency.
type Class struct {
	IdleWatts float64 `yaml:"idle_watts"`
	MaxWatts  float64 `yaml:"max_watts"`
	// FreqGHz is the class's CPU frequency; 0 when unknown. On the local
	// platform it is emulated (CPU bandwidth scaled by freq / this
	// machine's clock), so it may not exceed this machine's clock.
	FreqGHz float64 `yaml:"freq_ghz"`
}

// Host is one host of the site.
type Host struct {
	Name  string  `yaml:"name"`
	Class string  `yaml:"class"`
	Cores float64 `yaml:"cores"`
	// CPUs is the cpuset of the host's partition on platforms that split
	// one machine into hosts ("0", "1-3"); empty lets the platform lay
	// hosts out.
	CPUs string `yaml:"cpus"`
	// MemoryMiB is the memory capacity; 0 when not accounted.
	MemoryMiB int64 `yaml:"memory_mib"`
	// On is the host's initial power state; default true.
	On *bool `yaml:"on"`
	// Sandbox hosts run clones only.
	Sandbox bool `yaml:"sandbox"`
}

// Service is a multi-tier application.
type Service struct {
	Name string `yaml:"name"`
	// SLA is the service's objective on its front tier's response time,
	// "METRIC<=VALUE" (e.g. "rt_mean<=50"). A service with one needs an
	// instance with an in_proxy in its bottleneck tier (see Bottleneck):
	// the manager studies that tier through it when the SLA is missed.
	SLA string `yaml:"sla"`
	// Bottleneck names the tier the manager studies when the SLA is
	// violated (the paper's application tier); empty: the first tier
	// whose instance has an in-proxy, after the front tier, or the front
	// tier itself in a service of one tier.
	Bottleneck string `yaml:"bottleneck"`
	Tiers      []Tier `yaml:"tiers"`
}

// BottleneckInstance returns the instance the manager studies when the
// service misses its SLA: the first instance with an in-proxy in the
// Bottleneck tier, or without one named, in the tiers after the front one
// (in the front tier when it is the only one).
func (svc *Service) BottleneckInstance() (*Instance, error) {
	for i := range svc.Tiers {
		t := &svc.Tiers[i]
		if (svc.Bottleneck != "" && t.Name != svc.Bottleneck) || (svc.Bottleneck == "" && i == 0 && len(svc.Tiers) > 1) {
			continue
		}
		for j := range t.Instances {
			if t.Instances[j].InProxy != nil {
				return &t.Instances[j], nil
			}
		}
	}
	if svc.Bottleneck != "" {
		return nil, justrunit.Invalid("services."+svc.Name+".bottleneck", svc.Bottleneck,
			"no instance of tier %s has an in_proxy to study it through: give one an in_proxy", svc.Bottleneck)
	}
	return nil, justrunit.Invalid("services."+svc.Name+".bottleneck", nil,
		"no tier after the front one has an instance with an in_proxy to study it through: give the tier to study an in_proxy, or name it here")
}

// Tier is one tier of a service.
type Tier struct {
	Name      string     `yaml:"name"`
	Instances []Instance `yaml:"instances"`
}

// Instance is one server of a tier.
type Instance struct {
	ID       string   `yaml:"id"`
	Platform string   `yaml:"platform"`
	Host     string   `yaml:"host"`
	Command  []string `yaml:"command"`
	Env      []string `yaml:"env"`
	Dir      string   `yaml:"dir"`
	StateDir string   `yaml:"state_dir"`
	// Addr is the instance's internal address (host:port).
	Addr       string     `yaml:"addr"`
	Allocation Allocation `yaml:"allocation"`
	// InProxy sits in front of the instance (the previous tier connects to
	// its listen address); without it the instance cannot be studied.
	InProxy *InProxy `yaml:"in_proxy"`
	// OutProxy sits between the instance and its next tier.
	OutProxy *OutProxy `yaml:"out_proxy"`
}

// Allocation is an instance's current resources.
type Allocation struct {
	CPU       float64 `yaml:"cpu"`
	Freq      float64 `yaml:"freq"`
	MemoryMiB int64   `yaml:"mem"`
}

// InProxy is where the in-proxy of an instance listens.
type InProxy struct {
	Listen string `yaml:"listen"`
	// CloneLag delays the copies sent to the instance's clones after the
	// on-line arrival (inter-arrival times kept; e.g. "1s"). With an
	// out-proxy it lets the on-line instance's next-tier calls be recorded
	// before a clone makes them, so that a clone faster than the on-line
	// instance is not held to its pace: without it such a clone waits for
	// the on-line instance at each next-tier call, and its response times
	// come out no better than the on-line instance's (conservative). It
	// must exceed the time the on-line instance takes to make its calls.
	// Unset or "0s": no lag.
	CloneLag *justrunit.Duration `yaml:"clone_lag"`
}

// Lag returns the clone lag the in-proxy of an instance uses.
func (in *Instance) Lag() time.Duration {
	if in.InProxy == nil || in.InProxy.CloneLag == nil {
		return 0
	}
	return time.Duration(*in.InProxy.CloneLag)
}

// OutProxy is where the out-proxy of an instance listens for the on-line
// instance's calls to the next tier, which it forwards to Next and records.
// Clones' calls are served on loopback listeners made per clone.
type OutProxy struct {
	Listen string `yaml:"listen"`
	Next   string `yaml:"next"`
	// PassThrough lists read-only methods (GET, HEAD) whose clone calls
	// that match nothing recorded go to the real next tier instead of
	// failing; it adds their load to the on-line next tier. Writes never
	// pass through.
	PassThrough []string `yaml:"pass_through"`
	// MaskRegex and MaskJSON hide values that differ between the on-line
	// instance's calls and a clone's (timestamps, generated ids, session
	// tokens) from the key a clone's call is matched by: regexps whose
	// matches (or capture groups) are masked in the target and body, and
	// JSON paths ("$.ts", "items[*].id", "$..token") masked in JSON
	// bodies. They are the proxy command's --mask-regex and --mask-json.
	MaskRegex []string `yaml:"mask_regex"`
	MaskJSON  []string `yaml:"mask_json"`
	// StandIn answers a clone's read that nothing recorded matches with
	// the latest recorded call of its route (the same kind of call about
	// another item), before any pass-through: a clone of an overloaded
	// instance, which runs ahead of it, then adds no load to the on-line
	// next tier (httpproxy.OutConfig.StandIn).
	StandIn bool `yaml:"stand_in"`
}

// Masks compiles the out-proxy's masks; Validate has checked them.
func (op *OutProxy) Masks() (httpproxy.Masks, error) {
	return httpproxy.ParseMasks(op.MaskRegex, op.MaskJSON)
}

// Load reads and validates a site file.
func Load(path string) (*Site, error) {
	var s Site
	f, err := yamlfile.Load(path, &s)
	if errors.Is(err, io.EOF) { // no YAML document at all: empty, or comments only
		return nil, fmt.Errorf("%s: %w: the file is empty; a site file names at least its classes, hosts and services (see examples/auction/site.yaml)", path, justrunit.ErrInvalid)
	}
	if err != nil {
		return nil, err
	}
	return &s, f.Locate(s.Validate())
}

// Validate checks the site and names the first bad field.
func (s *Site) Validate() error {
	if s.Platform == "" {
		s.Platform = "local"
	}
	switch s.Clones {
	case "":
		s.Clones = ClonesAuto
	case ClonesAuto, ClonesLive:
	case ClonesCold:
		if s.Platform != "local" {
			return justrunit.Invalid("clones", s.Clones, "the %s platform's clones are always live; cold clones are the local platform's", s.Platform)
		}
	default:
		return justrunit.Invalid("clones", s.Clones, "want auto, live or cold")
	}
	switch s.CloneClass {
	case "":
		s.CloneClass = CloneClassNormal
	case CloneClassNormal:
	case CloneClassIdle:
		if s.Platform != "local" {
			return justrunit.Invalid("clone_class", s.CloneClass, "the %s platform's clones run in the ordinary class; the idle class is the local platform's", s.Platform)
		}
	default:
		return justrunit.Invalid("clone_class", s.CloneClass, "want normal or idle")
	}
	for name, c := range s.Classes {
		m := justrunit.PowerModel{IdleWatts: c.IdleWatts, MaxWatts: c.MaxWatts}
		if err := m.Validate(); err != nil {
			return yamlfile.Rename(err, "classes."+name)
		}
		if c.FreqGHz < 0 {
			return justrunit.Invalid("classes."+name+".freq_ghz", c.FreqGHz, "must be ≥ 0")
		}
	}
	if len(s.Hosts) == 0 {
		return justrunit.Invalid("hosts", nil, "a site needs at least one host")
	}
	hosts := map[string]bool{}
	sandbox := false
	for i, h := range s.Hosts {
		f := fmt.Sprintf("hosts[%d]", i)
		switch {
		case h.Name == "":
			return justrunit.Invalid(f+".name", nil, "required")
		case hosts[h.Name]:
			return justrunit.Invalid(f+".name", h.Name, "duplicate host")
		case !(h.Cores > 0) || h.Cores > MaxCores:
			return justrunit.Invalid(f+".cores", h.Cores, "must be > 0 and at most %d", MaxCores)
		case h.Class == "":
			return justrunit.Invalid(f+".class", nil, "required; define classes in 'classes'")
		}
		if _, ok := s.Classes[h.Class]; !ok {
			return justrunit.Invalid(f+".class", h.Class, "unknown class; defined: %s", strings.Join(sortedKeys(s.Classes), ", "))
		}
		// Whether the CPUs are online is the platform's check, on the
		// machine it starts on.
		if h.CPUs != "" {
			set, err := hostlayout.ParseCPUList(h.CPUs)
			if err != nil {
				return justrunit.Invalid(f+".cpus", h.CPUs, "%v; want a kernel CPU list such as \"1\" or \"0-2,4\"", err)
			}
			if float64(len(set)) < h.Cores {
				return justrunit.Invalid(f+".cores", h.Cores, "more than the %d CPUs of cpuset %q", len(set), h.CPUs)
			}
		}
		hosts[h.Name] = true
		sandbox = sandbox || h.Sandbox
	}
	ids := map[string]string{}      // instance id -> its field
	booked := map[string]float64{}  // host -> CPU share of its instances so far
	services := map[string]string{} // service name -> its field
	listens := map[string]string{}
	claim := func(field, addr string) error {
		if addr == "" {
			return nil
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return justrunit.Invalid(field, addr, "want HOST:PORT")
		}
		if other, dup := listens[addr]; dup {
			return justrunit.Invalid(field, addr, "already used by %s", other)
		}
		listens[addr] = field
		return nil
	}
	for i, svc := range s.Services {
		f := fmt.Sprintf("services[%d]", i)
		if svc.Name == "" {
			return justrunit.Invalid(f+".name", nil, "required")
		}
		if first, dup := services[svc.Name]; dup {
			return justrunit.Invalid(f+".name", svc.Name, "duplicate service name: %s has it already", first)
		}
		services[svc.Name] = f
		if svc.SLA != "" {
			// A service's SLA is watched on-line, from its front tier's
			// response times.
			sla, err := justrunit.ParseSLA(svc.SLA)
			if err == nil {
				err = monitor.CheckSLA(sla)
			}
			if err != nil {
				return yamlfile.Rename(err, f+".sla")
			}
		}
		if len(svc.Tiers) == 0 {
			return justrunit.Invalid(f+".tiers", nil, "a service needs at least one tier")
		}
		if svc.Bottleneck != "" && !slices.ContainsFunc(svc.Tiers, func(t Tier) bool { return t.Name == svc.Bottleneck }) {
			return justrunit.Invalid(f+".bottleneck", svc.Bottleneck, "no such tier in the service")
		}
		tiers := map[string]string{}
		for j, t := range svc.Tiers {
			tf := fmt.Sprintf("%s.tiers[%d]", f, j)
			if t.Name == "" {
				return justrunit.Invalid(tf+".name", nil, "required")
			}
			if first, dup := tiers[t.Name]; dup {
				return justrunit.Invalid(tf+".name", t.Name, "duplicate tier name in service %s: %s has it already", svc.Name, first)
			}
			tiers[t.Name] = tf
			for k, in := range t.Instances {
				inf := fmt.Sprintf("%s.instances[%d]", tf, k)
				switch {
				case in.ID == "":
					return justrunit.Invalid(inf+".id", nil, "required")
				case ids[in.ID] != "":
					return justrunit.Invalid(inf+".id", in.ID, "duplicate instance id: %s has it already", ids[in.ID])
				case !hosts[in.Host]:
					return justrunit.Invalid(inf+".host", in.Host, "unknown host; hosts: %s", strings.Join(s.hostNames(), ", "))
				case s.host(in.Host).Sandbox:
					return justrunit.Invalid(inf+".host", in.Host, "a sandbox host runs clones only")
				case len(in.Command) == 0 || strings.TrimSpace(in.Command[0]) == "":
					return justrunit.Invalid(inf+".command", nil, "required: the program and its arguments")
				case !(in.Allocation.CPU >= 0) || in.Allocation.CPU > s.host(in.Host).Cores*100:
					return justrunit.Invalid(inf+".allocation.cpu", in.Allocation.CPU, "must be between 0 (unlimited) and the host's capacity (%g%%)", s.host(in.Host).Cores*100)
				case !(in.Allocation.Freq >= 0) || math.IsInf(in.Allocation.Freq, 0):
					return justrunit.Invalid(inf+".allocation.freq", in.Allocation.Freq, "must be a number of GHz ≥ 0 (0: the host's own)")
				case in.Allocation.MemoryMiB < 0:
					return justrunit.Invalid(inf+".allocation.mem", in.Allocation.MemoryMiB, "must be ≥ 0 MiB (0: unlimited)")
				case s.host(in.Host).On != nil && !*s.host(in.Host).On:
					return justrunit.Invalid(inf+".host", in.Host, "is powered off (on: false); place the instance on a host that is on")
				case booked[in.Host]+in.Allocation.CPU > s.host(in.Host).Cores*100+1e-9:
					return justrunit.Invalid(inf+".allocation.cpu", in.Allocation.CPU, "host %s has %g%% of its %g%% left after the instances before this one", in.Host, s.host(in.Host).Cores*100-booked[in.Host], s.host(in.Host).Cores*100)
				}
				booked[in.Host] += in.Allocation.CPU
				ids[in.ID] = inf
				if err := claim(inf+".addr", in.Addr); err != nil {
					return err
				}
				if in.Addr == "" {
					return justrunit.Invalid(inf+".addr", nil, "required: the instance's HOST:PORT")
				}
				if in.InProxy != nil {
					if in.InProxy.Listen == "" {
						return justrunit.Invalid(inf+".in_proxy.listen", nil, "required")
					}
					if err := claim(inf+".in_proxy.listen", in.InProxy.Listen); err != nil {
						return err
					}
					if l := in.InProxy.CloneLag; l != nil && (*l < 0 || time.Duration(*l) > httpproxy.MaxCloneLag) {
						return justrunit.Invalid(inf+".in_proxy.clone_lag", *l, "must be between 0s and %v (the out-proxy keeps %v of exchanges)", httpproxy.MaxCloneLag, httpproxy.DefaultWindow)
					}
				}
				if op := in.OutProxy; op != nil {
					for _, a := range []struct{ field, addr string }{{"listen", op.Listen}, {"next", op.Next}} {
						if a.addr == "" {
							return justrunit.Invalid(inf+".out_proxy."+a.field, nil, "required")
						}
						if a.field == "next" {
							for _, own := range []struct{ field, addr string }{{"out_proxy.listen", op.Listen}, {"addr", in.Addr}, {"in_proxy.listen", inProxyListen(in)}} {
								if sameAddr(a.addr, own.addr) {
									return justrunit.Invalid(inf+".out_proxy.next", a.addr, "is this instance's own %s: the out-proxy would call itself; name the next tier's address", own.field)
								}
							}
							if _, _, err := net.SplitHostPort(a.addr); err != nil {
								return justrunit.Invalid(inf+".out_proxy.next", a.addr, "want HOST:PORT")
							}
							continue
						}
						if err := claim(inf+".out_proxy."+a.field, a.addr); err != nil {
							return err
						}
					}
					if err := httpproxy.CheckPassThrough(inf+".out_proxy.pass_through", op.PassThrough); err != nil {
						return err
					}
					if _, err := op.Masks(); err != nil {
						if fe, ok := errors.AsType[*justrunit.FieldError](err); ok {
							fe.Field = inf + ".out_proxy." + fe.Field
						}
						return err
					}
				}
			}
		}
		if err := checkBottleneck(f, &svc); err != nil {
			return err
		}
	}
	if !sandbox && len(ids) > 0 {
		return justrunit.Invalid("hosts", nil, "no sandbox host: mark one host 'sandbox: true' for clones")
	}
	return nil
}

// checkBottleneck refuses a service (field f) with an SLA whose bottleneck
// tier has no instance with an in-proxy: the manager, which studies that
// tier when the SLA is missed, could not, and would refuse the site only
// when it starts.
func checkBottleneck(f string, svc *Service) error {
	if svc.SLA == "" {
		return nil
	}
	if _, err := svc.BottleneckInstance(); err == nil {
		return nil
	}
	const why = "the manager studies a service that misses its SLA through the in_proxy of an instance of its bottleneck tier"
	switch {
	case svc.Bottleneck != "":
		return justrunit.Invalid(f+".bottleneck", svc.Bottleneck, "no instance of tier %s has an in_proxy, and %s: give one an in_proxy", svc.Bottleneck, why)
	case len(svc.Tiers) == 1:
		return justrunit.Invalid(f+".sla", svc.SLA, "%s, and its one tier has no instance with an in_proxy: give one an in_proxy", why)
	default:
		return justrunit.Invalid(f+".sla", svc.SLA, "%s, and no tier after the front one has an instance with an in_proxy: give the tier to study an in_proxy, or name it in bottleneck", why)
	}
}

// MaxCores bounds a host's cores: a site file's typo must not make the
// platform lay out a billion CPUs.
const MaxCores = 4096

// inProxyListen is in's in-proxy address, "" without one.
func inProxyListen(in Instance) string {
	if in.InProxy == nil {
		return ""
	}
	return in.InProxy.Listen
}

// sameAddr reports whether HOST:PORT addresses a and b are one listener on
// this machine: the same port, and the same host or both loopback (or
// unspecified, which listens on loopback too).
func sameAddr(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	local := func(h string) bool {
		if h == "" || h == "localhost" {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
	}
	return ha == hb || (local(ha) && local(hb))
}

func (s *Site) host(name string) *Host {
	for i := range s.Hosts {
		if s.Hosts[i].Name == name {
			return &s.Hosts[i]
		}
	}
	return nil
}

func (s *Site) hostNames() []string {
	var names []string
	for _, h := range s.Hosts {
		names = append(names, h.Name)
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// PlatformHosts returns the site's hosts as the platform sees them.
func (s *Site) PlatformHosts() []justrunit.Host {
	var out []justrunit.Host
	for _, h := range s.Hosts {
		c := s.Classes[h.Class]
		out = append(out, justrunit.Host{
			Name: h.Name, Class: h.Class, Cores: h.Cores, MemoryMiB: h.MemoryMiB,
			Power:   justrunit.PowerModel{IdleWatts: c.IdleWatts, MaxWatts: c.MaxWatts},
			On:      h.On == nil || *h.On,
			Sandbox: h.Sandbox,
		})
	}
	return out
}

// Instance returns the instance with id, its service and tier.
func (s *Site) Instance(id string) (*Instance, *Service, *Tier, error) {
	for i := range s.Services {
		svc := &s.Services[i]
		for j := range svc.Tiers {
			t := &svc.Tiers[j]
			for k := range t.Instances {
				if t.Instances[k].ID == id {
					return &t.Instances[k], svc, t, nil
				}
			}
		}
	}
	return nil, nil, nil, fmt.Errorf("instance %q: %w in the site", id, justrunit.ErrNotFound)
}

// Spec returns the platform's launch spec for an instance.
func (s *Site) Spec(id string) (justrunit.InstanceSpec, error) {
	in, svc, t, err := s.Instance(id)
	if err != nil {
		return justrunit.InstanceSpec{}, err
	}
	return justrunit.InstanceSpec{
		ID: in.ID, Service: svc.Name, Tier: t.Name, Host: in.Host,
		Command: in.Command, Env: in.Env, Dir: in.Dir, StateDir: in.StateDir, Addr: in.Addr,
		Alloc: justrunit.Allocation{CPU: in.Allocation.CPU, Freq: in.Allocation.Freq, MemoryMiB: in.Allocation.MemoryMiB},
	}, nil
}

// InstanceIDs returns the ids of the site's instances in file order.
func (s *Site) InstanceIDs() []string {
	var ids []string
	for _, svc := range s.Services {
		for _, t := range svc.Tiers {
			for _, in := range t.Instances {
				ids = append(ids, in.ID)
			}
		}
	}
	return ids
}

// Sandboxes returns the names of the sandbox hosts.
func (s *Site) Sandboxes() []string {
	var names []string
	for _, h := range s.Hosts {
		if h.Sandbox {
			names = append(names, h.Name)
		}
	}
	return names
}
