package site

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
)

func TestLoad(t *testing.T) {
	s, err := Load("testdata/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	hosts := s.PlatformHosts()
	if len(hosts) != 3 || !hosts[0].On || hosts[1].On || !hosts[2].Sandbox || hosts[0].Power.MaxWatts != 200 {
		t.Errorf("PlatformHosts() = %+v", hosts)
	}
	spec, err := s.Spec("app0")
	if err != nil || spec.Service != "auction0" || spec.Tier != "app" || spec.Alloc.CPU != 50 {
		t.Errorf("Spec(app0) = %+v, %v", spec, err)
	}
	if _, err := s.Spec("nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("Spec(nope) error = %v, want ErrNotFound", err)
	}
	if got := s.Sandboxes(); len(got) != 1 || got[0] != "sandbox0" {
		t.Errorf("Sandboxes() = %v", got)
	}
	if s.Clones != ClonesAuto {
		t.Errorf("Clones = %q, want %q by default", s.Clones, ClonesAuto)
	}
}

// TestLoadErrors checks that each mistake is reported at its line and field.
func TestLoadErrors(t *testing.T) {
	good, err := os.ReadFile("testdata/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, from, to string
		want           []string
	}{
		{"unknown class", "{name: pm1, class: std", "{name: pm1, class: big", []string{":6:", "hosts[1].class", "unknown class"}},
		{"bad cpuset", "{name: pm0, class: std, cores: 1}", "{name: pm0, class: std, cores: 1, cpus: \"1-0\"}", []string{":5:", "hosts[0].cpus", "bad CPU list"}},
		{"cpuset too narrow", "{name: pm0, class: std, cores: 1}", "{name: pm0, class: std, cores: 2, cpus: \"0\"}", []string{":5:", "hosts[0].cores", "1 CPUs of cpuset"}},
		{"service SLA not on response times", "sla: rt_mean<=50", "sla: throughput>=900", []string{":10:", "services[0].sla", "the monitor reads response times"}},
		{"zero cores", "{name: pm0, class: std, cores: 1}", "{name: pm0, class: std, cores: 0}", []string{":5:", "hosts[0].cores"}},
		{"a billion cores", "{name: pm0, class: std, cores: 1}", "{name: pm0, class: std, cores: 1e9}", []string{":5:", "hosts[0].cores", "at most 4096"}},
		{"infinite cores", "{name: pm0, class: std, cores: 1}", "{name: pm0, class: std, cores: .inf}", []string{":5:", "hosts[0].cores"}},
		{"cpu not a number", "{cpu: 50}", "{cpu: .nan}", []string{":24:", "allocation.cpu"}},
		{"out-proxy calls itself", "next: 127.0.0.1:18383}", "next: 127.0.0.1:18282}", []string{":26:", "out_proxy.next", "own out_proxy.listen"}},
		{"out-proxy calls its instance", "next: 127.0.0.1:18383}", "next: localhost:18181}", []string{":26:", "out_proxy.next", "own addr"}},
		{"bad power model", "idle_watts: 100, max_watts: 200", "idle_watts: 300, max_watts: 200", []string{":3:", "classes.std"}},
		{"power model not a number", "idle_watts: 100, max_watts: 200", "idle_watts: .nan, max_watts: 200", []string{":3:", "classes.std", "idle_watts"}},
		{"infinite power", "idle_watts: 100, max_watts: 200", "idle_watts: 100, max_watts: .inf", []string{":3:", "classes.std", "max_watts"}},
		{"unknown host", "host: pm0\n            command: [auction, app", "host: pm9\n            command: [auction, app", []string{":21:", "services[0].tiers[1].instances[0].host", "unknown host"}},
		{"sandbox host", "host: pm0\n            command: [auction, app", "host: sandbox0\n            command: [auction, app", []string{"sandbox host runs clones only"}},
		{"cpu above capacity", "{cpu: 50}", "{cpu: 150}", []string{":24:", "allocation.cpu", "capacity"}},
		{"host overcommitted", "state_dir: /var/lib/auction0", "state_dir: /var/lib/auction0\n            allocation: {cpu: 60}", []string{":33:", "services[0].tiers[2].instances[0].allocation.cpu", "host pm0 has 50% of its 100% left"}},
		{"negative freq", "{cpu: 50}", "{cpu: 50, freq: -1}", []string{":24:", "allocation.freq"}},
		{"negative memory", "{cpu: 50}", "{cpu: 50, mem: -5}", []string{":24:", "allocation.mem"}},
		{"host off", "host: pm0\n            command: [auction, app", "host: pm1\n            command: [auction, app", []string{":21:", "services[0].tiers[1].instances[0].host", "powered off"}},
		{"duplicate id", "id: data0", "id: app0", []string{":29:", "services[0].tiers[2].instances[0].id", "duplicate instance id", "services[0].tiers[1].instances[0] has it"}},
		{"duplicate tier", "      - name: data\n", "      - name: app\n", []string{":27:", "services[0].tiers[2].name", "duplicate tier name in service auction0", "services[0].tiers[1] has it"}},
		{"duplicate service", "            addr: 127.0.0.1:18383", "            addr: 127.0.0.1:18383\n  - name: auction0\n    tiers:\n      - name: web\n        instances: []",
			[]string{":34:", "services[1].name", "duplicate service name", "services[0] has it"}},
		{"address reused", "in_proxy: {listen: 127.0.0.1:18081}", "in_proxy: {listen: 127.0.0.1:18282}", []string{"out_proxy.listen", "already used"}},
		{"unsafe pass-through", "next: 127.0.0.1:18383}", "next: 127.0.0.1:18383, pass_through: [GET, POST]}", []string{"out_proxy.pass_through[1]", "safe methods"}},
		{"bad mask regexp", "next: 127.0.0.1:18383}", "next: 127.0.0.1:18383, mask_regex: ['ts=(\\d+', 'id=\\w+']}", []string{":26:", "services[0].tiers[1].instances[0].out_proxy.mask_regex[0]", "not a regular expression"}},
		{"bad mask JSON path", "next: 127.0.0.1:18383}", "next: 127.0.0.1:18383, mask_json: [$.ts, 'items[x']}", []string{":26:", "out_proxy.mask_json[1]"}},
		{"clone lag too long", "in_proxy: {listen: 127.0.0.1:18081}", "in_proxy: {listen: 127.0.0.1:18081, clone_lag: 2m}", []string{"in_proxy.clone_lag", "30s"}},
		{"bad clone lag", "in_proxy: {listen: 127.0.0.1:18081}", "in_proxy: {listen: 127.0.0.1:18081, clone_lag: soon}", []string{"clone_lag"}},
		{"bad sla", "rt_mean<=50", "rt_mean<50", []string{":10:", "services[0].sla"}},
		{"no command", "command: [auction, data, --listen, 127.0.0.1:18383, --state-dir, /var/lib/auction0]", "command: []", []string{":31:", "command", "required"}},
		{"unknown field", "state_dir:", "statedir:", []string{"field statedir not found"}},
		{"no sandbox", "cores: 1, sandbox: true}", "cores: 1}", []string{"no sandbox host"}},
		{"unknown clone mode", "platform: local", "platform: local\nclones: warm", []string{":2:", "clones", "want auto, live or cold"}},
		{"cold clones on qemu", "platform: local", "platform: qemu\nclones: cold", []string{"clones", "always live"}},
		{"unknown clone class", "platform: local", "platform: local\nclone_class: low", []string{":2:", "clone_class", "want normal or idle"}},
		{"idle clones on qemu", "platform: local", "platform: qemu\nclone_class: idle", []string{"clone_class", "local platform's"}},
		{"SLA and no tier to study", "            in_proxy: {listen: 127.0.0.1:18081}\n", "",
			[]string{":10:", "services[0].sla", "no tier after the front one", "in_proxy"}},
		{"SLA and a bottleneck without in-proxy", "sla: rt_mean<=50\n", "sla: rt_mean<=50\n    bottleneck: data\n",
			[]string{":11:", "services[0].bottleneck", "no instance of tier data has an in_proxy"}},
		{"SLA and one tier without in-proxy", "            addr: 127.0.0.1:18383", "            addr: 127.0.0.1:18383\n  - name: solo\n    sla: rt_p95<=80\n" +
			"    tiers:\n      - name: one\n        instances: [{id: one0, host: pm0, command: [one], addr: 127.0.0.1:19000}]",
			[]string{":35:", "services[1].sla", "its one tier has no instance with an in_proxy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := strings.Replace(string(good), tt.from, tt.to, 1)
			if bad == string(good) {
				t.Fatalf("test did not change the file (%q)", tt.from)
			}
			path := filepath.Join(t.TempDir(), "site.yaml")
			if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestLoadEmpty: a site file with no YAML document says it is empty (not
// "EOF").
func TestLoadEmpty(t *testing.T) {
	for name, content := range map[string]string{"empty": "", "blank": "\n\n", "comments only": "# my site\n# to do\n"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "site.yaml")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil || !strings.Contains(err.Error(), path+": ") || !strings.Contains(err.Error(), "the file is empty") || strings.Contains(err.Error(), "EOF") {
				t.Errorf("Load of a file %s = %v, want an error naming the file and saying it is empty", name, err)
			}
			if !errors.Is(err, justrunit.ErrInvalid) {
				t.Errorf("Load of a file %s = %v, want ErrInvalid", name, err)
			}
		})
	}
}

func TestInstanceIDs(t *testing.T) {
	s, err := Load("testdata/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.InstanceIDs(), ","); got != "web0,app0,data0" {
		t.Errorf("InstanceIDs() = %s, want web0,app0,data0", got)
	}
}

func TestInstanceLag(t *testing.T) {
	zero, two := justrunit.Duration(0), justrunit.Duration(2*time.Second)
	for _, tt := range []struct {
		in   Instance
		want time.Duration
	}{
		{Instance{}, 0},
		{Instance{InProxy: &InProxy{Listen: "x"}}, 0},
		{Instance{InProxy: &InProxy{Listen: "x"}, OutProxy: &OutProxy{}}, 0},
		{Instance{InProxy: &InProxy{Listen: "x", CloneLag: &zero}, OutProxy: &OutProxy{}}, 0},
		{Instance{InProxy: &InProxy{Listen: "x", CloneLag: &two}}, 2 * time.Second},
	} {
		if got := tt.in.Lag(); got != tt.want {
			t.Errorf("Lag of %+v = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestBottleneckInstance: the manager studies the named tier, else the
// first tier after the front one with an in-proxy, else a one-tier
// service's own tier; a service with nothing to study is an error naming
// the field and the fix.
func TestBottleneckInstance(t *testing.T) {
	in := func(id string, proxied bool) Instance {
		x := Instance{ID: id}
		if proxied {
			x.InProxy = &InProxy{Listen: "127.0.0.1:0"}
		}
		return x
	}
	three := func(web, app, data bool) []Tier {
		return []Tier{{Name: "web", Instances: []Instance{in("web0", web)}},
			{Name: "app", Instances: []Instance{in("app0", false), in("app1", app)}},
			{Name: "data", Instances: []Instance{in("data0", data)}}}
	}
	for _, tt := range []struct {
		name    string
		svc     Service
		want    string
		wantErr string
	}{
		{"after the front", Service{Tiers: three(true, true, true)}, "app1", ""},
		{"skips a tier without", Service{Tiers: three(true, false, true)}, "data0", ""},
		{"named", Service{Bottleneck: "web", Tiers: three(true, true, true)}, "web0", ""},
		{"one tier", Service{Tiers: []Tier{{Name: "app", Instances: []Instance{in("a0", true)}}}}, "a0", ""},
		{"only the front", Service{Tiers: three(true, false, false)}, "", "services.s.bottleneck: no tier after the front one"},
		{"named without", Service{Bottleneck: "app", Tiers: three(true, false, true)}, "", "services.s.bottleneck: no instance of tier app has an in_proxy"},
		{"one tier without", Service{Tiers: []Tier{{Name: "app", Instances: []Instance{in("a0", false)}}}}, "", "services.s.bottleneck"},
	} {
		tt.svc.Name = "s"
		got, err := tt.svc.BottleneckInstance()
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: got %v, %v; want an error with %q", tt.name, got, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case got.ID != tt.want:
			t.Errorf("%s: studies %s, want %s", tt.name, got.ID, tt.want)
		}
	}
}

// TestExampleSite loads the site file the README's quick start uses.
func TestExampleSite(t *testing.T) {
	s, err := Load("../examples/auction/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Clones != ClonesAuto || len(s.Sandboxes()) != 1 {
		t.Errorf("clones %q, sandboxes %v; want auto and one sandbox", s.Clones, s.Sandboxes())
	}
	if s.CloneClass != CloneClassNormal {
		t.Errorf("clone class %q, want %s by default", s.CloneClass, CloneClassNormal)
	}
}

// TestOutProxyMasks checks that an out-proxy's masks in the site file make
// two calls that differ only in the masked values one key.
func TestOutProxyMasks(t *testing.T) {
	good, err := os.ReadFile("testdata/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	masked := strings.Replace(string(good), "next: 127.0.0.1:18383}", `next: 127.0.0.1:18383, mask_regex: ['ts=(\d+)'], mask_json: [$.req_id], stand_in: true}`, 1)
	path := filepath.Join(t.TempDir(), "site.yaml")
	if err := os.WriteFile(path, []byte(masked), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	op := s.Services[0].Tiers[1].Instances[0].OutProxy
	if !op.StandIn {
		t.Error("stand_in: true not read")
	}
	m, err := op.Masks()
	if err != nil {
		t.Fatal(err)
	}
	a := m.Key("POST", "/items", "ts=1700000000", []byte(`{"req_id":"a1","item":7}`))
	b := m.Key("POST", "/items", "ts=1700000042", []byte(`{"req_id":"b2","item":7}`))
	c := m.Key("POST", "/items", "ts=1700000042", []byte(`{"req_id":"b2","item":8}`))
	if a != b {
		t.Errorf("keys differ with only masked values different:\n%q\n%q", a, b)
	}
	if b == c {
		t.Errorf("keys equal with an unmasked value different: %q", c)
	}
	unmasked, err := (&OutProxy{}).Masks()
	if err != nil || !unmasked.Empty() {
		t.Errorf("masks of an out-proxy without any = %+v, %v; want none", unmasked, err)
	}
}
