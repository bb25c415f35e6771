package apiserver

import (
	"net/http"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
)

func (s *Server) getHA(w http.ResponseWriter, r *http.Request) {
	st, err := s.st.HAState(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// putHA pauses or resumes HA restarts cluster-wide, for planned work.
func (s *Server) putHA(w http.ResponseWriter, r *http.Request) {
	var req api.HAStateRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Reason) > 200 {
		writeError(w, errdefs.Invalid("reason is longer than 200 characters"))
		return
	}
	st := api.HAState{Paused: req.Paused, Reason: req.Reason, Since: time.Now().UTC()}
	if err := s.st.SetHAState(r.Context(), st); err != nil {
		writeError(w, err)
		return
	}
	msg := "HA restarts resumed"
	kind := "ha-resumed"
	if req.Paused {
		msg, kind = "HA restarts paused (fencing stays on)", "ha-paused"
	}
	if req.Reason != "" {
		msg += ": " + req.Reason
	}
	s.event(r, api.Event{Kind: kind, Message: msg})
	s.log.Warn(msg)
	writeJSON(w, http.StatusOK, st)
}

// event records an operator action; a failure only logs (the action itself
// has happened).
func (s *Server) event(r *http.Request, ev api.Event) {
	if who := caller(r); who != "" {
		ev.Message += " (by " + who + ")"
	}
	if err := s.st.PutEvent(r.Context(), ev); err != nil {
		s.log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}

// caller is the common name of the client certificate.
func caller(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return ""
	}
	return r.TLS.VerifiedChains[0][0].Subject.CommonName
}
