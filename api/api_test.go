package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/metrics"
)

func TestAuthRequired(t *testing.T) {
	d := newDaemon(t, daemonOpts{})
	st, _ := seedStudy(t, d.store)
	for _, rt := range d.srv.routes() {
		path := strings.ReplaceAll(rt.pattern, "{id}", st.ID)
		t.Run(rt.method+" "+rt.pattern, func(t *testing.T) {
			for _, tok := range []string{"", "wrong-token"} {
				code, body := d.call(rt.method, path, tok, nil)
				if !rt.auth {
					if code != http.StatusOK {
						t.Errorf("%s %s without token = %d, want 200 (public)", rt.method, path, code)
					}
					continue
				}
				if code != http.StatusUnauthorized {
					t.Fatalf("%s %s with token %q = %d %s, want 401", rt.method, path, tok, code, body)
				}
				if e := decodeError(t, body); e.Code != CodeUnauthorized {
					t.Errorf("error code = %q, want %q", e.Code, CodeUnauthorized)
				}
			}
		})
	}
	// Unknown API paths need the token too (they reveal nothing without it).
	if code, _ := d.call("GET", Prefix+"/nope", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET %s/nope without token = %d, want 401", Prefix, code)
	}
	if code, body := d.call("GET", Prefix+"/nope", testToken, nil); code != http.StatusNotFound {
		t.Errorf("GET %s/nope = %d %s, want 404", Prefix, code, body)
	}
	code, body := d.call("GET", Prefix+"/studies", testToken, nil)
	if code != http.StatusOK || !strings.Contains(string(body), st.ID) {
		t.Errorf("GET /studies with the token = %d %s", code, body)
	}
}

func TestNewRefusesNoToken(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	if _, err := New(Config{Store: d.store}); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("New without a token = %v, want ErrInvalid", err)
	}
	if _, err := New(Config{Store: d.store, NoAuth: true}); err != nil {
		t.Errorf("New with NoAuth = %v", err)
	}
}

