package ha

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

// TestManagerRestartsByPriorityWithinCapacityAndAntiAffinity runs the HA
// manager against a real etcd: host h2 has died (no node key), and its
// guests are moved only after the margin, by priority, never next to a
// member of their anti-affinity group, and a guest that fits nowhere waits.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestRestartsByPriorityWithinCapacityAndAntiAffinity(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Nodes(t, st, lease,
		api.Node{Name: "h1", State: "ready", MemoryMiB: 4096, Heartbeat: time.Now(), Images: []string{"tiny"}},
		api.Node{Name: "h3", State: "ready", MemoryMiB: 1024, Heartbeat: time.Now(), Images: []string{"tiny"}})
	vms := []struct {
		spec api.VMSpec
		node string
	}{
		{api.VMSpec{Name: "a", MemoryMiB: 768, HA: true, HAPriority: 10}, "h2"},
		{api.VMSpec{Name: "b", MemoryMiB: 768, HA: true}, "h2"},
		{api.VMSpec{Name: "c", MemoryMiB: 256}, "h2"}, // not HA: stays
		{api.VMSpec{Name: "d", MemoryMiB: 256, HA: true, AntiAffinity: "g"}, "h2"},
		{api.VMSpec{Name: "e", MemoryMiB: 256, HA: true, AntiAffinity: "g"}, "h1"},
		{api.VMSpec{Name: "z", MemoryMiB: 8192, HA: true}, "h2"}, // fits nowhere
	}
	for _, v := range vms {
		v.spec.Image, v.spec.Power, v.spec.StartSeq = "tiny", api.PowerRunning, 1
		storetest.Placed(t, st, v.spec, v.node)
	}
	// e runs on h1 and owns its key there.
	if _, err := st.AcquireOwner(ctx, "e", "h1", lease); err != nil {
		t.Fatal(err)
	}
	// Someone still owns b (as if h2's lease had not expired for it):
	// ownership fences the manager, b must not move.
	if _, err := st.AcquireOwner(ctx, "b", "h2", lease); err != nil {
		t.Fatal(err)
	}
	tm := DefaultTiming()
	m := newManager(t, st, tm)
	now := time.Now()
	m.setNow(func() time.Time { return now })
	var guard store.Guard // no leadership: nothing fences these writes
	placed := func() map[string]string {
		out := map[string]string{}
		l, err := st.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range l {
			out[vm.Spec.Name] = vm.Node
		}
		return out
	}

	// A new leader gives hosts it has not seen a lease's time to show up
	// (a cluster coming up): h2 is not lost yet.
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if _, dead := m.hosts.DeadSince("h2"); dead {
		t.Fatal("a host the new leader never saw was lost at its first round")
	}
	now = now.Add(tm.LeaseTTL + tm.Margin)
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if _, dead := m.hosts.DeadSince("h2"); !dead {
		t.Fatal("h2 not lost a lease after the leader began")
	}
	if p := placed(); p["a"] != "h2" || p["b"] != "h2" || p["d"] != "h2" {
		t.Fatalf("moved before the margin: %v", p)
	}
	if d := m.restarts.NextPass(); d <= 0 || d > tm.Margin {
		t.Fatalf("manager asked for its next pass in %v, want within the margin %v", d, tm.Margin)
	}
	// Paused: nothing moves even after the margin.
	if err := st.SetHAState(ctx, api.HAState{Paused: true}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(tm.Margin + time.Millisecond)
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if p := placed(); p["a"] != "h2" {
		t.Fatalf("moved while HA was paused: %v", p)
	}
	if err := st.SetHAState(ctx, api.HAState{Paused: false}); err != nil {
		t.Fatal(err)
	}
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "h1", "b": "h2", "c": "h2", "d": "h3", "e": "h1", "z": "h2"}
	if p := placed(); !equal(p, want) {
		t.Fatalf("after the margin: placed %v, want %v", p, want)
	}
	vm, _ := st.GetVM(ctx, "a")
	if vm.Status.Phase != api.PhasePending || vm.Status.Node != "h1" {
		t.Fatalf("relocated guest's status: %+v", vm.Status)
	}
	evs, err := st.ListEvents(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds["host-lost"] != 1 || kinds["ha-restart"] != 2 || kinds["ha-waiting"] != 1 {
		t.Fatalf("events %v", kinds)
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestManagerDrainsFlappingAndDegradedHosts: a host whose agent reports
// itself degraded, and a host lost FlapLosses times within FlapWindow, are
// put in maintenance (so their guests move away live) with an event, once.
func TestHostsDrainsFlappingAndDegradedHosts(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	up := func(n api.Node, lease store.LeaseID) {
		n.State, n.MemoryMiB, n.Heartbeat = "ready", 4096, time.Now()
		storetest.Nodes(t, st, lease, n)
	}
	// h3 has a lease of its own, which the test ends to lose the host.
	h3lease := func() store.LeaseID {
		l, err := st.GrantLease(ctx, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	up(api.Node{Name: "h1"}, lease)
	up(api.Node{Name: "h2", Degraded: []string{"guest overlay: fvx0 is down"}}, lease)
	l3 := h3lease()
	up(api.Node{Name: "h3"}, l3)
	storetest.Placed(t, st, api.VMSpec{Name: "x", MemoryMiB: 256, Image: "tiny", Power: api.PowerRunning}, "h3")
	m := newManager(t, st, DefaultTiming())
	var guard store.Guard // no leadership: nothing fences these writes
	maint := func(name string) bool {
		nodes, err := st.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == name {
				return n.Maintenance
			}
		}
		return false
	}
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if !maint("h2") || maint("h1") || maint("h3") {
		t.Fatalf("after one pass: maintenance h1=%v h2=%v h3=%v, want only the degraded h2", maint("h1"), maint("h2"), maint("h3"))
	}
	for i := 1; i <= FlapLosses; i++ {
		if maint("h3") {
			t.Fatalf("h3 in maintenance after %d losses", i-1)
		}
		if err := st.RevokeLease(ctx, l3); err != nil {
			t.Fatal(err)
		}
		if err := m.pass(ctx, guard); err != nil {
			t.Fatal(err)
		}
		l3 = h3lease()
		up(api.Node{Name: "h3"}, l3)
		if err := m.pass(ctx, guard); err != nil {
			t.Fatal(err)
		}
	}
	if !maint("h3") {
		t.Fatalf("h3 lost %d times but not in maintenance", FlapLosses)
	}
	evs, _ := st.ListEvents(ctx, 100)
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds["host-drained"] != 2 || kinds["host-lost"] != FlapLosses {
		t.Fatalf("events %v, want 2 host-drained and %d host-lost", kinds, FlapLosses)
	}
}

// TestHostsEvacuatesHostsAtRisk: a host that forecasts its own failure is
// put in maintenance, so its guests move away live before it fails, with a
// host-at-risk event that carries its reasons; while no healthy host
// remains to take the guests, nothing is drained.
func TestHostsEvacuatesHostsAtRisk(t *testing.T) {
	st := storetest.New(t)
	ctx := context.Background()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	risky := &api.HostRisk{Probability: 0.93, Horizon: "30m0s", Threshold: 0.5, AtRisk: true,
		Reasons: []api.RiskReason{{Signal: "edac/mc0/ce", Probability: 0.93, Reason: "edac/mc0/ce at 8 errors/min, rising"}}}
	up := func(names ...string) {
		for _, name := range names {
			n := api.Node{Name: name, State: "ready", MemoryMiB: 4096, Heartbeat: time.Now()}
			if name != "h1" {
				n.Risk = risky
			}
			storetest.Nodes(t, st, lease, n)
		}
	}
	maintenance := func() map[string]bool {
		nodes, err := st.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, n := range nodes {
			out[n.Name] = n.Maintenance
		}
		return out
	}
	m := newManager(t, st, DefaultTiming())
	var guard store.Guard
	// Only h2 and h3, both at risk: no healthy host to move to.
	up("h2", "h3")
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if got := maintenance(); got["h2"] || got["h3"] {
		t.Fatalf("with no healthy host, at-risk hosts were drained: %v", got)
	}
	up("h1")
	if err := m.pass(ctx, guard); err != nil {
		t.Fatal(err)
	}
	if got := maintenance(); !got["h2"] || !got["h3"] || got["h1"] {
		t.Fatalf("maintenance %v, want h2 and h3 (at risk), not h1", got)
	}
	evs, _ := st.ListEvents(ctx, 100)
	n := 0
	for _, e := range evs {
		if e.Kind == "host-at-risk" {
			n++
			if !strings.Contains(e.Message, "edac/mc0/ce at 8 errors/min, rising") || !strings.Contains(e.Message, "93 %") {
				t.Errorf("the event does not say why: %q", e.Message)
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d host-at-risk events, want 2: %+v", n, evs)
	}
}

// manager runs the two HA controllers in leader rounds, as the leader does,
// each round on a fresh snapshot.
type manager struct {
	t        *testing.T
	st       *store.Store
	hosts    *Hosts
	restarts *Restarts
}

func newManager(t *testing.T, st *store.Store, tm Timing) *manager {
	h := NewHosts(st, tm, nil)
	return &manager{t: t, st: st, hosts: h, restarts: NewRestarts(st, h, tm, nil)}
}

func (m *manager) setNow(now func() time.Time) { m.hosts.now, m.restarts.now = now, now }

func (m *manager) pass(ctx context.Context, guard store.Guard) error {
	snap, err := m.st.ReadSnapshot(ctx)
	if err != nil {
		return err
	}
	r := leader.NewRound(snap, guard)
	if err := m.hosts.Pass(ctx, r); err != nil {
		return err
	}
	return m.restarts.Pass(ctx, r)
}
