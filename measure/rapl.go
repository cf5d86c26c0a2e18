package measure

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
)

// DefaultPowercapRoot is where Linux exposes RAPL energy counters.
const DefaultPowercapRoot = "/sys/class/powercap"

// raplPackage matches the top-level RAPL zones, intel-rapl:N; the subzones
// intel-rapl:N:M (core, uncore, dram) are parts of a package and would be
// counted twice. Of the top-level zones only those named package-N are
// summed: a psys zone covers the whole platform, packages included.
var raplPackage = regexp.MustCompile(`^intel-rapl:[0-9]+$`)

// RAPLMeter reads the energy counters of the CPU packages from the powercap
// sysfs tree (Intel RAPL; recent AMD CPUs expose the same tree). It measures
// whole packages: everything running on the sockets, not only the clone —
// which is what a dedicated sandbox host wants.
//
// Each counter (energy_uj, microjoules) wraps at max_energy_range_uj; one
// wrap per interval is corrected, so an interval must be shorter than a wrap
// period (about an hour at 70 W for a 2^32 µJ range; RAPL ranges are usually
// larger). Reading energy_uj needs root on kernels since 5.10
// (CVE-2020-8694).
type RAPLMeter struct {
	root    string
	domains []raplDomain
	now     func() time.Time // for tests; time.Now when nil

	started bool
	t0      time.Time
	e0      []uint64
}

// raplDomain is one package zone.
type raplDomain struct {
	dir      string // e.g. /sys/class/powercap/intel-rapl:0
	name     string // contents of name, e.g. package-0
	maxRange uint64 // max_energy_range_uj
}

var _ EnergyMeter = (*RAPLMeter)(nil)

// NewRAPLMeter finds the package zones under root (DefaultPowercapRoot when
// empty) and checks that their counters can be read. The error says why
// RAPL cannot be used ("no RAPL at ...", "... permission denied").
func NewRAPLMeter(root string) (*RAPLMeter, error) {
	if root == "" {
		root = DefaultPowercapRoot
	}
	entries, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("RAPL at %s: %w", root, err)
	}
	m := &RAPLMeter{root: root}
	for _, e := range entries {
		if !raplPackage.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		d := raplDomain{dir: dir, name: e.Name()}
		if b, err := os.ReadFile(filepath.Join(dir, "name")); err == nil {
			d.name = strings.TrimSpace(string(b))
			if !strings.HasPrefix(d.name, "package") {
				continue // psys: the whole platform, packages included
			}
		}
		if d.maxRange, err = readUint(filepath.Join(dir, "max_energy_range_uj")); err != nil {
			return nil, fmt.Errorf("RAPL at %s: %w", root, err)
		}
		if _, err := readUint(filepath.Join(dir, "energy_uj")); err != nil {
			if errors.Is(err, fs.ErrPermission) {
				return nil, fmt.Errorf("RAPL at %s not readable (needs root): %w", root, err)
			}
			return nil, fmt.Errorf("RAPL at %s: %w", root, err)
		}
		m.domains = append(m.domains, d)
	}
	if len(m.domains) == 0 {
		return nil, fmt.Errorf("no RAPL at %s", root)
	}
	sort.Slice(m.domains, func(i, j int) bool { return m.domains[i].dir < m.domains[j].dir })
	return m, nil
}

// Describe names the zones the meter sums, e.g. "package-0, package-1
// (whole packages)".
func (m *RAPLMeter) Describe() string {
	names := make([]string, len(m.domains))
	for i, d := range m.domains {
		names[i] = d.name
	}
	return strings.Join(names, ", ") + " (whole packages)"
}

func (m *RAPLMeter) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// Start implements EnergyMeter.
func (m *RAPLMeter) Start() error {
	e, err := m.read()
	if err != nil {
		return err
	}
	m.started, m.t0, m.e0 = true, m.clock(), e
	return nil
}

// Stop implements EnergyMeter. Energy.Watts is the mean power over the
// interval.
func (m *RAPLMeter) Stop(requests int64) (justrunit.Energy, error) {
	if !m.started {
		return justrunit.Energy{}, errNotStarted
	}
	m.started = false
	e1, err := m.read()
	if err != nil {
		return justrunit.Energy{}, err
	}
	elapsed := m.clock().Sub(m.t0).Seconds()
	var uj uint64
	for i, d := range m.domains {
		uj += counterDelta(m.e0[i], e1[i], d.maxRange)
	}
	e := justrunit.Energy{Joules: float64(uj) / 1e6, Source: justrunit.EnergyRAPL}
	if elapsed > 0 {
		e.Watts = e.Joules / elapsed
	}
	if requests > 0 {
		e.PerRequest = e.Joules / float64(requests)
	}
	return e, nil
}

// counterDelta is the increase of a counter from a to b that wraps to 0
// after max: when b < a it wrapped once.
func counterDelta(a, b, max uint64) uint64 {
	if b >= a {
		return b - a
	}
	return max - a + b
}

func (m *RAPLMeter) read() ([]uint64, error) {
	e := make([]uint64, len(m.domains))
	for i, d := range m.domains {
		v, err := readUint(filepath.Join(d.dir, "energy_uj"))
		if err != nil {
			return nil, fmt.Errorf("read RAPL %s: %w", d.name, err)
		}
		e[i] = v
	}
	return e, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}
