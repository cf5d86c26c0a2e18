package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/justrunit/justrunit"
)

// Reader is the read side of a justrunit.Store: what "justrunit study
// list/show/export" need. A *sqlite.Store and a *Client both implement it,
// so the CLI reads from a running daemon or from the store file alike.
type Reader interface {
	Studies(ctx context.Context) ([]*justrunit.Study, error)
	Study(ctx context.Context, id string) (*justrunit.Study, error)
	Matrix(ctx context.Context, studyID string) (*justrunit.Matrix, error)
	Observations(ctx context.Context, studyID string) ([]justrunit.Observation, error)
	Checks(ctx context.Context, studyID string) ([]justrunit.CheckResult, error)
	Events(ctx context.Context, f justrunit.EventFilter) ([]justrunit.Event, error)
}

// Exporter reads a study and everything recorded about it at once, so that
// the parts agree with each other even while the study runs: a
// justrunit.Store reads them in one transaction (Store.Export), a *Client
// in one call of GET /studies/{id}/export, which the daemon answers from
// its store's Export.
type Exporter interface {
	Export(ctx context.Context, id string) (*StudyExport, error)
}

var (
	_ Reader   = justrunit.Store(nil)
	_ Reader   = (*Client)(nil)
	_ Exporter = justrunit.Store(nil)
	_ Exporter = (*Client)(nil)
)

// LoadExport reads a study and everything recorded about it. A study with
// no matrix yet has a nil Matrix; an unknown study gives ErrNotFound. A
// Reader that is an Exporter (a store, a Client) gives a consistent
// snapshot; another is read part by part, and an export of a running
// study may then hold, say, an observation its matrix does not.
func LoadExport(ctx context.Context, r Reader, id string) (*StudyExport, error) {
	if x, ok := r.(Exporter); ok {
		e, err := x.Export(ctx, id)
		if err != nil {
			return nil, err
		}
		e.Observations, e.Checks, e.Events = orEmpty(e.Observations), orEmpty(e.Checks), orEmpty(e.Events)
		return e, nil
	}
	st, err := r.Study(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("study %s: %w", id, err)
	}
	e := &StudyExport{Study: st}
	if e.Matrix, err = r.Matrix(ctx, id); err != nil && !errors.Is(err, justrunit.ErrNotFound) {
		return nil, err
	}
	if e.Observations, err = r.Observations(ctx, id); err != nil {
		return nil, err
	}
	if e.Checks, err = r.Checks(ctx, id); err != nil {
		return nil, err
	}
	if e.Events, err = r.Events(ctx, justrunit.EventFilter{StudyID: id}); err != nil {
		return nil, err
	}
	e.Observations, e.Checks, e.Events = orEmpty(e.Observations), orEmpty(e.Checks), orEmpty(e.Events)
	return e, nil
}

// Client calls a JustRunIt daemon's API. Its methods return *Error for
// answers other than success, which unwraps to the justrunit error category
// (errors.Is(err, justrunit.ErrNotFound) works).
type Client struct {
	// BaseURL is the daemon's address, e.g. "http://127.0.0.1:7070".
	BaseURL string
	// Token is the bearer token.
	Token string
	// HTTP is the client used; a client with a 30 s timeout when nil.
	HTTP *http.Client

	// tokenFrom says where Token came from (Discover), so that an
	// answer 401 names it.
	tokenFrom string
}

// NewClient returns a client for the daemon at baseURL.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token}
}

var defaultHTTP = &http.Client{Timeout: 30 * time.Second}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

// do calls method path with body (marshalled to JSON when not nil) and
// decodes a successful answer into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	return c.doWith(ctx, c.httpClient(), method, path, body, out, nil)
}

