package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys of the cluster's identities.
const (
	UserPrefix    = Prefix + "users/"
	RevokedPrefix = Prefix + "revoked/"
	// CRLKey holds the cluster CA's signed revocation list (DER) and
	// MigrationCRLKey the migration CA's (PEM): the API host that revokes
	// signs them, every agent writes them where etcd and QEMU read them.
	CRLKey          = Prefix + "pki/crl"
	MigrationCRLKey = Prefix + "pki/migration-crl"
)

// CreateUser records a user; the name must be new.
func (s *Store) CreateUser(ctx context.Context, u api.User) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	k := UserPrefix + u.Name
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, UserRecord(u))).Commit()
	if err != nil {
		return unavailable(err)
	}
	if !resp.Succeeded {
		return errdefs.New(errdefs.ErrAlreadyExists, fmt.Sprintf("user %q already exists (remove it first to issue a new certificate)", u.Name))
	}
	return nil
}

// ListUsers returns every user, by name.
func (s *Store) ListUsers(ctx context.Context) ([]api.User, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, UserPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, unavailable(err)
	}
	out := []api.User{}
	for _, kv := range resp.Kvs {
		var u api.User
		if json.Unmarshal(kv.Value, &u) == nil {
			out = append(out, u)
		}
	}
	return out, nil
}

// GetUser returns one user.
func (s *Store) GetUser(ctx context.Context, name string) (*api.User, error) {
	u, _, err := s.GetUserRevision(ctx, name)
	return u, err
}

// GetUserRevision returns one user and the revision its record was last
// written at (for a GuardedPut).
func (s *Store) GetUserRevision(ctx context.Context, name string) (*api.User, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, UserPrefix+name)
	if err != nil {
		return nil, 0, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("no user %q", name))
	}
	var u api.User
	if err := json.Unmarshal(resp.Kvs[0].Value, &u); err != nil {
		return nil, 0, err
	}
	return &u, resp.Kvs[0].ModRevision, nil
}

// UserRecord is a user as stored (without certificate and CA).
func UserRecord(u api.User) string {
	u.Certificate, u.CA = "", ""
	b, _ := json.Marshal(u)
	return string(b)
}

// RevocationChange is one change to the set of revoked certificates,
// made in one transaction with the revocation lists signed for the new set.
type RevocationChange struct {
	Revs              []api.Revocation
	CRL, MigrationCRL []byte
	// Based is the revision RevokedState returned for the set the lists
	// were made from: if another revocation came since, the change fails
	// with ErrConflict and must be made again, or one list would lack the
	// other's certificate.
	Based int64
	// Delete lists keys to delete with the change.
	Delete []string
	// Put writes Key=Value with the change, if the key's ModRevision is
	// still PutIfRevision.
	Put *GuardedPut
}

// GuardedPut is a write that happens only if its key did not change since
// it was read at ModRevision PutIfRevision.
type GuardedPut struct {
	Key, Value    string
	PutIfRevision int64
}

// RevokedState returns every revocation, by serial, and the revision at
// which the revocation lists last changed (0: never), read together.
func (s *Store) RevokedState(ctx context.Context) ([]api.Revocation, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(RevokedPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		clientv3.OpGet(CRLKey, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return nil, 0, unavailable(err)
	}
	var out []api.Revocation
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		r := api.Revocation{Serial: NameFromKey(kv.Key)}
		json.Unmarshal(kv.Value, &r) // a record unreadable still revokes its serial
		r.Serial = NameFromKey(kv.Key)
		out = append(out, r)
	}
	var rev int64
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		rev = kvs[0].ModRevision
	}
	return out, rev, nil
}

