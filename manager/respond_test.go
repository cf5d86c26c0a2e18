package manager

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/manager/monitor"
	"github.com/justrunit/justrunit/measure"
)

// TestStudyRange checks the cpu range of the manager's studies: from a
// step above what the target has (its host's capacity when it is
// unlimited) to what the largest on-line host offers, and no more than
// the sandbox host has free.
func TestStudyRange(t *testing.T) {
	h := func(name string, cores float64, sandbox, on bool) justrunit.Host {
		return justrunit.Host{Name: name, Cores: cores, Sandbox: sandbox, On: on}
	}
	pm1, pm2 := h("pm1", 1, false, true), h("pm2", 2, false, false)
	sb := func(cores float64) justrunit.Host { return h("sb", cores, true, true) }
	app := func(cpu float64) justrunit.Instance {
		return justrunit.Instance{ID: "app0", Host: "pm1", State: "running", Alloc: justrunit.Allocation{CPU: cpu}}
	}
	clone := func(cpu float64, state string) justrunit.Instance {
		return justrunit.Instance{ID: "web0-clone0", Host: "sb", Origin: "web0", State: state, Alloc: justrunit.Allocation{CPU: cpu}}
	}
	for _, tt := range []struct {
		name     string
		hosts    []justrunit.Host
		others   []justrunit.Instance
		target   justrunit.Instance
		from, to float64
		note     string // in the note ("" none)
		err      string // in the error
	}{
		{name: "limited, a sandbox as large", hosts: []justrunit.Host{pm1, sb(1)}, target: app(30), from: 40, to: 100},
		{name: "limited, a smaller sandbox", hosts: []justrunit.Host{pm1, sb(0.5)}, target: app(30), from: 40, to: 50,
			note: "up to the 50% sandbox host sb has free rather than the 100% an on-line host offers"},
		{name: "top on the grid", hosts: []justrunit.Host{pm1, sb(0.55)}, target: app(30), from: 40, to: 50, note: "the 55% sandbox host sb has free"},
		{name: "a clone in the sandbox", hosts: []justrunit.Host{pm1, sb(1)}, others: []justrunit.Instance{clone(60, "running")}, target: app(30), from: 40, to: 40,
			note: "the 40% sandbox host sb has free"},
		{name: "unlimited and stopped clones take nothing", hosts: []justrunit.Host{pm1, sb(1)},
			others: []justrunit.Instance{clone(0, "running"), clone(60, "exited")}, target: app(30), from: 40, to: 100},
		{name: "no room in the sandbox", hosts: []justrunit.Host{pm1, sb(1)}, others: []justrunit.Instance{clone(65, "running")}, target: app(30),
			err: "sandbox host sb has 35% of 100% free"},
		{name: "sandbox not powered", hosts: []justrunit.Host{pm1, h("sb", 0.5, true, false)}, target: app(30), from: 40, to: 100},
		{name: "larger on-line host", hosts: []justrunit.Host{pm1, pm2, sb(2)}, target: app(80), from: 90, to: 200},
		{name: "limited at the most a host offers", hosts: []justrunit.Host{pm1, sb(1)}, target: app(100), err: "app0 already has 100%; no host offers more than 100%"},
		{name: "unlimited has its host's capacity", hosts: []justrunit.Host{pm1, pm2, sb(2)}, target: app(0), from: 110, to: 200},
		{name: "unlimited on the largest host", hosts: []justrunit.Host{pm1, sb(1)}, target: app(0),
			err: "app0 is unlimited on host pm1 (100%), and no on-line host offers more"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			insts := append([]justrunit.Instance{tt.target}, tt.others...)
			r, err := studyRange(tt.hosts, insts, &insts[0], 10)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.from != tt.from || r.to != tt.to {
				t.Errorf("range %g..%g, want %g..%g", r.from, r.to, tt.from, tt.to)
			}
			if (tt.note == "") != (r.note == "") || !strings.Contains(r.note, tt.note) {
				t.Errorf("note %q, want one with %q", r.note, tt.note)
			}
			// The range parses, and its top is the experimenter's cpu.
			p, err := justrunit.ParseParameter(fmt.Sprintf("cpu=%g..%g step 10", r.from, r.to))
			if err != nil {
				t.Fatal(err)
			}
			if top := p.Values[len(p.Values)-1]; top != tt.to || (!math.IsNaN(r.sandboxFree) && top > r.sandboxFree) {
				t.Errorf("top value %g, want %g within the sandbox's %g%% free", top, tt.to, r.sandboxFree)
			}
		})
	}
}

