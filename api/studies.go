package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
)

// Study defaults for StudyRequest fields left empty; the same as a study
// file's.
const (
	DefaultWarmUp         = 10 * time.Second
	DefaultWindow         = 30 * time.Second
	DefaultSlots          = 1
	DefaultCheckThreshold = 0.1
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// StudyRequest is the body of POST /api/v1/studies: a study in the form of
// a study file, parameters and SLA written as on the command line.
type StudyRequest struct {
	Name   string `json:"name,omitempty"`
	Target string `json:"target"`
	// Parameters are "cpu=20..100 step 10", "freq=1.2,1.8,2.4",
	// "mem=256,512".
	Parameters []string `json:"parameters"`
	// Metrics default to justrunit.DefaultMetrics.
	Metrics []justrunit.Metric `json:"metrics,omitempty"`
	// SLA is "METRIC<=MAX" or, for throughput, "METRIC>=MIN", e.g.
	// "rt_p95<=50" or "throughput>=900".
	SLA string `json:"sla,omitempty"`
	// TimeBound, WarmUp and Window are durations such as "5m", "10s". A
	// bound of N × (warm-up + window) runs N experiments on each slot;
	// their overhead beyond that may run the study up to a tenth past the
	// bound (study.Grace).
	TimeBound string `json:"time_bound"`
	WarmUp    string `json:"warm_up,omitempty"`
	Window    string `json:"window,omitempty"`
	Slots     int    `json:"slots,omitempty"`
	// Strategy is grid, adaptive or sla; Interpolator linear or gp.
	Strategy       string  `json:"strategy,omitempty"`
	Interpolator   string  `json:"interpolator,omitempty"`
	CheckThreshold float64 `json:"check_threshold,omitempty"`
	// MinSamples is the fewest successful responses a window needs; 0 takes
	// the site's default (100).
	MinSamples int64 `json:"min_samples,omitempty"`
}

// Study converts the request into a validated study; errors name the field
// as the request spells it.
func (q *StudyRequest) Study() (*justrunit.Study, error) {
	st := &justrunit.Study{
		Name: q.Name, Target: q.Target, Metrics: q.Metrics, Slots: q.Slots,
		Strategy: q.Strategy, Interpolator: q.Interpolator, CheckThreshold: q.CheckThreshold,
		MinSamples: q.MinSamples,
		WarmUp:     justrunit.Duration(DefaultWarmUp), Window: justrunit.Duration(DefaultWindow),
	}
	if len(q.Parameters) == 0 {
		return nil, justrunit.Invalid("parameters", nil, `name at least one, e.g. ["cpu=20..100 step 10"]`)
	}
	for i, ps := range q.Parameters {
		p, err := justrunit.ParseParameter(ps)
		if err != nil {
			var fe *justrunit.FieldError
			if errors.As(err, &fe) {
				return nil, &justrunit.FieldError{Field: fmt.Sprintf("parameters[%d]", i), Value: ps, Msg: fe.Error()}
			}
			return nil, err
		}
		st.Space.Params = append(st.Space.Params, p)
	}
	if q.SLA != "" {
		sla, err := justrunit.ParseSLA(q.SLA)
		if err != nil {
			return nil, err
		}
		st.SLA = &sla
	}
	for _, d := range []struct {
		field, v string
		dst      *justrunit.Duration
	}{{"time_bound", q.TimeBound, &st.TimeBound}, {"warm_up", q.WarmUp, &st.WarmUp}, {"window", q.Window, &st.Window}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil {
			return nil, justrunit.Invalid(d.field, d.v, "not a duration; write e.g. 30s or 5m")
		}
		*d.dst = justrunit.Duration(v)
	}
	if q.TimeBound == "" {
		return nil, justrunit.Invalid("time_bound", nil, "say how long the study may run experiments, e.g. 5m")
	}
	if st.Slots == 0 {
		st.Slots = DefaultSlots
	}
	if st.CheckThreshold == 0 {
		st.CheckThreshold = DefaultCheckThreshold
	}
	st.FillMetrics()
	return st, st.Validate()
}

// StudyExport is a study with everything recorded about it: what GET
// /api/v1/studies/{id}/export answers and "justrunit study export" writes.
// It is the store's type, so that a store's Export and Client.Export are
// the one Exporter LoadExport looks for.
type StudyExport = justrunit.StudyExport

func (s *Server) handleListStudies(w http.ResponseWriter, r *http.Request) {
	if st := r.URL.Query().Get("state"); st != "" && !slices.Contains(justrunit.StudyStates, justrunit.StudyState(st)) {
		s.writeError(w, r, justrunit.Invalid("state", st, "want one of %v", justrunit.StudyStates))
		return
	}
	studies, err := s.cfg.Store.Studies(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if studies == nil {
		studies = []*justrunit.Study{}
	}
	if st := r.URL.Query().Get("state"); st != "" {
		kept := studies[:0]
		for _, x := range studies {
			if string(x.State) == st {
				kept = append(kept, x)
			}
		}
		studies = kept
	}
	writeJSON(w, http.StatusOK, studies)
}

func (s *Server) handleCreateStudy(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Runner == nil {
		msg := msgNoRunner
		if s.cfg.Site != nil {
			msg = msgNoExperimenter
		}
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: msg})
		return
	}
	var q StudyRequest
	if err := decodeBody(w, r, &q); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := q.Study()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Runner.Start(r.Context(), st); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", Prefix+"/studies/"+st.ID)
	writeJSON(w, http.StatusCreated, st)
}

