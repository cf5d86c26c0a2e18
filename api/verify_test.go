package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
)

// fakeVerifier is a site whose on-line instance "measures" 5% above what the
// matrix predicts (the site runtime is outside the unit under test). With
// err set it fails instead: at once, or with failAt > 0 at the failAt-th
// point, returning the points before it.
type fakeVerifier struct {
	staticSite
	err    error
	failAt int

	mu    sync.Mutex
	specs []VerifySpec
}

func (f *fakeVerifier) Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, spec VerifySpec) ([]Verification, error) {
	f.mu.Lock()
	f.specs = append(f.specs, spec)
	f.mu.Unlock()
	if f.err != nil && f.failAt == 0 {
		return nil, f.err
	}
	var out []Verification
	for i, p := range spec.Points {
		if i+1 == f.failAt {
			return out, f.err
		}
		for _, mt := range m.Metrics {
			c, err := m.Cell(p, mt)
			if err != nil {
				return nil, err
			}
			got := c.Value * 1.05
			out = append(out, Verification{StudyID: st.ID, Point: p, Label: st.Space.Format(p), Metric: mt,
				Predicted: c.Value, Provenance: c.Prov, Measured: got, RelError: (got - c.Value) / got,
				Threshold: st.CheckThreshold, Within: true, Window: justrunit.Duration(spec.Window), Samples: 100})
		}
	}
	return out, nil
}

func (f *fakeVerifier) calls() []VerifySpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]VerifySpec(nil), f.specs...)
}

var _ Verifier = (*fakeVerifier)(nil)

func TestVerify(t *testing.T) {
	fake := &fakeVerifier{}
	d := newDaemon(t, daemonOpts{noRunner: true, site: fake})
	st, _ := seedStudy(t, d.store)
	c := d.client()
	ctx := context.Background()

	vs, err := c.Verify(ctx, st.ID, VerifyRequest{Points: []string{"cpu=40", "cpu=70"}, WarmUp: "1s", Window: "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 4 {
		t.Fatalf("Verify(cpu=40, cpu=70) = %d verifications, want 4 (2 points x 2 metrics): %+v", len(vs), vs)
	}
	if v := vs[2]; v.Label != "cpu=70" || v.Metric != justrunit.RTP95 || v.Provenance != justrunit.Used || v.Threshold != 0.1 {
		t.Errorf("verification at cpu=70 rt_p95 = %+v, want the T cell and the study's threshold", v)
	}
	got := fake.calls()
	if len(got) != 1 || got[0].WarmUp != time.Second || got[0].Window != 2*time.Second ||
		len(got[0].Points) != 2 || !got[0].Points[1].Equal(justrunit.Point{70}) {
		t.Errorf("the verifier was asked %+v, want cpu=40 and cpu=70 with 1s + 2s", got)
	}

	// A paired check reaches the verifier as one.
	if _, err := c.Verify(ctx, st.ID, VerifyRequest{Points: []string{"cpu=40"}, Paired: true}); err != nil {
		t.Fatal(err)
	}
	got = fake.calls()
	if last := got[len(got)-1]; !last.Paired || got[0].Paired {
		t.Errorf("paired: the verifier was asked %+v after %+v, want paired only the second time", last, got[0])
	}

	// No body: the default points and the study's own warm-up and window.
	code, body := d.call("POST", Prefix+"/studies/"+st.ID+"/verify", testToken, nil)
	if code != http.StatusOK {
		t.Fatalf("POST verify without a body = %d %s", code, body)
	}
	got = fake.calls()
	if last := got[len(got)-1]; last.WarmUp != 5*time.Second || last.Window != 30*time.Second || len(last.Points) != 3 {
		t.Errorf("defaults: the verifier was asked %+v, want 3 points with the study's 5s + 30s", last)
	}

	in, err := c.Info(ctx)
	if err != nil || !in.Verify {
		t.Errorf("info = %+v, %v; want verify true", in, err)
	}
}

func TestVerifyErrors(t *testing.T) {
	fake := &fakeVerifier{}
	d := newDaemon(t, daemonOpts{noRunner: true, site: fake})
	st, _ := seedStudy(t, d.store)
	ctx := context.Background()
	// A running study and a finished one without a matrix.
	running := *st
	running.ID, running.State = "", justrunit.StudyRunning
	if err := d.store.CreateStudy(ctx, &running); err != nil {
		t.Fatal(err)
	}
	bare := *st
	bare.ID = ""
	if err := d.store.CreateStudy(ctx, &bare); err != nil {
		t.Fatal(err)
	}
	path := func(id string) string { return Prefix + "/studies/" + id + "/verify" }
	tests := []struct {
		name, id, body string
		status         int
		field, text    string
	}{
		{"unknown study", "s-nope", `{}`, http.StatusNotFound, "", "no study s-nope"},
		{"point outside the space", st.ID, `{"points":["cpu=40","cpu=45"]}`, http.StatusBadRequest, "points[1]", "not in the space"},
		{"unknown parameter", st.ID, `{"points":["mem=512"]}`, http.StatusBadRequest, "points[0]", "no such parameter"},
		{"not a point", st.ID, `{"points":["40"]}`, http.StatusBadRequest, "points[0]", "NAME=VALUE"},
		{"bad window", st.ID, `{"window":"soon"}`, http.StatusBadRequest, "window", "not a duration"},
		{"zero window", st.ID, `{"window":"0s"}`, http.StatusBadRequest, "window", "> 0"},
		{"negative warm-up", st.ID, `{"warm_up":"-1s"}`, http.StatusBadRequest, "warm_up", "≥ 0"},
		{"window for hours", st.ID, `{"window":"100h"}`, http.StatusBadRequest, "window", "at most 10m0s"},
		{"warm-up for hours", st.ID, `{"warm_up":"11m"}`, http.StatusBadRequest, "warm_up", "at most 10m0s"},
		{"point twice", st.ID, `{"points":["cpu=40","cpu=40"]}`, http.StatusBadRequest, "points[1]", "given twice"},
		{"unknown field", st.ID, `{"point":"cpu=40"}`, http.StatusBadRequest, "point", "unknown field"},
		{"study running", running.ID, `{}`, http.StatusConflict, "", "is running"},
		{"no matrix", bare.ID, `{}`, http.StatusConflict, "", "no matrix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := d.call("POST", path(tt.id), testToken, tt.body)
			if code != tt.status {
				t.Fatalf("POST verify %s = %d %s, want %d", tt.body, code, body, tt.status)
			}
			e := decodeError(t, body)
			if e.Field != tt.field || !strings.Contains(e.Message, tt.text) {
				t.Errorf("error = %+v, want field %q and a message with %q", e, tt.field, tt.text)
			}
		})
	}
	if n := len(fake.calls()); n != 0 {
		t.Errorf("the verifier was called %d times for requests that should fail before measuring", n)
	}

	// The site is busy (a study or another verification runs on it).
	fake.err = fmt.Errorf("verify study %s: %w: study s-other is running on this site", st.ID, ErrConflict)
	if _, err := d.client().Verify(ctx, st.ID, VerifyRequest{Points: []string{"cpu=40"}}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "s-other") {
		t.Errorf("Verify on a busy site = %v, want a conflict naming the running study", err)
	}
	// The target has no in-proxy.
	fake.err = fmt.Errorf("study target %s: %w: it has no in_proxy", st.Target, justrunit.ErrUnsupported)
	if code, body := d.call("POST", path(st.ID), testToken, `{}`); code != http.StatusUnprocessableEntity {
		t.Errorf("Verify of a target without an in-proxy = %d %s, want 422", code, body)
	}
}

