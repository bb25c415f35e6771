package store

import (
	"context"
	"encoding/json"
	"maps"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is the cluster's state at one store revision: what one round of
// the leader's controllers decides on.
type Snapshot struct {
	Rev        int64
	Nodes      []api.Node // by name; maintenance merged in, stale heartbeats not-ready
	VMs        []api.VM   // by name
	Migrations []MigrationRev
	Owners     map[string]string // VM -> the host that owns it (may run it)
	HA         api.HAState
	// Degraded are the links now degraded, "from/to" -> why.
	Degraded map[string]string
	Taken    time.Time
}

// VM returns the snapshot's VM of that name, or nil.
func (s *Snapshot) VM(name string) *api.VM {
	i := sort.Search(len(s.VMs), func(i int) bool { return s.VMs[i].Spec.Name >= name })
	if i < len(s.VMs) && s.VMs[i].Spec.Name == name {
		return &s.VMs[i]
	}
	return nil
}

// Node returns the snapshot's host of that name, or nil.
func (s *Snapshot) Node(name string) *api.Node {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// mirrored are the kinds a Mirror follows.
var mirrored = []Kind{KindVM, KindStatus, KindPlacement, KindOwner, KindMigration, KindNode, KindNodeMeta, KindCluster, KindLinkHealth}

// Mirror keeps the cluster's state in memory, from one read and a watch,
// so that the leader's controllers decide on a snapshot each round instead
// of each reading every record from etcd on every pass. Their writes still
// go to etcd, each guarded by a compare, so a decision on a snapshot that
// has just gone stale fails instead of doing harm.
type Mirror struct {
	st      *Store
	changed chan struct{}

	mu     sync.Mutex
	loaded bool
	rev    int64
	specs  map[string]api.VMSpec
	status map[string]api.VMStatus
	place  map[string]string
	owners map[string]string
	nodes  map[string]api.Node
	meta   map[string]api.NodeMeta
	migs   map[string]MigrationRev
	ha     api.HAState
	links  map[string]string // degraded links
}

// Mirror starts following the cluster's state until ctx ends.
func (s *Store) Mirror(ctx context.Context) *Mirror {
	m := &Mirror{st: s, changed: make(chan struct{}, 1)}
	go m.run(ctx)
	return m
}

// Changed receives a value after the mirror changed (coalesced).
func (m *Mirror) Changed() <-chan struct{} { return m.changed }

func (m *Mirror) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

func (m *Mirror) run(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := m.load(ctx)
		if err == nil {
			m.signal()
			for c := range m.st.Watch(ctx, rev+1, mirrored...) {
				if m.apply(c) {
					m.signal()
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// load reads every mirrored record at one revision.
func (m *Mirror) load(ctx context.Context) (int64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var ops []clientv3.Op
	for _, k := range mirrored {
		ops = append(ops, clientv3.OpGet(kindPrefix[k], clientv3.WithPrefix()))
	}
	resp, err := m.st.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, unavailable(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.specs, m.status, m.place, m.owners = map[string]api.VMSpec{}, map[string]api.VMStatus{}, map[string]string{}, map[string]string{}
	m.nodes, m.meta, m.migs, m.ha = map[string]api.Node{}, map[string]api.NodeMeta{}, map[string]MigrationRev{}, api.HAState{}
	m.links = map[string]string{}
	for i, k := range mirrored {
		for _, kv := range resp.Responses[i].GetResponseRange().Kvs {
			m.set(Change{Kind: k, Name: strings.TrimPrefix(string(kv.Key), kindPrefix[k]), Value: kv.Value, Rev: kv.ModRevision})
		}
	}
	m.rev, m.loaded = resp.Header.Revision, true
	return resp.Header.Revision, nil
}

// apply records a change and reports whether it may change a decision:
// a status that only refreshes what a guest's probe saw, or a heartbeat
// that only moves the time and load, does not wake the leader (at 1,000
// hosts with 20 guests each they come hundreds of times a second; the
// leader's periodic round sees them, and the staleness of heartbeats).
func (m *Mirror) apply(c Change) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	var oldStatus api.VMStatus
	var oldNode api.Node
	switch c.Kind {
	case KindStatus:
		oldStatus = m.status[c.Name]
	case KindNode:
		oldNode = m.nodes[c.Name]
	}
	m.set(c)
	if c.Rev > m.rev {
		m.rev = c.Rev
	}
	switch c.Kind {
	case KindStatus:
		n, ok := m.status[c.Name]
		return !ok || n.Phase != oldStatus.Phase || n.Node != oldStatus.Node || n.StartSeq != oldStatus.StartSeq ||
			n.Restarts != oldStatus.Restarts || n.PID != oldStatus.PID
	case KindNode:
		n, ok := m.nodes[c.Name]
		if !ok {
			return true
		}
		n.Heartbeat, n.Load1, n.Traffic, oldNode.Heartbeat, oldNode.Load1, oldNode.Traffic = time.Time{}, 0, nil, time.Time{}, 0, nil
		return !reflect.DeepEqual(n, oldNode)
	}
	return true
}

// set applies one record (mu held).
func (m *Mirror) set(c Change) {
	switch c.Kind {
	case KindVM:
		var v api.VMSpec
		setJSON(m.specs, c, &v)
	case KindStatus:
		var v api.VMStatus
		setJSON(m.status, c, &v)
	case KindNode:
		var v api.Node
		setJSON(m.nodes, c, &v)
	case KindNodeMeta:
		var v api.NodeMeta
		setJSON(m.meta, c, &v)
	case KindPlacement:
		setString(m.place, c)
	case KindOwner:
		setString(m.owners, c)
	case KindLinkHealth:
		setString(m.links, c)
	case KindMigration:
		if c.Deleted {
			delete(m.migs, c.Name)
		} else if mg := (api.Migration{}); json.Unmarshal(c.Value, &mg) == nil {
			m.migs[c.Name] = MigrationRev{Migration: mg, Rev: c.Rev}
		}
	case KindCluster:
		if Prefix+"cluster/"+c.Name == HAStateKey {
			m.ha = api.HAState{}
			if !c.Deleted {
				json.Unmarshal(c.Value, &m.ha)
			}
		}
	}
}

func setJSON[T any](into map[string]T, c Change, v *T) {
	if c.Deleted || json.Unmarshal(c.Value, v) != nil {
		delete(into, c.Name)
		return
	}
	into[c.Name] = *v
}

func setString(into map[string]string, c Change) {
	if c.Deleted {
		delete(into, c.Name)
		return
	}
	into[c.Name] = string(c.Value)
}

// Nodes returns the hosts as Snapshot does (maintenance merged in, stale
// heartbeats not-ready) without copying the rest; ok is false until the
// first read.
func (m *Mirror) Nodes() (nodes []api.Node, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.loaded {
		return nil, false
	}
	return m.nodesLocked(time.Now()), true
}

func (m *Mirror) nodesLocked(now time.Time) []api.Node {
	nodes := make([]api.Node, 0, len(m.nodes))
	for _, n := range m.nodes {
		n.Maintenance = m.meta[n.Name].Maintenance
		if now.Sub(n.Heartbeat) > StaleHeartbeat {
			n.State = "not-ready"
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	return nodes
}

// Snapshot copies the mirror's state; ok is false until it has loaded once.
func (m *Mirror) Snapshot() (snap *Snapshot, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.loaded {
		return nil, false
	}
	now := time.Now()
	s := &Snapshot{Rev: m.rev, Owners: make(map[string]string, len(m.owners)), HA: m.ha, Taken: now}
	for name, spec := range m.specs {
		s.VMs = append(s.VMs, api.VM{Spec: spec, Node: m.place[name], Status: m.status[name]})
	}
	sort.Slice(s.VMs, func(i, j int) bool { return s.VMs[i].Spec.Name < s.VMs[j].Spec.Name })
	s.Nodes = m.nodesLocked(now)
	for _, mg := range m.migs {
		s.Migrations = append(s.Migrations, mg)
	}
	sort.Slice(s.Migrations, func(i, j int) bool { return s.Migrations[i].VM < s.Migrations[j].VM })
	for k, v := range m.owners {
		s.Owners[k] = v
	}
	s.Degraded = maps.Clone(m.links)
	if s.Degraded == nil {
		s.Degraded = map[string]string{}
	}
	return s, true
}

// ReadSnapshot reads the cluster's state once, at one revision (what a
// Mirror keeps up to date; for one-off decisions and tests).
func (s *Store) ReadSnapshot(ctx context.Context) (*Snapshot, error) {
	m := &Mirror{st: s}
	if _, err := m.load(ctx); err != nil {
		return nil, err
	}
	snap, _ := m.Snapshot()
	return snap, nil
}
