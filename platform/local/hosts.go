package local

import (
	"fmt"
	"math"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/hostlayout"
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

// layoutHosts validates hosts and lays them out (see hostlayout.Layout);
// no hosts gives DefaultHosts.
func layoutHosts(cfg []HostConfig, cpus []int) ([]*HostConfig, error) {
	if len(cfg) == 0 {
		cfg = DefaultHosts(len(cpus))
	}
	hs, err := hostlayout.Layout(cfg, cpus, DefaultPower)
	if err != nil {
		return nil, fmt.Errorf("local platform: %w", err)
	}
	return hs, nil
}
