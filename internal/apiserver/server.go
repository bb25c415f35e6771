// Package apiserver serves Ferry's HTTP/JSON API under /v1. It validates
// requests, writes desired state into the store, and maps error kinds to
// HTTP statuses in exactly one place (writeError).
package apiserver

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/dashboard"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/history"
	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// ConsoleLocator returns the console log of a VM if it runs on this host.
type ConsoleLocator func(vm *api.VM) (string, error)

// Server is the API.
type Server struct {
	st      *store.Store
	log     *slog.Logger
	console ConsoleLocator
	// Cluster is served at /v1/cluster for joining hosts.
	Cluster api.ClusterInfo
	// CAs sign users' and joining hosts' certificates and revocation
	// lists; nil on a host without the CA keys.
	CAs *Signers
	// ClusterCA is the CA of hosts' certificates; a client certificate
	// that chains to another CA the TLS layer trusts is a user's.
	ClusterCA *x509.Certificate
	// Mirror, if set, is the cluster's state as this server follows it:
	// migrations choose their target from it.
	Mirror *store.Mirror
	// History is what GET /v1/history serves (KeepHistory starts it).
	History *history.Recorder
	// public are the routes served without a client certificate (joining).
	public map[string]bool
	// sessions caches the dashboard's sessions (sessions.go).
	sessions sessionCache
}

// New returns an API server over st.
func New(st *store.Store, console ConsoleLocator, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{st: st, console: console, log: log.With("component", "api")}
}

// Handler returns the HTTP handler with every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.public = map[string]bool{}
	for _, r := range s.routes() {
		mux.HandleFunc(r.pattern, instrument(r.pattern, s.authorize(r.role, r.h)))
		if r.role == pki.NoRole {
			s.public[r.pattern] = true
		}
	}
	// The dashboard: its pages (embedded), its log-in and log-out.
	mux.Handle("GET /ui/", dashboard.Handler())
	mux.HandleFunc("GET /ui/login", s.login)
	mux.HandleFunc("POST /ui/logout", s.logout)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusSeeOther) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)))
	})
	return s.authenticate(mux)
}

type route struct {
	pattern string
	role    pki.Role // the least role that may call it
	h       http.HandlerFunc
}

// routes is the whole API with who may call what: viewers read, operators
// run guests (lifecycle, migration, drain), admins change the cluster.
func (s *Server) routes() []route {
	const anyone, scrape, view, op, admin = pki.NoRole, pki.Metrics, pki.Viewer, pki.Operator, pki.Admin
	return []route{
		// Prometheus' text format: this host's figures and what this
		// process did (package metrics).
		{"GET /metrics", scrape, metrics.Handler().ServeHTTP},
		{"GET /v1/healthz", view, s.healthz},
		{"GET /v1/whoami", scrape, s.whoami},
		{"GET /v1/openapi.json", view, s.openapi},
		{"GET /v1/cluster", view, s.cluster},
		{"GET /v1/nodes", view, s.listNodes},
		{"POST /v1/nodes/{name}/drain", op, s.drainNode},
		{"POST /v1/nodes/{name}/undrain", op, s.undrainNode},
		{"GET /v1/vms", view, s.listVMs},
		{"POST /v1/vms", op, s.createVM},
		{"GET /v1/vms/{name}", view, s.getVM},
		{"DELETE /v1/vms/{name}", op, s.deleteVM},
		{"POST /v1/vms/{name}/start", op, s.startVM},
		{"POST /v1/vms/{name}/stop", op, s.stopVM},
		{"POST /v1/vms/{name}/restart", op, s.restartVM},
		// The console shows what the guest prints: more than a viewer's share.
		{"GET /v1/vms/{name}/console", op, s.consoleVM},
		{"POST /v1/vms/{name}/migrate", op, s.migrateVM},
		{"GET /v1/vms/{name}/migration", view, s.getMigration},
		{"POST /v1/vms/{name}/migrate/cancel", op, s.cancelMigration},
		{"GET /v1/events", view, s.listEvents},
		{"GET /v1/events/stream", view, s.streamEvents},
		{"GET /v1/migrations", view, s.listMigrations},
		{"GET /v1/balance/plan", view, s.getBalancePlan},
		// A one-time log-in link to the dashboard for the calling user.
		{"POST /v1/sessions", view, s.createSession},
		{"GET /v1/cluster/ha", view, s.getHA},
		{"PUT /v1/cluster/ha", admin, s.putHA},
		{"GET /v1/cluster/security", view, s.getSecurity},
		{"PUT /v1/cluster/security", admin, s.putSecurity},
		{"DELETE /v1/nodes/{name}", admin, s.removeNode},
		{"GET /v1/users", admin, s.listUsers},
		{"POST /v1/users", admin, s.createUser},
		{"DELETE /v1/users/{name}", admin, s.deleteUser},
		{"POST /v1/cluster/tokens", admin, s.createToken},
		// Joining hosts have no certificate yet: a token admits them.
		{"GET /v1/join/ca", anyone, s.joinCA},
		{"POST /v1/join", anyone, s.join},
		// A host or a user renews its own certificate(s), same identity and role.
		{"POST /v1/renew", view, s.renew},
		{"GET /v1/policies", view, s.listPolicies},
		{"POST /v1/policies", admin, s.createPolicy},
		{"DELETE /v1/policies/{name}", admin, s.deletePolicy},
		{"GET /v1/links", view, s.listLinks},
		{"GET /v1/history", view, s.getHistory},
		{"POST /v1/links/probe", op, s.probeLinks},
		{"POST /v1/links/test", op, s.testLink},
		// Hosts measure their links to each other (hosts only).
		{"GET /v1/linkprobe", view, s.linkProbe},
		{"POST /v1/linkprobe", view, s.linkProbe},
	}
}