// watched is a manager of one service, s, with an SLA of rt_mean<=50,
// and interval closes an interval of the monitor with n responses of d.
func watched(t *testing.T) (m *Manager, interval func(n int, d time.Duration)) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m = &Manager{log: log, wake: make(chan struct{}, 1), tier: map[string]tierWatch{}, recent: map[string][]tick{}, idle: map[string]int{}}
	rec := measure.NewRecorder()
	m.mon = &monitor.Monitor{Interval: time.Minute, Logger: log, OnSample: m.onSample, OnChange: m.onChange,
		Services: []monitor.Service{{Name: "s", SLA: justrunit.SLA{Metric: justrunit.RTMean, Max: 50}, Window: rec}}}
	if err := m.mon.Validate(); err != nil {
		t.Fatal(err)
	}
	return m, func(n int, d time.Duration) {
		for range n {
			rec.Record(d)
		}
		m.mon.Tick()
	}
}

// TestClearedNeedsNoResponse: a service whose violation clears before its
// response runs gets none (the study's space starts above its allocation,
// so a response would only add CPU to a service within its SLA); one still
// in violation does.
func TestClearedNeedsNoResponse(t *testing.T) {
	m, tick := watched(t)
	tick(100, 80*time.Millisecond)
	if !m.mon.Violated("s") || len(m.pending) != 1 {
		t.Fatalf("after an interval over the SLA: violated %v, pending %v; want in violation and pending", m.mon.Violated("s"), m.pending)
	}
	tick(100, 10*time.Millisecond)
	tick(100, 10*time.Millisecond) // DefaultLeave intervals within it
	if m.mon.Violated("s") {
		t.Fatal("still in violation after two intervals within the SLA")
	}
	if len(m.pending) != 0 {
		t.Errorf("pending %v after the violation cleared, want none", m.pending)
	}
	if svc, ok := m.next(); ok {
		t.Errorf("next = %q, want no response", svc)
	}

	// Queued while in violation, cleared since (the monitor's state is
	// what counts when the response's turn comes): dropped; a service in
	// violation behind it is taken.
	m, tick = watched(t)
	m.pending = []string{"s", "other"}
	if svc, ok := m.next(); ok {
		t.Errorf("next = %q, want none: neither is in violation", svc)
	}
	tick(100, 80*time.Millisecond)
	m.pending = append(m.pending, "other", "s")
	if svc, ok := m.next(); !ok || svc != "s" {
		t.Errorf("next = %q, %v; want s, in violation", svc, ok)
	}
}

// TestNewRefusesBadConfig: a figure the manager would first use at a
// response to a violation is refused by New, naming the field.
func TestNewRefusesBadConfig(t *testing.T) {
	ok := Config{Interval: time.Second, WarmUp: time.Second, Window: time.Second}
	for field, change := range map[string]func(*Config){
		"interval":        func(c *Config) { c.Interval = 0 },
		"warm_up":         func(c *Config) { c.WarmUp = -time.Second },
		"experiments":     func(c *Config) { c.Experiments = -1 },
		"step":            func(c *Config) { c.Step = -10 },
		"check_threshold": func(c *Config) { c.CheckThreshold = math.NaN() },
		"headroom":        func(c *Config) { c.Headroom = math.NaN() },
	} {
		cfg := ok
		change(&cfg)
		_, err := New(cfg)
		var inv *justrunit.FieldError
		if !errors.As(err, &inv) || inv.Field != field {
			t.Errorf("New with a bad %s = %v, want it refused naming %s", field, err, field)
		}
	}
	for _, step := range []float64{101, math.Inf(1)} {
		cfg := ok
		cfg.Step = step
		if _, err := New(cfg); !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "step") {
			t.Errorf("New with step %g = %v, want it refused", step, err)
		}
	}
	if _, err := New(Config{Interval: time.Second, Window: time.Second, CheckThreshold: -0.1}); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("New with a negative check threshold = %v, want it refused", err)
	}
}
