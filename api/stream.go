package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/justrunit/justrunit"
)

// heartbeat is how often an idle event stream sends a comment, so proxies
// and browsers keep the connection open.
const heartbeat = 15 * time.Second

// handleEventStream serves events as server-sent events: each is
// "id: ID\nevent: KIND\ndata: JSON\n\n". It starts after ?after= or the
// Last-Event-ID header (a reconnecting EventSource sends it), polls the store
// (other processes write to it too) and ends when the client goes away or
// the server closes.
func (s *Server) handleEventStream(w http.ResponseWriter, r *http.Request) {
	f, err := eventFilter(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f.Newest = false // a stream goes on from where it starts
	// A reconnecting EventSource keeps its URL (?after=latest, say) and
	// says with Last-Event-ID what it saw: it goes on from there.
	resumed := false
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 && (f.AfterID == afterLatest || n > f.AfterID) {
			f.AfterID, resumed = n, true
		}
	}
	if f.AfterID == afterLatest && !resumed {
		if f.AfterID, err = s.lastEventID(r, f); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		s.writeError(w, r, fmt.Errorf("event stream: the connection cannot stream"))
		return
	}
	f.Limit = maxEvents
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	fl.Flush()

	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	for {
		evs, err := s.cfg.Store.Events(r.Context(), f)
		if err != nil {
			if r.Context().Err() == nil && s.done.Err() == nil {
				s.log.Warn("event stream", keyErr, err)
				fmt.Fprintf(w, "event: error\ndata: %s\n\n", jsonString(err.Error()))
				fl.Flush()
			}
			return
		}
		for _, e := range evs {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.ID, eventName(e), b)
			f.AfterID = e.ID
		}
		if len(evs) > 0 {
			fl.Flush()
		}
		if len(evs) == maxEvents {
			continue // more are waiting
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.done.Done():
			return
		case <-beat.C:
			fmt.Fprint(w, ": keep-alive\n\n")
			fl.Flush()
		case <-poll.C:
		}
	}
}

// eventName is the SSE event name: "event" for every kind, so a client
// listens to one name; the kind is in the data.
func eventName(justrunit.Event) string { return "event" }

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
