package store

import (
	"context"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// HostVMPrefix holds each host's range of the VMs it must look at:
// hostvms/<host>/<vm>. Every transaction that places a VM on a host writes
// the VM's key in that host's range, every change of a placed VM's spec
// rewrites it, and every write of a migration rewrites it in the source's
// and the target's range, so that an agent watches and re-reads its own range rather
// than every VM of the cluster (at 1,000 hosts, a watch on every spec and
// placement costs each change a thousand deliveries and each agent's
// resync the whole cluster's placements). The range may hold more than the
// host's VMs (a VM moved away leaves its key until the host's agent has
// looked at it and let go); placement stays the truth.
const HostVMPrefix = Prefix + "hostvms/"

func hostVMKey(node, vm string) string { return HostVMPrefix + node + "/" + vm }

// touch rewrites a VM's key in a host's range (its value says why).
func touch(node, vm, why string) clientv3.Op { return clientv3.OpPut(hostVMKey(node, vm), why) }

// HostVMs lists the VMs in a host's range and the revision read at.
func (s *Store) HostVMs(ctx context.Context, node string) ([]string, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	prefix := HostVMPrefix + node + "/"
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, unavailable(err)
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return out, resp.Header.Revision, nil
}

// ForgetHostVM drops a VM from a host's range, unless it is placed there.
func (s *Store) ForgetHostVM(ctx context.Context, node, vm string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(PlacementPrefix+vm), "!=", node)).
		Then(clientv3.OpDelete(hostVMKey(node, vm))).Commit()
	return unavailable(err)
}

// hostVMsIndexed marks a store whose hosts' ranges hold every placement.
const hostVMsIndexed = Prefix + "cluster/hostvms-indexed"

// IndexPlacements fills the hosts' ranges from the placements once per
// store, for stores written before the ranges existed; every writer since
// keeps them. The first agent to start claims the work by setting the mark
// (so that a thousand agents starting together do not all read every
// placement); one that dies half-way leaves the rest to its guests' own
// resyncs, which queue every local guest.
func (s *Store) IndexPlacements(ctx context.Context) error {
	cctx, cancel := bounded(ctx)
	claim, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.Version(hostVMsIndexed), "=", 0)).
		Then(clientv3.OpPut(hostVMsIndexed, "1")).Commit()
	cancel()
	if err != nil {
		return unavailable(err)
	}
	if !claim.Succeeded {
		return nil
	}
	if err := s.indexPlacements(ctx); err != nil {
		// Give the work back: the next agent to start does it.
		cctx, cancel := bounded(context.WithoutCancel(ctx))
		s.cli.Delete(cctx, hostVMsIndexed)
		cancel()
		return err
	}
	return nil
}

func (s *Store) indexPlacements(ctx context.Context) error {
	placed, _, err := s.Placements(ctx)
	if err != nil {
		return err
	}
	for vm, node := range placed {
		cctx, cancel := bounded(ctx)
		_, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.Value(PlacementPrefix+vm), "=", node)).
			Then(touch(node, vm, "placed")).Commit()
		cancel()
		if err != nil {
			return unavailable(err)
		}
	}
	return nil
}

// WatchHost follows a host's range from revision fromRev — each change names
// a VM the host must look at — and the records of the kinds also. The
// channel closes as Watch's does.
func (s *Store) WatchHost(ctx context.Context, fromRev int64, node string, also ...Kind) <-chan Change {
	ws := []watched{{KindHostVM, HostVMPrefix + node + "/"}}
	for _, k := range also {
		ws = append(ws, watched{k, kindPrefix[k]})
	}
	return s.watchPrefixes(ctx, fromRev, ws)
}
