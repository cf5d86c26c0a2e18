package local

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/justrunit/justrunit"
)

// DefaultPower is the power model of the default hosts: a small server.
var DefaultPower = justrunit.PowerModel{IdleWatts: 60, MaxWatts: 140}

// DefaultHosts returns the hosts used when the configuration names none:
// two on-line hosts ("pm1", "pm2", class "std") and one sandbox, each one
// core wide when the machine is small. Their cpusets come from layoutHosts;
// on a machine with fewer CPUs than hosts they share CPUs.
func DefaultHosts(ncpu int) []HostConfig {
	per := math.Max(1, math.Floor(float64(ncpu)/3))
	mk := func(name string, sandbox bool) HostConfig {
		return HostConfig{Host: justrunit.Host{Name: name, Class: "std", Cores: per, Power: DefaultPower, On: true, Sandbox: sandbox}}
	}
	hs := []HostConfig{mk("pm1", false), mk("pm2", false), mk("sandbox", true)}
	if ncpu == 2 {
		// pm1 on CPU 0, pm2 and the sandbox on CPU 1: the sandbox's
		// experiments then never compete with pm1's on-line instances.
		hs[0].CPUs, hs[1].CPUs, hs[2].CPUs = "0", "1", "1"
	}
	return hs
}

// layoutHosts validates hosts and gives every host without a cpuset
// ceil(Cores) CPUs, consecutively over cpus, wrapping around.
func layoutHosts(cfg []HostConfig, cpus []int) ([]*HostConfig, error) {
	if len(cpus) == 0 {
		return nil, fmt.Errorf("local platform: no online CPU found")
	}
	if len(cfg) == 0 {
		cfg = DefaultHosts(len(cpus))
	}
	seen := map[string]bool{}
	next := 0
	var out []*HostConfig
	for i, h := range cfg {
		field := fmt.Sprintf("hosts[%d]", i)
		if !idRe.MatchString(h.Name) {
			return nil, justrunit.Invalid(field+".name", h.Name, "want letters, digits, '.', '_' or '-'")
		}
		if seen[h.Name] {
			return nil, justrunit.Invalid(field+".name", h.Name, "duplicate host name")
		}
		seen[h.Name] = true
		if h.Cores <= 0 {
			return nil, justrunit.Invalid(field+".cores", h.Cores, "must be > 0")
		}
		if h.Class == "" {
			h.Class = "std"
		}
		if h.Power == (justrunit.PowerModel{}) {
			h.Power = DefaultPower
		}
		if err := h.Power.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if h.CPUs == "" {
			n := int(math.Ceil(h.Cores))
			var list []string
			for k := 0; k < n; k++ {
				list = append(list, strconv.Itoa(cpus[next%len(cpus)]))
				next++
			}
			h.CPUs = strings.Join(list, ",")
		} else {
			set, err := parseCPUList(h.CPUs)
			if err != nil {
				return nil, justrunit.Invalid(field+".cpus", h.CPUs, "%v", err)
			}
			online := map[int]bool{}
			for _, c := range cpus {
				online[c] = true
			}
			for _, c := range set {
				if !online[c] {
					return nil, justrunit.Invalid(field+".cpus", h.CPUs, "CPU %d is not online (online: %v)", c, cpus)
				}
			}
			if float64(len(set)) < h.Cores {
				return nil, justrunit.Invalid(field+".cores", h.Cores, "more than the %d CPUs of cpuset %s", len(set), h.CPUs)
			}
		}
		hc := h
		out = append(out, &hc)
	}
	return out, nil
}

// onlineCPUs lists the CPUs this process may run on.
func onlineCPUs() []int {
	b, err := os.ReadFile("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
	if err != nil {
		b, err = os.ReadFile("/sys/devices/system/cpu/online")
	}
	if err == nil {
		if l, err := parseCPUList(strings.TrimSpace(string(b))); err == nil && len(l) > 0 {
			return l
		}
	}
	return []int{0}
}

// parseCPUList parses "0-2,4".
func parseCPUList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("bad CPU list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("bad CPU list %q", s)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty CPU list")
	}
	return out, nil
}

// machineFreqGHz reads the clock of this machine's first CPU.
func machineFreqGHz() float64 {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return DefaultRefFreqGHz
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return math.Round(mhz/10) / 100
			}
		}
	}
	return DefaultRefFreqGHz
}
