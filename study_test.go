package justrunit

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseSLA(t *testing.T) {
	tests := []struct {
		in   string
		want SLA
		str  string
	}{
		{"rt_p95<=50", SLA{Metric: RTP95, Max: 50}, "rt_p95<=50"},
		{" rt_mean <= 12.5 ", SLA{Metric: RTMean, Max: 12.5}, "rt_mean<=12.5"},
		{"error_rate<=0.01", SLA{Metric: ErrorRate, Max: 0.01}, "error_rate<=0.01"},
		{"energy_per_request<=0.5", SLA{Metric: EnergyPerRequest, Max: 0.5}, "energy_per_request<=0.5"},
		{"power<=150", SLA{Metric: Power, Max: 150}, "power<=150"},
		{"throughput>=900", SLA{Metric: Throughput, Min: 900}, "throughput>=900"},
		{"throughput >= 12.5", SLA{Metric: Throughput, Min: 12.5}, "throughput>=12.5"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSLA(tt.in)
			if err != nil {
				t.Fatalf("ParseSLA(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseSLA(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("ParseSLA(%q).Validate() = %v", tt.in, err)
			}
			if s := got.String(); s != tt.str {
				t.Errorf("ParseSLA(%q).String() = %q, want %q", tt.in, s, tt.str)
			}
			if back, err := ParseSLA(got.String()); err != nil || back != got {
				t.Errorf("ParseSLA(String()) = %+v, %v; want %+v", back, err, got)
			}
		})
	}
}

// TestParseSLABad: each bad SLA names its field. A direction that makes no
// sense for its metric (a ceiling on throughput, a floor on a response
// time) is refused rather than searched the wrong way.
func TestParseSLABad(t *testing.T) {
	tests := []struct {
		in    string
		field string
	}{
		{"throughput<=900", "sla"},
		{"rt_p95>=50", "sla"},
		{"error_rate>=0.1", "sla"},
		{"rt_p95<50", "sla"},
		{"rt_p95=50", "sla"},
		{"latency<=50", "sla.metric"},
		{"rt_p95<=0", "sla.max"},
		{"rt_p95<=-3", "sla.max"},
		{"rt_p95<=inf", "sla.max"},
		{"rt_p95<=NaN", "sla.max"},
		{"rt_p95<=fast", "sla.max"},
		{"throughput>=0", "sla.min"},
		{"throughput>=+Inf", "sla.min"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSLA(tt.in)
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSLA(%q) = %+v, %v; want a FieldError wrapping ErrInvalid", tt.in, got, err)
			}
			if fe.Field != tt.field {
				t.Errorf("ParseSLA(%q) error on %q, want %q (%v)", tt.in, fe.Field, tt.field, err)
			}
		})
	}
	_, err := ParseSLA("throughput<=900")
	if want := "throughput>=900"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("ParseSLA(throughput<=900) = %v, want the fix %q in the message", err, want)
	}
}

func TestSLAMet(t *testing.T) {
	ceiling := SLA{Metric: RTP95, Max: 50}
	floor := SLA{Metric: Throughput, Min: 900}
	tests := []struct {
		sla   SLA
		value float64
		want  bool
	}{
		{ceiling, 10, true}, {ceiling, 50, true}, {ceiling, 50.1, false}, {ceiling, math.NaN(), false},
		{floor, 1000, true}, {floor, 900, true}, {floor, 899.9, false}, {floor, 0, false}, {floor, math.NaN(), false},
	}
	for _, tt := range tests {
		if got := tt.sla.Met(tt.value); got != tt.want {
			t.Errorf("%s.Met(%g) = %v, want %v", tt.sla, tt.value, got, tt.want)
		}
	}
	if ceiling.AtLeast() || ceiling.Level() != 50 || !floor.AtLeast() || floor.Level() != 900 {
		t.Errorf("AtLeast/Level: ceiling %v %g, floor %v %g; want false 50, true 900",
			ceiling.AtLeast(), ceiling.Level(), floor.AtLeast(), floor.Level())
	}
}

