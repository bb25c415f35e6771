package ha

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/metrics"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
	"golang.org/x/sync/errgroup"
)

// MaxLocalRestarts is how often an agent restarts an HA guest that exits on
// its own before the HA manager moves it to another host.
const MaxLocalRestarts = 3

// Restarts is the leader controller that restarts HA guests of dead hosts
// on surviving ones: no earlier than Timing.Margin after the host's lease
// was seen gone (Hosts), because only the lease bounds when the host's own
// fencing has acted (docs/HA.md); highest priority first, where the
// placement engine finds room within anti-affinity. It also ends the
// migrations a dead host took part in, and moves an HA guest that failed
// more than MaxLocalRestarts times on its host. Nothing restarts while
// HA is paused.
type Restarts struct {
	st    *store.Store
	hosts *Hosts
	t     Timing
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	waiting map[string]bool // HA guests that found no host (event sent once)
	next    time.Duration   // when the next round is wanted (0: no need)
	// recovering are the guests restarted for a dead host, with when the
	// host was lost, until they run again (ferry_ha_recovery_seconds).
	recovering map[string]recovery
	recoverMu  sync.Mutex // guards recovering (restarts are issued in parallel)
}

// recovery is a restarted guest on its way to running again.
type recovery struct {
	to   string
	lost time.Time
}

// NewRestarts returns the restart controller, reading dead hosts from hosts.
func NewRestarts(st *store.Store, hosts *Hosts, t Timing, log *slog.Logger) *Restarts {
	if log == nil {
		log = slog.Default()
	}
	return &Restarts{st: st, hosts: hosts, t: t, log: log.With("controller", "ha-restarts"), now: time.Now, waiting: map[string]bool{},
		recovering: map[string]recovery{}}
}

// Name implements leader.Controller.
func (m *Restarts) Name() string { return "ha-restarts" }

// NextPass implements leader.Waker: the margin after a host's death must not
// wait for the leader's periodic tick.
func (m *Restarts) NextPass() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.next
}

// Pass implements leader.Controller.
func (m *Restarts) Pass(ctx context.Context, r *leader.Round) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next = 0
	m.recovered(r)
	if r.HA.Paused {
		return nil
	}
	if err := m.endMigrations(ctx, r); err != nil {
		return err
	}
	return m.restart(ctx, r, m.candidates(r))
}

