package api

import (
	"net/http"
	"sort"
	"time"

	"github.com/justrunit/justrunit"
)

// SiteDoc is what GET /api/v1/site answers: the hosts with their power
// state and the instances placed on them.
type SiteDoc struct {
	Hosts     []justrunit.Host     `json:"hosts"`
	Instances []justrunit.Instance `json:"instances"`
	// Services lists the services the instances belong to, sorted.
	Services []string `json:"services"`
}

func (s *Server) noSite(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.Site != nil {
		return false
	}
	s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: msgNoSite})
	return true
}

func (s *Server) handleSite(w http.ResponseWriter, r *http.Request) {
	if s.noSite(w, r) {
		return
	}
	hosts, err := s.cfg.Site.Hosts(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	insts, err := s.cfg.Site.Instances(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	doc := SiteDoc{Hosts: orEmpty(hosts), Instances: orEmpty(insts), Services: []string{}}
	seen := map[string]bool{}
	for _, in := range insts {
		if in.Service != "" && !seen[in.Service] {
			seen[in.Service] = true
			doc.Services = append(doc.Services, in.Service)
		}
	}
	sort.Strings(doc.Services)
	writeJSON(w, http.StatusOK, doc)
}

func (s *Server) handleHosts(w http.ResponseWriter, r *http.Request) {
	if s.noSite(w, r) {
		return
	}
	hosts, err := s.cfg.Site.Hosts(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, orEmpty(hosts))
}

func (s *Server) handleInstances(w http.ResponseWriter, r *http.Request) {
	if s.noSite(w, r) {
		return
	}
	insts, err := s.cfg.Site.Instances(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, orEmpty(insts))
}

func (s *Server) handleServiceSamples(w http.ResponseWriter, r *http.Request) {
	sampler, ok := s.cfg.Site.(ServiceSampler)
	if !ok {
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: msgNoSamples})
		return
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			s.writeError(w, r, justrunit.Invalid("since", v, "want an RFC 3339 time, e.g. 2026-11-25T13:00:00Z"))
			return
		}
		since = t
	}
	samples, err := sampler.ServiceSamples(r.Context(), since)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, orEmpty(samples))
}

func orEmpty[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
