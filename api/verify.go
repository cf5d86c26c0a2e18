package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/driver"
)

// Verifier is an optional ability of a SiteView (found by type assertion):
// the fidelity check behind "justrunit study verify". It sets the on-line
// target of a study to points of its space, measures it under the live load
// and compares with what the study predicted. The site runtime implements it.
type Verifier interface {
	// Verify measures the on-line target of st at each of spec's points in
	// turn, each for spec.WarmUp + spec.Window, restoring the target's
	// allocation after each, and compares with m's cells. It records an
	// event per point in the store (justrunit.EventVerifyDone, or
	// EventVerifyFailed) and returns a Verification per point and metric
	// of m, in that order. Points are in st's space (the caller checked).
	// When a point fails, it returns the verifications of the points done
	// before it with the error. A site busy with a study or another
	// verification gives an error wrapping ErrConflict; a target that
	// cannot be measured on-line (no in-proxy) justrunit.ErrUnsupported; a
	// target not on the site justrunit.ErrNotFound; a target whose
	// allocation could not be restored after a point, whatever the cause,
	// justrunit.ErrNotRestored.
	Verify(ctx context.Context, st *justrunit.Study, m *justrunit.Matrix, spec VerifySpec) ([]Verification, error)
}

// VerifySpec says what a fidelity check measures.
type VerifySpec struct {
	// Points are the points to set the on-line target to, in order.
	Points []justrunit.Point
	// Defaulted says Points were chosen for the user (DefaultVerifyPoints):
	// a verifier may then move them to what the on-line instance can be
	// set to (its host's class, in a study over hostclass) rather than
	// refuse them.
	Defaulted bool
	// WarmUp and Window make each measurement, as a study's experiment:
	// WarmUp is discarded, Window measured (it may end early once the p95
	// has converged).
	WarmUp, Window time.Duration
	// Paired also measures a clone of the target at each point, in the
	// sandbox, over the same live requests as the on-line window (both
	// for the whole window): Verification.Sandbox. It tells drift since
	// the study (predicted vs sandbox now) from the sandbox's own error
	// (sandbox now vs on-line).
	Paired bool
	// Progress, when set, is called before each point is measured (the CLI
	// prints it).
	Progress func(p justrunit.Point)
}

// VerifyRequest is the body of POST /api/v1/studies/{id}/verify.
type VerifyRequest struct {
	// Points are written as on the command line, "cpu=40" or
	// "cpu=40,freq=1.8"; empty: DefaultVerifyPoints.
	Points []string `json:"points,omitempty"`
	// WarmUp and Window are durations such as "4s"; empty: the study's own.
	WarmUp string `json:"warm_up,omitempty"`
	Window string `json:"window,omitempty"`
	// Paired: see VerifySpec.Paired.
	Paired bool `json:"paired,omitempty"`
}

// Spec converts the request into a VerifySpec over st's space; errors name
// the field as the request spells it (points[1], window).
func (q *VerifyRequest) Spec(st *justrunit.Study, m *justrunit.Matrix) (VerifySpec, error) {
	spec := VerifySpec{WarmUp: time.Duration(st.WarmUp), Window: time.Duration(st.Window), Paired: q.Paired}
	for i, s := range q.Points {
		p, err := st.Space.ParsePoint(s)
		if err != nil {
			var fe *justrunit.FieldError
			if errors.As(err, &fe) {
				return spec, &justrunit.FieldError{Field: fmt.Sprintf("points[%d]", i), Value: s, Msg: fe.Error()}
			}
			return spec, err
		}
		spec.Points = append(spec.Points, p)
	}
	if len(q.Points) == 0 {
		spec.Points, spec.Defaulted = DefaultVerifyPoints(st, m), true
	}
	for _, d := range []struct {
		field, v string
		dst      *time.Duration
	}{{"warm_up", q.WarmUp, &spec.WarmUp}, {"window", q.Window, &spec.Window}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil {
			return spec, justrunit.Invalid(d.field, d.v, "not a duration; write e.g. 8s")
		}
		*d.dst = v
	}
	return spec, spec.Validate()
}

