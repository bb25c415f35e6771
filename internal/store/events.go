package store

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// eventOp is the write of one event, for a transaction. Keys sort by time,
// so listing is in order; the suffix, from the event's content, keeps two
// events of the same instant apart, and makes writing one event again (a
// retry after a lost answer) idempotent.
func eventOp(ev api.Event) clientv3.Op {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	b, _ := json.Marshal(ev)
	sum := sha256.Sum256(b)
	key := fmt.Sprintf("%s%020d-%s-%x", EventPrefix, ev.Time.UnixNano(), ev.Kind, sum[:4])
	return clientv3.OpPut(key, string(b))
}

// migrationEvent is the event of a migration entering its phase, written
// in the transaction that records the phase (so that followers of the
// event log see every phase, once and in order); nil when the phase did
// not change.
func migrationEvent(old *api.Migration, m *api.Migration) []clientv3.Op {
	if old != nil && old.ID == m.ID && old.Phase == m.Phase {
		return nil
	}
	return []clientv3.Op{eventOp(phaseEvent(m))}
}

// phaseEvent says that migration m entered its phase.
func phaseEvent(m *api.Migration) api.Event {
	msg := fmt.Sprintf("migration of %s from %s to %s: %s", m.VM, m.Source, m.Target, m.Phase)
	switch {
	case m.Phase == api.MigQueued && m.Reason != "":
		msg += " (" + m.Reason + ")"
	case m.Phase == api.MigFailed && m.Error != "":
		msg += ": " + m.Error
	case m.Phase == api.MigCompleted:
		total := m.TotalTimeMS
		if total == 0 && !m.Finished.IsZero() {
			total = m.Finished.Sub(m.Started).Milliseconds()
		}
		msg += fmt.Sprintf(" in %d ms", total)
		if m.DowntimeMS > 0 {
			msg += fmt.Sprintf(", paused %d ms", m.DowntimeMS)
		}
	}
	return api.Event{Kind: MigrationEventPrefix + m.Phase, Node: m.Source, VM: m.VM, Message: msg}
}

// guestEvent says that a guest entered its phase on node.
func guestEvent(name, node string, st api.VMStatus) api.Event {
	msg := fmt.Sprintf("vm %s on %s: %s", name, node, st.Phase)
	if st.Message != "" {
		msg += ": " + st.Message
	}
	return api.Event{Kind: GuestEventPrefix + st.Phase, Node: node, VM: name, Message: msg}
}

// GuestEventPrefix starts the kind of every guest phase event
// ("vm-running", ...).
const GuestEventPrefix = "vm-"

// MigrationEventPrefix starts the kind of every migration phase event
// ("migration-copying", ...).
const MigrationEventPrefix = "migration-"

// EventFollow is one event of a followed log with its key name, which
// FollowEvents takes back as after to resume there.
type EventFollow struct {
	ID    string
	Event api.Event
}

// FollowEvents sends the newest backlog events (after the one named after,
// if any; 0: none), then each new one as it is written, in order. The
// channel closes when ctx ends or the watch breaks (etcd lost its leader,
// or the log moved past what the watch could replay): the follower then
// follows again from the last ID it saw.
func (s *Store) FollowEvents(ctx context.Context, after string, backlog int) (<-chan EventFollow, error) {
	rctx, cancel := bounded(ctx)
	defer cancel()
	backlog = min(backlog, MaxEvents)
	// The newest backlog events after after, read at the revision the
	// watch then starts from: none is missed or sent twice.
	from, opts := EventPrefix, []clientv3.OpOption{clientv3.WithPrefix()}
	if after != "" {
		from = EventPrefix + after + "\x00"
		opts = []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(EventPrefix))}
	}
	if backlog > 0 {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(backlog)))
	} else {
		opts = append(opts, clientv3.WithCountOnly())
	}
	resp, err := s.cli.Get(rctx, from, opts...)
	if err != nil {
		return nil, unavailable(err)
	}
	var first []EventFollow
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		var ev api.Event
		if json.Unmarshal(resp.Kvs[i].Value, &ev) == nil {
			first = append(first, EventFollow{ID: strings.TrimPrefix(string(resp.Kvs[i].Key), EventPrefix), Event: ev})
		}
	}
	out := make(chan EventFollow, 64)
	changes := s.Watch(ctx, resp.Header.Revision+1, KindEvent)
	go func() {
		defer close(out)
		send := func(f EventFollow) bool {
			select {
			case out <- f:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for _, f := range first {
			if !send(f) {
				return
			}
		}
		for c := range changes {
			var ev api.Event
			if c.Deleted || json.Unmarshal(c.Value, &ev) != nil {
				continue // pruned from the log's old end
			}
			if !send(EventFollow{ID: c.Name, Event: ev}) {
				return
			}
		}
	}()
	return out, nil
}
