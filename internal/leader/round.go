package leader

import (
	"context"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
)

// Round is what one round of the leader's controllers works on: the
// cluster's state at one revision (from the leader's mirror, not read anew
// by each controller), the placement view every placement decision of the
// round goes through (so that one decision sees the room another took), and
// the leadership's guard, which every write carries.
type Round struct {
	*store.Snapshot
	View  *placement.View
	Guard store.Guard
}

// NewRound makes a round of snap under guard.
func NewRound(snap *store.Snapshot, guard store.Guard) *Round {
	var open []api.Migration
	for _, m := range snap.Migrations {
		if !api.MigrationTerminal(m.Phase) {
			open = append(open, m.Migration)
		}
	}
	v := placement.NewView(snap.Nodes, snap.VMs, open)
	v.AvoidLinks(snap.Degraded)
	return &Round{Snapshot: snap, View: v, Guard: guard}
}

// Housekeeping is the leader's controller for the store's upkeep: it keeps
// the event log bounded.
type Housekeeping struct {
	st     *store.Store
	log    *slog.Logger
	pruned time.Time
}

// NewHousekeeping returns the housekeeping controller.
func NewHousekeeping(st *store.Store, log *slog.Logger) *Housekeeping {
	if log == nil {
		log = slog.Default()
	}
	return &Housekeeping{st: st, log: log.With("controller", "housekeeping")}
}

// Name implements Controller.
func (h *Housekeeping) Name() string { return "housekeeping" }

// Pass implements Controller: old events are pruned once a minute.
func (h *Housekeeping) Pass(ctx context.Context, r *Round) error {
	if time.Since(h.pruned) < time.Minute {
		return nil
	}
	h.pruned = time.Now()
	return h.st.PruneEvents(ctx)
}
