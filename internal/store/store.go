// Package store is Ferry's only place where decisions meet: typed access to
// etcd for VM specs (desired state), placements, status (observed state),
// ownership keys and node records, all under the versioned prefix /ferry/v1/.
package store

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/ipam"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Key prefixes.
const (
	Prefix          = "/ferry/v1/"
	VMPrefix        = Prefix + "vms/"
	StatusPrefix    = Prefix + "status/"
	PlacementPrefix = Prefix + "placement/"
	OwnerPrefix     = Prefix + "owners/"
	NodePrefix      = Prefix + "nodes/"
	IPPrefix        = Prefix + "ips/"
	NodeMetaPrefix  = Prefix + "nodemeta/"
	LeaderPrefix    = Prefix + "leader"
	EventPrefix     = Prefix + "events/"
	HAStateKey      = Prefix + "cluster/ha"
	SecurityKey     = Prefix + "cluster/security"
)

// Store wraps an etcd client.
type Store struct {
	cli *clientv3.Client
	// observe hears of each migration record this client wrote.
	observe func(old, m *api.Migration)
}

// ObserveMigrations has fn called after each write of a migration record
// through this client, with the record it replaced (nil: none, or another
// migration's), so that each change is seen once, by the process that
// made it (metrics). Set it before the store is used.
func (s *Store) ObserveMigrations(fn func(old, m *api.Migration)) { s.observe = fn }

// observed tells the observer, if any, of a migration record written.
func (s *Store) observed(old, m *api.Migration) {
	if s.observe != nil {
		s.observe(old, m)
	}
}

// Open connects to etcd.
func Open(ctx context.Context, endpoints []string, tlsCfg *tls.Config) (*Store, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		// Notice a member that stopped answering (a host cut off) and move
		// to another, instead of waiting for TCP to give up.
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		// Reconnect quickly after a network blip: gRPC's default back-off
		// grows to two minutes, far beyond the 2 s lease a host must renew.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
		Logger: nopZap(),
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", endpoints, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(cctx, "/ferry/v1/ping"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("%w: etcd %v not answering: %v", errdefs.ErrUnavailable, endpoints, err)
	}
	return &Store{cli: cli}, nil
}

// Close closes the client.
func (s *Store) Close() error { return s.cli.Close() }

func unavailable(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	// etcd refuses a caller whose certificate was revoked (see
	// revocationOptions): that is not a passing outage, and callers tell
	// it apart (a removed host's agent stops on it).
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unauthenticated {
		return fmt.Errorf("%w: etcd: %s", errdefs.ErrUnauthenticated, st.Message())
	}
	return fmt.Errorf("%w: etcd: %v", errdefs.ErrUnavailable, err)
}

// CreateVM stores a new VM spec with a freshly allocated address. It fails
// with ErrAlreadyExists if the name is taken.
func (s *Store) CreateVM(ctx context.Context, spec *api.VMSpec) error {
	return s.CreateVMOn(ctx, spec, "")
}

// CreateVMOn is CreateVM with the VM placed on node in the same
// transaction (none: ""), so that no scheduler places it elsewhere first.
func (s *Store) CreateVMOn(ctx context.Context, spec *api.VMSpec, node string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	const randomTries = 8
	for attempt := 0; attempt < randomTries+64; attempt++ {
		// A random address first (no read of every claim); when the space
		// is so full that several miss, the lowest free one — concurrent
		// creators that lost a race take one further along.
		var ip netip.Addr
		if attempt < randomTries {
			ip = ipam.Random(rand.IntN)
		} else {
			used, err := s.usedAddresses(ctx)
			if err != nil {
				return err
			}
			if ip, err = ipam.Free(used, attempt-randomTries); err != nil {
				return err
			}
		}
		spec.IP = netip.PrefixFrom(ip, ipam.Subnet.Bits()).String()
		spec.MAC = ipam.MACFor(ip)
		b, _ := json.Marshal(spec)
		st, _ := json.Marshal(api.VMStatus{Phase: api.PhasePending, Since: time.Now().UTC(), UpdatedAt: time.Now().UTC()})
		vk, ik := VMPrefix+spec.Name, IPPrefix+ip.String()
		ops := []clientv3.Op{clientv3.OpPut(vk, string(b)), clientv3.OpPut(ik, spec.Name), clientv3.OpPut(StatusPrefix+spec.Name, string(st))}
		if node != "" {
			ops = append(ops, clientv3.OpPut(PlacementPrefix+spec.Name, node), touch(node, spec.Name, "placed"))
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(vk), "=", 0), clientv3.Compare(clientv3.Version(ik), "=", 0)).
			Then(ops...).Commit()
		if err != nil {
			return unavailable(err)
		}
		if resp.Succeeded {
			return nil
		}
		if g, err := s.cli.Get(ctx, vk, clientv3.WithCountOnly()); err == nil && g.Count > 0 {
			return errdefs.New(errdefs.ErrAlreadyExists, fmt.Sprintf("vm %q already exists", spec.Name))
		}
		// The address was taken concurrently; pick another.
	}
	return fmt.Errorf("%w: could not allocate an address", errdefs.ErrConflict)
}

