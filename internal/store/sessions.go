package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The dashboard's log-in: a user's certificate obtains a one-time log-in
// (LoginPrefix, for LoginTTL), which a browser exchanges for a session
// (SessionPrefix, for SessionTTL). Both are kept by the SHA-256 of their
// secret only, each bound to an etcd lease of its lifetime, so that they
// vanish on their own; a log-in is consumed in one transaction, once.
const (
	LoginPrefix   = Prefix + "logins/"
	SessionPrefix = Prefix + "sessions/"
	LoginTTL      = 2 * time.Minute
	SessionTTL    = 8 * time.Hour
)

// Session is who a log-in or session stands for.
type Session struct {
	User string `json:"user"`
	Role string `json:"role"`
	// Serial is the certificate that asked for it: when it is revoked
	// (the user removed), the session ends with it.
	Serial  string    `json:"serial"`
	Expires time.Time `json:"expires"`
}

func secretKey(prefix, secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return prefix + hex.EncodeToString(sum[:])
}

// putLeased writes v under key, bound to a new lease of ttl.
func (s *Store) putLeased(ctx context.Context, key string, v Session, ttl time.Duration) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	lease, err := s.cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return unavailable(err)
	}
	b, _ := json.Marshal(v)
	_, err = s.cli.Put(ctx, key, string(b), clientv3.WithLease(lease.ID))
	return unavailable(err)
}

// PutLogin records a one-time log-in for sess under secret.
func (s *Store) PutLogin(ctx context.Context, secret string, sess Session) error {
	sess.Expires = time.Now().Add(LoginTTL).UTC()
	return s.putLeased(ctx, secretKey(LoginPrefix, secret), sess, LoginTTL)
}

// ConsumeLogin takes the log-in of secret, once, and opens a session for
// it under session (a new secret): a second use of the same log-in, or one
// that expired, is ErrUnauthenticated.
func (s *Store) ConsumeLogin(ctx context.Context, secret, session string) (Session, error) {
	rctx, cancel := bounded(ctx)
	defer cancel()
	key := secretKey(LoginPrefix, secret)
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return Session{}, unavailable(err)
	}
	var sess Session
	if len(resp.Kvs) == 0 || json.Unmarshal(resp.Kvs[0].Value, &sess) != nil || time.Now().After(sess.Expires) {
		return Session{}, errdefs.New(errdefs.ErrUnauthenticated, "this log-in link was used already or has expired; run `ferry dashboard` again")
	}
	del, err := s.cli.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return Session{}, unavailable(err)
	}
	if !del.Succeeded {
		return Session{}, errdefs.New(errdefs.ErrUnauthenticated, "this log-in link was used already; run `ferry dashboard` again")
	}
	sess.Expires = time.Now().Add(SessionTTL).UTC()
	if err := s.putLeased(ctx, secretKey(SessionPrefix, session), sess, SessionTTL); err != nil {
		return Session{}, err
	}
	return sess, nil
}

// GetSession is the session of secret; ErrUnauthenticated when there is
// none (expired, ended, or never opened).
func (s *Store) GetSession(ctx context.Context, secret string) (Session, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, secretKey(SessionPrefix, secret))
	if err != nil {
		return Session{}, unavailable(err)
	}
	var sess Session
	if len(resp.Kvs) == 0 || json.Unmarshal(resp.Kvs[0].Value, &sess) != nil || time.Now().After(sess.Expires) {
		return Session{}, errdefs.New(errdefs.ErrUnauthenticated, "the dashboard session has ended; log in again with `ferry dashboard`")
	}
	return sess, nil
}

// EndSession ends the session of secret (logging out).
func (s *Store) EndSession(ctx context.Context, secret string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	_, err := s.cli.Delete(ctx, secretKey(SessionPrefix, secret))
	if err != nil {
		return fmt.Errorf("ending the session: %w", unavailable(err))
	}
	return nil
}
