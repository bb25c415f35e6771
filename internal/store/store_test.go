package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// newStore starts a real embedded etcd for one test.
func newStore(t *testing.T) *store.Store { return storetest.New(t) }

func TestCreateVMAllocatesUniqueAddresses(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	specs := make([]*api.VMSpec, 24)
	errs := make([]error, len(specs))
	for i := range specs {
		specs[i] = &api.VMSpec{Name: fmt.Sprintf("vm%d", i)}
		wg.Add(1)
		go func(i int) { defer wg.Done(); errs[i] = st.CreateVM(ctx, specs[i]) }(i)
	}
	wg.Wait()
	seen := map[string]string{}
	for i, s := range specs {
		if errs[i] != nil {
			t.Fatalf("create %s: %v", s.Name, errs[i])
		}
		if other, dup := seen[s.IP]; dup {
			t.Fatalf("%s and %s share %s", s.Name, other, s.IP)
		}
		seen[s.IP] = s.Name
	}
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "vm0"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	// Deleting releases the address claim; a new VM never collides.
	ip := specs[0].IP
	if err := st.DeleteVM(ctx, "vm0", ""); err != nil {
		t.Fatal(err)
	}
	addr, _, _ := strings.Cut(ip, "/")
	if r, _ := st.Etcd().Get(ctx, store.IPPrefix+addr); len(r.Kvs) != 0 {
		t.Fatalf("address claim %s left after delete", addr)
	}
	delete(seen, ip)
	again := &api.VMSpec{Name: "vm-new"}
	if err := st.CreateVM(ctx, again); err != nil {
		t.Fatal(err)
	}
	if other, dup := seen[again.IP]; dup {
		t.Fatalf("new vm got %s, held by %s", again.IP, other)
	}
}