// usedAddresses reads the guests' address claims.
func (s *Store) usedAddresses(ctx context.Context) (map[netip.Addr]bool, error) {
	resp, err := s.cli.Get(ctx, IPPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, unavailable(err)
	}
	used := map[netip.Addr]bool{}
	for _, kv := range resp.Kvs {
		if a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), IPPrefix)); err == nil {
			used[a] = true
		}
	}
	return used, nil
}

// GetVM returns spec, placement and status of one VM.
func (s *Store) GetVM(ctx context.Context, name string) (*api.VM, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(VMPrefix+name), clientv3.OpGet(PlacementPrefix+name), clientv3.OpGet(StatusPrefix+name),
	).Commit()
	if err != nil {
		return nil, unavailable(err)
	}
	r := resp.Responses
	if len(r[0].GetResponseRange().Kvs) == 0 {
		return nil, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("vm %q not found", name))
	}
	vm := &api.VM{}
	if err := json.Unmarshal(r[0].GetResponseRange().Kvs[0].Value, &vm.Spec); err != nil {
		return nil, fmt.Errorf("%w: decoding vm %s: %v", errdefs.ErrInternal, name, err)
	}
	if kvs := r[1].GetResponseRange().Kvs; len(kvs) > 0 {
		vm.Node = string(kvs[0].Value)
	}
	if kvs := r[2].GetResponseRange().Kvs; len(kvs) > 0 {
		json.Unmarshal(kvs[0].Value, &vm.Status)
	}
	return vm, nil
}

// ListVMs returns every VM, sorted by name.
func (s *Store) ListVMs(ctx context.Context) ([]api.VM, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(VMPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		clientv3.OpGet(PlacementPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(StatusPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, unavailable(err)
	}
	place := map[string]string{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		place[strings.TrimPrefix(string(kv.Key), PlacementPrefix)] = string(kv.Value)
	}
	status := map[string][]byte{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		status[strings.TrimPrefix(string(kv.Key), StatusPrefix)] = kv.Value
	}
	out := []api.VM{}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var vm api.VM
		if json.Unmarshal(kv.Value, &vm.Spec) != nil {
			continue
		}
		vm.Node = place[vm.Spec.Name]
		if b, ok := status[vm.Spec.Name]; ok {
			json.Unmarshal(b, &vm.Status)
		}
		out = append(out, vm)
	}
	return out, nil
}

// UpdateSpec applies fn to a VM's spec with optimistic concurrency, retrying
// if someone else changed it meanwhile. fn may return an error to abort.
func (s *Store) UpdateSpec(ctx context.Context, name string, fn func(*api.VMSpec) error) (*api.VMSpec, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key, pkey := VMPrefix+name, PlacementPrefix+name
	for {
		resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(key), clientv3.OpGet(pkey)).Commit()
		if err != nil {
			return nil, unavailable(err)
		}
		kvs, placed := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("vm %q not found", name))
		}
		var spec api.VMSpec
		if err := json.Unmarshal(kvs[0].Value, &spec); err != nil {
			return nil, fmt.Errorf("%w: decoding vm %s: %v", errdefs.ErrInternal, name, err)
		}
		if err := fn(&spec); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(spec)
		// The host the VM is placed on hears of the change in its range.
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision),
			clientv3.Compare(clientv3.ModRevision(pkey), "=", 0)}
		ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
		if len(placed) > 0 {
			cmps[1] = clientv3.Compare(clientv3.ModRevision(pkey), "=", placed[0].ModRevision)
			ops = append(ops, touch(string(placed[0].Value), name, "spec"))
		}
		tx, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return nil, unavailable(err)
		}
		if tx.Succeeded {
			return &spec, nil
		}
	}
}

