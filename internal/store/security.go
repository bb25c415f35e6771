package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
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
	u.Certificate, u.CA = "", ""
	b, _ := json.Marshal(u)
	k := UserPrefix + u.Name
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit()
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
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, UserPrefix+name)
	if err != nil {
		return nil, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("no user %q", name))
	}
	var u api.User
	if err := json.Unmarshal(resp.Kvs[0].Value, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// Revoke records certificates as revoked and deletes the keys in del, in
// one transaction, together with the newly signed revocation lists.
func (s *Store) Revoke(ctx context.Context, revs []api.Revocation, crl, migCRL []byte, del ...string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var ops []clientv3.Op
	for _, r := range revs {
		b, _ := json.Marshal(r)
		ops = append(ops, clientv3.OpPut(RevokedPrefix+r.Serial, string(b)))
	}
	if crl != nil {
		ops = append(ops, clientv3.OpPut(CRLKey, string(crl)))
	}
	if migCRL != nil {
		ops = append(ops, clientv3.OpPut(MigrationCRLKey, string(migCRL)))
	}
	for _, k := range del {
		ops = append(ops, clientv3.OpDelete(k))
	}
	_, err := s.cli.Txn(ctx).Then(ops...).Commit()
	return unavailable(err)
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

// ListRevoked returns every revoked serial (hex), sorted.
func (s *Store) ListRevoked(ctx context.Context) ([]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, RevokedPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, unavailable(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, NameFromKey(kv.Key))
	}
	sort.Strings(out)
	return out, nil
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
func (s *Store) ConsumeToken(ctx context.Context, id, secret string, matches func(secret, hash string) bool) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	bad := errdefs.New(errdefs.ErrUnauthenticated, "join token unknown, used or expired")
	resp, err := s.cli.Get(ctx, TokenPrefix+id)
	if err != nil {
		return unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return bad
	}
	var rec TokenRecord
	if json.Unmarshal(resp.Kvs[0].Value, &rec) != nil || !matches(secret, rec.Hash) || time.Now().After(rec.Expires) {
		return bad
	}
	k := TokenPrefix + id
	tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision)).Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return unavailable(err)
	}
	if !tx.Succeeded {
		return bad
	}
	return nil
}