// decodeBody reads one JSON value into v. A body not sent as
// "Content-Type: application/json" is refused (415) before it is read, so
// that a form another site's page posts is never taken for a call; a body
// over maxBody is 413; unknown fields and trailing data are validation
// errors naming "body".
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	if err := checkJSONType(r); err != nil {
		return err
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return justrunit.Invalid(te.Field, nil, "want a JSON %s", te.Type)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return justrunit.Invalid(strings.Trim(f, `"`), nil, "unknown field")
		}
		if tooLarge(err) {
			return errTooLarge()
		}
		return justrunit.Invalid("body", nil, "not a JSON object of the documented form: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if tooLarge(err) {
			return errTooLarge()
		}
		return justrunit.Invalid("body", nil, "one JSON object only")
	}
	return nil
}

// errTooLarge answers a request body over maxBody.
func errTooLarge() error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
		Message: fmt.Sprintf("request body over %d bytes; the API's bodies are small JSON objects", maxBody)}
}

func tooLarge(err error) bool {
	var mb *http.MaxBytesError
	return errors.As(err, &mb)
}

// checkJSONType refuses a request whose body is not declared JSON.
func checkJSONType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "application/json" {
		return nil
	}
	got := "none"
	if ct != "" {
		got = strconv.Quote(ct)
	}
	return &Error{Status: http.StatusUnsupportedMediaType, Code: CodeMediaType,
		Message: "send the body as JSON with \"Content-Type: application/json\" (got " + got + ")"}
}

func (s *Server) study(w http.ResponseWriter, r *http.Request) (*justrunit.Study, bool) {
	st, err := s.cfg.Store.Study(r.Context(), r.PathValue("id"))
	if err != nil {
		if errors.Is(err, justrunit.ErrNotFound) {
			err = &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no study " + r.PathValue("id")}
		}
		s.writeError(w, r, err)
		return nil, false
	}
	return st, true
}

