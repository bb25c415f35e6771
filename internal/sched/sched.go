// Package sched places new VMs on hosts, by the placement engine. It runs
// only on the elected leader, and every placement it writes carries the
// leader's guard, so a deposed leader cannot place anything.
package sched

import (
	"context"
	"log/slog"

	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/placement"
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

// Pass implements leader.Controller: it places every unplaced VM (in name
// order) on the best host the round's placement view offers.
func (s *Scheduler) Pass(ctx context.Context, r *leader.Round) error {
	for _, vm := range r.VMs {
		if vm.Node != "" || vm.Spec.Deleting {
			continue
		}
		node, _ := r.View.Pick(placement.Request{Spec: vm.Spec})
		if node == "" {
			continue // waits until a node fits
		}
		ok, err := s.st.Place(ctx, vm.Spec.Name, node, r.Guard)
		if err != nil {
			return err
		}
		if ok {
			r.View.Reserve(node, vm.Spec)
			s.log.Info("placed vm", "vm", vm.Spec.Name, "node", node)
		}
	}
	return nil
}
