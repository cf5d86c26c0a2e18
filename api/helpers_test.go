package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/metrics"
	"github.com/justrunit/justrunit/interp"
	"github.com/justrunit/justrunit/store/sqlite"
)

const testToken = "test-token-0123456789"

// curveRunner is a test double for the experimenter (outside the unit under
// test): it "measures" response times from a known curve of the cpu share,
// taking hold per experiment, and returns early when ctx ends.
type curveRunner struct {
	hold time.Duration
	runs atomic.Int64
}

// knee is a response-time curve: saturated at or below 40% of a core, 80 ms
// at 50%, 50 ms at 60%, 35 ms at a full core.
func knee(cpu float64) float64 {
	if cpu <= 40 {
		return 1000
	}
	return 20 + 600/(cpu-40)
}

func (r *curveRunner) Run(ctx context.Context, p justrunit.Point) (justrunit.Observation, error) {
	r.runs.Add(1)
	select {
	case <-time.After(r.hold):
	case <-ctx.Done():
		return justrunit.Observation{}, ctx.Err()
	}
	rt := knee(p[0])
	return justrunit.Observation{
		Point: p, Window: justrunit.Duration(r.hold), Samples: 1000, Throughput: 100,
		RT:        justrunit.ResponseTime{Mean: rt * 0.7, P50: rt * 0.6, P95: rt, P99: rt * 1.3},
		Energy:    justrunit.Energy{PerRequest: 0.5, Source: justrunit.EnergyModel},
		MatchRate: 1, Stop: "window", Source: "test curve",
	}, nil
}

// closeCounter records that the experimenter was torn down.
type closeCounter struct{ n atomic.Int64 }

func (c *closeCounter) Close() error { c.n.Add(1); return nil }

// daemon is a Server on a real loopback HTTP listener with a real store.
type daemon struct {
	t       *testing.T
	store   *sqlite.Store
	srv     *Server
	hs      *httptest.Server
	runner  *EngineRunner
	exp     *curveRunner
	closers *closeCounter
	reg     *prometheus.Registry
	set     *metrics.Set
}

type daemonOpts struct {
	noRunner bool
	noAuth   bool
	hold     time.Duration
	site     SiteView
	planner  Planner
	// wrap, when set, wraps the server's handler.
	wrap func(http.Handler) http.Handler
	// names are the daemon's further names (Config.Names).
	names []string
}

