package ha

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
)

// AliveEvery is how often an agent writes its alive key with the default
// timing (Timing.Alive), and SuspectAfter how long a host may then go unseen
// before the cluster reports it unreachable (three beats: Timing.Suspect).
// Suspicion is detection only: nothing restarts before the host's lease has
// expired (see Restarts), because only the lease bounds when the host's own
// fencing has acted.
const (
	AliveEvery   = 500 * time.Millisecond
	SuspectAfter = 3 * AliveEvery
)

// Liveness watches the alive keys and, while this host leads, reports hosts
// that stopped writing them (event host-unreachable) and hosts that are back.
type Liveness struct {
	st      *store.Store
	log     *slog.Logger
	leader  func() bool
	suspect time.Duration

	mu        sync.Mutex
	lastSeen  map[string]time.Time // by this process's clock: no cross-host clock compare
	lastRev   map[string]int64     // revision of the alive write lastSeen stands for
	suspected map[string]bool
}

// NewLiveness returns a watcher; leader reports whether this host leads now.
func NewLiveness(st *store.Store, t Timing, leader func() bool, log *slog.Logger) *Liveness {
	if log == nil {
		log = slog.Default()
	}
	return &Liveness{st: st, leader: leader, suspect: t.Suspect(), log: log.With("component", "liveness"),
		lastSeen: map[string]time.Time{}, lastRev: map[string]int64{}, suspected: map[string]bool{}}
}

// Run watches until ctx ends. Only the leader follows the alive keys: every
// host writes its own twice a second, so a watch on every host would cost
// the cluster hosts² events a second. A host that starts leading reads every
// beat once and counts each host as seen from then on.
func (l *Liveness) Run(ctx context.Context) {
	go l.check(ctx)
	for ctx.Err() == nil {
		if l.leader() {
			l.follow(ctx)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// follow watches the alive keys while this host leads.
func (l *Liveness) follow(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for ctx.Err() == nil && l.leader() {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		cancel()
	}()
	beats, rev, err := l.st.AliveRevisions(ctx)
	if err != nil {
		return
	}
	l.mu.Lock()
	// What an earlier term saw is stale: it would report every host.
	l.lastSeen, l.lastRev = map[string]time.Time{}, map[string]int64{}
	for host, r := range beats {
		l.saw(host, r)
	}
	l.mu.Unlock()
	for c := range l.st.Watch(ctx, rev+1, store.KindAlive) {
		if !c.Deleted {
			l.mu.Lock()
			l.saw(c.Name, c.Rev)
			l.mu.Unlock()
		}
	}
}

// saw records an alive write; re-reading a write already seen (after the
// watch was re-established, e.g. because the etcd member it used died with
// the host being watched) must not make the host look fresh again.
func (l *Liveness) saw(host string, rev int64) {
	if rev > l.lastRev[host] {
		l.lastRev[host], l.lastSeen[host] = rev, time.Now()
	}
}

// check reports changes every 100 ms while this host leads.
func (l *Liveness) check(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !l.leader() {
			continue
		}
		now := time.Now()
		var evs []api.Event
		l.mu.Lock()
		for h, seen := range l.lastSeen {
			quiet := now.Sub(seen)
			switch {
			case quiet > l.suspect && !l.suspected[h]:
				l.suspected[h] = true
				evs = append(evs, api.Event{Time: now.UTC(), Kind: "host-unreachable", Node: h,
					Message: fmt.Sprintf("host %s: not heard from for %s; its guests restart elsewhere once its lease has expired", h, quiet.Round(time.Millisecond))})
			case quiet <= l.suspect && l.suspected[h]:
				delete(l.suspected, h)
				evs = append(evs, api.Event{Time: now.UTC(), Kind: "host-reachable", Node: h, Message: fmt.Sprintf("host %s is heard from again", h)})
			}
		}
		l.mu.Unlock()
		for _, ev := range evs {
			l.log.Warn(ev.Message)
			if err := l.st.PutEvent(ctx, ev); err != nil {
				l.log.Warn("recording event", "err", err)
			}
		}
	}
}

// PutAlive is the agent's side: it rewrites its beat, bound to its lease.
func PutAlive(ctx context.Context, st *store.Store, t Timing, node string, lease store.LeaseID) error {
	return st.PutAlive(ctx, node, lease, t.AliveEvery())
}
