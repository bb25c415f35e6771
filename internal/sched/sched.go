// Package sched places VMs on hosts. It runs only on the elected leader, and
// every placement it writes carries a compare on the leader key's revision,
// so a deposed leader cannot place anything.
package sched

import (
	"context"
	"log/slog"
	"sort"
	"strings"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
)

// Scheduler assigns unplaced VMs to ready nodes; it runs as a leader
// controller (see package leader).
type Scheduler struct {
	st  *store.Store
	log *slog.Logger
}

// New returns a scheduler.
func New(st *store.Store, log *slog.Logger) *Scheduler {
	if log == nil {
		log = slog.Default()
	}
	return &Scheduler{st: st, log: log.With("controller", "scheduler")}
}

// Name implements leader.Controller.
func (s *Scheduler) Name() string { return "scheduler" }

// Pass implements leader.Controller.
func (s *Scheduler) Pass(ctx context.Context, guard store.Guard) error { return s.pass(ctx, guard) }

// pass places every unplaced VM.
func (s *Scheduler) pass(ctx context.Context, guard store.Guard) error {
	vms, err := s.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	nodes = Schedulable(nodes)
	migs, err := s.st.ListMigrations(ctx)
	if err != nil {
		return err
	}
	free := FreeMemory(nodes, vms, store.Migrations(migs))
	groups := Groups(vms)
	for _, vm := range vms {
		if vm.Node != "" || vm.Spec.Deleting {
			continue
		}
		node := Pick(Spread(nodes, groups, vm.Spec), free, vm.Spec)
		if node == "" {
			continue // waits until a node fits
		}
		ok, err := s.st.Place(ctx, vm.Spec.Name, node, guard)
		if err != nil {
			return err
		}
		if ok {
			free[node] -= vm.Spec.MemoryMiB
			if g := vm.Spec.AntiAffinity; g != "" {
				if groups[g] == nil {
					groups[g] = map[string]bool{}
				}
				groups[g][node] = true
			}
			s.log.Info("placed vm", "vm", vm.Spec.Name, "node", node)
		}
	}
	return nil
}

// Schedulable is the nodes that may receive guests: ready and not in maintenance.
func Schedulable(nodes []api.Node) []api.Node {
	var out []api.Node
	for _, n := range nodes {
		if n.State == "ready" && !n.Maintenance {
			out = append(out, n)
		}
	}
	return out
}

// FreeMemory is each ready node's memory less what the VMs placed on it ask
// for, and less what guests on their way to it (migrations not yet ended,
// queued ones included) will need: two requests that each see room for one
// more guest must not both send it to the same host.
func FreeMemory(nodes []api.Node, vms []api.VM, migs []api.Migration) map[string]int {
	free := map[string]int{}
	for _, n := range nodes {
		if n.State == "ready" {
			free[n.Name] = n.MemoryMiB
		}
	}
	mem := map[string]int{}
	for _, vm := range vms {
		mem[vm.Spec.Name] = vm.Spec.MemoryMiB
		if _, ok := free[vm.Node]; ok {
			free[vm.Node] -= vm.Spec.MemoryMiB
		}
	}
	placed := map[string]string{}
	for _, vm := range vms {
		placed[vm.Spec.Name] = vm.Node
	}
	for _, m := range migs {
		if api.MigrationTerminal(m.Phase) || placed[m.VM] == m.Target {
			continue // ended, or already counted where it is placed
		}
		if _, ok := free[m.Target]; ok {
			free[m.Target] -= mem[m.VM]
		}
	}
	return free
}

// Groups maps each anti-affinity group to the hosts its placed members are on.
func Groups(vms []api.VM) map[string]map[string]bool {
	g := map[string]map[string]bool{}
	for _, vm := range vms {
		if a := vm.Spec.AntiAffinity; a != "" && vm.Node != "" {
			if g[a] == nil {
				g[a] = map[string]bool{}
			}
			g[a][vm.Node] = true
		}
	}
	return g
}

// Spread removes the hosts that already hold a member of spec's
// anti-affinity group.
func Spread(nodes []api.Node, groups map[string]map[string]bool, spec api.VMSpec) []api.Node {
	if spec.AntiAffinity == "" {
		return nodes
	}
	var out []api.Node
	for _, n := range nodes {
		if !groups[spec.AntiAffinity][n.Name] {
			out = append(out, n)
		}
	}
	return out
}

// Pick chooses the ready node with the most free memory that fits spec, has
// its image and runs its machine type; "" if none does.
func Pick(nodes []api.Node, free map[string]int, spec api.VMSpec) string {
	cands := []api.Node{}
	for _, n := range nodes {
		if n.State != "ready" || n.Maintenance || free[n.Name] < spec.MemoryMiB {
			continue
		}
		if spec.Image == api.ImageTiny && !has(n.Images, api.ImageTiny) {
			continue
		}
		if spec.Machine != "" && n.QEMU != nil && !n.QEMU.HasMachine(spec.Machine) {
			continue // its QEMU cannot run the machine type the guest first booted with
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
