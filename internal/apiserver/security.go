package apiserver

import (
	"net/http"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
)

func (s *Server) getSecurity(w http.ResponseWriter, r *http.Request) {
	sec, err := s.st.Security(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, withWarning(sec))
}

// putSecurity changes the cluster's security settings; allowing plaintext
// migration needs a reason and is recorded loudly.
func (s *Server) putSecurity(w http.ResponseWriter, r *http.Request) {
	var req api.SecurityRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Reason) > 200 {
		writeError(w, errdefs.Invalid("reason is longer than 200 characters"))
		return
	}
	if req.PlaintextMigration && req.Reason == "" {
		writeError(w, errdefs.Invalid("allowing plaintext migration needs a reason (it exposes every migrated guest's memory)"))
		return
	}
	sec := api.Security{PlaintextMigration: req.PlaintextMigration, Reason: req.Reason, Since: time.Now().UTC()}
	if err := s.st.SetSecurity(r.Context(), sec); err != nil {
		writeError(w, err)
		return
	}
	ev := api.Event{Kind: "plaintext-migration-refused", Message: "plaintext migration refused again (every migration is TLS)"}
	if req.PlaintextMigration {
		ev = api.Event{Kind: "plaintext-migration-allowed", Message: "plaintext migration ALLOWED: " + req.Reason}
		s.log.Warn(api.PlaintextWarning, "reason", req.Reason, "by", caller(r))
	}
	s.event(r, ev)
	writeJSON(w, http.StatusOK, withWarning(sec))
}

func withWarning(sec api.Security) api.Security {
	if sec.PlaintextMigration {
		sec.Warning = api.PlaintextWarning
	}
	return sec
}
