package siterun

import (
	"log/slog"
	"slices"
	"strconv"
	"testing"

	"github.com/justrunit/justrunit/internal/prio"
	"github.com/justrunit/justrunit/site"
)

// cpuSite is a site of one service whose instances run on the hosts
// named, with the hosts' cpusets as given ("" for none).
func cpuSite(hosts []site.Host, instHosts ...string) *site.Site {
	f := &site.Site{Hosts: hosts}
	var tier site.Tier
	for i, h := range instHosts {
		tier.Instances = append(tier.Instances, site.Instance{ID: string(rune('a' + i)), Host: h})
	}
	f.Services = []site.Service{{Name: "svc", Tiers: []site.Tier{tier}}}
	return f
}

func TestOnlineCPUs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []site.Host
		on    []string
		want  []int
		why   string
	}{
		{"on-line hosts and a sandbox", []site.Host{{Name: "pm1", CPUs: "0-1"}, {Name: "pm2", CPUs: "4"}, {Name: "sb", CPUs: "2-3", Sandbox: true}}, []string{"pm1", "pm2", "pm1"}, []int{0, 1, 4}, ""},
		{"an idle host is left out", []site.Host{{Name: "pm1", CPUs: "0"}, {Name: "pm2", CPUs: "1"}, {Name: "sb", CPUs: "1", Sandbox: true}}, []string{"pm1"}, []int{0}, ""},
		{"no sandbox", []site.Host{{Name: "pm1", CPUs: "0"}}, []string{"pm1"}, nil, "no sandbox host"},
		{"a sandbox without a cpuset", []site.Host{{Name: "pm1", CPUs: "0"}, {Name: "sb", Sandbox: true}}, []string{"pm1"}, nil, "sandbox host sb has no cpuset"},
		{"a host without a cpuset", []site.Host{{Name: "pm1"}, {Name: "sb", CPUs: "1", Sandbox: true}}, []string{"pm1"}, nil, "host pm1 has no cpuset"},
		{"a host sharing the sandbox's CPUs", []site.Host{{Name: "pm1", CPUs: "0-2"}, {Name: "sb", CPUs: "2-3", Sandbox: true}}, []string{"pm1"}, nil, "host pm1 shares CPUs with a sandbox host"},
		{"a malformed cpuset", []site.Host{{Name: "pm1", CPUs: "0-"}, {Name: "sb", CPUs: "1", Sandbox: true}}, []string{"pm1"}, nil, "host pm1 has no cpuset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Site{File: cpuSite(tc.hosts, tc.on...)}
			got, why := s.onlineCPUs()
			if !slices.Equal(got, tc.want) || why != tc.why {
				t.Errorf("onlineCPUs() = %v, %q; want %v, %q", got, why, tc.want, tc.why)
			}
		})
	}
}

// TestPinProxies pins the test process to one site's on-line CPUs, then to
// two sites', and checks that it gets its CPUs back when both have gone.
func TestPinProxies(t *testing.T) {
	orig, err := prio.Affinity(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(orig) < 2 {
		t.Skipf("needs 2 CPUs to run on, this process has %v", orig)
	}
	t.Cleanup(func() { _ = prio.SetAffinity(orig) })
	a, b, sb := orig[0], orig[1], orig[len(orig)-1]+1 // the sandbox's CPU need not be the process's
	host := func(name string, cpu int, sandbox bool) site.Host {
		return site.Host{Name: name, CPUs: strconv.Itoa(cpu), Sandbox: sandbox}
	}
	log := slog.New(slog.DiscardHandler)
	s1 := &Site{File: cpuSite([]site.Host{host("pm1", a, false), host("sb", sb, true)}, "pm1"), log: log}
	s2 := &Site{File: cpuSite([]site.Host{host("pm1", b, false), host("sb", sb, true)}, "pm1"), log: log}
	check := func(when string, want []int) {
		t.Helper()
		got, err := prio.Affinity(0)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the process runs on %v, want %v", when, got, want)
		}
	}
	s1.pinProxies()
	check("one site up", []int{a})
	s2.pinProxies()
	check("two sites up", []int{a, b})
	s1.unpinProxies()
	check("the first gone", []int{b})
	s1.unpinProxies() // twice: nothing
	check("the first gone twice", []int{b})
	s2.unpinProxies()
	check("both gone", orig)
}
