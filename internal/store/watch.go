package store

import (
	"context"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kind is a kind of record in the store, as a watch reports it.
type Kind int

// The kinds of records.
const (
	KindVM         Kind = iota + 1 // VM specs (desired state)
	KindStatus                     // observed status
	KindPlacement                  // which host a VM is placed on
	KindOwner                      // which host owns (may run) a VM
	KindMigration                  // live migrations
	KindNode                       // hosts' records (bound to their leases)
	KindNodeMeta                   // what operators set on hosts
	KindEvent                      // the event log
	KindCluster                    // cluster settings (HA switch, security)
	KindPKI                        // revocation lists
	KindRevoked                    // revoked certificates
	KindAlive                      // hosts' liveness beats (frequent)
	KindHostVM                     // a host's range of VMs to look at (WatchHost)
	KindLinkHealth                 // degraded links between hosts
)

var kindPrefix = map[Kind]string{
	KindVM: VMPrefix, KindStatus: StatusPrefix, KindPlacement: PlacementPrefix, KindOwner: OwnerPrefix,
	KindMigration: MigrationPrefix, KindNode: NodePrefix, KindNodeMeta: NodeMetaPrefix, KindEvent: EventPrefix,
	KindCluster: Prefix + "cluster/", KindPKI: Prefix + "pki/", KindRevoked: RevokedPrefix, KindAlive: AlivePrefix,
	KindLinkHealth: LinkHealthPrefix,
}

// ClusterState is every kind but the liveness beats: what a watcher of the
// cluster's state (the leader) follows.
var ClusterState = []Kind{KindVM, KindStatus, KindPlacement, KindOwner, KindMigration, KindNode, KindNodeMeta,
	KindEvent, KindCluster, KindPKI, KindRevoked}

// Change is one change a watch saw.
type Change struct {
	Kind Kind
	// Name is the record's name within its kind: a VM's or host's name,
	// a revoked serial, or the key's last part (crl, migration-crl).
	Name    string
	Value   []byte // the new value (nil when Deleted)
	Deleted bool
	Rev     int64 // the revision of the change
}

// Watch follows the records of the given kinds from revision fromRev (0:
// from now) and sends each change, in revision order within a kind. The
// channel is closed when the watch ends — ctx ended, etcd lost its leader,
// or fromRev was compacted away — after which the caller reads the records
// again and watches from the revision it read at.
func (s *Store) Watch(ctx context.Context, fromRev int64, kinds ...Kind) <-chan Change {
	ws := make([]watched, len(kinds))
	for i, k := range kinds {
		ws[i] = watched{k, kindPrefix[k]}
	}
	return s.watchPrefixes(ctx, fromRev, ws)
}

// watched is a prefix a watch follows, and the kind its changes are.
type watched struct {
	kind   Kind
	prefix string
}

func (s *Store) watchPrefixes(ctx context.Context, fromRev int64, ws []watched) <-chan Change {
	out := make(chan Change, 64)
	ctx, cancel := context.WithCancel(ctx)
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRev > 0 {
		opts = append(opts, clientv3.WithRev(fromRev))
	}
	done := make(chan struct{}, len(ws))
	var senders sync.WaitGroup
	for _, w := range ws {
		wc := s.cli.Watch(clientv3.WithRequireLeader(ctx), w.prefix, opts...)
		senders.Add(1)
		go func(w watched) {
			defer senders.Done()
			defer func() { done <- struct{}{} }()
			for wr := range wc {
				if wr.Err() != nil || wr.Canceled {
					return
				}
				for _, ev := range wr.Events {
					c := Change{Kind: w.kind, Name: strings.TrimPrefix(string(ev.Kv.Key), w.prefix), Rev: ev.Kv.ModRevision,
						Deleted: ev.Type == clientv3.EventTypeDelete}
					if !c.Deleted {
						c.Value = ev.Kv.Value
					}
					select {
					case out <- c:
					case <-ctx.Done():
						return
					}
				}
			}
		}(w)
	}
	go func() {
		// One watch ending ends them all: the caller starts over. The
		// channel closes only once no sender can send on it any more.
		select {
		case <-done:
		case <-ctx.Done():
		}
		cancel()
		senders.Wait()
		close(out)
	}()
	return out
}