func newDaemon(t *testing.T, o daemonOpts) *daemon {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "justrunit.db"))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, store: st, exp: &curveRunner{hold: o.hold}, closers: &closeCounter{}, reg: prometheus.NewRegistry()}
	d.set = metrics.New(d.reg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{Store: st, Token: testToken, Logger: log, Metrics: d.reg, PollInterval: 50 * time.Millisecond, Site: o.site, Planner: o.planner}
	if o.noAuth {
		cfg.Token, cfg.NoAuth = "", true
	}
	if !o.noRunner {
		d.runner, err = NewEngineRunner(EngineRunnerConfig{Store: st, Logger: log, Owner: sqlite.OwnerID(), Metrics: d.set,
			NewRunner: func(ctx context.Context, s *justrunit.Study) (justrunit.Runner, io.Closer, error) {
				return d.exp, d.closers, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Runner = d.runner
	}
	// The server's listener first, so that the daemon knows its address
	// (Config.Listen) as serve's does.
	var h http.Handler
	d.hs = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	cfg.Listen, cfg.Names = d.hs.Listener.Addr(), o.names
	if d.srv, err = New(cfg); err != nil {
		d.hs.Close()
		t.Fatal(err)
	}
	h = d.srv
	if o.wrap != nil {
		h = o.wrap(h)
	}
	d.hs.Start()
	t.Cleanup(func() {
		d.srv.Close()
		d.hs.Close()
		if d.runner != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.runner.Close(ctx); err != nil {
				t.Error(err)
			}
		}
		st.Close()
	})
	return d
}

func (d *daemon) client() *Client { return NewClient(d.hs.URL, testToken) }

// call makes a request with the token (when tok is not empty) and returns
// the status and body. A body is sent as JSON (a string as it is).
func (d *daemon) call(method, path, tok string, body any) (int, []byte) {
	d.t.Helper()
	hd := http.Header{}
	if body != nil {
		hd.Set("Content-Type", "application/json")
	}
	return d.callWith(method, path, tok, hd, body)
}

// callWith is call with the request headers hd (Host sets the request's
// Host).
func (d *daemon) callWith(method, path, tok string, hd http.Header, body any) (int, []byte) {
	d.t.Helper()
	var rd io.Reader
	if body != nil {
		if s, ok := body.(string); ok {
			rd = bytes.NewBufferString(s)
		} else {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
	}
	req, _ := http.NewRequest(method, d.hs.URL+path, rd)
	for k, v := range hd {
		req.Header[k] = v
	}
	if h := hd.Get("Host"); h != "" {
		req.Host = h
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := d.hs.Client().Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// waitFor polls cond until it holds or the timeout ends.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitState waits for study id to reach state.
func (d *daemon) waitState(id string, state justrunit.StudyState) *justrunit.Study {
	d.t.Helper()
	var st *justrunit.Study
	waitFor(d.t, 20*time.Second, "study "+id+" "+string(state), func() bool {
		var err error
		st, err = d.store.Study(context.Background(), id)
		return err == nil && st.State == state
	})
	return st
}

// seedStudy stores a finished study over cpu=20..100 step 10 with rt_p95 and
// throughput measured at 20, 40, 60 and 100, the rest interpolated, and the
// cell at 70 used by a decision (T). It returns the study and its matrix.
func seedStudy(t *testing.T, s justrunit.Store) (*justrunit.Study, *justrunit.Matrix) {
	t.Helper()
	ctx := context.Background()
	cpu, _ := justrunit.ParseParameter("cpu=20..100 step 10")
	st := &justrunit.Study{Name: "seeded", Target: "auction0/app", Space: justrunit.Space{Params: []justrunit.Parameter{cpu}},
		Metrics: []justrunit.Metric{justrunit.RTP95, justrunit.Throughput}, SLA: &justrunit.SLA{Metric: justrunit.RTP95, Max: 50},
		Window: justrunit.Duration(30 * time.Second), WarmUp: justrunit.Duration(5 * time.Second), TimeBound: justrunit.Duration(3 * time.Minute),
		Slots: 1, Strategy: "sla", Interpolator: "linear", CheckThreshold: 0.1, State: justrunit.StudyDone,
		Started: time.Now().Add(-3 * time.Minute), Finished: time.Now(), Experiments: 4}
	if err := s.CreateStudy(ctx, st); err != nil {
		t.Fatal(err)
	}
	m, err := justrunit.NewMatrix(st.Space, st.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []float64{20, 40, 60, 100} {
		rt := knee(c + 5) // keep the saturated corner finite and varied
		o := justrunit.Observation{Point: justrunit.Point{c}, Samples: 5000, Throughput: 90 + c/10, RT: justrunit.ResponseTime{P95: rt, Mean: rt * 0.7}}
		if err := m.Record(o); err != nil {
			t.Fatal(err)
		}
		if err := s.AddObservation(ctx, st.ID, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := interp.NewLinear().Interpolate(m); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Use(justrunit.Point{70}, justrunit.RTP95); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveMatrix(ctx, st.ID, m); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*justrunit.Event{
		{StudyID: st.ID, Kind: justrunit.EventStudyStarted, Level: "info", Message: "study started"},
		{StudyID: st.ID, Kind: justrunit.EventStudyFinished, Level: "info", Message: "study done"},
	} {
		if err := s.AddEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	return st, m
}

func decodeError(t *testing.T, b []byte) *Error {
	t.Helper()
	var eb ErrorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error == nil {
		t.Fatalf("error body %s: %v", b, err)
	}
	return eb.Error
}

// clearClientEnv unsets, for the test, the environment Discover reads.
func clearClientEnv(t *testing.T) {
	for _, k := range []string{EnvServer, EnvToken, EnvTokenFile, EnvCAFile} {
		t.Setenv(k, "")
	}
}

// tokenSeen records whether a request served through watch carried a
// token.
type tokenSeen struct{ atomic.Bool }

func (s *tokenSeen) watch(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			s.Store(true)
		}
		h.ServeHTTP(w, r)
	})
}