// TestSLAJSON: a ceiling reads and writes the JSON it always has (stores
// and API clients hold it); a floor writes min in place of max.
func TestSLAJSON(t *testing.T) {
	tests := []struct {
		sla  SLA
		json string
	}{
		{SLA{Metric: RTP95, Max: 50}, `{"metric":"rt_p95","max":50}`},
		{SLA{Metric: Throughput, Min: 900}, `{"metric":"throughput","min":900}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.sla)
		if err != nil || string(b) != tt.json {
			t.Errorf("json.Marshal(%+v) = %s, %v; want %s", tt.sla, b, err, tt.json)
		}
		var got SLA
		if err := json.Unmarshal([]byte(tt.json), &got); err != nil || got != tt.sla {
			t.Errorf("json.Unmarshal(%s) = %+v, %v; want %+v", tt.json, got, err, tt.sla)
		}
	}
}

func TestStudyValidateSLA(t *testing.T) {
	cpu, _ := ParseParameter("cpu=20..100 step 10")
	space, _ := NewSpace(cpu)
	study := func(sla *SLA) *Study {
		return &Study{Target: "app", Space: space, Window: Duration(10 * time.Second), WarmUp: Duration(5 * time.Second),
			TimeBound: Duration(time.Minute), Slots: 1, CheckThreshold: 0.1, SLA: sla}
	}
	tests := []struct {
		name  string
		sla   SLA
		field string // "" for valid
	}{
		{"ceiling", SLA{Metric: RTP95, Max: 50}, ""},
		{"floor", SLA{Metric: Throughput, Min: 900}, ""},
		{"ceiling on throughput", SLA{Metric: Throughput, Max: 900}, "sla.max"},
		{"floor on p95", SLA{Metric: RTP95, Min: 50}, "sla.min"},
		{"both", SLA{Metric: RTP95, Max: 50, Min: 10}, "sla.min"},
		{"neither", SLA{Metric: RTP95}, "sla.max"},
		{"throughput without min", SLA{Metric: Throughput}, "sla.min"},
		{"max infinite", SLA{Metric: RTP95, Max: math.Inf(1)}, "sla.max"},
		{"unknown metric", SLA{Metric: "latency", Max: 50}, "sla.metric"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sla := tt.sla
			err := study(&sla).Validate()
			if tt.field == "" {
				if err != nil {
					t.Errorf("Validate(%+v) = %v, want nil", tt.sla, err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("Validate(%+v) = %v, want an error on %s", tt.sla, err, tt.field)
			}
		})
	}
}

func TestFillMetrics(t *testing.T) {
	for _, c := range []struct {
		metrics []Metric
		sla     *SLA
		want    []Metric
	}{
		{nil, nil, DefaultMetrics},
		{nil, &SLA{Metric: RTP99, Max: 80}, append(append([]Metric(nil), DefaultMetrics...), RTP99)},
		{[]Metric{Throughput}, &SLA{Metric: Throughput, Min: 900}, []Metric{Throughput}},
		{[]Metric{Throughput}, &SLA{Metric: RTP95, Max: 50}, []Metric{Throughput, RTP95}},
	} {
		st := Study{Metrics: c.metrics, SLA: c.sla}
		st.FillMetrics()
		if !slices.Equal(st.Metrics, c.want) {
			t.Errorf("FillMetrics(%v, sla %v) = %v, want %v", c.metrics, c.sla, st.Metrics, c.want)
		}
	}
	if len(DefaultMetrics) != 4 {
		t.Errorf("FillMetrics changed DefaultMetrics: %v", DefaultMetrics)
	}
}

// TestStudyValidateLimits: a cpu, freq or mem value of 0 or below is
// refused (an allocation's 0 means no limit: the point would be measured
// unlimited), and so is a fraction of a MiB; other parameters may hold 0.
func TestStudyValidateLimits(t *testing.T) {
	for _, tt := range []struct {
		params []string
		field  string // "" for valid
	}{
		{[]string{"cpu=10..100 step 10"}, ""},
		{[]string{"cpu=0..100 step 10"}, "parameters[0]"},
		{[]string{"cpu=50", "freq=0,1.2"}, "parameters[1]"},
		{[]string{"cpu=-10,50"}, "parameters[0]"},
		{[]string{"mem=0..512 step 256"}, "parameters[0]"},
		{[]string{"mem=256,512.5"}, "parameters[0]"},
		{[]string{"mem=256,512"}, ""},
		{[]string{"cpu=50", "threads=0..4 step 2"}, ""},
	} {
		var ps []Parameter
		for _, s := range tt.params {
			p, err := ParseParameter(s)
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, p)
		}
		space, err := NewSpace(ps...)
		if err != nil {
			t.Fatal(err)
		}
		st := &Study{Target: "app", Space: space, Window: Duration(10 * time.Second), TimeBound: Duration(time.Minute), Slots: 1, CheckThreshold: 0.1}
		err = st.Validate()
		var fe *FieldError
		switch {
		case tt.field == "" && err != nil:
			t.Errorf("Validate(%v) = %v, want nil", tt.params, err)
		case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
			t.Errorf("Validate(%v) = %v, want an error on %s", tt.params, err, tt.field)
		}
	}
}