// MaxVerifyPoints and MaxVerifyPhase bound a fidelity check, which holds
// the on-line instance at each of its points for a warm-up and a window
// (and the site, which no study may start on meanwhile): a check that
// would hold it for hours is a typo, not a check.
const (
	MaxVerifyPoints = 32
	MaxVerifyPhase  = 10 * time.Minute
)

// Validate checks the durations and the points (at least one, each once,
// at most MaxVerifyPoints); errors name the request's fields.
func (spec *VerifySpec) Validate() error {
	switch n := len(spec.Points); {
	case n == 0:
		return justrunit.Invalid("points", nil, `name at least one point, e.g. ["cpu=40"]`)
	case n > MaxVerifyPoints:
		return justrunit.Invalid("points", n, "at most %d points per check: each holds the on-line instance at it for a warm-up and a window", MaxVerifyPoints)
	}
	for i, p := range spec.Points {
		if slices.ContainsFunc(spec.Points[:i], p.Equal) {
			return justrunit.Invalid(fmt.Sprintf("points[%d]", i), p, "given twice")
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
		min   time.Duration
	}{{"window", spec.Window, 1}, {"warm_up", spec.WarmUp, 0}} {
		switch {
		case d.v < d.min && d.min > 0:
			return justrunit.Invalid(d.field, d.v.String(), "must be > 0, e.g. 8s")
		case d.v < d.min:
			return justrunit.Invalid(d.field, d.v.String(), "must be ≥ 0")
		case d.v > MaxVerifyPhase:
			return justrunit.Invalid(d.field, d.v.String(), "at most %v: the on-line instance is held at each point for the warm-up and the window", MaxVerifyPhase)
		}
	}
	return nil
}

// Verification is one metric of the fidelity check at one point: what the
// study predicted (the matrix cell and its provenance) against what the
// on-line instance did at that point under the same live load.
type Verification struct {
	StudyID string          `json:"study_id"`
	Point   justrunit.Point `json:"point"`
	// Label is the point as the CLI writes it, e.g. "cpu=40".
	Label  string           `json:"label"`
	Metric justrunit.Metric `json:"metric"`
	// Predicted is the matrix cell's value; Provenance says how the study
	// got it (X measured on a clone, I/T interpolated, V re-measured by
	// the checker, . nothing); Uncertainty is the interpolator's estimate
	// for I and T cells.
	Predicted   float64              `json:"predicted"`
	Provenance  justrunit.Provenance `json:"prov"`
	Uncertainty float64              `json:"uncertainty,omitempty"`
	// Measured is the on-line instance's value; RelError is |measured −
	// predicted| / |measured|, Within whether it is at most the study's
	// check threshold (Threshold).
	Measured  float64 `json:"measured"`
	RelError  float64 `json:"rel_error"`
	Threshold float64 `json:"threshold"`
	Within    bool    `json:"within"`
	// Window and Samples say how the on-line value was measured; Source
	// what measured it ("on-line auction0-app").
	Window  justrunit.Duration `json:"window"`
	Samples int64              `json:"samples"`
	Source  string             `json:"source,omitempty"`
	Time    time.Time          `json:"time"`
	// Sandbox is a paired check's value: a clone at Point measured over
	// the same live requests as Measured; SandboxRelError is |measured −
	// sandbox| / |measured|. Both absent unless the check was paired.
	Sandbox         *float64 `json:"sandbox,omitempty"`
	SandboxRelError *float64 `json:"sandbox_rel_error,omitempty"`
}

// VerifyErrorBody is what POST /studies/{id}/verify answers when the check
// fails once the verifier has it (the site is busy, a point fails, the
// allocation is not restored): the error, as every failed call answers it,
// and the verifications of the points done before the failure, in the
// success answer's form ([] when none). A request refused before (an
// unknown study, an invalid point) answers ErrorBody alone.
type VerifyErrorBody struct {
	Error         *Error         `json:"error"`
	Verifications []Verification `json:"verifications"`
}

// CheckVerifiable returns an error wrapping ErrConflict when st cannot be
// verified now: it is still pending or running (setting its target's
// allocation would disturb its own measurements), or it has no matrix (m
// nil: nothing to compare with).
func CheckVerifiable(st *justrunit.Study, m *justrunit.Matrix) error {
	switch {
	case st.State == justrunit.StudyPending || st.State == justrunit.StudyRunning:
		return fmt.Errorf("study %s is %s: %w; verify it once it has finished (setting its target's allocation would disturb its experiments)", st.ID, st.State, ErrConflict)
	case m == nil:
		return fmt.Errorf("study %s has no matrix (no experiment finished): %w; nothing to compare the on-line instance with", st.ID, ErrConflict)
	}
	return nil
}

// DefaultVerifyPoints chooses the points "study verify" measures when none
// are named: the points a quarter, half and three quarters along every
// parameter of st's space (on a 1-D space cpu=20..100 step 10: 40, 60, 80).
// With an SLA and a matrix, the least measured allocation meeting the SLA
// (driver.LeastPassing) replaces the nearest of them, since a decision rests
// on it. One without a prediction (unmeasurable, or not filled) moves to
// the nearest point with one. Points are in the space's order, without
// repeats.
func DefaultVerifyPoints(st *justrunit.Study, m *justrunit.Matrix) []justrunit.Point {
	var idx []int
	for _, f := range []float64{0.25, 0.5, 0.75} {
		c := make([]int, len(st.Space.Params))
		for d, p := range st.Space.Params {
			c[d] = int(math.Round(f * float64(len(p.Values)-1)))
		}
		idx = append(idx, st.Space.Flat(c))
	}
	if st.SLA != nil && m != nil {
		if p, ok, err := driver.LeastPassing(m, *st.SLA, ""); err == nil && ok {
			if li, err := st.Space.IndexOf(p); err == nil && !slices.Contains(idx, li) {
				nearest := 0
				for k := range idx {
					if abs(idx[k]-li) < abs(idx[nearest]-li) {
						nearest = k
					}
				}
				idx[nearest] = li
			}
		}
	}
	if m != nil && len(m.Rows) == st.Space.Size() {
		// A point without a prediction (unmeasurable, or not filled)
		// has nothing to check: the nearest one with one instead.
		for k, i := range idx {
			if m.Rows[i].Predicted() {
				continue
			}
			for d := 1; d < len(m.Rows); d++ {
				if j := i - d; j >= 0 && m.Rows[j].Predicted() && !slices.Contains(idx, j) {
					idx[k] = j
					break
				}
				if j := i + d; j < len(m.Rows) && m.Rows[j].Predicted() && !slices.Contains(idx, j) {
					idx[k] = j
					break
				}
			}
		}
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	pts := make([]justrunit.Point, len(idx))
	for k, i := range idx {
		pts[k] = st.Space.At(i)
	}
	return pts
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// handleVerify answers POST /studies/{id}/verify: 200 with a Verification
// per point and metric, or, when the check fails once started,
// VerifyErrorBody: the error with the points done before it. An on-line
// instance left at a check's allocation answers 500 with code
// not_restored, whatever the cause.
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	v, ok := s.cfg.Site.(Verifier)
	if !ok {
		msg := msgNoVerifySite
		if s.cfg.Site != nil {
			msg = msgNoVerifier
		}
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: msg})
		return
	}
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	var q VerifyRequest
	if r.ContentLength != 0 { // no body: the defaults
		if err := decodeBody(w, r, &q); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	m, err := s.cfg.Store.Matrix(r.Context(), st.ID)
	if err != nil && !errors.Is(err, justrunit.ErrNotFound) {
		s.writeError(w, r, err)
		return
	}
	spec, err := q.Spec(st, m)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := CheckVerifiable(st, m); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, end, err := s.beginOp(r, "verification of study "+st.ID, true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer end()
	vs, err := v.Verify(ctx, st, m, spec)
	if err != nil {
		// Not when a restore failed: the caller must see not_restored.
		if errors.Is(context.Cause(ctx), errClosing) && !errors.Is(err, justrunit.ErrNotRestored) {
			err = &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
				Message: "verification stopped: " + errClosing.Error() + " (the on-line instance's allocation is restored): " + err.Error()}
		}
		e := s.answerError(w, r, err)
		writeJSON(w, e.Status, VerifyErrorBody{Error: e, Verifications: orEmpty(vs)})
		return
	}
	writeJSON(w, http.StatusOK, orEmpty(vs))
}
