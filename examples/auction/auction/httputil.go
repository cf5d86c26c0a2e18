package auction

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// DefaultTimeout bounds a call from one tier to the next.
const DefaultTimeout = 10 * time.Second

// maxBody bounds the request bodies a tier reads.
const maxBody = 1 << 20

func handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"encode response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// errorBody is how every tier reports an error in JSON.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, errorBody{Error: fmt.Sprintf(format, args...)})
}

// readJSON decodes a JSON request body into v, answering 400 when it cannot.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: %v", err)
		return false
	}
	return true
}

// pathID parses the {id} path value, answering 400 when it is not a
// positive integer.
func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "bad id %q", s)
		return 0, false
	}
	return id, true
}

// intParam parses an optional integer query parameter within [lo, hi].
func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s: want an integer in %d..%d, got %q", name, lo, hi, s)
	}
	return n, nil
}

// NewClient returns the HTTP client a tier uses to call the next one: plain
// net/http with keep-alive and enough idle connections per host that a busy
// tier reuses them rather than opening new ones.
func NewClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil, // the next tier (or an out-proxy) is configured by URL, never by environment
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// StatusError is a non-2xx answer from the next tier.
type StatusError struct {
	Status int    // HTTP status
	Body   []byte // response body, JSON
}

// Error reports the status and the next tier's error message.
func (e *StatusError) Error() string {
	var eb errorBody
	if json.Unmarshal(e.Body, &eb) == nil && eb.Error != "" {
		return fmt.Sprintf("status %d: %s", e.Status, eb.Error)
	}
	return fmt.Sprintf("status %d", e.Status)
}

// call sends a request with an optional JSON body to the next tier and
// decodes a 2xx JSON answer into out. A non-2xx answer is a *StatusError.
func call(ctx context.Context, c *http.Client, method, u string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &StatusError{Status: resp.StatusCode, Body: b}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// statusOf maps an error from call to the status a tier answers with: the
// next tier's 4xx passes through, anything else is 502 Bad Gateway.
func statusOf(err error) int {
	if se, ok := errors.AsType[*StatusError](err); ok && se.Status/100 == 4 {
		return se.Status
	}
	return http.StatusBadGateway
}

// Serve serves h on ln until ctx is done, then shuts down gracefully,
// giving requests in flight up to five seconds.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	return err
}
