package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
	"github.com/justrunit/justrunit/internal/yamlfile"
)

// studyFile is the YAML form of a study, which "study run --study" reads.
type studyFile struct {
	// Name is a label for people; optional.
	Name string `yaml:"name"`
	// Target is the ID of the instance to study, as the site file names
	// it (its instances' id), e.g. "app0".
	Target string `yaml:"target"`
	// Parameters are written like the --param flag: "cpu=20..100 step 10",
	// "freq=1.2,1.8,2.4", "hostclass=std,fast".
	Parameters []string `yaml:"parameters"`
	// Metrics are the matrix's columns; default throughput, rt_mean, rt_p95,
	// energy_per_request.
	Metrics []string `yaml:"metrics"`
	// SLA is "METRIC<=MAX" or, for throughput, "METRIC>=MIN", e.g.
	// "rt_p95<=50"; optional.
	SLA string `yaml:"sla"`
	// TimeBound is how long the study may run experiments, e.g. "10m". It
	// is charged each experiment's warm_up + window: "5m" with experiments
	// of 10s + 50s runs 5 experiments on each slot (more when windows end
	// early). What each takes beyond that (setting its allocation, checking
	// the clone, storing what it measured) is not charged, and may run the
	// study past its bound by up to a tenth of it (30s here); beyond that it
	// costs experiments.
	TimeBound string `yaml:"time_bound"`
	// WarmUp and Window make one experiment, e.g. "10s" and "30s".
	WarmUp string `yaml:"warm_up"`
	Window string `yaml:"window"`
	// Slots is the number of experiments run at once (parallel clones).
	Slots int `yaml:"slots"`
	// Strategy is the driver: grid, adaptive or sla.
	Strategy string `yaml:"strategy"`
	// Interpolator fills the cells not measured: linear or gp.
	Interpolator string `yaml:"interpolator"`
	// CheckThreshold is the relative error above which the checker alerts.
	CheckThreshold float64 `yaml:"check_threshold"`
	// MinSamples is the fewest successful responses a window needs to be a
	// measurement (default 100, at least 60): lower it, or lengthen the
	// window, for a service with little traffic.
	MinSamples int64 `yaml:"min_samples"`
}

// Study defaults, used when neither the file nor a flag sets a value.
const (
	defaultWarmUp         = 10 * time.Second
	defaultWindow         = 30 * time.Second
	defaultSlots          = 1
	defaultCheckThreshold = 0.1
)

// loadStudyFile reads and decodes a study file; unknown fields are errors,
// and so is a file with nothing in it.
func loadStudyFile(path string) (*studyFile, *yamlfile.File, error) {
	var f studyFile
	yf, err := yamlfile.Load(path, &f)
	if errors.Is(err, io.EOF) { // no YAML document: empty, or comments only
		return nil, nil, categoryf(justrunit.ErrInvalid, "%s: the study file is empty; it needs at least target, parameters and time_bound", path)
	}
	if err != nil {
		return nil, nil, err
	}
	return &f, yf, nil
}

// study converts the file into a validated study; errors name the file,
// line and field.
func (f *studyFile) study(yf *yamlfile.File) (*justrunit.Study, error) {
	st, err := f.build()
	if err == nil {
		st.FillMetrics()
		err = st.Validate()
	}
	if err == nil {
		err = driver.CheckStudy(st)
	}
	if err != nil {
		return nil, yf.Locate(err)
	}
	return st, nil
}

func (f *studyFile) build() (*justrunit.Study, error) {
	st := &justrunit.Study{
		Name:           f.Name,
		Target:         f.Target,
		Slots:          f.Slots,
		Strategy:       f.Strategy,
		Interpolator:   f.Interpolator,
		CheckThreshold: f.CheckThreshold,
		MinSamples:     f.MinSamples,
		WarmUp:         justrunit.Duration(defaultWarmUp),
		Window:         justrunit.Duration(defaultWindow),
	}
	if st.Slots == 0 {
		st.Slots = defaultSlots
	}
	if st.CheckThreshold == 0 {
		st.CheckThreshold = defaultCheckThreshold
	}
	var params []justrunit.Parameter
	for i, s := range f.Parameters {
		p, err := justrunit.ParseParameter(s)
		if err != nil {
			return nil, yamlfile.Rename(err, fmt.Sprintf("parameters[%d]", i))
		}
		params = append(params, p)
	}
	st.Space = justrunit.Space{Params: params}
	for i, s := range f.Metrics {
		m, err := justrunit.ParseMetric(s)
		if err != nil {
			return nil, yamlfile.Rename(err, fmt.Sprintf("metrics[%d]", i))
		}
		st.Metrics = append(st.Metrics, m)
	}
	if f.SLA != "" {
		sla, err := justrunit.ParseSLA(f.SLA)
		if err != nil {
			return nil, yamlfile.Rename(err, "sla")
		}
		st.SLA = &sla
	}
	for _, d := range []struct {
		field string
		in    string
		out   *justrunit.Duration
	}{{"time_bound", f.TimeBound, &st.TimeBound}, {"warm_up", f.WarmUp, &st.WarmUp}, {"window", f.Window, &st.Window}} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil {
			return nil, justrunit.Invalid(d.field, d.in, "not a duration; write e.g. 30s or 10m")
		}
		*d.out = justrunit.Duration(v)
	}
	if st.TimeBound == 0 {
		return nil, justrunit.Invalid("time_bound", nil, "required, e.g. 10m")
	}
	return st, nil
}
