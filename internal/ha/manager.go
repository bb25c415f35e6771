package ha

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
)

// Manager is the leader controller that restarts HA guests of dead hosts on
// surviving ones. A host is dead when its lease has expired (its node key,
// bound to the lease, is gone); its guests are restarted no earlier than
// Timing.Margin after the manager saw that, highest priority first, within
// capacity and anti-affinity. Guests that fit nowhere wait for capacity.
type Manager struct {
	st  *store.Store
	t   Timing
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex
	deadSince map[string]time.Time   // host -> when its lease was seen gone
	seen      map[string]bool        // hosts alive at the previous pass
	losses    map[string][]time.Time // host -> when it was lost, within FlapWindow
	drained   map[string]bool        // hosts this manager put in maintenance (event sent once)
	waiting   map[string]bool        // HA guests that found no host (event sent once)
	next      time.Duration          // when the next pass is wanted (0: no need)
	lastPass  atomic.Int64           // unix ns of the last pass (read by Leading without the lock)
	pruned    time.Time              // when old events were last pruned
}

// NewManager returns an HA manager using timing t.
func NewManager(st *store.Store, t Timing, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.Default()
	}
	return &Manager{st: st, t: t, log: log.With("controller", "ha-manager"), now: time.Now,
		deadSince: map[string]time.Time{}, waiting: map[string]bool{}, losses: map[string][]time.Time{}, drained: map[string]bool{}}
}

// Leading reports whether this manager ran as the leader's controller
// recently (the leader passes at least every 2 s).
func (m *Manager) Leading() bool {
	return time.Since(time.Unix(0, m.lastPass.Load())) < 3*time.Second
}

// Name implements leader.Controller.
func (m *Manager) Name() string { return "ha-manager" }

// NextPass implements leader.Waker: the margin after a host's death must not
// wait for the leader's periodic tick.
func (m *Manager) NextPass() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.next
}

// A host lost FlapLosses times within FlapWindow is flapping: instead of
// being fenced over and over, it is put in maintenance until an operator
// undrains it.
const (
	FlapLosses = 3
	FlapWindow = 10 * time.Minute
)

// MaxLocalRestarts is how often an agent restarts an HA guest that exits on
// its own before the HA manager moves it to another host.
const MaxLocalRestarts = 3

