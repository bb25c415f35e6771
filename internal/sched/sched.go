// Package sched places VMs on hosts. It runs only on the elected leader, and
// every placement it writes carries a compare on the leader key's revision,
// so a deposed leader cannot place anything.
package sched

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Scheduler assigns unplaced VMs to ready nodes.
type Scheduler struct {
	st   *store.Store
	log  *slog.Logger
	name string // candidate name in the election (the node)
}

// New returns a scheduler that campaigns as name.
func New(st *store.Store, name string, log *slog.Logger) *Scheduler {
	if log == nil {
		log = slog.Default()
	}
	return &Scheduler{st: st, log: log.With("controller", "scheduler"), name: name}
}

// Run campaigns for leadership and schedules while leader, until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := s.lead(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("leadership ended", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (s *Scheduler) lead(ctx context.Context) error {
	sess, err := concurrency.NewSession(s.st.Client(), concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer func() {
		// Give up leadership at once on the way out (sess.Close would use
		// the already-cancelled ctx), so a successor need not wait for the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.st.Client().Revoke(rctx, sess.Lease())
		cancel()
		sess.Orphan()
	}()
	el := concurrency.NewElection(sess, store.LeaderPrefix)
	if err := el.Campaign(ctx, s.name); err != nil {
		return err
	}
	guard := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	s.log.Info("became leader", "rev", el.Rev())

	wc := s.st.Client().Watch(clientv3.WithRequireLeader(ctx), store.VMPrefix, clientv3.WithPrefix())
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		if err := s.pass(ctx, &guard); err != nil {
			s.log.Warn("scheduling pass", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errLostLease
		case <-tick.C:
		case _, ok := <-wc:
			if !ok {
				wc = s.st.Client().Watch(clientv3.WithRequireLeader(ctx), store.VMPrefix, clientv3.WithPrefix())
			}
		}
	}
}

type schedErr string

func (e schedErr) Error() string { return string(e) }

const errLostLease = schedErr("leader lease lost")

// pass places every unplaced VM.
func (s *Scheduler) pass(ctx context.Context, guard *clientv3.Cmp) error {
	vms, err := s.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	free := FreeMemory(nodes, vms)
	for _, vm := range vms {
		if vm.Node != "" || vm.Spec.Deleting {
			continue
		}
		node := Pick(nodes, free, vm.Spec)
		if node == "" {
			continue // waits until a node fits
		}
		ok, err := s.st.Place(ctx, vm.Spec.Name, node, guard)
		if err != nil {
			return err
		}
		if ok {
			free[node] -= vm.Spec.MemoryMiB
			s.log.Info("placed vm", "vm", vm.Spec.Name, "node", node)
		}
	}
	return nil
}

// FreeMemory is each ready node's memory less what the VMs placed on it ask for.
func FreeMemory(nodes []api.Node, vms []api.VM) map[string]int {
	free := map[string]int{}
	for _, n := range nodes {
		if n.State == "ready" {
			free[n.Name] = n.MemoryMiB
		}
	}
	for _, vm := range vms {
		if _, ok := free[vm.Node]; ok {
			free[vm.Node] -= vm.Spec.MemoryMiB
		}
	}
	return free
}

// Pick chooses the ready node with the most free memory that fits spec and
// has its image; "" if none does.
func Pick(nodes []api.Node, free map[string]int, spec api.VMSpec) string {
	cands := []api.Node{}
	for _, n := range nodes {
		if n.State != "ready" || free[n.Name] < spec.MemoryMiB {
			continue
		}
		if spec.Image == api.ImageTiny && !has(n.Images, api.ImageTiny) {
			continue
		}
		cands = append(cands, n)
	}
	sort.Slice(cands, func(i, j int) bool {
		if free[cands[i].Name] != free[cands[j].Name] {
			return free[cands[i].Name] > free[cands[j].Name]
		}
		return strings.Compare(cands[i].Name, cands[j].Name) < 0
	})
	if len(cands) == 0 {
		return ""
	}
	return cands[0].Name
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