func TestCreateStudyRunsAndMatrixIsFetched(t *testing.T) {
	d := newDaemon(t, daemonOpts{hold: 30 * time.Millisecond})
	c := d.client()
	ctx := context.Background()
	st, err := c.CreateStudy(ctx, StudyRequest{
		Target: "auction0/app", Parameters: []string{"cpu=20..100 step 20"}, SLA: "rt_p95<=50",
		TimeBound: "20s", WarmUp: "0s", Window: "30ms", Strategy: "grid", MinSamples: 60,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.ID == "" || st.State != justrunit.StudyPending || st.MinSamples != 60 {
		t.Fatalf("created study = %+v, want an ID, state pending and min_samples 60", st)
	}
	done := d.waitState(st.ID, justrunit.StudyDone)
	if done.Experiments != 5 {
		t.Errorf("experiments = %d, want 5 (grid over 5 points)", done.Experiments)
	}
	m, err := c.Matrix(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Counts()[justrunit.Measured]; got != 5*len(m.Metrics) {
		t.Errorf("measured cells = %d, want %d", got, 5*len(m.Metrics))
	}
	cell, err := m.Cell(justrunit.Point{60}, justrunit.RTP95)
	if err != nil || cell.Value != knee(60) || cell.Prov != justrunit.Measured {
		t.Errorf("cell cpu=60 rt_p95 = %+v, %v; want %v X", cell, err, knee(60))
	}
	e, err := c.Export(ctx, st.ID)
	if err != nil || len(e.Observations) != 5 || e.Matrix == nil {
		t.Fatalf("export = %+v, %v", e, err)
	}
	kinds := map[string]int{}
	for _, ev := range e.Events {
		kinds[ev.Kind]++
	}
	if kinds[justrunit.EventStudyStarted] != 1 || kinds[justrunit.EventStudyFinished] != 1 || kinds[justrunit.EventExperimentDone] != 5 {
		t.Errorf("event kinds = %v", kinds)
	}
	waitFor(t, 5*time.Second, "the experimenter torn down", func() bool { return d.closers.n.Load() == 1 })
	// Cancelling a finished study is a conflict.
	if err := c.CancelStudy(ctx, st.ID); !errors.Is(err, ErrConflict) {
		t.Errorf("cancel of a done study = %v, want ErrConflict", err)
	}
}

func TestCreateStudyValidation(t *testing.T) {
	d := newDaemon(t, daemonOpts{})
	good := `"target":"app0","parameters":["cpu=20..100 step 20"],"time_bound":"1m","window":"1s","warm_up":"0s"`
	tests := []struct {
		name, body, field string
	}{
		{"no target", `{"parameters":["cpu=20..100 step 20"],"time_bound":"1m"}`, "target"},
		{"no parameters", `{"target":"app0","time_bound":"1m"}`, "parameters"},
		{"bad parameter", `{"target":"app0","parameters":["cpu=100..20 step 20"],"time_bound":"1m"}`, "parameters[0]"},
		{"bad duration", `{"target":"app0","parameters":["cpu=20..100 step 20"],"time_bound":"soon"}`, "time_bound"},
		{"no time bound", `{"target":"app0","parameters":["cpu=20..100 step 20"]}`, "time_bound"},
		{"bound below one experiment", `{"target":"app0","parameters":["cpu=20..100 step 20"],"time_bound":"1s","window":"30s"}`, "time_bound"},
		{"bad sla", `{` + good + `,"sla":"rt_p95<50"}`, "sla"},
		{"unknown metric", `{` + good + `,"metrics":["latency"]}`, "metrics[0]"},
		{"sla strategy without sla", `{` + good + `,"strategy":"sla"}`, "sla"},
		{"unknown strategy", `{` + good + `,"strategy":"random"}`, "strategy"},
		{"unknown interpolator", `{` + good + `,"interpolator":"cubic"}`, "interpolator"},
		{"bad slots", `{` + good + `,"slots":-1}`, "slots"},
		{"too few samples", `{` + good + `,"min_samples":5}`, "min_samples"},
		{"unknown field", `{` + good + `,"cpu":50}`, "cpu"},
		{"wrong type", `{"target":7}`, "target"},
		{"not json", `target=app0`, "body"},
		{"two objects", `{` + good + `}{}`, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := d.call("POST", Prefix+"/studies", testToken, tt.body)
			if code != http.StatusBadRequest {
				t.Fatalf("POST /studies %s = %d %s, want 400", tt.body, code, body)
			}
			if e := decodeError(t, body); e.Code != CodeInvalid || e.Field != tt.field {
				t.Errorf("error = %+v, want code invalid, field %q", e, tt.field)
			}
		})
	}
	if studies, _ := d.store.Studies(context.Background()); len(studies) != 0 {
		t.Errorf("invalid requests stored %d studies", len(studies))
	}
}

func TestWithoutRunnerOrSite(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	st, m := seedStudy(t, d.store)
	c := d.client()
	ctx := context.Background()
	_, err := c.CreateStudy(ctx, StudyRequest{Target: "app0", Parameters: []string{"cpu=20..100 step 20"}, TimeBound: "1m"})
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "no site") {
		t.Errorf("create without a runner = %v, want 503 saying the daemon runs no site", err)
	}
	// Read-only calls work from the store.
	got, err := c.Matrix(ctx, st.ID)
	if err != nil || got.Counts()[justrunit.Measured] != m.Counts()[justrunit.Measured] || got.Counts()[justrunit.Used] != 1 {
		t.Errorf("matrix = %v, %v", got.Counts(), err)
	}
	for _, path := range []string{"/site", "/hosts", "/instances", "/services/samples"} {
		code, body := d.call("GET", Prefix+path, testToken, nil)
		if code != http.StatusServiceUnavailable || decodeError(t, body).Code != CodeUnavailable {
			t.Errorf("GET %s = %d %s, want 503 unavailable", path, code, body)
		}
	}
	for _, p := range [][2]string{{"GET", "/plans"}, {"POST", "/plans"}, {"POST", "/plans/p1/apply"}} {
		code, body := d.call(p[0], Prefix+p[1], testToken, nil)
		if code != http.StatusServiceUnavailable || decodeError(t, body).Code != CodeUnavailable {
			t.Errorf("%s %s = %d %s, want 503 (no manager)", p[0], p[1], code, body)
		}
	}
	in, err := c.Info(ctx)
	if err != nil || in.Runner || in.Site || len(in.Missing) == 0 {
		t.Errorf("info = %+v, %v", in, err)
	}
	if _, err := c.Study(ctx, "s-nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("unknown study = %v, want ErrNotFound", err)
	}
}

func TestCancelAndShutdown(t *testing.T) {
	d := newDaemon(t, daemonOpts{hold: time.Hour}) // experiments end only by cancellation
	c := d.client()
	ctx := context.Background()
	req := StudyRequest{Target: "app0", Parameters: []string{"cpu=20..100 step 20"}, TimeBound: "10h", Window: "1h", WarmUp: "0s", Strategy: "grid"}
	a, err := c.CreateStudy(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	d.waitState(a.ID, justrunit.StudyRunning)
	// A second study waits for the first (one study at a time).
	b, err := c.CreateStudy(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CancelStudy(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	st := d.waitState(a.ID, justrunit.StudyCancelled)
	if st.Finished.IsZero() {
		t.Errorf("cancelled study has no finish time")
	}
	d.waitState(b.ID, justrunit.StudyRunning)
	if err := c.CancelStudy(ctx, "s-nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("cancel of an unknown study = %v, want ErrNotFound", err)
	}

	// Shutting down interrupts the running study and refuses new ones.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.runner.Close(sctx); err != nil {
		t.Fatal(err)
	}
	st = d.waitState(b.ID, justrunit.StudyInterrupted)
	if !strings.Contains(st.Error, "shut down") {
		t.Errorf("interrupted study's error = %q", st.Error)
	}
	evs, _ := d.store.Events(ctx, justrunit.EventFilter{StudyID: b.ID, Kind: justrunit.EventStudyInterrupted})
	if len(evs) != 1 {
		t.Errorf("study.interrupted events = %d, want 1", len(evs))
	}
	if _, err := c.CreateStudy(ctx, req); !errors.Is(err, ErrUnavailable) {
		t.Errorf("create after shutdown = %v, want ErrUnavailable", err)
	}
	if n := d.closers.n.Load(); n != 2 {
		t.Errorf("experimenters torn down = %d, want 2", n)
	}
}

func TestEvents(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	st, _ := seedStudy(t, d.store)
	ctx := context.Background()
	for _, k := range []string{"manager.sla_violated", "manager.migrate"} {
		if err := d.store.AddEvent(ctx, &justrunit.Event{Kind: k, Level: "info", Message: k}); err != nil {
			t.Fatal(err)
		}
	}
	c := d.client()
	all, err := c.Events(ctx, justrunit.EventFilter{})
	if err != nil || len(all) != 4 {
		t.Fatalf("events = %d, %v; want 4", len(all), err)
	}
	var mgr []justrunit.Event
	code, body := d.call("GET", Prefix+"/events?kind=manager.*", testToken, nil)
	if code != 200 || json.Unmarshal(body, &mgr) != nil || len(mgr) != 2 {
		t.Errorf("manager events = %d %s", code, body)
	}
	own, _ := c.Events(ctx, justrunit.EventFilter{StudyID: st.ID, AfterID: all[0].ID})
	if len(own) != 1 || own[0].Kind != justrunit.EventStudyFinished {
		t.Errorf("study events after the first = %+v", own)
	}
	if code, body := d.call("GET", Prefix+"/events?after=x", testToken, nil); code != 400 || decodeError(t, body).Field != "after" {
		t.Errorf("bad after = %d %s", code, body)
	}
	// The newest, still in ID order: what a page of recent actions shows.
	var newest []justrunit.Event
	code, body = d.call("GET", Prefix+"/events?newest=true&limit=3", testToken, nil)
	if code != 200 || json.Unmarshal(body, &newest) != nil || len(newest) != 3 || newest[0].ID != all[1].ID || newest[2].ID != all[3].ID {
		t.Errorf("newest 3 = %d %s, want events %d..%d", code, body, all[1].ID, all[3].ID)
	}
	// The client asks for the newest too.
	if got, err := c.Events(ctx, justrunit.EventFilter{Limit: 2, Newest: true}); err != nil || len(got) != 2 || got[0].ID != all[2].ID || got[1].ID != all[3].ID {
		t.Errorf("client's newest 2 = %+v, %v; want events %d and %d", got, err, all[2].ID, all[3].ID)
	}
	if got, err := c.Events(ctx, justrunit.EventFilter{Newest: true}); err != nil || len(got) != 4 {
		t.Errorf("client's newest of all = %d, %v; want all 4", len(got), err)
	}
}

// TestListStudiesByState: GET /studies?state= keeps the studies in that
// state, and refuses a state that is none, naming the field.
func TestListStudiesByState(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	st, _ := seedStudy(t, d.store)
	var got []justrunit.Study
	code, body := d.call("GET", Prefix+"/studies?state="+string(st.State), testToken, nil)
	if code != 200 || json.Unmarshal(body, &got) != nil || len(got) != 1 {
		t.Errorf("studies in state %s = %d %s, want the one", st.State, code, body)
	}
	code, body = d.call("GET", Prefix+"/studies?state=runing", testToken, nil)
	if e := decodeError(t, body); code != 400 || e.Field != "state" || !strings.Contains(e.Message, "running") {
		t.Errorf("studies?state=runing = %d %s, want 400 naming state and the states there are", code, body)
	}
}

// TestEventStreamResumes checks that a reconnecting EventSource, which
// keeps its ?after=latest and says what it saw with Last-Event-ID, gets
// every event stored since, not only the ones stored after it is back.
func TestEventStreamResumes(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	seedStudy(t, d.store) // events 1 and 2
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", d.hs.URL+Prefix+"/events/stream?after=latest", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Last-Event-ID", "1")
	resp, err := d.hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var got justrunit.Event
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			if got.ID != 2 {
				t.Errorf("first event after Last-Event-ID 1 = %+v, want ID 2", got)
			}
			break
		}
	}
	d.srv.Close()
	for sc.Scan() {
	}
}

