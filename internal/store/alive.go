package store

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AlivePrefix holds one key per host that its agent rewrites every half
// second (bound to the host's lease): the beats the leader's liveness
// detection follows. Watchers of the cluster's state watch the kinds they
// need (ClusterState leaves these out), so the frequent writes wake only
// liveness.
//
// Until issue #12 these keys were /ferry/alive/HOST, outside the versioned
// prefix. Nothing migrates them: each lived two seconds on its host's lease,
// and they only feed detection events — a leader of the new version sees an
// agent of the old one as unheard of (a host-unreachable event, no restart,
// which needs the host's lease to expire) until that agent is upgraded.
const AlivePrefix = Prefix + "alive/"

// PutAlive rewrites a host's beat, bound to its lease, within timeout.
func (s *Store) PutAlive(ctx context.Context, node string, lease LeaseID, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := s.cli.Put(ctx, AlivePrefix+node, time.Now().UTC().Format(time.RFC3339Nano), clientv3.WithLease(clientv3.LeaseID(lease)))
	return unavailable(err)
}

// AliveRevisions returns, per host, the revision of its last beat, and the
// store's revision at the read (to watch from).
func (s *Store) AliveRevisions(ctx context.Context) (map[string]int64, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, AlivePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, unavailable(err)
	}
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(AlivePrefix):])] = kv.ModRevision
	}
	return out, resp.Header.Revision, nil
}