// TestDeleteVMTakesOnlyItsIncarnation is the create-then-delete race: a
// host's deletion of a guest that finishes after the API has already removed
// it, and after a new VM of the same name was created, must leave the new one
// whole.
func TestDeleteVMTakesOnlyItsIncarnation(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	old := &api.VMSpec{Name: "c", UUID: "first"}
	if err := st.CreateVM(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteVM(ctx, "c", "first"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetVM(ctx, "c"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("after its deletion: %v", err)
	}
	fresh := &api.VMSpec{Name: "c", UUID: "second"}
	if err := st.CreateVM(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "c", "h1", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	// The late deletion of the first incarnation.
	if err := st.DeleteVM(ctx, "c", "first"); err != nil {
		t.Fatal(err)
	}
	vm, err := st.GetVM(ctx, "c")
	if err != nil || vm.Spec.UUID != "second" || vm.Node != "h1" {
		t.Fatalf("the new incarnation after a late deletion of the old: %+v %v", vm, err)
	}
	if err := st.DeleteVM(ctx, "c", "second"); err != nil {
		t.Fatal(err)
	}
	resp, _ := st.Etcd().Get(ctx, store.VMPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if _, err := st.GetVM(ctx, "c"); !errors.Is(err, errdefs.ErrNotFound) || resp.Count != 0 {
		t.Fatalf("after deleting the second: %v, %d spec keys", err, resp.Count)
	}
}

func TestOwnershipFencing(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "g"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "g", "a", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	lease := func() store.LeaseID {
		l, err := st.GrantLease(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	la, lb := lease(), lease()
	rev, err := st.AcquireOwner(ctx, "g", "a", la)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AcquireOwner(ctx, "g", "b", lb); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second owner admitted: %v", err)
	}
	if ok, _ := st.CheckOwner(ctx, "g", "a", rev); !ok {
		t.Fatal("owner check failed for the owner")
	}
	// Re-acquiring (a restarted agent with a new lease) moves the token on:
	// a check against the old revision fails.
	la2 := lease()
	rev2, err := st.AcquireOwner(ctx, "g", "a", la2)
	if err != nil || rev2 <= rev {
		t.Fatalf("rebind: rev %d -> %d, %v", rev, rev2, err)
	}
	if ok, _ := st.CheckOwner(ctx, "g", "a", rev); ok {
		t.Fatal("a stale fencing token still passes")
	}
	// The lease ending frees the VM, but only for the host it is placed on.
	if err := st.RevokeLease(ctx, la2); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AcquireOwner(ctx, "g", "b", lb); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("a host the VM is not placed on took it: %v", err)
	}
	if ok, err := st.MovePlacement(ctx, "g", "a", "b", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := st.AcquireOwner(ctx, "g", "b", lb); err != nil {
		t.Fatalf("after the owner's lease ended and the VM moved: %v", err)
	}
	// Release by a non-owner does nothing.
	st.ReleaseOwner(ctx, "g", "a")
	if owner, _, _ := st.Owner(ctx, "g"); owner != "b" {
		t.Fatalf("a non-owner released the key: owner now %q", owner)
	}
}

func TestPlaceIsFencedByLeader(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	old, err := st.Campaign(ctx, "old", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	guard := old.Guard()
	old.Resign()
	// Another host leads now: the old leader's guard must fail.
	cur, err := st.Campaign(ctx, "new", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Resign()
	if ok, err := st.Place(ctx, "p", "n1", guard); err != nil || ok {
		t.Fatalf("deposed leader placed a vm: ok=%v err=%v", ok, err)
	}
	if ok, err := st.Place(ctx, "p", "n1", cur.Guard()); err != nil || !ok {
		t.Fatalf("the leader could not place: %v %v", ok, err)
	}
	if ok, _ := st.Place(ctx, "p", "n2", store.Guard{}); ok {
		t.Fatal("a placed vm was placed again")
	}
}

func TestUpdateSpecAndStatus(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "u", Power: api.PowerRunning, StartSeq: 1}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.UpdateSpec(ctx, "u", func(s *api.VMSpec) error { s.StartSeq++; return nil })
		}()
	}
	wg.Wait()
	vm, err := st.GetVM(ctx, "u")
	if err != nil || vm.Spec.StartSeq != 11 {
		t.Fatalf("concurrent updates lost: %d %v", vm.Spec.StartSeq, err)
	}
	if err := st.DeleteVM(ctx, "u", ""); err != nil {
		t.Fatal(err)
	}
	// A late status write for a deleted VM must not resurrect keys.
	st.PutStatusPlaced(ctx, "u", "n1", api.VMStatus{Phase: api.PhaseRunning})
	resp, _ := st.Etcd().Get(ctx, store.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != 0 {
		t.Fatalf("%d keys left after delete", resp.Count)
	}
	if _, err := st.UpdateSpec(ctx, "u", func(*api.VMSpec) error { return nil }); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("update of deleted vm: %v", err)
	}
}

func TestTakeover(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "m"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "m", "h1", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	src, err := st.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := st.GrantLease(ctx, 30*time.Second)
	if _, err := st.AcquireOwner(ctx, "m", "h1", src); err != nil {
		t.Fatal(err)
	}
	if err := st.StartMigration(ctx, &api.Migration{ID: "x", VM: "m", Source: "h1", Target: "h2", Phase: api.MigCopying}); err != nil {
		t.Fatal(err)
	}
	m, rev, _ := st.GetMigration(ctx, "m")
	// A record changed since it was read (a cancel, say) blocks the takeover.
	if _, _, err := st.UpdateMigration(ctx, "m", func(c *api.Migration) error { c.Cancel = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := st.Takeover(ctx, m, rev, dst); err != nil || ok {
		t.Fatalf("takeover over a changed record: ok=%v err=%v", ok, err)
	}
	if owner, _, _ := st.Owner(ctx, "m"); owner != "h1" {
		t.Fatalf("owner %q after a refused takeover", owner)
	}
	m, rev, _ = st.GetMigration(ctx, "m")
	orev, ok, err := st.Takeover(ctx, m, rev, dst)
	if err != nil || !ok {
		t.Fatalf("takeover: %v %v", ok, err)
	}
	if good, _ := st.CheckOwner(ctx, "m", "h2", orev); !good {
		t.Fatal("the returned revision is not the target's fencing token")
	}
	vm, _ := st.GetVM(ctx, "m")
	m, _, _ = st.GetMigration(ctx, "m")
	if vm.Node != "h2" || m.Phase != api.MigSwitchover {
		t.Fatalf("placement %q, phase %q after takeover", vm.Node, m.Phase)
	}
}

// Writing the same event again (a retry after a lost answer) keeps one
// record; two different events of the same instant are both kept.
func TestPutEventIdempotent(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	at := time.Now().UTC()
	ev := api.Event{Time: at, Kind: "self-fenced", Node: "h3", Message: "no lease renewal for 1.4s"}
	for i := 0; i < 2; i++ {
		if err := st.PutEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	other := ev
	other.Node = "h4"
	if err := st.PutEvent(ctx, other); err != nil {
		t.Fatal(err)
	}
	evs, err := st.ListEvents(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Node == evs[1].Node {
		t.Fatalf("events %+v, want one for h3 and one for h4", evs)
	}
}

// A typed watch reports changes of the kinds asked for only, with their
// names, and ends when its context does.
func TestWatch(t *testing.T) {
	st := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wc := st.Watch(ctx, 0, store.KindVM, store.KindPlacement)
	lease, err := st.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutAlive(ctx, "h1", lease, time.Second); err != nil { // not watched
		t.Fatal(err)
	}
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "w", "h1", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := st.DeleteVM(ctx, "w", ""); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 4 {
		select {
		case c := <-wc:
			got = append(got, fmt.Sprintf("%d %s deleted=%v", c.Kind, c.Name, c.Deleted))
		case <-time.After(5 * time.Second):
			t.Fatalf("changes seen: %v", got)
		}
	}
	want := map[string]bool{
		fmt.Sprintf("%d w deleted=false", store.KindVM): true, fmt.Sprintf("%d w deleted=false", store.KindPlacement): true,
		fmt.Sprintf("%d w deleted=true", store.KindVM): true, fmt.Sprintf("%d w deleted=true", store.KindPlacement): true,
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("unexpected change %q (all: %v)", g, got)
		}
	}
	cancel()
	for range wc { // ends once the context does
	}
}

// A mirror follows the store: a snapshot shows what was written, with the
// VM's parts joined and a node's maintenance merged in.
func TestMirror(t *testing.T) {
	st := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lease, err := st.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutNode(ctx, api.Node{Name: "h1", State: "ready", Heartbeat: time.Now()}, lease); err != nil {
		t.Fatal(err)
	}
	m := st.Mirror(ctx)
	if err := st.CreateVM(ctx, &api.VMSpec{Name: "m1", MemoryMiB: 256}); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Place(ctx, "m1", "h1", store.Guard{}); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := st.SetMaintenance(ctx, "h1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AcquireOwner(ctx, "m1", "h1", lease); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		snap, ok := m.Snapshot()
		if ok {
			vm, n := snap.VM("m1"), snap.Node("h1")
			if vm != nil && vm.Node == "h1" && vm.Status.Phase == api.PhasePending && n != nil && n.Maintenance && snap.Owners["m1"] == "h1" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror did not follow: %+v", snap)
		}
		select {
		case <-m.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := st.DeleteVM(ctx, "m1", ""); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		snap, _ := m.Snapshot()
		if snap.VM("m1") == nil && snap.Owners["m1"] == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a deleted VM stays in the mirror: %+v", snap.VM("m1"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
