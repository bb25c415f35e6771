package apiserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// Join token lifetimes.
const (
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 24 * time.Hour
	// HostCertValidity is how long a joining host's certificates are valid.
	HostCertValidity = 365 * 24 * time.Hour
)

// createToken makes a one-time join token (admin). The secret is shown
// once; the store keeps its hash, bound to a lease of the token's lifetime.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.TokenCreateRequest
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, err)
		return
	}
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Minute || d > MaxTokenTTL {
			writeError(w, errdefs.Invalid(fmt.Sprintf("ttl %q must be a duration from 1m to %s", req.TTL, MaxTokenTTL)))
			return
		}
		ttl = d
	}
	cas, err := s.signers()
	if err != nil {
		writeError(w, err)
		return
	}
	tok, err := pki.NewToken(cas.Cluster.Cert)
	if err != nil {
		writeError(w, err)
		return
	}
	exp := time.Now().Add(ttl).UTC()
	if err := s.st.PutToken(r.Context(), tok.ID, store.TokenRecord{Hash: pki.SecretHash(tok.Secret), Expires: exp, By: caller(r), Server: req.Server}, ttl); err != nil {
		writeError(w, err)
		return
	}
	kind := "join token"
	if req.Server {
		kind = "server join token (gives the CA keys)"
	}
	s.event(r, api.Event{Kind: "token-created", Message: fmt.Sprintf("%s %s created, valid until %s", kind, tok.ID, exp.Format(time.RFC3339))})
	writeJSON(w, http.StatusCreated, api.JoinToken{Token: tok.String(), Expires: exp, Server: req.Server})
}

// joinCA serves the cluster CA certificate to anyone: a joining host
// checks it against the fingerprint in its token before it trusts it.
func (s *Server) joinCA(w http.ResponseWriter, r *http.Request) {
	cas, err := s.signers()
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(cas.Cluster.PEM)
}

// join admits a host that presents a valid unused token: it signs the
// host's cluster and migration certificates for keys the host made.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	resp, err := s.admit(r.Context(), req, r.RemoteAddr)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// checkJoin refuses a malformed join request, saying why.
func checkJoin(req api.JoinRequest) (pki.Token, error) {
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		return tok, errdefs.New(errdefs.ErrUnauthenticated, err.Error())
	}
	if err := api.ValidateName("node", req.Node); err != nil {
		return tok, errdefs.Invalid(err.Error())
	}
	if len(req.Addresses) == 0 || len(req.Addresses) > 8 {
		return tok, errdefs.Invalid("addresses: give the host's IP addresses (1 to 8)")
	}
	for _, a := range req.Addresses {
		if net.ParseIP(a) == nil {
			return tok, errdefs.Invalid(fmt.Sprintf("address %q is not an IP address", a))
		}
	}
	return tok, nil
}

