// Package leader runs the cluster's control loops on exactly one host at a
// time: it campaigns in an etcd election and, while leader, calls every
// controller's pass on each change under /ferry/v1/ and on a timer. Each
// pass gets the fencing compare on the leader key, which every controller
// write must carry (invariant 6).
package leader

import (
	"context"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Controller is one control loop run by the leader.
type Controller interface {
	// Name is used in logs.
	Name() string
	// Pass looks at the store and acts; guard must be part of every write.
	Pass(ctx context.Context, guard clientv3.Cmp) error
}

// Run campaigns as name and runs the controllers while leader, until ctx ends.
func Run(ctx context.Context, st *store.Store, name string, log *slog.Logger, ctrls ...Controller) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "leader")
	for ctx.Err() == nil {
		if err := lead(ctx, st, name, log, ctrls); err != nil && ctx.Err() == nil {
			log.Warn("leadership ended", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func lead(ctx context.Context, st *store.Store, name string, log *slog.Logger, ctrls []Controller) error {
	sess, err := concurrency.NewSession(st.Client(), concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer func() {
		// Give up leadership at once on the way out (sess.Close would use
		// the already-cancelled ctx), so a successor need not wait for the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st.Client().Revoke(rctx, sess.Lease())
		cancel()
		sess.Orphan()
	}()
	el := concurrency.NewElection(sess, store.LeaderPrefix)
	if err := el.Campaign(ctx, name); err != nil {
		return err
	}
	guard := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	log.Info("became leader", "node", name, "rev", el.Rev())

	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := st.Client().Watch(wctx, store.Prefix, clientv3.WithPrefix())
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		for _, c := range ctrls {
			if err := c.Pass(ctx, guard); err != nil && ctx.Err() == nil {
				log.Warn("controller pass", "controller", c.Name(), "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errString("leader lease lost")
		case <-tick.C:
		case _, ok := <-wc:
			if !ok {
				wc = st.Client().Watch(wctx, store.Prefix, clientv3.WithPrefix())
			}
			// Coalesce a burst of changes into one pass.
			drain(wc, 20*time.Millisecond)
		}
	}
}

func drain(wc clientv3.WatchChan, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-wc:
		case <-t.C:
			return
		}
	}
}