func (s *Server) handleGetStudy(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.study(w, r); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *Server) handleCancelStudy(w http.ResponseWriter, r *http.Request) {
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	if st.State != justrunit.StudyPending && st.State != justrunit.StudyRunning {
		s.writeError(w, r, &Error{Status: http.StatusConflict, Code: CodeConflict,
			Message: fmt.Sprintf("study %s is %s; only pending or running studies can be cancelled", st.ID, st.State)})
		return
	}
	if s.cfg.Runner == nil {
		s.writeError(w, r, &Error{Status: http.StatusConflict, Code: CodeConflict,
			Message: fmt.Sprintf("study %s is %s in another process (%s), not in this daemon, which runs no studies; stop that process to cancel it", st.ID, st.State, st.Owner)})
		return
	}
	if err := s.cfg.Runner.Cancel(r.Context(), st.ID); err != nil {
		if errors.Is(err, justrunit.ErrNotFound) {
			err = &Error{Status: http.StatusConflict, Code: CodeConflict,
				Message: fmt.Sprintf("study %s is %s in another process (%s), not in this daemon; stop that process to cancel it", st.ID, st.State, st.Owner)}
			if o, ok := s.cfg.Runner.(interface{ Owner() string }); ok && st.Owner != "" && st.Owner == o.Owner() {
				// This process's, but not posted to it: the manager's.
				err = &Error{Status: http.StatusConflict, Code: CodeConflict,
					Message: fmt.Sprintf("study %s is the manager's (this daemon runs it as part of its response to an SLA violation), not one posted to the daemon: it ends with that response, or when the daemon stops", st.ID)}
			}
			if now, gerr := s.cfg.Store.Study(r.Context(), st.ID); gerr == nil && now.State != justrunit.StudyPending && now.State != justrunit.StudyRunning {
				// It ended between the read above and the cancel.
				err = &Error{Status: http.StatusConflict, Code: CodeConflict,
					Message: fmt.Sprintf("study %s is %s; only pending or running studies can be cancelled", st.ID, now.State)}
			}
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": st.ID, "status": "cancelling"})
}

func (s *Server) handleMatrix(w http.ResponseWriter, r *http.Request) {
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	m, err := s.cfg.Store.Matrix(r.Context(), st.ID)
	if errors.Is(err, justrunit.ErrNotFound) {
		err = &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "study " + st.ID + " has no matrix yet (no experiment finished)"}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) handleObservations(w http.ResponseWriter, r *http.Request) {
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	obs, err := s.cfg.Store.Observations(r.Context(), st.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if obs == nil {
		obs = []justrunit.Observation{}
	}
	writeJSON(w, http.StatusOK, obs)
}

func (s *Server) handleChecks(w http.ResponseWriter, r *http.Request) {
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	cs, err := s.cfg.Store.Checks(r.Context(), st.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cs == nil {
		cs = []justrunit.CheckResult{}
	}
	writeJSON(w, http.StatusOK, cs)
}

func (s *Server) handleExport(w http.ResponseWriter, r *http.Request) {
	st, ok := s.study(w, r)
	if !ok {
		return
	}
	e, err := LoadExport(r.Context(), s.cfg.Store, st.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// eventFilter reads ?study=&kind=&after=&limit=&newest=. A kind ending in ".*"
// names a family ("manager.*").
func eventFilter(r *http.Request) (justrunit.EventFilter, error) {
	q := r.URL.Query()
	f := justrunit.EventFilter{StudyID: q.Get("study"), Kind: q.Get("kind")}
	switch v := q.Get("after"); v {
	case "":
	case "latest":
		f.AfterID = afterLatest
	default:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return f, justrunit.Invalid("after", v, "want an event ID ≥ 0 or \"latest\"")
		}
		f.AfterID = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return f, justrunit.Invalid("limit", v, "want 1..10000")
		}
		f.Limit = n
	}
	if v := q.Get("newest"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return f, justrunit.Invalid("newest", v, "want true or false")
		}
		f.Newest = b
	}
	return f, nil
}

// afterLatest in EventFilter.AfterID stands for the newest event's ID.
const afterLatest = -1

// maxEvents bounds one answer of GET /events when no limit is given.
const maxEvents = 1000

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	f, err := eventFilter(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if f.Limit == 0 {
		f.Limit = maxEvents
	}
	out := []justrunit.Event{}
	if f.AfterID != afterLatest { // none after the newest
		evs, err := s.cfg.Store.Events(r.Context(), f)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out = append(out, evs...)
	}
	writeJSON(w, http.StatusOK, out)
}

// lastEventID returns the ID of the newest event matching f, 0 when none.
func (s *Server) lastEventID(r *http.Request, f justrunit.EventFilter) (int64, error) {
	f.AfterID, f.Limit, f.Newest = 0, 1, true
	evs, err := s.cfg.Store.Events(r.Context(), f)
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	return evs[0].ID, nil
}