// admit checks a join request, consumes its token and certifies the host.
func (s *Server) admit(ctx context.Context, req api.JoinRequest, from string) (*api.JoinResponse, error) {
	tok, err := checkJoin(req)
	if err != nil {
		return nil, err
	}
	cas, err := s.signers()
	if err != nil {
		return nil, err
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	if nodeNamed(nodes, req.Node) != nil {
		// Another host's name would give this one its identity (its
		// migration streams would be accepted as that host's).
		return nil, errdefs.New(errdefs.ErrAlreadyExists, fmt.Sprintf("host %s is already in the cluster", req.Node))
	}
	if tok.CAFingerprint != pki.Fingerprint(cas.Cluster.Cert) {
		return nil, errdefs.New(errdefs.ErrUnauthenticated, "the token is for another cluster")
	}
	rec, err := s.st.ConsumeToken(ctx, tok.ID, tok.Secret, req.Server, pki.SecretMatches)
	if err != nil {
		s.log.Warn("join refused", "node", req.Node, "from", from, "err", err)
		return nil, err
	}
	hosts := append([]string{req.Node}, req.Addresses...)
	_, certPEM, err := cas.Cluster.SignCSR([]byte(req.CSR), req.Node, pki.RoleNode, append(hosts, "localhost", "127.0.0.1"), HostCertValidity)
	if err != nil {
		return nil, errdefs.Invalid("csr: " + err.Error())
	}
	migPEM, err := cas.Migration.SignMigrationCSR([]byte(req.MigrationCSR), req.Node, req.Addresses, HostCertValidity)
	if err != nil {
		return nil, errdefs.Invalid("migration_csr: " + err.Error())
	}
	info := s.Cluster
	if urls, err := s.st.ClientURLs(ctx); err == nil && len(urls) > 0 {
		info.EtcdEndpoints = urls
	}
	resp := &api.JoinResponse{Certificate: string(certPEM), CA: string(cas.Cluster.PEM),
		MigrationCertificate: string(migPEM), MigrationCA: string(cas.Migration.PEM), UserCA: string(cas.Users.PEM), Cluster: info}
	what := "host"
	if req.Server && rec.Server {
		// Another etcd server signs too: with the keys on every server,
		// losing one does not stop joins, users and renewals.
		if resp.CAKeys, err = caKeys(cas); err != nil {
			return nil, err
		}
		what = "etcd server (given the CA keys)"
	}
	ev := api.Event{Kind: "host-joined", Node: req.Node, Message: fmt.Sprintf("%s %s joined with token %s (from %s)", what, req.Node, tok.ID, from)}
	if err := s.st.PutEvent(ctx, ev); err != nil {
		s.log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
	s.log.Info("host joined", "node", req.Node, "token", tok.ID, "server", resp.CAKeys != nil)
	return resp, nil
}

// caKeys are the CAs' keys, for another etcd server.
func caKeys(cas *Signers) (*api.CAKeys, error) {
	keys := &api.CAKeys{}
	for _, k := range []struct {
		ca  *pki.CA
		dst *string
	}{{cas.Cluster, &keys.Cluster}, {cas.Migration, &keys.Migration}, {cas.Users, &keys.Users}} {
		b, err := k.ca.KeyPEM()
		if err != nil {
			return nil, err
		}
		*k.dst = string(b)
	}
	return keys, nil
}

// renew issues new certificates for new keys with the identity of the
// certificate the caller calls with (name, role and addresses come from
// that, never from the request), and revokes the ones it replaces: a host's
// cluster and migration certificates, or a user's certificate.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	leaf := r.TLS.VerifiedChains[0][0]
	var req api.RenewRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	if s.fromUserCA(r) {
		s.renewUser(w, r, leaf, req)
		return
	}
	if !slices.Contains(leaf.Subject.Organization, pki.RoleNode) {
		writeError(w, errdefs.New(errdefs.ErrPermissionDenied, "the cluster CA certifies hosts only; this certificate is not a host's"))
		return
	}
	cas, err := s.signers()
	if err != nil {
		writeError(w, err)
		return
	}
	node := leaf.Subject.CommonName
	var hosts []string
	for _, ip := range leaf.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	hosts = append(hosts, leaf.DNSNames...)
	var addrs []string
	for _, ip := range leaf.IPAddresses {
		if !ip.IsLoopback() {
			addrs = append(addrs, ip.String())
		}
	}
	cert, certPEM, err := cas.Cluster.SignCSR([]byte(req.CSR), node, pki.RoleNode, hosts, HostCertValidity)
	if err != nil {
		writeError(w, errdefs.Invalid("csr: "+err.Error()))
		return
	}
	migPEM, err := cas.Migration.SignMigrationCSR([]byte(req.MigrationCSR), node, addrs, HostCertValidity)
	if err != nil {
		writeError(w, errdefs.Invalid("migration_csr: "+err.Error()))
		return
	}
	// The replaced certificates: the one that called, and the migration
	// certificate the host reported beside it.
	revs := []api.Revocation{{Serial: pki.SerialHex(leaf), Holder: "node " + node, Reason: api.RevokedRenewed}}
	if nodes, err := s.st.ListNodes(r.Context()); err == nil {
		if n := nodeNamed(nodes, node); n != nil && len(n.CertSerials) == 2 && n.CertSerials[0] == pki.SerialHex(leaf) {
			revs = append(revs, api.Revocation{Serial: n.CertSerials[1], Holder: "node " + node, Reason: api.RevokedRenewed})
		}
	}
	if err := s.revoke(r.Context(), revs); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("host certificates renewed", "node", node, "serial", pki.SerialHex(cert))
	s.event(r, api.Event{Kind: "certificates-renewed", Node: node, Message: fmt.Sprintf("host %s renewed its certificates (valid until %s); the old ones are revoked", node, cert.NotAfter.UTC().Format(time.RFC3339))})
	writeJSON(w, http.StatusOK, api.JoinResponse{Certificate: string(certPEM), CA: string(cas.Cluster.PEM),
		MigrationCertificate: string(migPEM), MigrationCA: string(cas.Migration.PEM), UserCA: string(cas.Users.PEM)})
}

// renewUser gives a user a new certificate, with the role on record, in
// place of the current one it calls with; that one is revoked. A
// certificate that is not its user's current one (renewed already, or a
// host's administrator credentials, which no user record holds) is refused.
func (s *Server) renewUser(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate, req api.RenewRequest) {
	if req.MigrationCSR != "" {
		writeError(w, errdefs.Invalid("migration_csr: a user has no migration certificate"))
		return
	}
	name, serial := leaf.Subject.CommonName, pki.SerialHex(leaf)
	current := func() (*api.User, int64, error) {
		u, rev, err := s.st.GetUserRevision(r.Context(), name)
		if errors.Is(err, errdefs.ErrNotFound) || err == nil && u.Serial != serial {
			return nil, 0, errdefs.New(errdefs.ErrPermissionDenied, fmt.Sprintf("certificate %s is not user %q's current certificate (ask an admin for a new one: ferry user create)", serial, name))
		}
		return u, rev, err
	}
	u, _, err := current()
	if err != nil {
		writeError(w, err)
		return
	}
	cas, err := s.signers()
	if err != nil {
		writeError(w, err)
		return
	}
	cert, certPEM, err := cas.Users.SignCSR([]byte(req.CSR), name, u.Role, nil, UserCertValidity)
	if err != nil {
		writeError(w, errdefs.Invalid("csr: "+err.Error()))
		return
	}
	renewed := *u
	renewed.Serial, renewed.Expires = pki.SerialHex(cert), cert.NotAfter.UTC()
	put := func() (*store.GuardedPut, error) {
		_, rev, err := current() // still this certificate's user, unchanged
		if err != nil {
			return nil, err
		}
		return &store.GuardedPut{Key: store.UserPrefix + name, Value: store.UserRecord(renewed), PutIfRevision: rev}, nil
	}
	revs := []api.Revocation{{Serial: serial, Holder: "user " + name, Reason: api.RevokedRenewed}}
	if err := s.revokeAnd(r.Context(), revs, put); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("user certificate renewed", "user", name, "serial", renewed.Serial)
	s.event(r, api.Event{Kind: "user-renewed", Message: fmt.Sprintf("user %s renewed its certificate (valid until %s); the old one is revoked", name, renewed.Expires.Format(time.RFC3339))})
	renewed.Certificate, renewed.CA = string(certPEM), string(cas.Cluster.PEM)
	writeJSON(w, http.StatusOK, renewed)
}
