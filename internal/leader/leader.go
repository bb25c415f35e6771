// Package leader runs the cluster's control loops on exactly one host at a
// time: it campaigns in the store's election and, while leader, keeps a
// mirror of the cluster's state and runs a round of every controller on
// each change of it and on a timer. Each round hands the controllers one
// snapshot and the leadership's fencing guard, which every controller write
// must carry (invariant 6).
package leader

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
)

// Controller is one control loop run by the leader.
type Controller interface {
	// Name is used in logs.
	Name() string
	// Pass looks at the round's snapshot and acts; every write carries the
	// round's guard.
	Pass(ctx context.Context, r *Round) error
}

// Waker is a controller that wants its next pass sooner than the periodic
// tick (for example when a deadline it waits for falls between changes).
type Waker interface {
	// NextPass is how soon the next pass is wanted; 0 means no need.
	NextPass() time.Duration
}

// Config says who campaigns and how.
type Config struct {
	// Name is this host's name in the election.
	Name string
	// TTL is the leader lease: when the leader's host dies another host
	// takes over within it (etcd's smallest is 1 s).
	TTL time.Duration
	Log *slog.Logger
	// OnRound, if set, is told how long each round took (the scale
	// benchmark's leader pass time).
	OnRound func(time.Duration)
}

// Run campaigns and runs the controllers while leader, until ctx ends.
func Run(ctx context.Context, st *store.Store, cfg Config, ctrls ...Controller) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Second
	}
	cfg.Log = cfg.Log.With("component", "leader")
	for ctx.Err() == nil {
		if err := lead(ctx, st, cfg, ctrls); err != nil && ctx.Err() == nil {
			cfg.Log.Warn("leadership ended", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func lead(ctx context.Context, st *store.Store, cfg Config, ctrls []Controller) error {
	log := cfg.Log
	l, err := st.Campaign(ctx, cfg.Name, cfg.TTL)
	if err != nil {
		return err
	}
	// Give up leadership at once on the way out, so that a successor need
	// not wait for the lease.
	defer l.Resign()
	guard := l.Guard()
	log.Info("became leader", "node", cfg.Name, "rev", guard.Rev())
	if err := st.PutEvent(ctx, api.Event{Kind: "leader-elected", Node: cfg.Name,
		Message: fmt.Sprintf("%s leads the cluster's controllers (scheduler, HA, migrations, drains)", cfg.Name)}); err != nil {
		log.Warn("recording event", "kind", "leader-elected", "err", err)
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mirror := st.Mirror(mctx)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		if snap, ok := mirror.Snapshot(); ok {
			start := time.Now()
			wake.Reset(round(ctx, NewRound(snap, guard), ctrls, log))
			if cfg.OnRound != nil {
				cfg.OnRound(time.Since(start))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.Done():
			return errString("leader lease lost")
		case <-wake.C:
		case <-tick.C:
		case <-mirror.Changed():
			// Coalesce a burst of changes into one round (briefly: a queued
			// migration waits for this round to be admitted).
			drain(mirror.Changed(), 5*time.Millisecond)
		}
		if !wake.Stop() {
			select {
			case <-wake.C:
			default:
			}
		}
	}
}

// round runs every controller once and returns how soon one wants the
// next round (an hour if none does).
func round(ctx context.Context, r *Round, ctrls []Controller, log *slog.Logger) time.Duration {
	soon := time.Hour
	for _, c := range ctrls {
		if err := c.Pass(ctx, r); err != nil && ctx.Err() == nil {
			log.Warn("controller pass", "controller", c.Name(), "err", err)
		}
		if w, ok := c.(Waker); ok {
			if d := w.NextPass(); d > 0 && d < soon {
				soon = d
			}
		}
	}
	return soon
}

func drain(c <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-c:
		case <-t.C:
			return
		}
	}
}