// endMigrations fails the migrations a dead host took part in: its side
// is gone.
func (m *Restarts) endMigrations(ctx context.Context, r *leader.Round) error {
	for _, mr := range r.Migrations {
		if api.MigrationTerminal(mr.Phase) {
			continue
		}
		for _, h := range []string{mr.Source, mr.Target} {
			if h == mr.Source && mr.Phase == api.MigSwitchover {
				// The target owns the guest already and completes the
				// migration on its own; the source's death changes nothing.
				continue
			}
			if _, dead := m.hosts.DeadSince(h); dead {
				mg := mr.Migration
				mg.Phase, mg.Finished = api.MigFailed, m.now().UTC()
				mg.Error = fmt.Sprintf("host %s died during the migration", h)
				if _, err := m.st.PutMigrationGuarded(ctx, &mg, mr.Rev, r.Guard); err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

// candidate is an HA guest to restart elsewhere, and why.
type candidate struct {
	vm  api.VM
	why string
}

// candidates are the HA guests to restart now, highest priority first:
// guests of hosts dead for longer than the margin, and guests that failed
// too often on their host. For a death too recent it asks for a round when
// the margin is over.
func (m *Restarts) candidates(r *leader.Round) []candidate {
	now := m.now()
	var cands []candidate
	for _, vm := range r.VMs {
		sp := vm.Spec
		if !sp.HA || sp.Deleting || sp.Power != api.PowerRunning || vm.Node == "" || r.Owners[sp.Name] != "" {
			continue
		}
		if since, dead := m.hosts.DeadSince(vm.Node); dead {
			if wait := since.Add(m.t.Margin).Sub(now); wait > 0 {
				m.want(wait)
				continue
			}
			cands = append(cands, candidate{vm, fmt.Sprintf("host %s failed", vm.Node)})
		} else if vm.Status.Phase == api.PhaseFailed && vm.Status.Restarts > MaxLocalRestarts && vm.Status.StartSeq == sp.StartSeq {
			cands = append(cands, candidate{vm, fmt.Sprintf("it failed %d times on %s", vm.Status.Restarts, vm.Node)})
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i].vm.Spec, cands[j].vm.Spec
		if a.HAPriority != b.HAPriority {
			return a.HAPriority > b.HAPriority
		}
		return a.Name < b.Name
	})
	return cands
}

// restart relocates each candidate to the best host that can take it, in
// one transaction per guest that holds only while nobody owns the guest.
// Targets are chosen in priority order against one view (each choice
// reserves its room); the transactions then go to etcd together, at most
// relocateWidth at a time: one after the other, 50 guests of a dead host
// took 8 s on a busy etcd (1,000 simulated hosts on 2 cores).
func (m *Restarts) restart(ctx context.Context, r *leader.Round, cands []candidate) error {
	stillWaiting := map[string]bool{}
	defer func() { m.waiting = stillWaiting }() // guests gone or placed meanwhile drop out
	type move struct {
		c  candidate
		to string
	}
	var moves []move
	for _, c := range cands {
		sp := c.vm.Spec
		to, no := r.View.Pick(placement.Request{Spec: sp, Exclude: []string{c.vm.Node}})
		if to == "" {
			stillWaiting[sp.Name] = true
			if !m.waiting[sp.Name] {
				event(ctx, m.st, m.log, api.Event{Kind: "ha-waiting", VM: sp.Name, Node: c.vm.Node,
					Message: fmt.Sprintf("HA guest %s cannot restart (%s): no host can take it (%s); it starts when one can", sp.Name, c.why, placement.Reasons(no))})
			}
			continue
		}
		r.View.Reserve(to, sp)
		moves = append(moves, move{c, to})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(relocateWidth)
	for _, mv := range moves {
		g.Go(func() error {
			sp, from := mv.c.vm.Spec, mv.c.vm.Node
			st := api.VMStatus{Phase: api.PhasePending, Node: mv.to, StartSeq: sp.StartSeq, Message: fmt.Sprintf("HA restart: %s", mv.c.why)}
			ok, err := m.st.Relocate(gctx, sp.Name, from, mv.to, st, r.Guard)
			if err != nil || !ok {
				return err // !ok: something changed; the next round looks again
			}
			m.log.Warn("HA restart issued", "vm", sp.Name, "from", from, "to", mv.to, "why", mv.c.why)
			metrics.HARestarts.Inc()
			if lost, dead := m.hosts.DeadSince(from); dead {
				metrics.HARestartDelay.Observe(m.now().Sub(lost).Seconds())
				m.recoverMu.Lock()
				m.recovering[sp.Name] = recovery{to: mv.to, lost: lost}
				m.recoverMu.Unlock()
			}
			event(gctx, m.st, m.log, api.Event{Kind: "ha-restart", VM: sp.Name, Node: mv.to,
				Message: fmt.Sprintf("restarting HA guest %s on %s: %s", sp.Name, mv.to, mv.c.why)})
			return nil
		})
	}
	return g.Wait()
}

// recovered records the restarted guests that run again, each once, and
// drops those that went elsewhere meanwhile.
func (m *Restarts) recovered(r *leader.Round) {
	m.recoverMu.Lock()
	defer m.recoverMu.Unlock()
	now := m.now()
	for _, vm := range r.VMs {
		rc, ok := m.recovering[vm.Spec.Name]
		if !ok {
			continue
		}
		switch {
		case vm.Node != rc.to || vm.Spec.Deleting:
			delete(m.recovering, vm.Spec.Name)
		case vm.Status.Phase == api.PhaseRunning && vm.Status.Node == rc.to:
			metrics.HARecovery.Observe(now.Sub(rc.lost).Seconds())
			delete(m.recovering, vm.Spec.Name)
		}
	}
	for name, rc := range m.recovering {
		if now.Sub(rc.lost) > 10*time.Minute { // deleted, or never came up
			delete(m.recovering, name)
		}
	}
}

// relocateWidth is how many HA restarts go to etcd at once.
const relocateWidth = 16

func (m *Restarts) want(d time.Duration) {
	if m.next == 0 || d < m.next {
		m.next = d
	}
}