func TestEventStream(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	seedStudy(t, d.store) // two events before the stream opens
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", d.hs.URL+Prefix+"/events/stream?after=latest", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := d.hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	// Events added now, by any writer of the store, arrive on the stream.
	go d.store.AddEvent(context.Background(), &justrunit.Event{Kind: "manager.expand", Level: "info", Message: "power on pm3"})
	sc := bufio.NewScanner(resp.Body)
	var got justrunit.Event
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if got.Kind != "manager.expand" || got.ID != 3 {
		t.Errorf("first streamed event = %+v, want manager.expand with ID 3 (not the older ones)", got)
	}
	// Closing the server ends the stream.
	d.srv.Close()
	for sc.Scan() {
	}
}

func TestMetrics(t *testing.T) {
	d := newDaemon(t, daemonOpts{hold: 10 * time.Millisecond})
	ctx := context.Background()
	st, err := d.client().CreateStudy(ctx, StudyRequest{Target: "app0", Parameters: []string{"cpu=60..100 step 20"},
		TimeBound: "20s", WarmUp: "0s", Window: "10ms", Strategy: "grid"})
	if err != nil {
		t.Fatal(err)
	}
	d.waitState(st.ID, justrunit.StudyDone)
	// What the proxies and the manager record, through the same Set.
	d.set.ProxyCopiesSent.WithLabelValues("auction0", "app0").Add(120)
	d.set.ProxyCopiesDropped.WithLabelValues("auction0", "app0").Add(2)
	d.set.OutProxyMatchRate.WithLabelValues("auction0", "app0").Set(0.98)
	d.set.ServiceResponseTime.WithLabelValues("auction0", "web").Observe(0.042)
	d.set.ObserveChecks([]justrunit.CheckResult{{Passed: true}, {Passed: false}})

	if code, _ := d.call("GET", "/metrics", "", nil); code != http.StatusUnauthorized {
		t.Errorf("/metrics without token = %d, want 401", code)
	}
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		code, body := d.call("GET", "/metrics", testToken, nil)
		if code != 200 {
			t.Fatalf("/metrics = %d %s", code, body)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
		if err != nil {
			t.Fatalf("parse /metrics: %v\n%s", err, body)
		}
		return fams
	}
	// The study's state is stored before its runner tears the experimenter
	// down and counts it, so the count may come a moment after "done".
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(5 * time.Second)
	counted := func() bool {
		return fams["justrunit_studies_total"] != nil && fams["justrunit_study_duration_seconds"] != nil
	}
	for fams = scrape(); !counted() && time.Now().Before(deadline); fams = scrape() {
		time.Sleep(10 * time.Millisecond)
	}
	for _, name := range metrics.Names() {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	value := func(name, label, want string) float64 {
		for _, m := range fams[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == want {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	if v := value("justrunit_experiments_total", "result", "ok"); v != 3 {
		t.Errorf("experiments ok = %v, want 3", v)
	}
	if v := value("justrunit_studies_total", "state", "done"); v != 1 {
		t.Errorf("studies done = %v, want 1", v)
	}
	if v := fams["justrunit_checker_failures_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("checker failures = %v, want 1", v)
	}
	if h := fams["justrunit_study_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 {
		t.Errorf("study durations observed = %d, want 1", h.GetSampleCount())
	}
}

// TestOpenAPIMatchesRoutes keeps the document and the served routes in step.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for method := range ops {
			if method != "parameters" {
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	s := &Server{}
	for _, rt := range s.routes() {
		served = append(served, rt.method+" "+rt.pattern)
	}
	sort.Strings(documented)
	sort.Strings(served)
	if strings.Join(documented, "\n") != strings.Join(served, "\n") {
		t.Errorf("OpenAPI paths:\n%s\n\nserved routes:\n%s", strings.Join(documented, "\n"), strings.Join(served, "\n"))
	}
	// Every $ref resolves.
	refs := regexp.MustCompile(`"\$ref": "#/components/(\w+)/(\w+)"`).FindAllStringSubmatch(string(OpenAPI), -1)
	var comps map[string]map[string]map[string]json.RawMessage
	json.Unmarshal(OpenAPI, &comps)
	for _, r := range refs {
		if _, ok := comps["components"][r[1]][r[2]]; !ok {
			t.Errorf("dangling $ref #/components/%s/%s", r[1], r[2])
		}
	}
	d := newDaemon(t, daemonOpts{noRunner: true})
	if code, body := d.call("GET", Prefix+"/openapi.json", "", nil); code != 200 || !json.Valid(body) {
		t.Errorf("GET openapi.json = %d", code)
	}
}

type staticSite struct{}

func (staticSite) Hosts(context.Context) ([]justrunit.Host, error) {
	return []justrunit.Host{{Name: "pm0", Class: "std", Cores: 1, On: true}, {Name: "pm1", Class: "std", Cores: 1}}, nil
}

func (staticSite) Instances(context.Context) ([]justrunit.Instance, error) {
	return []justrunit.Instance{{ID: "app0", Service: "auction0", Tier: "app", Host: "pm0", State: "running"}}, nil
}

func TestSite(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true, site: staticSite{}})
	var doc SiteDoc
	code, body := d.call("GET", Prefix+"/site", testToken, nil)
	if code != 200 || json.Unmarshal(body, &doc) != nil || len(doc.Hosts) != 2 || doc.Hosts[1].On || len(doc.Services) != 1 {
		t.Errorf("GET /site = %d %s", code, body)
	}
	// The site view has no response-time samples: 503 says so.
	if code, _ := d.call("GET", Prefix+"/services/samples", testToken, nil); code != http.StatusServiceUnavailable {
		t.Errorf("samples without a sampler = %d, want 503", code)
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "token")
	tok, created, err := LoadOrCreateToken(path)
	if err != nil || !created || len(tok) < 40 {
		t.Fatalf("LoadOrCreateToken = %q, %v, %v", tok, created, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %o, want 600", fi.Mode().Perm())
	}
	again, created, err := LoadOrCreateToken(path)
	if err != nil || created || again != tok {
		t.Errorf("second LoadOrCreateToken = %q, %v, %v; want the same token", again, created, err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateToken(path); !errors.Is(err, justrunit.ErrInvalid) {
		t.Errorf("world-readable token file = %v, want ErrInvalid", err)
	}
}

// TestTokenFileRace: daemons making the token file of a new data directory
// at once all end up with the one in the file; an empty file is replaced.
func TestTokenFileRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	const n = 8
	toks := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			tok, _, err := LoadOrCreateToken(path)
			if err != nil {
				t.Error(err)
			}
			toks <- tok
		})
	}
	wg.Wait()
	close(toks)
	b, _ := os.ReadFile(path)
	for tok := range toks {
		if tok+"\n" != string(b) {
			t.Errorf("a daemon took token %q, the file holds %q", tok, b)
		}
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, created, err := LoadOrCreateToken(path); err != nil || !created || tok == "" {
		t.Errorf("LoadOrCreateToken of an empty file = %q, %v, %v; want a new token", tok, created, err)
	}
}

// TestTokenFileOwner: a token file another user owns is refused, even with
// mode 0600: its owner can read or replace the token.
func TestTokenFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to give the token file another owner; CI runs as root, so this is a setup error")
		}
		t.Skip("needs root to give the token file another owner; run as root")
	}
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, _, err := LoadOrCreateToken(path); err != nil || tok != testToken {
		t.Fatalf("LoadOrCreateToken of this user's file = %q, %v", tok, err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreateToken(path)
	if !errors.Is(err, justrunit.ErrInvalid) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("LoadOrCreateToken of a file uid 65534 owns = %v, want ErrInvalid naming the owner", err)
	}
	if b, _ := os.ReadFile(path); string(b) != testToken+"\n" {
		t.Errorf("the refused token file was changed to %q", b)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7070": true, "localhost:7070": true, "[::1]:7070": true, "127.3.4.5:1": true,
		":7070": false, "0.0.0.0:7070": false, "10.0.0.5:7070": false, "example.com:80": false, "[::]:7070": false, "nonsense": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestDiscover(t *testing.T) {
	d := newDaemon(t, daemonOpts{noRunner: true})
	seedStudy(t, d.store)
	t.Setenv(EnvServer, "")
	t.Setenv(EnvToken, "")
	t.Setenv(EnvTokenFile, "")
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Discover(ctx, DiscoverOptions{DataDir: dir}); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Discover with no state file = %v, want ErrNoDaemon", err)
	}
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
	remove, err := WriteState(dir, DaemonState{URL: d.hs.URL, PID: os.Getpid(), TokenFile: tokFile})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Discover(ctx, DiscoverOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if studies, err := c.Studies(ctx); err != nil || len(studies) != 1 {
		t.Errorf("Studies through the discovered daemon = %d, %v", len(studies), err)
	}
	var r Reader = c
	if e, err := LoadExport(ctx, r, "s-nope"); !errors.Is(err, justrunit.ErrNotFound) {
		t.Errorf("LoadExport of an unknown study = %v, %v; want ErrNotFound", e, err)
	}
	if err := remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); !os.IsNotExist(err) {
		t.Errorf("state file left after remove: %v", err)
	}
	// A state file naming a daemon that died is ignored.
	dead := newDaemon(t, daemonOpts{noRunner: true})
	deadURL := dead.hs.URL
	dead.hs.Close()
	WriteState(dir, DaemonState{URL: deadURL, PID: 1})
	if _, err := Discover(ctx, DiscoverOptions{DataDir: dir, Timeout: time.Second}); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Discover with a stale state file = %v, want ErrNoDaemon", err)
	}
	// A daemon named explicitly must answer: no silent fallback.
	t.Setenv(EnvServer, deadURL)
	if _, err := Discover(ctx, DiscoverOptions{DataDir: dir, Timeout: time.Second}); err == nil || errors.Is(err, ErrNoDaemon) {
		t.Errorf("Discover of a named dead daemon = %v, want an error other than ErrNoDaemon", err)
	}
}

