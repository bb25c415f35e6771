package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
)

// A follower of the event log sees the backlog asked for, then every
// migration phase and guest phase as the records are written — once each,
// in order — and nothing for writes that do not change a phase; one that
// comes back with the last ID it saw misses nothing and sees nothing twice.
// (Long on purpose: a scenario read top to bottom; split, its story would scatter.)
func TestFollowEventsSeesEveryPhase(t *testing.T) {
	st := storetest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 3; i++ {
		if err := st.PutEvent(ctx, api.Event{Kind: "old", Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	follow := func(after string, backlog int) <-chan store.EventFollow {
		ch, err := st.FollowEvents(ctx, after, backlog)
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	take := func(ch <-chan store.EventFollow, n int) []store.EventFollow {
		t.Helper()
		var got []store.EventFollow
		for len(got) < n {
			select {
			case f, ok := <-ch:
				if !ok {
					t.Fatalf("the follow ended after %d of %d events", len(got), n)
				}
				got = append(got, f)
			case <-time.After(10 * time.Second):
				t.Fatalf("%d of %d events came: %+v", len(got), n, got)
			}
		}
		return got
	}
	ch := follow("", 2)
	if got := take(ch, 2); got[0].Event.Message != "1" || got[1].Event.Message != "2" {
		t.Fatalf("backlog %+v, want the newest two old events in order", got)
	}

	// A guest starts and runs on h1, is moved to h2, and runs there.
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "m"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "m", "h1", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	status := func(node, phase string) {
		t.Helper()
		if ok, err := st.PutStatusPlaced(ctx, "m", node, api.VMStatus{Phase: phase, Node: node}); !ok || err != nil {
			t.Fatalf("status %s on %s: %v %v", phase, node, ok, err)
		}
	}
	status("h1", api.PhaseStarting)
	status("h1", api.PhaseRunning)
	status("h1", api.PhaseRunning) // no change of phase: no event
	src, _ := st.GrantLease(ctx, 30*time.Second)
	dst, _ := st.GrantLease(ctx, 30*time.Second)
	if _, err := st.AcquireOwner(ctx, "m", "h1", src); err != nil {
		t.Fatal(err)
	}
	if err := st.StartMigration(ctx, &api.Migration{ID: "x", VM: "m", Source: "h1", Target: "h2", Phase: api.MigQueued, Reason: "operator"}); err != nil {
		t.Fatal(err)
	}
	m, rev, _ := st.GetMigration(ctx, "m")
	pending := *m
	pending.Phase = api.MigPending
	if ok, err := st.PutMigrationGuarded(ctx, &pending, rev, store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	for _, ph := range []string{api.MigTargetReady, api.MigCopying, api.MigCopying} {
		if _, _, err := st.UpdateMigration(ctx, "m", func(m *api.Migration) error { m.Phase = ph; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	m, rev, _ = st.GetMigration(ctx, "m")
	if _, ok, err := st.Takeover(ctx, m, rev, dst); !ok || err != nil {
		t.Fatal(ok, err)
	}
	status("h2", api.PhaseRunning)
	if _, _, err := st.UpdateMigration(ctx, "m", func(m *api.Migration) error { m.Phase = api.MigCompleted; return nil }); err != nil {
		t.Fatal(err)
	}

	want := []string{"vm-starting", "vm-running", "migration-queued", "migration-pending", "migration-target-ready",
		"migration-copying", "migration-switchover", "vm-running", "migration-completed"}
	got := take(ch, len(want))
	var kinds []string
	for _, f := range got {
		kinds = append(kinds, f.Event.Kind)
		if f.Event.VM != "m" {
			t.Errorf("event %+v is not about m", f.Event)
		}
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	if got[7].Event.Node != "h2" {
		t.Errorf("the guest running after the move is reported on %q, want h2", got[7].Event.Node)
	}
	select {
	case f := <-ch:
		t.Fatalf("an event for a write that changed no phase: %+v", f.Event)
	case <-time.After(300 * time.Millisecond):
	}

	// Coming back after the third: the rest, once each.
	again := take(follow(got[2].ID, store.MaxEvents), len(want)-3)
	for i, f := range again {
		if f.ID != got[3+i].ID {
			t.Fatalf("resumed follow: event %d is %s, want %s", i, f.ID, got[3+i].ID)
		}
	}
}
