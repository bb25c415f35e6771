package apiserver

import (
	"fmt"
	"net/http"
	"slices"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/migrate"
)

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request) {
	ps, err := s.st.ListPolicies(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ps)
}

// createPolicy records a named migration policy (admins: it decides how
// every guest it selects moves).
func (s *Server) createPolicy(w http.ResponseWriter, r *http.Request) {
	var req api.MigrationPolicyRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	p, err := migrate.NewPolicy(req)
	if err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	if p.Name == migrate.DefaultPolicy().Name {
		writeError(w, errdefs.Invalid(fmt.Sprintf("policy name %q is the built-in default's; choose another", p.Name)))
		return
	}
	if err := s.st.CreatePolicy(r.Context(), p); err != nil {
		writeError(w, err)
		return
	}
	s.event(r, api.Event{Kind: "policy-created", Message: fmt.Sprintf("migration policy %s created (selector %v)", p.Name, p.Selector)})
	writeJSON(w, http.StatusCreated, p)
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := api.ValidateName("policy", name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	if err := s.st.DeletePolicy(r.Context(), name); err != nil {
		writeError(w, err)
		return
	}
	s.event(r, api.Event{Kind: "policy-deleted", Message: fmt.Sprintf("migration policy %s deleted", name)})
	w.WriteHeader(http.StatusNoContent)
}

// probeLinks asks every host to measure its links to the others now.
func (s *Server) probeLinks(w http.ResponseWriter, r *http.Request) {
	nodes, err := s.st.ListNodes(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	for _, n := range nodes {
		if err := s.st.RequestLinkProbe(r.Context(), n.Name); err != nil {
			writeError(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

// testLink asks one host to measure its link to another now, bandwidth
// included (ferry node net test A B); the result lands in the link's record.
func (s *Server) testLink(w http.ResponseWriter, r *http.Request) {
	var req api.LinkTestRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	if req.From == "" || req.To == "" {
		writeError(w, errdefs.Invalid(`"from" and "to" (host names) are required`))
		return
	}
	nodes, err := s.st.ListNodes(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	for _, h := range []string{req.From, req.To} {
		if !slices.ContainsFunc(nodes, func(n api.Node) bool { return n.Name == h }) {
			writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("host %q is not in the cluster", h)))
			return
		}
	}
	if req.From == req.To {
		writeError(w, errdefs.Invalid("a link joins two different hosts"))
		return
	}
	if err := s.st.RequestLinkTest(r.Context(), req.From, req.To); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// listLinks is every path between hosts as the hosts last measured it.
func (s *Server) listLinks(w http.ResponseWriter, r *http.Request) {
	ls, err := s.st.ListLinkStats(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ls)
}