// TestVerifyFailsPartway checks that a check that fails at its third point
// answers the verifications of the first two with the error, and that an
// on-line instance left at a check's allocation is an error of its own
// (not_restored, justrunit.ErrNotRestored through the client), whatever
// its cause.
func TestVerifyFailsPartway(t *testing.T) {
	fake := &fakeVerifier{failAt: 3}
	d := newDaemon(t, daemonOpts{noRunner: true, site: fake})
	st, _ := seedStudy(t, d.store)
	ctx := context.Background()
	q := VerifyRequest{Points: []string{"cpu=40", "cpu=60", "cpu=70"}}
	tests := []struct {
		name        string
		err         error
		status      int
		code        string
		notRestored bool
	}{
		{"measurement fails", fmt.Errorf("verify cpu=70 on the on-line %s (2 of 3 points done): measure: %w", st.Target, justrunit.ErrTooFewSamples),
			http.StatusInternalServerError, CodeInternal, false},
		// The cause (the platform no longer finds the instance, say)
		// does not hide that it is left at the check's allocation.
		{"restore fails", fmt.Errorf("verify cpu=70 on the on-line %s (2 of 3 points done): restore the on-line %[1]s after the check (1 attempt): %w; %w: it is left at cpu=70%% and should have cpu=80%%",
			st.Target, justrunit.ErrNotFound, justrunit.ErrNotRestored), http.StatusInternalServerError, CodeNotRestored, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.err = tt.err
			vs, err := d.client().Verify(ctx, st.ID, q)
			var ae *Error
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code || !strings.Contains(ae.Message, "2 of 3 points done") {
				t.Fatalf("Verify failing at the third point = %v, want %d %s with the verifier's message", err, tt.status, tt.code)
			}
			if got := errors.Is(err, justrunit.ErrNotRestored); got != tt.notRestored {
				t.Errorf("errors.Is(%v, justrunit.ErrNotRestored) = %v, want %v", err, got, tt.notRestored)
			}
			if tt.notRestored && errors.Is(err, justrunit.ErrNotFound) {
				t.Errorf("Verify = %v: a restore that failed reads as not found", err)
			}
			if len(vs) != 4 || vs[0].Label != "cpu=40" || vs[3].Label != "cpu=60" {
				t.Fatalf("Verify failing at the third point = %d verifications %+v, want the first two points' 4", len(vs), vs)
			}

			// The answer itself: the error and the points done.
			code, body := d.call("POST", Prefix+"/studies/"+st.ID+"/verify", testToken, q)
			var eb VerifyErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || code != tt.status || eb.Error == nil || eb.Error.Code != tt.code || len(eb.Verifications) != 4 {
				t.Errorf("POST verify failing at the third point = %d %s, want %d with code %s and 4 verifications", code, body, tt.status, tt.code)
			}
		})
	}

	// A check that fails before any point answers an empty list.
	fake.failAt = 1
	code, body := d.call("POST", Prefix+"/studies/"+st.ID+"/verify", testToken, q)
	if !strings.Contains(string(body), `"verifications": []`) || code != http.StatusInternalServerError {
		t.Errorf("POST verify failing at the first point = %d %s, want 500 with no verifications", code, body)
	}
}

