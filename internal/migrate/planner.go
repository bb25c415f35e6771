package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/google/uuid"
)

// Default limits on migrations in flight.
const (
	DefaultPerHost    = 2 // outbound migrations per source host
	DefaultPerCluster = 5
)

// Planner is the leader controller that admits queued migrations within the
// per-host and per-cluster limits (oldest first) and drains hosts in
// maintenance: running guests are live-migrated away, stopped ones are
// re-placed.
type Planner struct {
	st         *store.Store
	log        *slog.Logger
	PerHost    int
	PerCluster int
	// stuck remembers, per guest a drain cannot move live, why — so that
	// operators are told once (an event), not on every pass.
	stuck map[string]string
}

// NewPlanner returns a planner with the default limits.
func NewPlanner(st *store.Store, log *slog.Logger) *Planner {
	if log == nil {
		log = slog.Default()
	}
	return &Planner{st: st, log: log.With("controller", "migration-planner"), PerHost: DefaultPerHost, PerCluster: DefaultPerCluster,
		stuck: map[string]string{}}
}

// Name implements leader.Controller.
func (p *Planner) Name() string { return "migration-planner" }

// Active reports whether a migration holds a slot (admitted, not finished).
func Active(phase string) bool {
	return phase != api.MigQueued && !api.MigrationTerminal(phase)
}

// Pass implements leader.Controller.
func (p *Planner) Pass(ctx context.Context, guard store.Guard) error {
	// Admission first: a queued migration waits for it.
	migs, err := p.st.ListMigrations(ctx)
	if err != nil {
		return err
	}
	if err := p.admit(ctx, guard, migs); err != nil {
		return err
	}
	if migs, err = p.st.ListMigrations(ctx); err != nil {
		return err
	}
	return p.drain(ctx, guard, migs)
}

// admit promotes queued migrations, oldest first, while slots are free.
func (p *Planner) admit(ctx context.Context, guard store.Guard, migs []store.MigrationRev) error {
	perHost := map[string]int{}
	total := 0
	var queued []store.MigrationRev
	for _, m := range migs {
		switch {
		case Active(m.Phase):
			perHost[m.Source]++
			total++
		case m.Phase == api.MigQueued:
			queued = append(queued, m)
		}
	}
	if len(queued) == 0 {
		return nil
	}
	sort.Slice(queued, func(i, j int) bool { return queued[i].Started.Before(queued[j].Started) })
	// Room on the targets counts only migrations already admitted: the
	// queue is re-checked here, in the one place that admits, so two
	// requests that raced each other cannot both fill the same host.
	nodes, err := p.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	vms, err := p.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	var admitted []api.Migration
	byName := map[string]*api.VM{}
	for i := range vms {
		byName[vms[i].Spec.Name] = &vms[i]
	}
	for _, m := range migs {
		if Active(m.Phase) {
			admitted = append(admitted, m.Migration)
		}
	}
	view := placement.NewView(nodes, vms, admitted)
	for _, q := range queued {
		if total >= p.PerCluster {
			return nil
		}
		if perHost[q.Source] >= p.PerHost {
			continue
		}
		m := q.Migration
		vm := byName[m.VM]
		var refused error
		if vm == nil {
			refused = fmt.Errorf("vm %s is gone", m.VM)
		} else {
			refused = view.Check(placement.Request{Spec: vm.Spec, Live: vm}, m.Target)
		}
		switch {
		case m.Cancel:
			m.Phase, m.Error, m.Finished = api.MigCancelled, "cancelled while queued", time.Now().UTC()
		case refused != nil:
			m.Phase, m.Finished = api.MigFailed, time.Now().UTC()
			m.Error = fmt.Sprintf("%v; the guest stays on %s", refused, m.Source)
		default:
			m.Phase = api.MigPending
			m.Timeline = append(m.Timeline, api.MigrationEvent{Step: "admitted", Host: "leader", At: time.Now().UTC()})
		}
		ok, err := p.st.PutMigrationGuarded(ctx, &m, q.Rev, guard)
		if err != nil {
			return err
		}
		if ok && m.Phase == api.MigPending {
			perHost[m.Source]++
			total++
			view.Reserve(m.Target, vm.Spec)
			p.log.Info("migration admitted", "vm", m.VM, "from", m.Source, "to", m.Target)
		}
	}
	return nil
}