// blockingPlanner applies a plan only when released, and records whether
// the context it was given ended meanwhile.
type blockingPlanner struct {
	started, release chan struct{}
	ctxErr           chan error
}

func (p *blockingPlanner) Plan(context.Context) (PlanRecord, error)    { return PlanRecord{ID: "p1"}, nil }
func (p *blockingPlanner) Plans(context.Context) ([]PlanRecord, error) { return nil, nil }
func (p *blockingPlanner) Apply(ctx context.Context, id string) (PlanRecord, error) {
	close(p.started)
	select {
	case <-p.release:
		p.ctxErr <- ctx.Err()
	case <-ctx.Done():
		p.ctxErr <- ctx.Err()
	}
	return PlanRecord{ID: id, Applied: time.Now()}, nil
}

// TestApplyOutlivesCaller checks that a caller hanging up does not stop a
// plan being applied halfway.
func TestApplyOutlivesCaller(t *testing.T) {
	p := &blockingPlanner{started: make(chan struct{}), release: make(chan struct{}), ctxErr: make(chan error, 1)}
	hungUp := make(chan struct{}) // closed when the server sees the caller gone
	d := newDaemon(t, daemonOpts{noRunner: true, planner: p, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/apply") {
				go func() { <-r.Context().Done(); close(hungUp) }()
			}
			h.ServeHTTP(w, r)
		})
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := d.client().ApplyPlan(ctx, "p1"); done <- err }()
	select {
	case <-p.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the plan was not applied")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ApplyPlan after hanging up = %v, want context.Canceled", err)
	}
	select {
	case <-hungUp:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the caller hang up")
	}
	close(p.release)
	select {
	case err := <-p.ctxErr:
		if err != nil {
			t.Errorf("the apply's context ended when the caller hung up: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the apply never finished")
	}
}

