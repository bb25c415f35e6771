package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/ferryvm/ferry/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Owners maps each VM that a host currently owns to that host.
func (s *Store) Owners(ctx context.Context) (map[string]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, OwnerPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[NameFromKey(kv.Key)] = string(kv.Value)
	}
	return out, nil
}

// Relocate moves a VM from a dead (or given-up) host to another and writes
// the status the new host starts from, in one transaction that holds only
// if the VM is still placed on from, nobody owns it (the old host's lease,
// and the ownership bound to it, are gone), and the leader guard holds.
func (s *Store) Relocate(ctx context.Context, vm, from, to string, st api.VMStatus, guard Guard) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	st.UpdatedAt = time.Now().UTC()
	if st.Since.IsZero() {
		st.Since = st.UpdatedAt
	}
	b, _ := json.Marshal(st)
	resp, err := s.cli.Txn(ctx).If(append([]clientv3.Cmp{
		clientv3.Compare(clientv3.Value(PlacementPrefix+vm), "=", from),
		clientv3.Compare(clientv3.Version(OwnerPrefix+vm), "=", 0),
		clientv3.Compare(clientv3.Version(VMPrefix+vm), ">", 0),
	}, guard.cmps()...)...).Then(clientv3.OpPut(PlacementPrefix+vm, to), clientv3.OpPut(StatusPrefix+vm, string(b)),
		touch(to, vm, "placed"), touch(from, vm, "moved away")).Commit()
	if err != nil {
		return false, unavailable(err)
	}
	return resp.Succeeded, nil
}

// HAState returns the cluster's HA switch.
func (s *Store) HAState(ctx context.Context) (api.HAState, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var st api.HAState
	resp, err := s.cli.Get(ctx, HAStateKey)
	if err != nil {
		return st, unavailable(err)
	}
	if len(resp.Kvs) > 0 {
		json.Unmarshal(resp.Kvs[0].Value, &st)
	}
	return st, nil
}

// SetHAState writes the cluster's HA switch.
func (s *Store) SetHAState(ctx context.Context, st api.HAState) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(st)
	_, err := s.cli.Put(ctx, HAStateKey, string(b))
	return unavailable(err)
}

// Security returns the cluster's security settings.
func (s *Store) Security(ctx context.Context) (api.Security, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var sec api.Security
	resp, err := s.cli.Get(ctx, SecurityKey)
	if err != nil {
		return sec, unavailable(err)
	}
	if len(resp.Kvs) > 0 {
		json.Unmarshal(resp.Kvs[0].Value, &sec)
	}
	return sec, nil
}

// SetSecurity writes the cluster's security settings.
func (s *Store) SetSecurity(ctx context.Context, sec api.Security) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(sec)
	_, err := s.cli.Put(ctx, SecurityKey, string(b))
	return unavailable(err)
}

// MaxEvents is how many events the store keeps; older ones are pruned.
const MaxEvents = 2000

// PutEvent records an event.
func (s *Store) PutEvent(ctx context.Context, ev api.Event) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	_, err := s.cli.Do(ctx, eventOp(ev))
	return unavailable(err)
}

// ListEvents returns the newest limit events, oldest first.
func (s *Store) ListEvents(ctx context.Context, limit int) ([]api.Event, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if limit <= 0 || limit > MaxEvents {
		limit = MaxEvents
	}
	resp, err := s.cli.Get(ctx, EventPrefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]api.Event, 0, len(resp.Kvs))
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		var ev api.Event
		if json.Unmarshal(resp.Kvs[i].Value, &ev) == nil {
			out = append(out, ev)
		}
	}
	return out, nil
}

// PruneEvents deletes all but the newest MaxEvents events.
func (s *Store) PruneEvents(ctx context.Context) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, EventPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(MaxEvents+1))
	if err != nil || len(resp.Kvs) <= MaxEvents {
		return unavailable(err)
	}
	last := resp.Kvs[MaxEvents-1].Key // everything before it goes
	_, err = s.cli.Delete(ctx, EventPrefix, clientv3.WithRange(string(last)))
	return unavailable(err)
}
