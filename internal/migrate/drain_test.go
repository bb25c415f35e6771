package migrate

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
)

// A drain moves a running guest as an operator's move with the defaults
// would: its policy (found by its labels) with its escalations, and the
// strategy Ferry predicts best for the measured guest and link, recorded
// with the prediction. A guest that its policy leaves no way to move (no
// strategy it allows finishes, no escalation) is reported stuck, with why,
// and stays where it is.
func TestDrainDecidesLikeAnOperatorsMove(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	storetest.Nodes(t, st, lease,
		api.Node{Name: "h1", State: "ready", MemoryMiB: 8192, Heartbeat: now, QEMU: qemu10},
		api.Node{Name: "h2", State: "ready", MemoryMiB: 8192, Heartbeat: now, QEMU: qemu10})
	// A guest writing 24 MiB/s over a 100 Mbit/s path: plain pre-copy
	// cannot finish, so the choice is not simply the default.
	busy := &api.MemoryLoad{DirtyRate: 24 << 20, WorkingSet: 32 << 20, ZeroShare: 0.5, CompressRatio: 1, DirtyCompressRatio: 1, MeasuredAt: now}
	for _, g := range []struct {
		name   string
		labels map[string]string
	}{{"db", map[string]string{"tier": "db"}}, {"pinned", map[string]string{"tier": "pinned"}}} {
		storetest.Placed(t, st, api.VMSpec{Name: g.name, MemoryMiB: 256, Image: "/img/x.qcow2", Power: api.PowerRunning, Labels: g.labels}, "h1")
		if _, err := st.PutStatusPlaced(ctx, g.name, "h1", api.VMStatus{Phase: api.PhaseRunning, Node: "h1", Memory: busy}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutLinkStat(ctx, api.LinkStat{From: "h1", To: "h2", RTTMS: 4, Bandwidth: 12.5e6, RTTAt: now, MeasuredAt: now}); err != nil {
		t.Fatal(err)
	}
	dbPolicy := api.MigrationPolicy{Name: "db", Selector: map[string]string{"tier": "db"}, MaxDowntimeMS: 200, AllowedDowntimeMS: 800,
		Escalations: []string{api.EscalateDowntime, api.EscalateThrottle}, TimeoutS: 300, Created: now}
	// Pre-copy alone, no escalations: nothing can move this guest.
	pinned := api.MigrationPolicy{Name: "pinned", Selector: map[string]string{"tier": "pinned"}, MaxDowntimeMS: 300, AllowedDowntimeMS: 300,
		Strategies: []string{api.StrategyPrecopy}, Escalations: []string{}, Created: now}
	for _, p := range []api.MigrationPolicy{dbPolicy, pinned} {
		if err := st.CreatePolicy(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetMaintenance(ctx, "h1", true); err != nil {
		t.Fatal(err)
	}
	snap, err := st.ReadSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := NewDrain(st, nil).Pass(ctx, leader.NewRound(snap, store.Guard{})); err != nil {
		t.Fatal(err)
	}

	m, _, err := st.GetMigration(ctx, "db")
	if m == nil {
		t.Fatalf("the drain queued no move of db (%v)", err)
	}
	o := m.Options
	if m.Target != "h2" || !o.Auto || o.Policy != "db" || o.MaxDowntimeMS != 200 || o.AllowedDowntimeMS != 800 || !slices.Equal(o.Escalations, dbPolicy.Escalations) || o.TimeoutS != 300 {
		t.Errorf("drain move of db: to %s, options %+v; want to h2, automatic, under policy db's limits and escalations", m.Target, o)
	}
	if m.Prediction == nil || m.Prediction.Chosen == "" || m.Prediction.Chosen != StrategyOf(o) {
		t.Fatalf("drain move of db: prediction %+v, strategy %s; want the predicted choice recorded and taken", m.Prediction, StrategyOf(o))
	}
	if m.Prediction.Chosen == api.StrategyPrecopy {
		t.Errorf("drain move of a guest dirtying faster than the link: chose plain pre-copy (%s)", m.Prediction.Why)
	}

	if m, _, _ := st.GetMigration(ctx, "pinned"); m != nil {
		t.Errorf("the drain queued a move of pinned (%+v) that its policy cannot complete", m.Options)
	}
	evs, err := st.ListEvents(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	stuck := false
	for _, e := range evs {
		stuck = stuck || (e.Kind == "drain-stuck" && e.VM == "pinned" && strings.Contains(e.Message, "allows no escalation"))
	}
	if !stuck {
		t.Errorf("no drain-stuck event says why pinned cannot move: %+v", evs)
	}
}
