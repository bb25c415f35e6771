package apiserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// UserCertValidity is how long a user's certificate is valid.
const UserCertValidity = 365 * 24 * time.Hour

// Signers are the CAs of an API host that holds their keys; a host without
// them cannot issue or revoke certificates and says so.
type Signers struct {
	Cluster   *pki.CA // hosts
	Migration *pki.CA // hosts' migration streams
	Users     *pki.CA // people and tools, with roles
}

func (s *Server) signers() (*Signers, error) {
	if s.CAs == nil || s.CAs.Cluster == nil || s.CAs.Cluster.Key == nil || s.CAs.Migration == nil || s.CAs.Migration.Key == nil ||
		s.CAs.Users == nil || s.CAs.Users.Key == nil {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "this host holds no CA keys: ask the API of a server host")
	}
	return s.CAs, nil
}

// createUser issues a client certificate with a role for a key the caller
// made (the private key never travels).
func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	var req api.UserCreateRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	if err := api.ValidateName("user", req.Name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	role, err := pki.ParseRole(req.Role)
	if err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	cas, err := s.signers()
	if err != nil {
		writeError(w, err)
		return
	}
	if _, err := s.st.GetUser(r.Context(), req.Name); err == nil {
		writeError(w, errdefs.New(errdefs.ErrAlreadyExists, fmt.Sprintf("user %q already exists (remove it first to issue a new certificate)", req.Name)))
		return
	}
	cert, certPEM, err := cas.Users.SignCSR([]byte(req.CSR), req.Name, role.String(), nil, UserCertValidity)
	if err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	u := api.User{Name: req.Name, Role: role.String(), Serial: pki.SerialHex(cert), Created: time.Now().UTC(), Expires: cert.NotAfter.UTC()}
	if err := s.st.CreateUser(r.Context(), u); err != nil {
		writeError(w, err)
		return
	}
	s.event(r, api.Event{Kind: "user-created", Message: fmt.Sprintf("user %s created with role %s", u.Name, u.Role)})
	u.Certificate, u.CA = string(certPEM), string(cas.Cluster.PEM)
	writeJSON(w, http.StatusCreated, u)
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	us, err := s.st.ListUsers(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, us)
}

// deleteUser revokes a user's certificate and forgets the user.
func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := api.ValidateName("user", name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	u, err := s.st.GetUser(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.revoke(r.Context(), []api.Revocation{{Serial: u.Serial, Holder: "user " + name, Reason: api.RevokedRemoved}}, store.UserPrefix+name); err != nil {
		writeError(w, err)
		return
	}
	s.event(r, api.Event{Kind: "user-removed", Message: fmt.Sprintf("user %s removed; its certificate is revoked", name)})
	w.WriteHeader(http.StatusNoContent)
}

// removeNode takes a host out of the cluster for good: its certificates
// are revoked (API, etcd, migration), its record and etcd membership go.
// Guests placed there must have left first.
func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := api.ValidateName("host", name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	ctx := r.Context()
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	node := nodeNamed(nodes, name)
	if node == nil {
		writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("no host %q in the cluster (a host that is down long enough drops out of the list; its certificates can be revoked only while its record exists)", name)))
		return
	}
	vms, err := s.st.ListVMs(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	for _, vm := range vms {
		if vm.Node == name {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("vm %s is still placed on %s: drain the host first", vm.Spec.Name, name)))
			return
		}
	}
	if len(node.CertSerials) == 0 {
		writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("host %s has not reported its certificates (an older agent?)", name)))
		return
	}
	var revs []api.Revocation
	for _, sn := range node.CertSerials {
		revs = append(revs, api.Revocation{Serial: sn, Holder: "node " + name, Reason: api.RevokedRemoved})
	}
	if err := s.revoke(ctx, revs, store.NodePrefix+name, store.NodeMetaPrefix+name); err != nil {
		writeError(w, err)
		return
	}
	if err := s.st.RemoveMember(ctx, name); err != nil {
		s.log.Warn("removing the host's etcd member", "node", name, "err", err)
	}
	s.event(r, api.Event{Kind: "host-removed", Node: name, Message: fmt.Sprintf("host %s removed from the cluster; its certificates are revoked", name)})
	w.WriteHeader(http.StatusNoContent)
}

// revoke adds revocations, signs new revocation lists for both CAs (every
// agent writes them where etcd and QEMU read them) and deletes del, in one
// transaction.
func (s *Server) revoke(ctx context.Context, revs []api.Revocation, del ...string) error {
	return s.revokeAnd(ctx, revs, nil, del...)
}

// revokeAnd is revoke that also writes what put returns, only if that key
// did not change since put read it. put is called again when the change is
// retried; a nil put writes nothing.
func (s *Server) revokeAnd(ctx context.Context, revs []api.Revocation, put func() (*store.GuardedPut, error), del ...string) error {
	cas, err := s.signers()
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	for i := range revs {
		revs[i].Time = now
	}
	// Two revocations at once (two hosts renewing) must not each sign a
	// list without the other's certificate: the store refuses the second
	// one, made from the old set, and it is made again from the new one.
	for attempt := 1; ; attempt++ {
		known, based, err := s.st.RevokedState(ctx)
		if err != nil {
			return err
		}
		var entries []pki.RevokedCert
		for _, r := range append(known, revs...) {
			n, ok := new(big.Int).SetString(r.Serial, 16)
			if !ok {
				return errdefs.Invalid(fmt.Sprintf("serial %q is not hex", r.Serial))
			}
			// A renewed certificate's holder stays trusted (open
			// connections may finish); every other reason withdraws trust.
			reason := pki.ReasonCessationOfOperation
			if r.Reason == api.RevokedRenewed {
				reason = pki.ReasonSuperseded
			}
			entries = append(entries, pki.RevokedCert{Serial: n, Reason: reason})
		}
		crl, err := cas.Cluster.CRLWithReasons(entries)
		if err != nil {
			return err
		}
		mcrl, err := cas.Migration.CRLWithReasons(entries)
		if err != nil {
			return err
		}
		change := store.RevocationChange{Revs: revs, CRL: crl, MigrationCRL: pki.CRLPEM(mcrl), Based: based, Delete: del}
		if put != nil {
			if change.Put, err = put(); err != nil {
				return err
			}
		}
		err = s.st.Revoke(ctx, change)
		if !errors.Is(err, errdefs.ErrConflict) || attempt == 5 || ctx.Err() != nil {
			return err
		}
	}
}

// revoked reports whether a verified client certificate was revoked.
func (s *Server) revoked(ctx context.Context, c *x509.Certificate) (bool, error) {
	return s.st.IsRevoked(ctx, pki.SerialHex(c))
}
