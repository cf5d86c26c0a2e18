package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/justrunit/justrunit"
)

// studyFile is the YAML form of a study. Every field can also be given as a
// flag of "study run"; flags override the file.
type studyFile struct {
	// Name is a label for people; optional.
	Name string `yaml:"name"`
	// Target is the instance to study, e.g. "auction0/app".
	Target string `yaml:"target"`
	// Parameters are written like the --param flag: "cpu=20..100 step 10",
	// "freq=1.2,1.8,2.4", "hostclass=std,fast".
	Parameters []string `yaml:"parameters"`
	// Metrics are the matrix's columns; default throughput, rt_mean, rt_p95,
	// energy_per_request.
	Metrics []string `yaml:"metrics"`
	// SLA is "METRIC<=VALUE", e.g. "rt_p95<=50"; optional.
	SLA string `yaml:"sla"`
	// TimeBound is the longest the study may run experiments, e.g. "10m".
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
}

// Study defaults, used when neither the file nor a flag sets a value.
const (
	defaultWarmUp         = 10 * time.Second
	defaultWindow         = 30 * time.Second
	defaultSlots          = 1
	defaultCheckThreshold = 0.1
)

// loadStudyFile reads and decodes a study file; errors name the file, line
// and field. Unknown fields are errors (a typo must not be ignored).
func loadStudyFile(path string) (*studyFile, *yaml.Node, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f studyFile
	if err := dec.Decode(&f); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, &root, nil
}

// study converts the file into a validated study. A validation error is
// prefixed with path:line when the field's line is known.
func (f *studyFile) study(path string, root *yaml.Node) (*justrunit.Study, error) {
	st, err := f.build()
	if err == nil {
		err = st.Validate()
	}
	if err != nil {
		return nil, locate(path, root, err)
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
			return nil, renameField(err, fmt.Sprintf("parameters[%d]", i))
		}
		params = append(params, p)
	}
	st.Space = justrunit.Space{Params: params}
	for i, s := range f.Metrics {
		m, err := justrunit.ParseMetric(s)
		if err != nil {
			return nil, renameField(err, fmt.Sprintf("metrics[%d]", i))
		}
		st.Metrics = append(st.Metrics, m)
	}
	if f.SLA != "" {
		sla, err := justrunit.ParseSLA(f.SLA)
		if err != nil {
			return nil, renameField(err, "sla")
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

// renameField puts a FieldError under the file's field name (the parser
// names "parameter cpu.step"; the file calls it "parameters[0]").
func renameField(err error, field string) error {
	var fe *justrunit.FieldError
	if errors.As(err, &fe) {
		return &justrunit.FieldError{Field: field + " (" + fe.Field + ")", Value: fe.Value, Msg: fe.Msg}
	}
	return fmt.Errorf("%s: %w", field, err)
}

// locate prefixes a FieldError with path:line of its field in the YAML.
func locate(path string, root *yaml.Node, err error) error {
	var fe *justrunit.FieldError
	if !errors.As(err, &fe) {
		return fmt.Errorf("%s: %w", path, err)
	}
	if line := fieldLine(root, fe.Field); line > 0 {
		return fmt.Errorf("%s:%d: %w", path, line, err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// fieldLine finds the line of a field path like "parameters[1] (...)",
// "sla.max" or "time_bound" in a YAML document; 0 when not found. The
// longest prefix of the path that exists gives the line.
func fieldLine(root *yaml.Node, field string) int {
	if root == nil {
		return 0
	}
	field, _, _ = strings.Cut(field, " ")
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(field, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		next := mapValue(n, name)
		if next == nil {
			return line
		}
		line, n = next.Line, next
		if idx >= 0 && n.Kind == yaml.SequenceNode && idx < len(n.Content) {
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