func TestVerifyWithoutSite(t *testing.T) {
	for _, tt := range []struct {
		name string
		site SiteView
		text string
	}{
		{"no site", nil, "runs no site"},
		{"site without the ability", staticSite{}, "cannot set"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDaemon(t, daemonOpts{noRunner: true, site: tt.site})
			st, _ := seedStudy(t, d.store)
			_, err := d.client().Verify(context.Background(), st.ID, VerifyRequest{Points: []string{"cpu=40"}})
			var ae *Error
			if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, tt.text) {
				t.Errorf("Verify = %v, want 503 saying the daemon %s", err, tt.text)
			}
		})
	}
}

func TestDefaultVerifyPoints(t *testing.T) {
	space := func(params ...string) justrunit.Space {
		var s justrunit.Space
		for _, ps := range params {
			p, err := justrunit.ParseParameter(ps)
			if err != nil {
				t.Fatal(err)
			}
			s.Params = append(s.Params, p)
		}
		return s
	}
	// measured records rt_p95 at the given cpu shares (a negative one:
	// unmeasurable there) and interpolates the rest, as a study does.
	measured := func(s justrunit.Space, rt map[float64]float64) *justrunit.Matrix {
		m, err := justrunit.NewMatrix(s, []justrunit.Metric{justrunit.RTP95})
		if err != nil {
			t.Fatal(err)
		}
		for cpu, v := range rt {
			var err error
			if v < 0 {
				err = m.MarkUnmeasurable(justrunit.Point{cpu}, "too few responses")
			} else {
				err = m.Record(justrunit.Observation{Point: justrunit.Point{cpu}, Samples: 1000, RT: justrunit.ResponseTime{P95: v}})
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		in, err := interp.New("linear")
		if err != nil {
			t.Fatal(err)
		}
		if err := in.Interpolate(m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	sla := &justrunit.SLA{Metric: justrunit.RTP95, Max: 50}
	cpu := space("cpu=20..100 step 10")
	tests := []struct {
		name string
		st   *justrunit.Study
		m    *justrunit.Matrix
		want string
	}{
		{"1-D: quarter, half, three quarters", &justrunit.Study{Space: cpu}, nil, "cpu=40|cpu=60|cpu=80"},
		{"least passing already among them", &justrunit.Study{Space: cpu, SLA: sla}, measured(cpu, map[float64]float64{40: 90, 60: 45, 100: 30}), "cpu=40|cpu=60|cpu=80"},
		{"least passing replaces the nearest", &justrunit.Study{Space: cpu, SLA: sla}, measured(cpu, map[float64]float64{60: 90, 90: 60, 100: 48}), "cpu=40|cpu=60|cpu=100"},
		{"nothing passes", &justrunit.Study{Space: cpu, SLA: sla}, measured(cpu, map[float64]float64{60: 90, 100: 60}), "cpu=40|cpu=60|cpu=80"},
		// Unmeasurable at 40 and 30, and 20 below them shadowed: the
		// nearest point with a prediction instead.
		{"no prediction at a default", &justrunit.Study{Space: cpu}, measured(cpu, map[float64]float64{30: -1, 40: -1, 50: 200, 100: 30}), "cpu=50|cpu=60|cpu=80"},
		{"two values", &justrunit.Study{Space: space("cpu=50,100")}, nil, "cpu=50|cpu=100"},
		{"2-D: along every parameter", &justrunit.Study{Space: space("cpu=20..100 step 20", "freq=1.2,1.8,2.4")}, nil,
			"cpu=40 freq=1.8|cpu=60 freq=1.8|cpu=80 freq=2.4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range DefaultVerifyPoints(tt.st, tt.m) {
				got = append(got, tt.st.Space.Format(p))
			}
			if strings.Join(got, "|") != tt.want {
				t.Errorf("DefaultVerifyPoints = %v, want %s", got, tt.want)
			}
		})
	}
}
