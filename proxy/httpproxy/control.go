package httpproxy

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"

	"github.com/justrunit/justrunit"
)

// ControlHandler returns the in-proxy's control API, to be served on a
// separate, loopback-only address (see ServeControl):
//
//	GET    /clones               the attached clones: [{"name":..., "url":...}]
//	PUT    /clones/{name}        attach a clone; body {"url": "http://host:port"}
//	DELETE /clones/{name}        detach it; answers its final statistics
//	GET    /stats                the current window's InStats
//	POST   /stats/reset          end the window; answers its InStats
//
// Errors are JSON {"error": "..."} with 400 (invalid), 404 (no such clone)
// or 409 (name taken).
func (p *InProxy) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /clones", func(w http.ResponseWriter, r *http.Request) {
		type item struct {
			Name string `json:"name"`
			URL  string `json:"url"`
		}
		items := []item{}
		for _, c := range *p.clones.Load() {
			items = append(items, item{c.name, c.shown})
		}
		writeJSON(w, http.StatusOK, items)
	})
	mux.HandleFunc("PUT /clones/{name}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			URL string `json:"url"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
			writeError(w, justrunit.Invalid("body", nil, "want {\"url\": \"http://host:port\"}: %v", err))
			return
		}
		u, err := ParseUpstream("url", body.URL)
		if err == nil {
			err = p.AddClone(r.Context(), r.PathValue("name"), u)
		}
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"name": r.PathValue("name"), "url": u.String()})
	})
	mux.HandleFunc("DELETE /clones/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.RemoveClone(r.PathValue("name"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, p.Stats()) })
	mux.HandleFunc("POST /stats/reset", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, p.Reset()) })
	return mux
}

// ControlHandler returns the out-proxy's control API, to be served on a
// separate, loopback-only address (see ServeControl):
//
//	GET  /stats        the current window's OutStats
//	POST /stats/reset  end the window; answers its OutStats
func (p *OutProxy) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, p.Stats()) })
	mux.HandleFunc("POST /stats/reset", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, p.Reset()) })
	return mux
}

// Control is a running control API server.
type Control struct{ s *server }

// ServeControl serves h on addr, which must be a loopback address (the
// control API has no authentication: only local processes may use it).
func ServeControl(addr string, h http.Handler) (*Control, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, justrunit.Invalid("control", addr, "want host:port: %v", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, justrunit.Invalid("control", addr, "must be a loopback address (127.0.0.1, ::1 or localhost): the API has no authentication")
	}
	s, err := listen("control", addr, h, discardLogger)
	if err != nil {
		return nil, err
	}
	return &Control{s: s}, nil
}

// Addr returns the address the control API listens on.
func (c *Control) Addr() net.Addr { return c.s.ln.Addr() }

// Close stops the control API.
func (c *Control) Close() error {
	if c == nil {
		return nil
	}
	return c.s.close(DefaultShutdownGrace)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, justrunit.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, justrunit.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, justrunit.ErrExists):
		status = http.StatusConflict
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