// PutStatusPlaced writes a VM's status only while the VM exists and is
// placed on node — the one way hosts write statuses: a late write for a
// deleted VM must not resurrect it, and a host reporting on a guest that
// was moved away meanwhile (an HA restart elsewhere while its own start
// failed) must not overwrite what the new host reports. It returns false
// when the VM is gone or placed elsewhere.
//
// A change of the guest's phase is also an event ("vm-running", ...),
// written with the status.
func (s *Store) PutStatusPlaced(ctx context.Context, name, node string, st api.VMStatus) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	st.UpdatedAt = time.Now().UTC()
	b, _ := json.Marshal(st)
	key := StatusPrefix + name
	for {
		cur, err := s.cli.Get(ctx, key)
		if err != nil {
			return false, unavailable(err)
		}
		var old api.VMStatus
		var rev int64
		if len(cur.Kvs) > 0 {
			_ = json.Unmarshal(cur.Kvs[0].Value, &old)
			rev = cur.Kvs[0].ModRevision
		}
		ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
		if old.Phase != st.Phase || old.Node != st.Node {
			ops = append(ops, eventOp(guestEvent(name, node, st)))
		}
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(VMPrefix+name), ">", 0),
				clientv3.Compare(clientv3.Value(PlacementPrefix+name), "=", node),
				clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(ops...).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return false, unavailable(err)
		}
		if resp.Succeeded {
			return true, nil
		}
		// Failed on the VM or its placement, or another write of the
		// status came between: only the last is worth another try.
		if again := resp.Responses[0].GetResponseRange(); len(again.Kvs) == 0 || again.Kvs[0].ModRevision == rev {
			return false, nil
		}
	}
}

// Place assigns an unplaced VM to a node, under the leader's guard: a
// deposed leader's write fails.
func (s *Store) Place(ctx context.Context, name, node string, guard Guard) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	cmps := append([]clientv3.Cmp{
		clientv3.Compare(clientv3.Version(VMPrefix+name), ">", 0),
		clientv3.Compare(clientv3.Version(PlacementPrefix+name), "=", 0),
	}, guard.cmps()...)
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(PlacementPrefix+name, node), touch(node, name, "placed")).Commit()
	if err != nil {
		return false, unavailable(err)
	}
	return resp.Succeeded, nil
}

// DeleteVM removes every key of one incarnation of a VM, its address claim
// included: the one whose spec carries uuid. The hosting agent calls it once
// the guest is gone and its files are removed, the API for a guest never
// placed. A VM of the same name created since (another UUID) is left alone,
// so a deletion that finishes late cannot take its successor: it returns
// nil, as the incarnation it was asked to delete is gone.
func (s *Store) DeleteVM(ctx context.Context, name, uuid string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	for {
		g, err := s.cli.Txn(ctx).Then(clientv3.OpGet(VMPrefix+name), clientv3.OpGet(PlacementPrefix+name)).Commit()
		if err != nil {
			return unavailable(err)
		}
		resp := g.Responses[0].GetResponseRange()
		// Unchanged since read: the spec this deletion judged, or still none.
		same := clientv3.Compare(clientv3.Version(VMPrefix+name), "=", 0)
		var spec api.VMSpec
		if len(resp.Kvs) > 0 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &spec); err != nil {
				return fmt.Errorf("vm %q: %w", name, err)
			}
			if spec.UUID != uuid {
				return nil
			}
			same = clientv3.Compare(clientv3.ModRevision(VMPrefix+name), "=", resp.Kvs[0].ModRevision)
		}
		ops := []clientv3.Op{
			clientv3.OpDelete(VMPrefix + name), clientv3.OpDelete(StatusPrefix + name),
			clientv3.OpDelete(PlacementPrefix + name), clientv3.OpDelete(OwnerPrefix + name),
			clientv3.OpDelete(MigrationPrefix + name), clientv3.OpDelete(LoadHistoryPrefix + name),
		}
		if p := g.Responses[1].GetResponseRange().Kvs; len(p) > 0 {
			ops = append(ops, clientv3.OpDelete(hostVMKey(string(p[0].Value), name)))
		}
		if p, err := netip.ParsePrefix(spec.IP); err == nil {
			ops = append(ops, clientv3.OpDelete(IPPrefix+p.Addr().String()))
		}
		t, err := s.cli.Txn(ctx).If(same).Then(ops...).Commit()
		if err != nil {
			return unavailable(err)
		}
		if t.Succeeded {
			return nil
		}
		// The spec changed between the read and the deletion (a new
		// incarnation, or an update of this one): judge it again.
	}
}