// Revoke makes c: records its certificates as revoked and stores the new
// revocation lists, deletes and writes its keys, or, if another
// revocation or the guarded key came first, nothing (ErrConflict).
func (s *Store) Revoke(ctx context.Context, c RevocationChange) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var ops []clientv3.Op
	for _, r := range c.Revs {
		b, _ := json.Marshal(r)
		ops = append(ops, clientv3.OpPut(RevokedPrefix+r.Serial, string(b)))
	}
	ops = append(ops, clientv3.OpPut(CRLKey, string(c.CRL)), clientv3.OpPut(MigrationCRLKey, string(c.MigrationCRL)))
	for _, k := range c.Delete {
		ops = append(ops, clientv3.OpDelete(k))
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(CRLKey), "=", c.Based)}
	if p := c.Put; p != nil {
		ops = append(ops, clientv3.OpPut(p.Key, p.Value))
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(p.Key), "=", p.PutIfRevision))
	}
	resp, err := s.cli.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return unavailable(err)
	}
	if !resp.Succeeded {
		return errdefs.New(errdefs.ErrConflict, "the revoked certificates changed meanwhile")
	}
	return nil
}

// IsRevoked reports whether the certificate with this serial (hex) was revoked.
func (s *Store) IsRevoked(ctx context.Context, serial string) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, RevokedPrefix+serial, clientv3.WithCountOnly())
	if err != nil {
		return false, unavailable(err)
	}
	return resp.Count > 0, nil
}

// CRLs returns the signed revocation lists (nil when none was made yet).
func (s *Store) CRLs(ctx context.Context) (crl, migCRL []byte, err error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(CRLKey), clientv3.OpGet(MigrationCRLKey)).Commit()
	if err != nil {
		return nil, nil, unavailable(err)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		crl = kvs[0].Value
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		migCRL = kvs[0].Value
	}
	return crl, migCRL, nil
}

// TokenPrefix holds join tokens (hash of the secret only), each bound to a
// lease of its lifetime so that etcd forgets it when it expires.
const TokenPrefix = Prefix + "tokens/"

// TokenRecord is what the store keeps of a join token.
type TokenRecord struct {
	Hash    string    `json:"hash"`
	Expires time.Time `json:"expires"`
	By      string    `json:"by,omitempty"`
	// Server: the token admits another etcd server (and gives it the CA keys).
	Server bool `json:"server,omitempty"`
}

// PutToken records a join token for ttl.
func (s *Store) PutToken(ctx context.Context, id string, rec TokenRecord, ttl time.Duration) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	lease, err := s.cli.Grant(ctx, int64(ttl.Seconds()))
	if err != nil {
		return unavailable(err)
	}
	b, _ := json.Marshal(rec)
	_, err = s.cli.Put(ctx, TokenPrefix+id, string(b), clientv3.WithLease(lease.ID))
	return unavailable(err)
}

// ConsumeToken checks a token's secret and deletes it in one transaction:
// a token admits one host. An unknown, expired or wrong token is one error.
// A host that would become an etcd server (server) needs a server token; a
// host token it presents is refused and stays unused. It returns the
// token's record.
func (s *Store) ConsumeToken(ctx context.Context, id, secret string, server bool, matches func(secret, hash string) bool) (TokenRecord, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	bad := errdefs.New(errdefs.ErrUnauthenticated, "join token unknown, used or expired")
	var rec TokenRecord
	resp, err := s.cli.Get(ctx, TokenPrefix+id)
	if err != nil {
		return rec, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return rec, bad
	}
	if json.Unmarshal(resp.Kvs[0].Value, &rec) != nil || !matches(secret, rec.Hash) || time.Now().After(rec.Expires) {
		return TokenRecord{}, bad
	}
	if server && !rec.Server {
		return TokenRecord{}, errdefs.New(errdefs.ErrPermissionDenied,
			"this token admits a host, not an etcd server: make one with `ferry cluster token create --server`")
	}
	k := TokenPrefix + id
	tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision)).Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return TokenRecord{}, unavailable(err)
	}
	if !tx.Succeeded {
		return TokenRecord{}, bad
	}
	return rec, nil
}