type roleKey struct{}

// userKey holds the caller's name: its certificate's, or its session's.
type userKey struct{}

// authenticate admits only clients with a certificate from the cluster CA
// (hosts) or the user CA (the TLS layer verified it) that carries a known
// role.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			if r.TLS != nil && (s.public[r.Method+" "+r.URL.Path] || strings.HasPrefix(r.URL.Path, "/ui/") || r.URL.Path == "/") {
				next.ServeHTTP(w, r)
				return
			}
			// A browser: its dashboard session, if it has one.
			role, user, err := s.sessionRole(r)
			if r.TLS == nil || err != nil {
				if err == nil {
					err = errdefs.New(errdefs.ErrUnauthenticated, "TLS is required")
				}
				writeError(w, err)
				return
			}
			ctx := context.WithValue(context.WithValue(r.Context(), roleKey{}, role), userKey{}, user)
			next.ServeHTTP(w, r.WithContext(ctx))
			return
		}
		leaf := r.TLS.VerifiedChains[0][0]
		if gone, err := s.revoked(r.Context(), leaf); err != nil || gone {
			if err == nil {
				err = errdefs.New(errdefs.ErrUnauthenticated, fmt.Sprintf("certificate %q (serial %s) has been revoked", leaf.Subject.CommonName, pki.SerialHex(leaf)))
			}
			writeError(w, err)
			return
		}
		role, ok := pki.RoleOf(leaf, s.fromUserCA(r))
		if !ok {
			writeError(w, errdefs.New(errdefs.ErrPermissionDenied, fmt.Sprintf("certificate %q carries no role that may use the API", leaf.Subject.CommonName)))
			return
		}
		ctx := context.WithValue(context.WithValue(r.Context(), roleKey{}, role), userKey{}, leaf.Subject.CommonName)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// fromUserCA reports whether the request's verified certificate is a
// user's (from the user CA), not a host's (from the cluster CA).
func (s *Server) fromUserCA(r *http.Request) bool {
	chain := r.TLS.VerifiedChains[0]
	return s.ClusterCA != nil && !chain[len(chain)-1].Equal(s.ClusterCA)
}

// authorize lets the request through if its role is at least need.
func (s *Server) authorize(need pki.Role, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		role, _ := r.Context().Value(roleKey{}).(pki.Role)
		if !role.AtLeast(need) {
			writeError(w, errdefs.New(errdefs.ErrPermissionDenied, fmt.Sprintf("role %s may not %s %s (needs %s)", role, r.Method, r.URL.Path, need)))
			return
		}
		h(w, r)
	}
}

// writeError is the one place where error kinds become HTTP statuses.
func writeError(w http.ResponseWriter, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = errdefs.Invalid(fmt.Sprintf("request body is larger than %d bytes", mbe.Limit))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(errdefs.HTTPStatus(err))
	json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: errdefs.Code(err), Message: err.Error()}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decode reads a JSON body strictly: bounded size, no unknown fields, one value.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) && optional {
			return nil
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return errdefs.Invalid("invalid request body: " + err.Error())
	}
	if dec.More() {
		return errdefs.Invalid("invalid request body: more than one JSON value")
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]string{"status": "ok"})
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	nodes, err := s.st.ListNodes(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, nodes)
}

// Defaults for VMs created without sizes.
const (
	DefaultMemory = "256M"
	DefaultDisk   = "256M"
)

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(api.OpenAPI)
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) {
	info := s.Cluster
	// Every etcd member now, not only those known at start.
	if urls, err := s.st.ClientURLs(r.Context()); err == nil && len(urls) > 0 {
		info.EtcdEndpoints = urls
	}
	writeJSON(w, 200, info)
}

// nodeNamed is the node called name in nodes, or nil.
func nodeNamed(nodes []api.Node, name string) *api.Node {
	for i := range nodes {
		if nodes[i].Name == name {
			return &nodes[i]
		}
	}
	return nil
}