// doWith is do through hc; an answer other than success whose body is an
// ErrorBody is also decoded into failed (when not nil), for what the
// endpoint adds to it (VerifyErrorBody).
func (c *Client) doWith(ctx context.Context, hc *http.Client, method, path string, body, out, failed any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if json.Unmarshal(b, &eb) != nil || eb.Error == nil {
			return &Error{Status: resp.StatusCode, Code: CodeInternal,
				Message: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))}
		}
		if failed != nil {
			_ = json.Unmarshal(b, failed) // what ErrorBody decoded, it decodes
		}
		eb.Error.Status = resp.StatusCode
		if eb.Error.Code == CodeUnauthorized && c.tokenFrom != "" {
			eb.Error.Message += " (" + c.tokenFrom + ")"
		}
		return eb.Error
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Health calls GET /healthz with challenge (none when empty) and returns
// what a JustRunIt daemon answers. It never sends the token: the call
// needs none, and the server has not proved it holds it (HealthProof).
func (c *Client) Health(ctx context.Context, challenge string) (*Health, error) {
	path := "/healthz"
	if challenge != "" {
		path += "?challenge=" + url.QueryEscape(challenge)
	}
	anon := *c
	anon.Token = ""
	var h Health
	if err := anon.do(ctx, http.MethodGet, path, nil, &h); err != nil {
		return nil, err
	}
	if h.Service != "justrunit" {
		return nil, fmt.Errorf("%s is not a JustRunIt daemon", c.BaseURL)
	}
	return &h, nil
}

// Info returns what the daemon can do.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var in Info
	return &in, c.do(ctx, http.MethodGet, Prefix+"/info", nil, &in)
}

// Studies lists the studies, newest first.
func (c *Client) Studies(ctx context.Context) ([]*justrunit.Study, error) {
	var out []*justrunit.Study
	return out, c.do(ctx, http.MethodGet, Prefix+"/studies", nil, &out)
}

