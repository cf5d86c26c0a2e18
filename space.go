package justrunit

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Parameter is one resource knob and the ordered values a study may try.
//
// Numeric parameters (cpu share, frequency, memory) have increasing Values.
// A categorical parameter (a host class) has Labels, and its Values are the
// label indexes 0, 1, 2...; interpolators never interpolate across it.
type Parameter struct {
	Name   string    `json:"name"`
	Unit   string    `json:"unit,omitempty"`
	Values []float64 `json:"values"`
	Labels []string  `json:"labels,omitempty"`
}

// Categorical reports whether p is a set of labels rather than a numeric axis.
func (p Parameter) Categorical() bool { return len(p.Labels) > 0 }

// Format renders v as this parameter shows it: the label for a categorical
// parameter, the shortest decimal otherwise.
func (p Parameter) Format(v float64) string {
	if p.Categorical() {
		i := int(v)
		if i >= 0 && i < len(p.Labels) && float64(i) == v {
			return p.Labels[i]
		}
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Label returns the label of value v of a categorical parameter (v within
// Index's tolerance of a label's index), "" when v is none of them or p is
// numeric.
func (p Parameter) Label(v float64) string {
	if i := p.Index(v); p.Categorical() && i >= 0 && i < len(p.Labels) {
		return p.Labels[i]
	}
	return ""
}

// DefaultUnits are the units of the parameters JustRunIt knows by name.
var DefaultUnits = map[string]string{
	"cpu":  "%",   // percent of one core, as CFS bandwidth
	"freq": "GHz", // CPU frequency (emulated where it cannot be set)
	"mem":  "MiB", // memory limit
}

// ParseParameter parses the command-line form of a parameter:
//
//	cpu=20..100 step 10     a range with a step (both ends included)
//	freq=1.2,1.8,2.4        explicit increasing values
//	hostclass=old,new       labels (categorical)
func ParseParameter(s string) (Parameter, error) {
	name, spec, ok := strings.Cut(s, "=")
	name, spec = strings.TrimSpace(name), strings.TrimSpace(spec)
	if !ok || name == "" {
		return Parameter{}, Invalid("parameter", s, `want NAME=LO..HI step S or NAME=V1,V2,...`)
	}
	field := "parameter " + name
	if spec == "" {
		return Parameter{}, Invalid(field, s, "empty range; want LO..HI step S or V1,V2,...")
	}
	p := Parameter{Name: name, Unit: DefaultUnits[name]}
	if lo, rest, ok := strings.Cut(spec, ".."); ok {
		hi, step, hasStep := strings.Cut(rest, "step")
		if !hasStep {
			return Parameter{}, Invalid(field+".step", nil, "a range needs a step, e.g. %s=%s..%s step 10", name, lo, strings.TrimSpace(hi))
		}
		vals, err := rangeValues(field, strings.TrimSpace(lo), strings.TrimSpace(hi), strings.TrimSpace(step))
		if err != nil {
			return Parameter{}, err
		}
		p.Values = vals
		return p, p.Validate()
	}
	parts := strings.Split(spec, ",")
	numeric := true
	for _, part := range parts {
		if _, err := strconv.ParseFloat(strings.TrimSpace(part), 64); err != nil {
			numeric = false
		}
	}
	for i, part := range parts {
		part = strings.TrimSpace(part)
		if numeric {
			v, _ := strconv.ParseFloat(part, 64)
			p.Values = append(p.Values, v)
			continue
		}
		p.Labels = append(p.Labels, part)
		p.Values = append(p.Values, float64(i))
	}
	if !numeric {
		p.Unit = ""
	}
	return p, p.Validate()
}

func rangeValues(field, los, his, steps string) ([]float64, error) {
	lo, err := strconv.ParseFloat(los, 64)
	if err != nil {
		return nil, Invalid(field+".from", los, "not a number")
	}
	hi, err := strconv.ParseFloat(his, 64)
	if err != nil {
		return nil, Invalid(field+".to", his, "not a number")
	}
	step, err := strconv.ParseFloat(steps, 64)
	if err != nil {
		return nil, Invalid(field+".step", steps, "not a number")
	}
	// ParseFloat accepts "inf" and "nan"; neither makes a range, and a
	// non-finite bound would turn the value count into garbage below.
	if !isFinite(lo) {
		return nil, Invalid(field+".from", los, "must be a finite number")
	}
	if !isFinite(hi) {
		return nil, Invalid(field+".to", his, "must be a finite number")
	}
	if !(step > 0) || !isFinite(step) {
		return nil, Invalid(field+".step", steps, "must be a finite number > 0")
	}
	if hi < lo {
		return nil, Invalid(field+".to", hi, "must be ≥ from (%g); the range is empty", lo)
	}
	// Count in float64 and compare before converting: (hi−lo)/step can be
	// far beyond int's range (0..1e300 step 1), or +Inf when hi−lo
	// overflows, and converting such a value to int is undefined.
	count := math.Floor((hi-lo)/step+1e-9) + 1
	if !(count <= MaxValuesPerParameter) {
		return nil, Invalid(field+".step", step, "gives %.4g values; at most %d allowed: raise the step or narrow the range", count, MaxValuesPerParameter)
	}
	vals := make([]float64, int(count))
	for i := range vals {
		vals[i] = roundTo9(lo + float64(i)*step)
	}
	return vals, nil
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// roundTo9 removes float noise from lo+i*step (30.000000000000004 → 30) by
// rounding to nine decimals through the decimal representation.
func roundTo9(v float64) float64 {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', 9, 64), 64)
	return r
}

// Limits on the size of a space, so that a typo cannot ask for a billion
// experiments or cells. A matrix row costs a few hundred bytes, and a study
// copies its matrix after every experiment (to store it interpolated): a
// million points would take gigabytes, and no time bound measures a
// useful share of them.
const (
	MaxValuesPerParameter = 10000
	MaxPoints             = 100_000
)

// Validate checks a parameter: a name, at least one value, increasing values,
// labels matching values.
func (p Parameter) Validate() error {
	field := "parameter " + p.Name
	switch {
	case p.Name == "":
		return Invalid("parameter.name", nil, "must not be empty")
	case strings.ContainsAny(p.Name, " =,;"):
		return Invalid(field+".name", p.Name, "must not contain spaces, '=', ',' or ';'")
	case len(p.Values) == 0:
		return Invalid(field+".values", nil, "empty range; give at least one value")
	case len(p.Values) > MaxValuesPerParameter:
		return Invalid(field+".values", len(p.Values), "at most %d values allowed", MaxValuesPerParameter)
	case p.Categorical() && len(p.Labels) != len(p.Values):
		return Invalid(field+".labels", len(p.Labels), "need one label per value (%d)", len(p.Values))
	}
	for i, v := range p.Values {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return Invalid(fmt.Sprintf("%s.values[%d]", field, i), v, "must be a finite number")
		}
		if i > 0 && v <= p.Values[i-1] {
			return Invalid(fmt.Sprintf("%s.values[%d]", field, i), v, "values must increase (previous %g)", p.Values[i-1])
		}
		if p.Categorical() && v != float64(i) {
			return Invalid(fmt.Sprintf("%s.values[%d]", field, i), v, "a label's value is its index (%d)", i)
		}
	}
	for i, l := range p.Labels {
		// A label is written NAME=LABEL in points and parameters: it must
		// read back as itself, and name one value.
		if l == "" || strings.ContainsAny(l, " =,;") {
			return Invalid(fmt.Sprintf("%s.labels[%d]", field, i), l, "must be non-empty, without spaces, '=', ',' or ';'")
		}
		if slices.Contains(p.Labels[:i], l) {
			return Invalid(fmt.Sprintf("%s.labels[%d]", field, i), l, "given twice")
		}
	}
	return nil
}

// Index returns the position of v among p's values (within a relative
// tolerance of 1e-9), or -1.
func (p Parameter) Index(v float64) int {
	for i, x := range p.Values {
		if math.Abs(x-v) <= 1e-9*math.Max(1, math.Abs(x)) {
			return i
		}
	}
	return -1
}

// Point is one setting of every parameter of a space, in the space's order.
// A categorical parameter's value is its label index.
type Point []float64

// Equal reports whether p and q are the same point.
func (p Point) Equal(q Point) bool {
	if len(p) != len(q) {
		return false
	}
	for i := range p {
		if math.Abs(p[i]-q[i]) > 1e-9*math.Max(1, math.Abs(p[i])) {
			return false
		}
	}
	return true
}

// Space is the ordered list of parameters a study explores; its points are
// the cartesian product of their values, the last parameter varying fastest.
type Space struct {
	Params []Parameter `json:"parameters"`
}

// NewSpace returns a validated space of params.
func NewSpace(params ...Parameter) (Space, error) {
	s := Space{Params: params}
	return s, s.Validate()
}

// Validate checks every parameter, that names are unique, and the size.
func (s Space) Validate() error {
	if len(s.Params) == 0 {
		return Invalid("parameters", nil, "a space needs at least one parameter")
	}
	seen := map[string]bool{}
	size := 1
	for i, p := range s.Params {
		if err := p.Validate(); err != nil {
			return err
		}
		if seen[p.Name] {
			return Invalid(fmt.Sprintf("parameters[%d].name", i), p.Name, "duplicate parameter")
		}
		seen[p.Name] = true
		size *= len(p.Values)
		if size > MaxPoints {
			return Invalid("parameters", size, "the space has more than %d points", MaxPoints)
		}
	}
	return nil
}

// Dims returns the number of values of each parameter.
func (s Space) Dims() []int {
	d := make([]int, len(s.Params))
	for i, p := range s.Params {
		d[i] = len(p.Values)
	}
	return d
}

// Size returns the number of points.
func (s Space) Size() int {
	n := 1
	for _, p := range s.Params {
		n *= len(p.Values)
	}
	return n
}

// Param returns the index of the parameter called name, or -1.
func (s Space) Param(name string) int {
	for i, p := range s.Params {
		if p.Name == name {
			return i
		}
	}
	return -1
}

// Coords returns the value index of each parameter at flat index i.
func (s Space) Coords(i int) []int {
	c := make([]int, len(s.Params))
	for d := len(s.Params) - 1; d >= 0; d-- {
		n := len(s.Params[d].Values)
		c[d] = i % n
		i /= n
	}
	return c
}

// Flat returns the flat index of coordinates c.
func (s Space) Flat(c []int) int {
	i := 0
	for d, p := range s.Params {
		i = i*len(p.Values) + c[d]
	}
	return i
}

// At returns the point at flat index i.
func (s Space) At(i int) Point {
	c := s.Coords(i)
	p := make(Point, len(c))
	for d, ci := range c {
		p[d] = s.Params[d].Values[ci]
	}
	return p
}

// Points returns every point in flat order.
func (s Space) Points() []Point {
	pts := make([]Point, s.Size())
	for i := range pts {
		pts[i] = s.At(i)
	}
	return pts
}

// IndexOf returns the flat index of p, or an error naming the parameter whose
// value is not in the space.
func (s Space) IndexOf(p Point) (int, error) {
	if len(p) != len(s.Params) {
		return 0, Invalid("point", s.Format(p), "has %d values; the space has %d parameters", len(p), len(s.Params))
	}
	c := make([]int, len(p))
	for d, v := range p {
		c[d] = s.Params[d].Index(v)
		if c[d] < 0 {
			return 0, Invalid("point."+s.Params[d].Name, s.Params[d].Format(v), "not in the space; allowed: %s", s.Params[d].valueList())
		}
	}
	return s.Flat(c), nil
}

func (p Parameter) valueList() string {
	parts := make([]string, len(p.Values))
	for i, v := range p.Values {
		parts[i] = p.Format(v)
	}
	return strings.Join(parts, ",")
}

// Format renders p as "cpu=20 freq=1.8".
func (s Space) Format(p Point) string {
	var b strings.Builder
	for d, v := range p {
		if d > 0 {
			b.WriteByte(' ')
		}
		if d < len(s.Params) {
			b.WriteString(s.Params[d].Name)
			b.WriteByte('=')
			b.WriteString(s.Params[d].Format(v))
		} else {
			b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	return b.String()
}

// ParsePoint parses "cpu=20,freq=1.8" (commas or spaces) into a point of s.
// Every parameter must be given once; labels are accepted for categorical ones.
func (s Space) ParsePoint(str string) (Point, error) {
	p := make(Point, len(s.Params))
	set := make([]bool, len(s.Params))
	for _, kv := range strings.FieldsFunc(str, func(r rune) bool { return r == ',' || r == ' ' }) {
		name, val, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, Invalid("point", kv, "want NAME=VALUE")
		}
		d := s.Param(name)
		if d < 0 {
			return nil, Invalid("point."+name, nil, "no such parameter in the space")
		}
		if set[d] {
			return nil, Invalid("point."+name, val, "given twice")
		}
		par := s.Params[d]
		if par.Categorical() {
			found := false
			for i, l := range par.Labels {
				if l == val {
					p[d], found = float64(i), true
				}
			}
			if !found {
				return nil, Invalid("point."+name, val, "not in the space; allowed: %s", par.valueList())
			}
		} else {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				return nil, Invalid("point."+name, val, "not a number")
			}
			if par.Index(v) < 0 {
				return nil, Invalid("point."+name, val, "not in the space; allowed: %s", par.valueList())
			}
			p[d] = v
		}
		set[d] = true
	}
	for d, ok := range set {
		if !ok {
			return nil, Invalid("point."+s.Params[d].Name, nil, "missing")
		}
	}
	return p, nil
}