// Pass implements leader.Controller.
func (m *Manager) Pass(ctx context.Context, guard store.Guard) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next = 0
	m.lastPass.Store(time.Now().UnixNano())
	if time.Since(m.pruned) > time.Minute { // keep the event log bounded
		m.pruned = time.Now()
		if err := m.st.PruneEvents(ctx); err != nil {
			m.log.Warn("pruning events", "err", err)
		}
	}
	nodes, err := m.st.ListNodes(ctx)
	if err != nil {
		return err
	}
	vms, err := m.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	now := m.now()
	alive := map[string]bool{}
	for _, n := range nodes {
		alive[n.Name] = true
		delete(m.deadSince, n.Name)
	}
	// Hosts whose lease is gone: those guests are placed on, and those
	// this manager saw alive before (a host without guests can flap too).
	var gone []string
	for _, vm := range vms {
		gone = append(gone, vm.Node)
	}
	for h := range m.seen {
		gone = append(gone, h)
	}
	m.seen = alive
	for _, h := range gone {
		if h == "" || alive[h] {
			continue
		}
		if _, seen := m.deadSince[h]; !seen {
			m.deadSince[h] = now
			m.event(ctx, api.Event{Time: now.UTC(), Kind: "host-lost", Node: h,
				Message: fmt.Sprintf("host %s: lease expired; HA guests restart elsewhere after %s", h, m.t.Margin)})
			var recent []time.Time
			for _, at := range append(m.losses[h], now) {
				if now.Sub(at) <= FlapWindow {
					recent = append(recent, at)
				}
			}
			m.losses[h] = recent
		}
	}
	// Hosts to take out of service while they still answer: flapping ones,
	// and ones whose agent reports itself degraded — the latter only while
	// some healthy host remains (shared storage filling up everywhere is not
	// helped by moving guests around).
	healthy := 0
	for _, n := range nodes {
		if n.State == "ready" && !n.Maintenance && len(n.Degraded) == 0 && len(m.losses[n.Name]) < FlapLosses {
			healthy++
		}
	}
	for _, n := range nodes {
		why := ""
		switch {
		case len(m.losses[n.Name]) >= FlapLosses:
			why = fmt.Sprintf("it was lost %d times within %s (flapping); fix it and undrain it", len(m.losses[n.Name]), FlapWindow)
		case len(n.Degraded) > 0 && healthy > 0:
			why = "it reports itself degraded: " + strings.Join(n.Degraded, "; ")
		}
		if n.Maintenance {
			// Losses while in maintenance do not count: an operator who
			// undrains a fixed host starts it with a clean slate.
			m.losses[n.Name] = nil
			continue
		}
		if why == "" {
			delete(m.drained, n.Name)
			continue
		}
		if err := m.st.SetMaintenance(ctx, n.Name, true); err != nil {
			return err
		}
		m.losses[n.Name] = nil
		if !m.drained[n.Name] {
			m.drained[n.Name] = true
			m.log.Warn("host put in maintenance", "node", n.Name, "why", why)
			m.event(ctx, api.Event{Kind: "host-drained", Node: n.Name,
				Message: fmt.Sprintf("host %s put in maintenance (its guests move away live): %s", n.Name, why)})
		}
	}
	hs, err := m.st.HAState(ctx)
	if err != nil {
		return err
	}
	if hs.Paused {
		return nil
	}
	owners, err := m.st.Owners(ctx)
	if err != nil {
		return err
	}
	migs, err := m.st.ListMigrations(ctx)
	if err != nil {
		return err
	}
	// Migrations touching a dead host end here: its side is gone.
	for _, mr := range migs {
		if api.MigrationTerminal(mr.Phase) {
			continue
		}
		for _, h := range []string{mr.Source, mr.Target} {
			if h == mr.Source && mr.Phase == api.MigSwitchover {
				// The target owns the guest already and completes the
				// migration on its own; the source's death changes nothing.
				continue
			}
			if _, dead := m.deadSince[h]; dead {
				mg := mr.Migration
				mg.Phase, mg.Finished = api.MigFailed, now.UTC()
				mg.Error = fmt.Sprintf("host %s died during the migration", h)
				if _, err := m.st.PutMigrationGuarded(ctx, &mg, mr.Rev, guard); err != nil {
					return err
				}
				break
			}
		}
	}

	type cand struct {
		vm  api.VM
		why string
	}
	var cands []cand
	for _, vm := range vms {
		sp := vm.Spec
		if !sp.HA || sp.Deleting || sp.Power != api.PowerRunning || vm.Node == "" || owners[sp.Name] != "" {
			continue
		}
		if since, dead := m.deadSince[vm.Node]; dead {
			if wait := since.Add(m.t.Margin).Sub(now); wait > 0 {
				m.want(wait)
				continue
			}
			cands = append(cands, cand{vm, fmt.Sprintf("host %s failed", vm.Node)})
		} else if vm.Status.Phase == api.PhaseFailed && vm.Status.Restarts > MaxLocalRestarts && vm.Status.StartSeq == sp.StartSeq {
			cands = append(cands, cand{vm, fmt.Sprintf("it failed %d times on %s", vm.Status.Restarts, vm.Node)})
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i].vm.Spec, cands[j].vm.Spec
		if a.HAPriority != b.HAPriority {
			return a.HAPriority > b.HAPriority
		}
		return a.Name < b.Name
	})
	view := placement.NewView(nodes, vms, store.Migrations(migs))
	stillWaiting := map[string]bool{}
	defer func() { m.waiting = stillWaiting }() // guests gone or placed meanwhile drop out
	for _, c := range cands {
		sp := c.vm.Spec
		to, no := view.Pick(placement.Request{Spec: sp, Exclude: []string{c.vm.Node}})
		if to == "" {
			stillWaiting[sp.Name] = true
			if !m.waiting[sp.Name] {
				m.event(ctx, api.Event{Kind: "ha-waiting", VM: sp.Name, Node: c.vm.Node,
					Message: fmt.Sprintf("HA guest %s cannot restart (%s): no host can take it (%s); it starts when one can", sp.Name, c.why, placement.Reasons(no))})
			}
			continue
		}
		st := api.VMStatus{Phase: api.PhasePending, Node: to, StartSeq: sp.StartSeq,
			Message: fmt.Sprintf("HA restart: %s", c.why)}
		ok, err := m.st.Relocate(ctx, sp.Name, c.vm.Node, to, st, guard)
		if err != nil {
			return err
		}
		if !ok {
			continue // something changed; the next pass looks again
		}
		view.Reserve(to, sp)
		m.log.Warn("HA restart issued", "vm", sp.Name, "from", c.vm.Node, "to", to, "why", c.why)
		m.event(ctx, api.Event{Kind: "ha-restart", VM: sp.Name, Node: to,
			Message: fmt.Sprintf("restarting HA guest %s on %s: %s", sp.Name, to, c.why)})
	}
	return nil
}

func (m *Manager) want(d time.Duration) {
	if m.next == 0 || d < m.next {
		m.next = d
	}
}

func (m *Manager) event(ctx context.Context, ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = m.now().UTC()
	}
	if err := m.st.PutEvent(ctx, ev); err != nil {
		m.log.Warn("recording event", "kind", ev.Kind, "err", err)
	}
}
