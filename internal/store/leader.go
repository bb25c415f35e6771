package store

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Guard is the fencing token of a leadership: every controller write
// carries it, and the store turns it into a compare on the leader key's
// creation revision, so a deposed leader cannot act (invariant 6). The zero
// Guard fences nothing (writes outside leadership: the API, tests).
type Guard struct {
	key string
	rev int64
}

// cmps is the compare the guard stands for, if any.
func (g Guard) cmps() []clientv3.Cmp {
	if g.key == "" {
		return nil
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(g.key), "=", g.rev)}
}

// Rev is the leadership's revision (for logs).
func (g Guard) Rev() int64 { return g.rev }

// Leadership is this host's term as the cluster's leader.
type Leadership struct {
	sess  *concurrency.Session
	guard Guard
	cli   *clientv3.Client
}

// Campaign blocks until this host (name) leads or ctx ends. ttl bounds how
// long the cluster stays without a leader when the leader's host dies.
func (s *Store) Campaign(ctx context.Context, name string, ttl time.Duration) (*Leadership, error) {
	secs := int(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
	if err != nil {
		return nil, unavailable(err)
	}
	el := concurrency.NewElection(sess, LeaderPrefix)
	if err := el.Campaign(ctx, name); err != nil {
		l := &Leadership{sess: sess, cli: s.cli}
		l.Resign()
		return nil, unavailable(err)
	}
	return &Leadership{sess: sess, cli: s.cli, guard: Guard{key: el.Key(), rev: el.Rev()}}, nil
}

// Guard is the fencing token of this term.
func (l *Leadership) Guard() Guard { return l.guard }

// Done is closed when the term ended (the leader lease was lost).
func (l *Leadership) Done() <-chan struct{} { return l.sess.Done() }

// Resign ends the term at once, so that a successor need not wait for the
// lease to expire.
func (l *Leadership) Resign() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	l.cli.Revoke(ctx, l.sess.Lease())
	cancel()
	l.sess.Orphan()
}
