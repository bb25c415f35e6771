package apiserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/store"
)

// listEvents answers GET /v1/events: the newest limit events (default
// 100) that pass the filters vm, host and kind (a prefix), oldest first.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	limit, err := eventLimit(r, 100, 1)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	vm, host, kind := q.Get("vm"), q.Get("host"), q.Get("kind")
	read := limit
	if vm != "" || host != "" || kind != "" {
		read = store.MaxEvents // filtered from the whole log
	}
	evs, err := s.st.ListEvents(r.Context(), read)
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.Event{}
	for _, e := range evs {
		if eventMatches(e, vm, host, kind) {
			out = append(out, e)
		}
	}
	writeJSON(w, http.StatusOK, out[max(0, len(out)-limit):])
}

// eventLimit reads the limit parameter (def when absent, at least least).
func eventLimit(r *http.Request, def, least int) (int, error) {
	q := r.URL.Query().Get("limit")
	if q == "" {
		return def, nil
	}
	n, err := strconv.Atoi(q)
	if err != nil || n < least || n > store.MaxEvents {
		return 0, errdefs.Invalid(fmt.Sprintf("limit must be a whole number from %d to %d, not %q", least, store.MaxEvents, q))
	}
	return n, nil
}

// streamKeepAlive is how often a quiet event stream sends a comment, so
// that clients and proxies see it alive and a gone client is noticed.
const streamKeepAlive = 15 * time.Second

// streamEvents answers GET /v1/events/stream with server-sent events: the
// newest limit events (default 20, 0 for none; every one after the one
// named by Last-Event-ID when a client reconnects), then each new one as it happens, until the
// client leaves. vm, host and kind (a prefix, such as "migration-")
// filter. Each event is one "data:" line of JSON with its "id:".
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) {
	limit, err := eventLimit(r, 20, 0)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	vm, host, kind := q.Get("vm"), q.Get("host"), q.Get("kind")
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errdefs.New(errdefs.ErrInternal, "this connection cannot stream"))
		return
	}
	after := r.Header.Get("Last-Event-ID")
	backlog := limit
	if after != "" {
		backlog = store.MaxEvents // every event the client missed
	}
	events, err := s.st.FollowEvents(r.Context(), after, backlog)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": ferry events\n\n")
	fl.Flush()
	tick := time.NewTicker(streamKeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case f, ok := <-events:
			if !ok {
				// The store's watch broke: the client reconnects with
				// Last-Event-ID and misses nothing.
				return
			}
			if !eventMatches(f.Event, vm, host, kind) {
				continue
			}
			b, _ := json.Marshal(f.Event)
			if _, err := fmt.Fprintf(w, "id: %s\ndata: %s\n\n", f.ID, b); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

// eventMatches reports whether ev passes the stream's filters (empty: any).
func eventMatches(ev api.Event, vm, host, kind string) bool {
	return (vm == "" || ev.VM == vm) && (host == "" || ev.Node == host) && strings.HasPrefix(ev.Kind, kind)
}
