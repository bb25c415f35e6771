package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
)

// Default limits on migrations in flight.
const (
	DefaultPerHost    = 2 // outbound migrations per source host
	DefaultPerCluster = 5
)

// Active reports whether a migration holds a slot (admitted, not finished).
func Active(phase string) bool {
	return phase != api.MigQueued && !api.MigrationTerminal(phase)
}

// Admission is the leader controller that admits queued migrations, oldest
// first, within the per-host and per-cluster limits, checking each target
// again: the queue is decided in this one place, so two requests that
// raced each other cannot both fill the same host.
type Admission struct {
	st         *store.Store
	log        *slog.Logger
	PerHost    int
	PerCluster int
}

// NewAdmission returns an admission controller with the default limits.
func NewAdmission(st *store.Store, log *slog.Logger) *Admission {
	if log == nil {
		log = slog.Default()
	}
	return &Admission{st: st, log: log.With("controller", "migration-admission"), PerHost: DefaultPerHost, PerCluster: DefaultPerCluster}
}

// Name implements leader.Controller.
func (a *Admission) Name() string { return "migration-admission" }

// Pass implements leader.Controller.
func (a *Admission) Pass(ctx context.Context, r *leader.Round) error {
	perHost := map[string]int{}
	total := 0
	var queued []store.MigrationRev
	var admitted []api.Migration
	for _, m := range r.Migrations {
		switch {
		case Active(m.Phase):
			perHost[m.Source]++
			total++
			admitted = append(admitted, m.Migration)
		case m.Phase == api.MigQueued:
			queued = append(queued, m)
		}
	}
	if len(queued) == 0 {
		return nil
	}
	sort.Slice(queued, func(i, j int) bool { return queued[i].Started.Before(queued[j].Started) })
	// Room on the targets counts only migrations already admitted: a queued
	// one holds no room until it is admitted here.
	view := placement.NewView(r.Nodes, r.VMs, admitted)
	for _, q := range queued {
		if total >= a.PerCluster {
			return nil
		}
		if perHost[q.Source] >= a.PerHost {
			continue
		}
		m := q.Migration
		vm := r.VM(m.VM)
		if m.Cancel {
			m.Phase, m.Error, m.Finished = api.MigCancelled, "cancelled while queued", time.Now().UTC()
		} else if why := a.refuse(view, vm, m); why != nil {
			m.Phase, m.Finished = api.MigFailed, time.Now().UTC()
			m.Error = fmt.Sprintf("%v; the guest stays on %s", why, m.Source)
		} else {
			m.Phase = api.MigPending
			m.Timeline = append(m.Timeline, api.MigrationEvent{Step: "admitted", Host: "leader", At: time.Now().UTC()})
		}
		ok, err := a.st.PutMigrationGuarded(ctx, &m, q.Rev, r.Guard)
		if err != nil {
			return err
		}
		if ok && m.Phase == api.MigPending {
			perHost[m.Source]++
			total++
			view.Reserve(m.Target, vm.Spec)
			a.log.Info("migration admitted", "vm", m.VM, "from", m.Source, "to", m.Target)
		}
	}
	return nil
}

// refuse says why a queued migration cannot start now, or returns nil.
func (a *Admission) refuse(view *placement.View, vm *api.VM, m api.Migration) error {
	if vm == nil {
		return fmt.Errorf("vm %s is gone", m.VM)
	}
	return view.Check(placement.Request{Spec: vm.Spec, Live: vm}, m.Target)
}
