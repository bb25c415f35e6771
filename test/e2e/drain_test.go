package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/migrate"
)

// Draining a host live-migrates all its guests away, never more than the
// per-host limit at once, and every guest ends up running (once) elsewhere
// without rebooting.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestDrainMovesEveryGuest(t *testing.T) {
	b, cl := newBed(t, 3)
	ctx := ctxT(t, 10*time.Minute)
	// Hold h2 and h3 in maintenance so that all guests start on h1.
	for _, h := range []string{"h2", "h3"} {
		if _, err := cl.DrainNode(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	const n = 6
	for i := 1; i <= n; i++ {
		if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: fmt.Sprintf("d%d", i), Memory: "128M"}); err != nil {
			t.Fatal(err)
		}
	}
	boot := map[string]string{}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("d%d", i)
		vm := waitVM(t, cl, name, 3*time.Minute, "running and healthy", healthyRunning)
		if vm.Node != "h1" {
			t.Fatalf("%s placed on %s while h2 and h3 are in maintenance", name, vm.Node)
		}
		boot[name] = vm.Status.Guest.BootID
	}
	for _, h := range []string{"h2", "h3"} {
		if _, err := cl.UndrainNode(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.DrainNode(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	// Wait for the drain to empty h1.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		vms, err := cl.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, vm := range vms {
			if vm.Node == "h1" {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d guests still on h1 after 5 minutes", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Never more than the per-host limit leaving h1 at once: each
	// migration's span from its admission by the leader to its end, as the
	// records tell it (reading the records one by one while they change
	// would not be one instant).
	type span struct{ from, to time.Time }
	var spans []span
	for name := range boot {
		m, err := cl.GetMigration(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		m = waitMigEnd(t, cl, name, m.ID) // placement moves before the record ends
		if m.Source != "h1" || m.Phase != api.MigCompleted {
			t.Fatalf("%s: last migration %s from %s", name, m.Phase, m.Source)
		}
		var admitted time.Time
		for _, e := range m.Timeline {
			if e.Step == "admitted" {
				admitted = e.At
			}
		}
		if admitted.IsZero() {
			t.Fatalf("%s: no admission in the migration's timeline", name)
		}
		spans = append(spans, span{admitted, m.Finished})
	}
	maxActive := 0
	for _, s := range spans {
		at := 0 // migrations in flight at the moment s was admitted
		for _, o := range spans {
			if !o.from.After(s.from) && o.to.After(s.from) {
				at++
			}
		}
		maxActive = max(maxActive, at)
	}
	if maxActive > migrate.DefaultPerHost {
		t.Fatalf("%d migrations out of h1 at once (limit %d)", maxActive, migrate.DefaultPerHost)
	}
	t.Logf("most migrations in flight out of h1 at once: %d", maxActive)
	for name, id := range boot {
		vm := waitVM(t, cl, name, time.Minute, "running and healthy elsewhere", func(vm *api.VM) bool {
			return healthyRunning(vm) && vm.Node != "h1" && vm.Status.Node == vm.Node
		})
		if vm.Status.Guest.BootID != id {
			t.Errorf("%s rebooted during the drain", name)
		}
		waitOneQEMU(t, b, vm.Spec.UUID, vm.Node)
		m, err := cl.GetMigration(ctx, name)
		if err != nil || m.Phase != api.MigCompleted || m.Reason != "drain of h1" {
			t.Errorf("%s: last migration %+v, %v", name, m, err)
		}
	}
	// A drained host takes no new guests.
	if _, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: "late", Memory: "128M"}); err != nil {
		t.Fatal(err)
	}
	if vm := waitVM(t, cl, "late", 3*time.Minute, "running", healthyRunning); vm.Node == "h1" {
		t.Fatal("a new guest was placed on a host in maintenance")
	}
}
