package migrate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
)

// TestAdmitChecksRoomOnTarget queues two migrations that each fit the target
// alone but not together (as two racing `--to auto` requests could); the
// planner admits the older one and fails the other with a clear error, and
// both guests stay placed where they were.
func TestAdmitChecksRoomOnTarget(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Nodes(t, st, lease,
		api.Node{Name: "h1", State: "ready", MemoryMiB: 4096, Heartbeat: time.Now(), QEMU: qemu10},
		api.Node{Name: "h2", State: "ready", MemoryMiB: 1024, Heartbeat: time.Now(), QEMU: qemu10})
	for _, name := range []string{"a", "b"} {
		storetest.Placed(t, st, api.VMSpec{Name: name, MemoryMiB: 768, Image: "/img/x.qcow2", Power: api.PowerRunning}, "h1")
	}
	start := time.Now().UTC()
	for i, name := range []string{"a", "b"} {
		m := &api.Migration{ID: name, VM: name, Source: "h1", Target: "h2", Phase: api.MigQueued, Started: start.Add(time.Duration(i) * time.Millisecond)}
		if err := st.StartMigration(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var guard store.Guard // no leadership: nothing fences these writes
	snap, err := st.ReadSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := NewAdmission(st, nil).Pass(ctx, leader.NewRound(snap, guard)); err != nil {
		t.Fatal(err)
	}
	a, _, _ := st.GetMigration(ctx, "a")
	b, _, _ := st.GetMigration(ctx, "b")
	if a.Phase != api.MigPending {
		t.Errorf("older migration: phase %s (%s), want pending", a.Phase, a.Error)
	}
	if b.Phase != api.MigFailed || !strings.Contains(b.Error, "no room") {
		t.Errorf("younger migration: phase %s error %q, want failed for lack of room", b.Phase, b.Error)
	}
	for _, name := range []string{"a", "b"} {
		vm, err := st.GetVM(ctx, name)
		if err != nil || vm.Node != "h1" {
			t.Errorf("%s: placed on %q (%v), want still h1", name, vm.Node, err)
		}
	}
}