// TestWaitOutlastsBoundForApply: a plan being applied when the daemon
// stops is waited for past the shutdown's bound (a half-applied plan is
// worse than a late shutdown), and Wait then returns nil.
func TestWaitOutlastsBoundForApply(t *testing.T) {
	p := &blockingPlanner{started: make(chan struct{}), release: make(chan struct{}), ctxErr: make(chan error, 1)}
	d := newDaemon(t, daemonOpts{noRunner: true, planner: p})
	go d.client().ApplyPlan(context.Background(), "p1")
	select {
	case <-p.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the plan was not applied")
	}
	d.srv.Close()
	waited := make(chan error, 1)
	go func() { waited <- d.srv.Wait(ctxTimeout(t, 50*time.Millisecond)) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned %v while the plan was still being applied", err)
	case <-time.After(300 * time.Millisecond): // six times the bound
	}
	close(p.release)
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("Wait after the plan was applied = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return once the plan was applied")
	}
	if err := <-p.ctxErr; err != nil {
		t.Errorf("the apply's context ended at shutdown: %v", err)
	}
}

// TestCancelNotOurs: a running study this daemon's runner does not run is
// refused with 409, saying whose it is: another process's, or, with this
// daemon's owner, the manager's.
func TestCancelNotOurs(t *testing.T) {
	d := newDaemon(t, daemonOpts{})
	ctx := context.Background()
	for _, tt := range []struct {
		owner, want string
	}{
		{"other-host/123", "another process"},
		{d.runner.Owner(), "the manager's"},
	} {
		st, _ := seedStudy(t, d.store)
		st.State, st.Owner = justrunit.StudyRunning, tt.owner
		if err := d.store.UpdateStudy(ctx, st); err != nil {
			t.Fatal(err)
		}
		code, body := d.call("POST", Prefix+"/studies/"+st.ID+"/cancel", testToken, nil)
		if code != 409 || !strings.Contains(string(body), tt.want) {
			t.Errorf("cancel a running study owned by %s = %d %s, want 409 saying %q", tt.owner, code, body, tt.want)
		}
	}
}
