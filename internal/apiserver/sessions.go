package apiserver

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// The dashboard's log-in. A browser holds no client certificate, so a
// user's certificate asks (POST /v1/sessions, `ferry dashboard`) for a
// one-time link; opening it (GET /ui/login?t=...) opens a session kept in a
// cookie (HttpOnly, Secure, SameSite=Strict) for store.SessionTTL. The
// session carries the user's role and certificate: the dashboard can do
// what the user's certificate can, no more, and ends when it is revoked.
// Requests that change anything with a session must carry the
// X-Ferry-Dashboard header, which another site's page cannot send.
const (
	sessionCookie = "ferry_session"
	// DashboardHeader marks the dashboard's own requests (see above).
	DashboardHeader = "X-Ferry-Dashboard"
)

// createSession answers POST /v1/sessions: a one-time log-in link for the
// caller (a user's certificate, not a host's).
func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || !s.fromUserCA(r) {
		writeError(w, errdefs.New(errdefs.ErrPermissionDenied, "a dashboard log-in is for users: ask with a user's certificate (ferry user create)"))
		return
	}
	leaf := r.TLS.VerifiedChains[0][0]
	role, _ := r.Context().Value(roleKey{}).(pki.Role)
	secret := rand.Text()
	sess := store.Session{User: leaf.Subject.CommonName, Role: role.String(), Serial: pki.SerialHex(leaf)}
	if err := s.st.PutLogin(r.Context(), secret, sess); err != nil {
		writeError(w, err)
		return
	}
	u := url.URL{Scheme: "https", Host: r.Host, Path: "/ui/login", RawQuery: url.Values{"t": {secret}}.Encode()}
	writeJSON(w, http.StatusCreated, api.DashboardLogin{URL: u.String(), User: sess.User, Role: sess.Role, Expires: time.Now().Add(store.LoginTTL).UTC()})
}

// login answers GET /ui/login?t=...: the link's log-in, once, becomes a
// session cookie, and the browser goes to the dashboard.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	secret := rand.Text()
	sess, err := s.st.ConsumeLogin(r.Context(), r.URL.Query().Get("t"), secret)
	if err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(errdefs.HTTPStatus(err))
		fmt.Fprintln(w, strings.TrimPrefix(err.Error(), "unauthenticated: "))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: secret, Path: "/", Expires: sess.Expires,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	s.log.Info("dashboard session opened", "user", sess.User, "role", sess.Role)
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

// logout answers POST /ui/logout: the session ends, the cookie goes.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.sessions.forget(c.Value)
		if err := s.st.EndSession(r.Context(), c.Value); err != nil {
			writeError(w, err)
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// sessionRole is the role and user of a request that carries a dashboard
// session instead of a certificate; an error says why it carries none that
// holds.
func (s *Server) sessionRole(r *http.Request) (pki.Role, string, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return pki.NoRole, "", errdefs.New(errdefs.ErrUnauthenticated, "a client certificate from the cluster CA is required")
	}
	sess, err := s.sessions.get(r, c.Value, s.st)
	if err != nil {
		return pki.NoRole, "", err
	}
	if gone, err := s.st.IsRevoked(r.Context(), sess.Serial); err != nil || gone {
		if err == nil {
			err = errdefs.New(errdefs.ErrUnauthenticated, fmt.Sprintf("the certificate of %s's session has been revoked", sess.User))
		}
		return pki.NoRole, "", err
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get(DashboardHeader) == "" {
		return pki.NoRole, "", errdefs.New(errdefs.ErrPermissionDenied, "a change through a dashboard session must come from the dashboard ("+DashboardHeader+" header)")
	}
	role, err := pki.ParseRole(sess.Role)
	if err != nil {
		return pki.NoRole, "", errdefs.New(errdefs.ErrUnauthenticated, "the session carries no role")
	}
	return role, sess.User, nil
}

// whoami answers GET /v1/whoami: who the caller is and what role it has
// (the dashboard shows only the buttons the role may use).
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	role, _ := r.Context().Value(roleKey{}).(pki.Role)
	user, _ := r.Context().Value(userKey{}).(string)
	writeJSON(w, http.StatusOK, api.WhoAmI{User: user, Role: role.String()})
}

// sessionCache keeps sessions read from the store for a few seconds, so
// that the dashboard's many reads do not each read etcd.
type sessionCache struct {
	mu sync.Mutex
	by map[string]cachedSession
}

type cachedSession struct {
	sess store.Session
	read time.Time
}

const sessionCacheFor = 5 * time.Second

func (c *sessionCache) get(r *http.Request, secret string, st *store.Store) (store.Session, error) {
	c.mu.Lock()
	if c.by == nil {
		c.by = map[string]cachedSession{}
	}
	cs, ok := c.by[secret]
	c.mu.Unlock()
	if ok && time.Since(cs.read) < sessionCacheFor && time.Now().Before(cs.sess.Expires) {
		return cs.sess, nil
	}
	sess, err := st.GetSession(r.Context(), secret)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		delete(c.by, secret)
		return sess, err
	}
	if len(c.by) > 10000 { // bounded: drop all, they are read again
		clear(c.by)
	}
	c.by[secret] = cachedSession{sess, time.Now()}
	return sess, nil
}

func (c *sessionCache) forget(secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.by, secret)
}
