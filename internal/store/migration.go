package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MigrationPrefix holds one record per VM: its current or last migration.
const MigrationPrefix = Prefix + "migrations/"

// GetMigration returns a VM's current or last migration and its revision
// (nil if it never migrated).
func (s *Store) GetMigration(ctx context.Context, vm string) (*api.Migration, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, MigrationPrefix+vm)
	if err != nil {
		return nil, 0, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var m api.Migration
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return nil, 0, fmt.Errorf("%w: decoding migration of %s: %v", errdefs.ErrInternal, vm, err)
	}
	return &m, resp.Kvs[0].ModRevision, nil
}

// StartMigration records a new migration unless one is already under way.
// A finished record being amended at that moment (a source adds QEMU's
// figures to a migration the target already ended) is no reason to refuse:
// the new record is tried again on top of it, a few times.
func (s *Store) StartMigration(ctx context.Context, m *api.Migration) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := MigrationPrefix + m.VM
	b, _ := json.Marshal(m)
	for attempt := 0; ; attempt++ {
		cur, rev, err := s.GetMigration(ctx, m.VM)
		if err != nil {
			return err
		}
		if cur != nil && !api.MigrationTerminal(cur.Phase) {
			return errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q is already migrating (%s -> %s, %s)", m.VM, cur.Source, cur.Target, cur.Phase))
		}
		cmp := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
		resp, err := s.cli.Txn(ctx).
			If(cmp, clientv3.Compare(clientv3.Version(VMPrefix+m.VM), ">", 0)).
			Then(append(append(touchParties(m), migrationEvent(cur, m)...), clientv3.OpPut(key, string(b)))...).Commit()
		if err != nil {
			return unavailable(err)
		}
		if resp.Succeeded {
			s.observed(cur, m)
			return nil
		}
		if attempt == 4 {
			return errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q changed while the migration was being started; try again", m.VM))
		}
	}
}

// UpdateMigration applies fn to a VM's migration with optimistic concurrency
// and returns the stored result and its revision. fn returning an error aborts.
func (s *Store) UpdateMigration(ctx context.Context, vm string, fn func(*api.Migration) error) (*api.Migration, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := MigrationPrefix + vm
	for {
		m, rev, err := s.GetMigration(ctx, vm)
		if err != nil {
			return nil, 0, err
		}
		if m == nil {
			return nil, 0, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("vm %q has no migration", vm))
		}
		old := *m
		if err := fn(m); err != nil {
			return m, rev, err
		}
		b, _ := json.Marshal(m)
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(append(append(touchParties(m), migrationEvent(&old, m)...), clientv3.OpPut(key, string(b)))...).Commit()
		if err != nil {
			return nil, 0, unavailable(err)
		}
		if resp.Succeeded {
			s.observed(&old, m)
			return m, resp.Header.Revision, nil
		}
	}
}

// Takeover is the switchover of a live migration, in one transaction made
// by the target once the stream has arrived (its QEMU still paused): if the
// source still owns the VM and the migration record is exactly as the target
// read it (still copying, not cancelled), ownership (bound to the target's
// lease) and placement move to the target and the migration enters
// switchover. Only then may the target run the guest. It returns the new
// ownership key's revision: the target's fencing token.
func (s *Store) Takeover(ctx context.Context, m *api.Migration, rev int64, lease LeaseID) (int64, bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	next := *m
	next.Phase = api.MigSwitchover
	b, _ := json.Marshal(next)
	ok := OwnerPrefix + m.VM
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(ok), "=", m.Source),
			clientv3.Compare(clientv3.ModRevision(MigrationPrefix+m.VM), "=", rev)).
		Then(clientv3.OpPut(ok, m.Target, clientv3.WithLease(clientv3.LeaseID(lease))),
			clientv3.OpPut(PlacementPrefix+m.VM, m.Target), touch(m.Target, m.VM, "placed"), touch(m.Source, m.VM, "migration"),
			eventOp(phaseEvent(&next)), clientv3.OpPut(MigrationPrefix+m.VM, string(b))).Commit()
	if err != nil {
		return 0, false, unavailable(err)
	}
	if !resp.Succeeded {
		return 0, false, nil
	}
	s.observed(m, &next)
	*m = next
	return resp.Header.Revision, true, nil
}

// Owner returns who owns a VM and the ownership key's revision.
func (s *Store) Owner(ctx context.Context, vm string) (string, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, OwnerPrefix+vm)
	if err != nil {
		return "", 0, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, nil
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision, nil
}

// MigrationRev is a migration with the revision it was read at.
type MigrationRev struct {
	api.Migration
	Rev int64
}

// ListMigrations returns every VM's current or last migration.
func (s *Store) ListMigrations(ctx context.Context) ([]MigrationRev, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, MigrationPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	var out []MigrationRev
	for _, kv := range resp.Kvs {
		var m api.Migration
		if json.Unmarshal(kv.Value, &m) == nil {
			out = append(out, MigrationRev{Migration: m, Rev: kv.ModRevision})
		}
	}
	return out, nil
}

// Migrations strips the revisions from a listing.
func Migrations(l []MigrationRev) []api.Migration {
	out := make([]api.Migration, len(l))
	for i, m := range l {
		out[i] = m.Migration
	}
	return out
}

// PutMigrationGuarded writes a migration if it is still at rev (0: absent)
// and the leader guard holds.
func (s *Store) PutMigrationGuarded(ctx context.Context, m *api.Migration, rev int64, guard Guard) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	// The record it replaces, for the phase event (the transaction checks
	// that it is still the one at rev).
	old, oldRev, err := s.GetMigration(ctx, m.VM)
	if err != nil {
		return false, err
	}
	if oldRev != rev {
		return false, nil
	}
	b, _ := json.Marshal(m)
	key := MigrationPrefix + m.VM
	resp, err := s.cli.Txn(ctx).
		If(append(guard.cmps(), clientv3.Compare(clientv3.ModRevision(key), "=", rev), clientv3.Compare(clientv3.Version(VMPrefix+m.VM), ">", 0))...).
		Then(append(append(touchParties(m), migrationEvent(old, m)...), clientv3.OpPut(key, string(b)))...).Commit()
	if err != nil {
		return false, unavailable(err)
	}
	if resp.Succeeded {
		s.observed(old, m)
	}
	return resp.Succeeded, nil
}

// touchParties tells a migration's source and target of a change to it,
// in their ranges (an agent watches its range, not every migration).
func touchParties(m *api.Migration) []clientv3.Op {
	var ops []clientv3.Op
	for _, h := range []string{m.Source, m.Target} {
		if h != "" {
			ops = append(ops, touch(h, m.VM, "migration"))
		}
	}
	return ops
}

// MovePlacement moves a VM that runs nowhere (no ownership key) from one
// node to another, under the leader guard.
func (s *Store) MovePlacement(ctx context.Context, vm, from, to string, guard Guard) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(append(guard.cmps(), clientv3.Compare(clientv3.Value(PlacementPrefix+vm), "=", from),
			clientv3.Compare(clientv3.Version(OwnerPrefix+vm), "=", 0))...).
		Then(clientv3.OpPut(PlacementPrefix+vm, to), touch(to, vm, "placed"), touch(from, vm, "moved away")).Commit()
	if err != nil {
		return false, unavailable(err)
	}
	return resp.Succeeded, nil
}
