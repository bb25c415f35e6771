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

// Waker is a controller that wants its next pass sooner than the periodic
// tick (for example when a deadline it waits for falls between changes).
type Waker interface {
	// NextPass is how soon the next pass is wanted; 0 means no need.
	NextPass() time.Duration
}

// Run campaigns as name and runs the controllers while leader, until ctx
// ends. ttl is the leader lease: when the leader's host dies another host
// takes over within it.
func Run(ctx context.Context, st *store.Store, name string, ttl time.Duration, log *slog.Logger, ctrls ...Controller) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "leader")
	for ctx.Err() == nil {
		if err := lead(ctx, st, name, ttl, log, ctrls); err != nil && ctx.Err() == nil {
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

func lead(ctx context.Context, st *store.Store, name string, ttl time.Duration, log *slog.Logger, ctrls []Controller) error {
	secs := int(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	sess, err := concurrency.NewSession(st.Client(), concurrency.WithTTL(secs), concurrency.WithContext(ctx))
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
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		soon := time.Duration(0)
		for _, c := range ctrls {
			if err := c.Pass(ctx, guard); err != nil && ctx.Err() == nil {
				log.Warn("controller pass", "controller", c.Name(), "err", err)
			}
			if w, ok := c.(Waker); ok {
				if d := w.NextPass(); d > 0 && (soon == 0 || d < soon) {
					soon = d
				}
			}
		}
		if soon == 0 {
			soon = time.Hour
		}
		if !wake.Stop() {
			select {
			case <-wake.C:
			default:
			}
		}
		wake.Reset(soon)
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errString("leader lease lost")
		case <-wake.C:
		case <-tick.C:
		case _, ok := <-wc:
			if !ok {
				wc = st.Client().Watch(wctx, store.Prefix, clientv3.WithPrefix())
			}
			// Coalesce a burst of changes into one pass (briefly: a queued
			// migration waits for this pass to be admitted).
			drain(wc, 5*time.Millisecond)
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