// tellStuck records, once per reason, that a drain cannot move a running
// guest live, and what an operator can do.
func (p *Planner) tellStuck(ctx context.Context, vm api.VM, why string) {
	if p.stuck[vm.Spec.Name] == why {
		return
	}
	p.stuck[vm.Spec.Name] = why
	msg := fmt.Sprintf("drain of %s cannot live-migrate %s: %s; stop the guest and the drain moves it (it restarts elsewhere with its machine type)", vm.Node, vm.Spec.Name, why)
	p.log.Warn("drain: guest cannot move live", "vm", vm.Spec.Name, "why", why)
	if err := p.st.PutEvent(ctx, api.Event{Kind: "drain-stuck", Node: vm.Node, VM: vm.Spec.Name, Message: msg}); err != nil {
		p.log.Warn("recording event", "err", err)
	}
}

// drain moves every guest off hosts in maintenance: running guests live,
// stopped ones by moving their placement.
func (p *Planner) drain(ctx context.Context, guard store.Guard, migs []store.MigrationRev) error {
	nodes, err := p.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	draining := map[string]bool{}
	for _, n := range nodes {
		if n.Maintenance {
			draining[n.Name] = true
		}
	}
	if len(draining) == 0 {
		return nil
	}
	vms, err := p.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	byVM := map[string]store.MigrationRev{}
	for _, m := range migs {
		byVM[m.VM] = m
	}
	view := placement.NewView(nodes, vms, store.Migrations(migs))
	for _, vm := range vms {
		if !draining[vm.Node] || vm.Spec.Deleting {
			continue
		}
		cur, hasMig := byVM[vm.Spec.Name]
		if hasMig && !api.MigrationTerminal(cur.Phase) {
			continue // already moving
		}
		running := vm.Spec.Power == api.PowerRunning && vm.Status.Phase == api.PhaseRunning
		if !running && (vm.Status.Phase == api.PhaseStarting || vm.Status.Phase == api.PhaseStopping) {
			continue // wait until it settles
		}
		req := placement.Request{Spec: vm.Spec, Exclude: []string{vm.Node}}
		if running {
			req.Live = &vm
		}
		to, no := view.Pick(req)
		if to == "" {
			if running {
				p.tellStuck(ctx, vm, placement.Reasons(no))
			}
			continue // nowhere to go yet; try again on the next pass
		}
		delete(p.stuck, vm.Spec.Name)
		moved, err := p.moveOff(ctx, guard, view, vm, to, running, cur, hasMig)
		if err != nil {
			return err
		}
		if moved {
			view.Reserve(to, vm.Spec)
		}
	}
	return nil
}

// moveOff moves one guest of a draining host to host to: a stopped guest's
// placement moves, a running guest's live migration is queued.
func (p *Planner) moveOff(ctx context.Context, guard store.Guard, view *placement.View, vm api.VM, to string, running bool, cur store.MigrationRev, hasMig bool) (bool, error) {
	if !running {
		ok, err := p.st.MovePlacement(ctx, vm.Spec.Name, vm.Node, to, guard)
		if ok {
			p.log.Info("drain: re-placed a stopped guest", "vm", vm.Spec.Name, "from", vm.Node, "to", to)
		}
		return ok, err
	}
	opts := api.MigrationOptions{}
	Validate(&opts)
	plan, err := PlanFor(opts, &vm, view.Node(vm.Node), view.Node(to))
	if err != nil {
		p.log.Warn("drain: cannot plan the move", "vm", vm.Spec.Name, "to", to, "err", err)
		return false, nil
	}
	m := &api.Migration{ID: uuid.NewString(), VM: vm.Spec.Name, Source: vm.Node, Target: to, Phase: api.MigQueued,
		Options: opts, Plan: plan, Started: time.Now().UTC(), Reason: fmt.Sprintf("drain of %s", vm.Node)}
	rev := int64(0)
	if hasMig {
		rev = cur.Rev
	}
	ok, err := p.st.PutMigrationGuarded(ctx, m, rev, guard)
	if ok {
		p.log.Info("drain: migration queued", "vm", vm.Spec.Name, "from", vm.Node, "to", to)
	}
	return ok, err
}
