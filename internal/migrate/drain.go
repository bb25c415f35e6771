package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/google/uuid"
)

// Drain is the leader controller that empties hosts in maintenance: their
// running guests are live-migrated away (queued for admission), stopped
// ones are re-placed.
type Drain struct {
	st  *store.Store
	log *slog.Logger
	// stuck remembers, per guest a drain cannot move live, why — so that
	// operators are told once (an event), not on every round.
	stuck map[string]string
}

// NewDrain returns a drain controller.
func NewDrain(st *store.Store, log *slog.Logger) *Drain {
	if log == nil {
		log = slog.Default()
	}
	return &Drain{st: st, log: log.With("controller", "drain"), stuck: map[string]string{}}
}

// Name implements leader.Controller.
func (d *Drain) Name() string { return "drain" }

// Pass implements leader.Controller.
func (d *Drain) Pass(ctx context.Context, r *leader.Round) error {
	draining := map[string]bool{}
	for _, n := range r.Nodes {
		if n.Maintenance {
			draining[n.Name] = true
		}
	}
	if len(draining) == 0 {
		return nil
	}
	byVM := map[string]store.MigrationRev{}
	for _, m := range r.Migrations {
		byVM[m.VM] = m
	}
	for _, vm := range r.VMs {
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
		to, no := r.View.Pick(req)
		if to == "" {
			if running {
				d.tellStuck(ctx, vm, placement.Reasons(no))
			}
			continue // nowhere to go yet; try again on the next round
		}
		delete(d.stuck, vm.Spec.Name)
		var moved bool
		var err error
		if running {
			moved, err = d.queueMove(ctx, r, vm, to, cur.Rev)
		} else if moved, err = d.st.MovePlacement(ctx, vm.Spec.Name, vm.Node, to, r.Guard); moved {
			d.log.Info("drain: re-placed a stopped guest", "vm", vm.Spec.Name, "from", vm.Node, "to", to)
		}
		if err != nil {
			return err
		}
		if moved {
			r.View.Reserve(to, vm.Spec)
		}
	}
	return nil
}

// queueMove queues the live migration of a running guest of a draining
// host to host to (rev: its last migration record's, 0 if none).
func (d *Drain) queueMove(ctx context.Context, r *leader.Round, vm api.VM, to string, rev int64) (bool, error) {
	// As an operator's move with the defaults: the guest's policy, the
	// automatic strategy and its escalations.
	opts := api.MigrationOptions{Strategy: api.StrategyAuto}
	if err := Validate(&opts); err != nil {
		return false, err
	}
	pred, err := Decide(ctx, d.st, Deciding{VM: &vm, Src: r.View.Node(vm.Node), Dst: r.View.Node(to)}, &opts)
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		d.tellStuck(ctx, vm, err.Error())
		return false, nil
	}
	if err != nil {
		return false, err
	}
	// A move predicted never to finish, with nothing allowed to make it
	// (a policy without escalations), would hold the link and the drain
	// for ever: the operator is told instead (an operator's own move may
	// still try it).
	if c := pred.ChosenPrediction(); c != nil && !c.Converges && len(opts.Escalations) == 0 {
		d.tellStuck(ctx, vm, fmt.Sprintf("policy %q allows no escalation and predicts that no strategy it allows finishes: %s", opts.Policy, pred.Why))
		return false, nil
	}
	plan, err := PlanFor(opts, &vm, r.View.Node(vm.Node), r.View.Node(to))
	if err != nil {
		d.log.Warn("drain: cannot plan the move", "vm", vm.Spec.Name, "to", to, "err", err)
		return false, nil
	}
	m := &api.Migration{ID: uuid.NewString(), VM: vm.Spec.Name, Source: vm.Node, Target: to, Phase: api.MigQueued,
		Options: opts, Plan: plan, Started: time.Now().UTC(), Reason: fmt.Sprintf("drain of %s", vm.Node), Prediction: pred}
	ok, err := d.st.PutMigrationGuarded(ctx, m, rev, r.Guard)
	if ok {
		d.log.Info("drain: migration queued", "vm", vm.Spec.Name, "from", vm.Node, "to", to, "strategy", StrategyOf(opts), "why", pred.Why)
	}
	return ok, err
}

// tellStuck records, once per reason, that a drain cannot move a running
// guest live, and what an operator can do.
func (d *Drain) tellStuck(ctx context.Context, vm api.VM, why string) {
	if d.stuck[vm.Spec.Name] == why {
		return
	}
	d.stuck[vm.Spec.Name] = why
	msg := fmt.Sprintf("drain of %s cannot live-migrate %s: %s; stop the guest and the drain moves it (it restarts elsewhere with its machine type)", vm.Node, vm.Spec.Name, why)
	d.log.Warn("drain: guest cannot move live", "vm", vm.Spec.Name, "why", why)
	if err := d.st.PutEvent(ctx, api.Event{Kind: "drain-stuck", Node: vm.Node, VM: vm.Spec.Name, Message: msg}); err != nil {
		d.log.Warn("recording event", "err", err)
	}
}
