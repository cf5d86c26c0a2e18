// Package hostlayout splits one machine into hosts: CPU partitions
// (cpusets) with a capacity in cores, a class and a power model. The local
// and qemu platforms both lay their hosts out this way.
package hostlayout

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/justrunit/justrunit"
)

// Host is a host and its cpuset.
type Host struct {
	justrunit.Host
	// CPUs is the cpuset ("0", "1-3"). Empty lays hosts out one after the
	// other over the online CPUs, wrapping around when there are fewer CPUs
	// than the hosts' cores add up to; hosts then share CPUs, and their
	// capacity (Cores) is an accounting limit, not an isolation guarantee.
	CPUs string `json:"cpus,omitempty"`
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$`)

// Layout validates hosts (names unique, cores > 0, power models, cpusets
// of online CPUs wide enough for the cores), fills in the class "std" and
// defaultPower where they are missing, and gives every host without a
// cpuset ceil(Cores) CPUs, consecutively over cpus, wrapping around.
func Layout(cfg []Host, cpus []int, defaultPower justrunit.PowerModel) ([]*Host, error) {
	if len(cpus) == 0 {
		return nil, fmt.Errorf("no online CPU found")
	}
	online := map[int]bool{}
	for _, c := range cpus {
		online[c] = true
	}
	seen := map[string]bool{}
	next := 0
	var out []*Host
	for i, h := range cfg {
		field := fmt.Sprintf("hosts[%d]", i)
		switch {
		case !nameRe.MatchString(h.Name):
			return nil, justrunit.Invalid(field+".name", h.Name, "want letters, digits, '.', '_' or '-'")
		case seen[h.Name]:
			return nil, justrunit.Invalid(field+".name", h.Name, "duplicate host name")
		case h.Cores <= 0:
			return nil, justrunit.Invalid(field+".cores", h.Cores, "must be > 0")
		}
		seen[h.Name] = true
		if h.Class == "" {
			h.Class = "std"
		}
		if h.Power == (justrunit.PowerModel{}) {
			h.Power = defaultPower
		}
		if err := h.Power.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if h.CPUs == "" {
			var list []string
			for k := 0; k < int(math.Ceil(h.Cores)); k++ {
				list = append(list, strconv.Itoa(cpus[next%len(cpus)]))
				next++
			}
			h.CPUs = strings.Join(list, ",")
		} else {
			set, err := ParseCPUList(h.CPUs)
			if err != nil {
				return nil, justrunit.Invalid(field+".cpus", h.CPUs, "%v", err)
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

// OnlineCPUs lists the CPUs this process may run on (CPU 0 when that
// cannot be read).
func OnlineCPUs() []int {
	var b []byte
	var err error
	// cgroup v1's root cpuset, v2's, then the machine's.
	for _, f := range []string{"/sys/fs/cgroup/cpuset/cpuset.effective_cpus", "/sys/fs/cgroup/cpuset.cpus.effective", "/sys/devices/system/cpu/online"} {
		if b, err = os.ReadFile(f); err == nil {
			break
		}
	}
	if err == nil {
		if l, err := ParseCPUList(strings.TrimSpace(string(b))); err == nil && len(l) > 0 {
			return l
		}
	}
	return []int{0}
}

// ParseCPUList parses a kernel CPU list such as "0-2,4".
func ParseCPUList(s string) ([]int, error) {
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

// MachineFreqGHz returns the reference clock of this machine's first CPU:
// its nominal clock (cpufreq's base_frequency) or else its highest
// (cpuinfo_max_freq), which do not move with the governor, else the clock /proc/cpuinfo reports (where nothing scales
// it, as in most virtual machines), else def. root is "/" but in tests.
func MachineFreqGHz(root string, def float64) float64 {
	// base_frequency (intel_pstate) is the nominal clock; on CPUs that
	// boost, cpuinfo_max_freq is the one-core turbo clock, above it.
	for _, f := range []string{"base_frequency", "cpuinfo_max_freq"} {
		b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/cpu0/cpufreq", f))
		if err != nil {
			continue
		}
		if khz, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64); err == nil && khz > 0 {
			return math.Round(khz/1e4) / 100
		}
	}
	f, err := os.Open(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return def
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
	return def
}
