package agent_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/wait"
)

// TestGuestLoadHistoryFollowsTheGuest: a guest's CPU history is kept in
// the store as its buckets close, and the host it migrates to continues
// it (the same buckets, then more) instead of starting a new one: a daily
// season learnt over days is not forgotten by a move. Its host's forecast
// is its guests' summed.
func TestGuestLoadHistoryFollowsTheGuest(t *testing.T) {
	e := newEnv(t, envOpts{hosts: 2, controlPlane: true, migrationTLS: true, loadEvery: 50 * time.Millisecond,
		loadPeriod: 4800 * time.Millisecond, loadHorizon: time.Second, capacity: 1}) // 100 ms buckets
	ctx := context.Background()
	vm := e.create("steady", "h1", false)
	e.oneCopy(vm, "h1").SetCPU(0.3)
	history := func() *store.LoadHistory {
		h, err := e.st.LoadHistory(ctx, "steady", vm.Spec.UUID)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	wait.For(t, 30*time.Second, "h1 to keep 20 buckets of the guest's history", func() (bool, error) {
		h := history()
		return h != nil && len(h.CPU.Values) >= 20, fmt.Errorf("%+v", h)
	})
	before := history()
	e.migrate("steady", "h2", api.MigrationOptions{})
	if m := e.waitMigration("steady", 30*time.Second); m.Phase != api.MigCompleted {
		t.Fatalf("the migration: %s %s", m.Phase, m.Error)
	}
	moved := time.Now()
	var after *store.LoadHistory
	wait.For(t, 30*time.Second, "h2 to continue the history", func() (bool, error) {
		after = history()
		return after != nil && after.CPU.End.After(moved.Add(time.Second)), fmt.Errorf("%+v", after)
	})
	if n := len(before.CPU.Values); len(after.CPU.Values) < n+10 || !slices.Equal(after.CPU.Values[:n], before.CPU.Values) {
		t.Fatalf("h2's history does not continue h1's: %d buckets before the move, %d after (first ones %v, were %v)",
			n, len(after.CPU.Values), after.CPU.Values[:min(n, len(after.CPU.Values))], before.CPU.Values)
	}
	wait.For(t, 10*time.Second, "h2 to forecast from it", func() (bool, error) {
		nodes, err := e.st.ListNodes(ctx)
		for _, n := range nodes {
			if n.Name == "h2" && n.Load != nil {
				g, ok := n.Load.Guests["steady"]
				return ok && n.Load.Method != "none" && n.Load.Peak >= g.Peak && g.Peak > 0.2,
					fmt.Errorf("h2's load %+v", n.Load)
			}
		}
		return false, err
	})
}