// AcquireOwner makes node the owner of a VM, bound to lease, unless another
// node owns it. It returns the ownership key's mod revision: the fencing
// token a host checks before it starts or resumes the guest.
func (s *Store) AcquireOwner(ctx context.Context, name, node string, lease LeaseID) (int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := OwnerPrefix + name
	// Only the host the VM is placed on may take it: a host coming back
	// from an outage cannot grab a guest the HA manager has just moved.
	placedHere := clientv3.Compare(clientv3.Value(PlacementPrefix+name), "=", node)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0), placedHere).
		Then(clientv3.OpPut(key, node, clientv3.WithLease(clientv3.LeaseID(lease)))).
		Else(clientv3.OpGet(key), clientv3.OpGet(PlacementPrefix+name)).Commit()
	if err != nil {
		return 0, unavailable(err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if pk := resp.Responses[1].GetResponseRange().Kvs; len(pk) == 0 || string(pk[0].Value) != node {
		return 0, errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q is not placed on node %s", name, node))
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) > 0 && string(kvs[0].Value) != node {
		return 0, errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q is owned by node %s", name, kvs[0].Value))
	}
	// Already ours (perhaps under an older lease of this node): rebind it.
	resp, err = s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", node)).
		Then(clientv3.OpPut(key, node, clientv3.WithLease(clientv3.LeaseID(lease)))).Commit()
	if err != nil {
		return 0, unavailable(err)
	}
	if !resp.Succeeded {
		return 0, errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q ownership changed concurrently", name))
	}
	return resp.Header.Revision, nil
}

// CheckOwner reports whether node still owns the VM at exactly revision rev.
func (s *Store) CheckOwner(ctx context.Context, name, node string, rev int64) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, OwnerPrefix+name)
	if err != nil {
		return false, unavailable(err)
	}
	return len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == node && resp.Kvs[0].ModRevision == rev, nil
}

// ReleaseOwner drops node's ownership of a VM (if it holds it).
func (s *Store) ReleaseOwner(ctx context.Context, name, node string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	key := OwnerPrefix + name
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", node)).Then(clientv3.OpDelete(key)).Commit()
	return unavailable(err)
}

// PutNode records a node, bound to its lease so it vanishes when the node dies.
func (s *Store) PutNode(ctx context.Context, n api.Node, lease LeaseID) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(n)
	_, err := s.cli.Put(ctx, NodePrefix+n.Name, string(b), clientv3.WithLease(clientv3.LeaseID(lease)))
	return unavailable(err)
}

// ListNodes returns every registered node, sorted by name, with the
// operator's maintenance flag merged in.
func (s *Store) ListNodes(ctx context.Context) ([]api.Node, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(NodePrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		clientv3.OpGet(NodeMetaPrefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, unavailable(err)
	}
	meta := map[string]api.NodeMeta{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var m api.NodeMeta
		if json.Unmarshal(kv.Value, &m) == nil {
			meta[NameFromKey(kv.Key)] = m
		}
	}
	out := []api.Node{}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var n api.Node
		if json.Unmarshal(kv.Value, &n) == nil {
			n.Maintenance = meta[n.Name].Maintenance
			// A node that stopped reporting is not ready, even while its
			// lease (and so its record) has not expired yet.
			if time.Since(n.Heartbeat) > StaleHeartbeat {
				n.State = "not-ready"
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// StaleHeartbeat is how old a node's last heartbeat may be for it to count
// as ready (agents report every 2 s).
const StaleHeartbeat = 6 * time.Second

// SetMaintenance puts a node into maintenance (drain) or takes it out.
func (s *Store) SetMaintenance(ctx context.Context, node string, on bool) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if !on {
		_, err := s.cli.Delete(ctx, NodeMetaPrefix+node)
		return unavailable(err)
	}
	b, _ := json.Marshal(api.NodeMeta{Maintenance: true, Since: time.Now().UTC()})
	_, err := s.cli.Put(ctx, NodeMetaPrefix+node, string(b))
	return unavailable(err)
}

// NameFromKey returns the last path element of a key.
func NameFromKey(key []byte) string {
	k := string(key)
	return k[strings.LastIndexByte(k, '/')+1:]
}

// OpTimeout bounds a store operation whose context has no deadline, so that
// a request sent to an etcd member that was cut off fails (and is retried
// by the caller's loop) instead of hanging.
const OpTimeout = 5 * time.Second

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, OpTimeout)
}

// LeaseID is an etcd lease: a host's, to which its ownership keys and node
// record are bound.
type LeaseID int64

// GrantLease takes a new lease of ttl (whole seconds, at least one).
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Grant(ctx, max(int64(ttl/time.Second), 1))
	if err != nil {
		return 0, unavailable(err)
	}
	return LeaseID(resp.ID), nil
}

// RevokeLease ends a lease at once, and every key bound to it.
func (s *Store) RevokeLease(ctx context.Context, id LeaseID) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	_, err := s.cli.Revoke(ctx, clientv3.LeaseID(id))
	return unavailable(err)
}

// Placements returns each placed VM's host, and the store's revision at
// the read (to watch from).
func (s *Store) Placements(ctx context.Context) (map[string]string, int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, PlacementPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, unavailable(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(PlacementPrefix):])] = string(kv.Value)
	}
	return out, resp.Header.Revision, nil
}

// Keys lists every key of Ferry's (for tests that check what is left).
func (s *Store) Keys(ctx context.Context) ([]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, Prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, unavailable(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out, nil
}