// Study returns one study.
func (c *Client) Study(ctx context.Context, id string) (*justrunit.Study, error) {
	var out justrunit.Study
	if err := c.do(ctx, http.MethodGet, Prefix+"/studies/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateStudy asks the daemon to run a study and returns it as stored
// (with its ID, state pending).
func (c *Client) CreateStudy(ctx context.Context, q StudyRequest) (*justrunit.Study, error) {
	var out justrunit.Study
	if err := c.do(ctx, http.MethodPost, Prefix+"/studies", q, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CancelStudy asks the daemon to stop a pending or running study.
func (c *Client) CancelStudy(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, Prefix+"/studies/"+url.PathEscape(id)+"/cancel", nil, nil)
}

// Verify asks the daemon to set the on-line target of study id to each of
// q's points, measure it and compare with the study's matrix (the fidelity
// check); it returns a Verification per point and metric. When the check
// fails once started, it returns the verifications of the points done
// before the failure (VerifyErrorBody) with the error; an error wrapping
// justrunit.ErrNotRestored means the on-line target is left at a check's
// allocation. The call lasts as long as the measurements — every point's
// warm-up and window — so no client timeout applies: bound it with ctx.
func (c *Client) Verify(ctx context.Context, id string, q VerifyRequest) ([]Verification, error) {
	hc := *c.httpClient()
	hc.Timeout = 0
	var out []Verification
	var failed VerifyErrorBody
	if err := c.doWith(ctx, &hc, http.MethodPost, Prefix+"/studies/"+url.PathEscape(id)+"/verify", q, &out, &failed); err != nil {
		return failed.Verifications, err
	}
	return out, nil
}

// Matrix returns a study's matrix.
func (c *Client) Matrix(ctx context.Context, studyID string) (*justrunit.Matrix, error) {
	var out justrunit.Matrix
	if err := c.do(ctx, http.MethodGet, Prefix+"/studies/"+url.PathEscape(studyID)+"/matrix", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Observations returns a study's observations in the order recorded.
func (c *Client) Observations(ctx context.Context, studyID string) ([]justrunit.Observation, error) {
	var out []justrunit.Observation
	return out, c.do(ctx, http.MethodGet, Prefix+"/studies/"+url.PathEscape(studyID)+"/observations", nil, &out)
}

// Checks returns a study's check results.
func (c *Client) Checks(ctx context.Context, studyID string) ([]justrunit.CheckResult, error) {
	var out []justrunit.CheckResult
	return out, c.do(ctx, http.MethodGet, Prefix+"/studies/"+url.PathEscape(studyID)+"/checks", nil, &out)
}

// Export returns a study with everything recorded about it in one call,
// which the daemon reads from its store in one transaction.
func (c *Client) Export(ctx context.Context, id string) (*StudyExport, error) {
	var out StudyExport
	if err := c.do(ctx, http.MethodGet, Prefix+"/studies/"+url.PathEscape(id)+"/export", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Events returns events matching f in ID order; with no Limit, every one
// (read in pages).
func (c *Client) Events(ctx context.Context, f justrunit.EventFilter) ([]justrunit.Event, error) {
	all := f.Limit == 0
	if all {
		f.Limit = maxEvents
	}
	var out []justrunit.Event
	for {
		q := url.Values{}
		if f.StudyID != "" {
			q.Set("study", f.StudyID)
		}
		if f.Kind != "" {
			q.Set("kind", f.Kind)
		}
		if f.AfterID > 0 {
			q.Set("after", strconv.FormatInt(f.AfterID, 10))
		}
		if f.Newest && !all { // all of them are the newest too
			q.Set("newest", "true")
		}
		q.Set("limit", strconv.Itoa(f.Limit))
		var page []justrunit.Event
		if err := c.do(ctx, http.MethodGet, Prefix+"/events?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		out = append(out, page...)
		if !all || len(page) < f.Limit {
			return out, nil
		}
		f.AfterID = page[len(page)-1].ID
	}
}

// Hosts returns the site's hosts.
func (c *Client) Hosts(ctx context.Context) ([]justrunit.Host, error) {
	var out []justrunit.Host
	return out, c.do(ctx, http.MethodGet, Prefix+"/hosts", nil, &out)
}

// Instances returns the site's instances.
func (c *Client) Instances(ctx context.Context) ([]justrunit.Instance, error) {
	var out []justrunit.Instance
	return out, c.do(ctx, http.MethodGet, Prefix+"/instances", nil, &out)
}

// ServiceSamples returns the manager's per-service samples since a time
// (zero: all).
func (c *Client) ServiceSamples(ctx context.Context, since time.Time) ([]ServiceSample, error) {
	path := Prefix + "/services/samples"
	if !since.IsZero() {
		path += "?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339))
	}
	var out []ServiceSample
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Plans lists the placement plans made so far, newest first.
func (c *Client) Plans(ctx context.Context) ([]PlanRecord, error) {
	var out []PlanRecord
	return out, c.do(ctx, http.MethodGet, Prefix+"/plans", nil, &out)
}

// CreatePlan asks for a dry-run placement plan of the site as it is now.
func (c *Client) CreatePlan(ctx context.Context) (*PlanRecord, error) {
	var out PlanRecord
	return &out, c.do(ctx, http.MethodPost, Prefix+"/plans", nil, &out)
}

// ApplyPlan applies the plan with id.
func (c *Client) ApplyPlan(ctx context.Context, id string) (*PlanRecord, error) {
	var out PlanRecord
	return &out, c.do(ctx, http.MethodPost, Prefix+"/plans/"+url.PathEscape(id)+"/apply", nil, &out)
}

// clientFor returns an http.Client trusting the PEM certificate in caFile
// (the daemon's own, self-signed or not) and verifying the daemon's by
// serverName rather than the URL's host when serverName is set; or the
// default client when neither is.
func clientFor(caFile, serverName string) (*http.Client, error) {
	if caFile == "" && serverName == "" {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("daemon certificate: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, justrunit.Invalid("ca_file", caFile, "holds no PEM certificate")
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}, nil
}
