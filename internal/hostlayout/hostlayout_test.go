package hostlayout

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMachineFreqGHz: the reference frequency is the CPU's highest clock
// where cpufreq tells it (the current one moves with the governor), else
// the one /proc/cpuinfo reports, else the default.
func TestMachineFreqGHz(t *testing.T) {
	write := func(root, name, body string) {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cpuinfo := "processor\t: 0\nmodel name\t: Some CPU\ncpu MHz\t\t: 800.000\n"
	scaled := t.TempDir()
	write(scaled, "proc/cpuinfo", cpuinfo)
	write(scaled, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "3000000\n")
	boosting := t.TempDir()
	write(boosting, "proc/cpuinfo", cpuinfo)
	write(boosting, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "4700000\n")
	write(boosting, "sys/devices/system/cpu/cpu0/cpufreq/base_frequency", "2600000\n")
	unscaled := t.TempDir()
	write(unscaled, "proc/cpuinfo", cpuinfo)
	for _, tt := range []struct {
		name, root string
		want       float64
	}{
		{"cpufreq", scaled, 3.0},
		{"cpufreq, nominal below turbo", boosting, 2.6},
		{"cpuinfo alone", unscaled, 0.8},
		{"neither", t.TempDir(), 2},
	} {
		if got := MachineFreqGHz(tt.root, 2); got != tt.want {
			t.Errorf("%s: machineFreqGHz = %g, want %g", tt.name, got, tt.want)
		}
	}
}
