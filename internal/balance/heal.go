package balance

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/placement"
)

// Self-healing: a guest served badly where it is, for Sustain, is moved
// to a host where it will do better, whatever the balancer's mode and
// whatever its host's load says. Served badly is either of what the guest
// itself feels: it waits for its CPUs (its threads runnable but not
// running — a neighbour that is no guest of Ferry's, a host whose CPUs
// are oversubscribed, a cgroup quota — for at least HealWait of the CPU
// time it wanted and HealMinWait CPUs), or its service answers slowly (the
// median of its last health checks over HealHealthMS). The target is the
// placement engine's, which counts the CPU the guest wanted (used and
// waited for) and refuses hosts whose own guests wait (contended). The
// move is a heal-move event with what was measured.

// served says how a guest is served badly, or "" when it is not.
func (b *Balancer) served(g api.GuestLoad) string {
	var why []string
	if want := g.CPU + g.Waiting; g.Waiting >= b.cfg.HealMinWait && g.Waiting >= b.cfg.HealWait*want {
		why = append(why, fmt.Sprintf("it waited for its CPUs %.0f %% of the time it wanted them (%.2f of %.2f CPUs)",
			100*g.Waiting/want, g.Waiting, want))
	}
	if g.HealthMS > b.cfg.HealHealthMS {
		why = append(why, fmt.Sprintf("its health check answered in %.0f ms (median of the last ones; limit %.0f ms)", g.HealthMS, b.cfg.HealHealthMS))
	}
	return strings.Join(why, " and ")
}

// heal plans a move for every guest served badly for Sustain.
func (b *Balancer) heal(ctx context.Context, r *leader.Round, p *api.BalancePlan, vms map[string]api.VM, busy map[string]bool,
	samples [][]byte, now time.Time) {
	bad := map[string]bool{}
	for _, n := range r.Nodes {
		if n.Load == nil || n.State != "ready" {
			continue
		}
		names := make([]string, 0, len(n.Load.Guests))
		for name := range n.Load.Guests {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			vm, ok := vms[name]
			why := b.served(n.Load.Guests[name])
			if !ok || vm.Node != n.Name || why == "" || vm.Spec.Deleting ||
				vm.Spec.Power != api.PowerRunning || vm.Status.Phase != api.PhaseRunning {
				continue
			}
			bad[name] = true
			since, seen := b.badSince[name]
			if !seen {
				b.badSince[name] = now
				continue
			}
			if now.Sub(since) < b.cfg.Sustain || busy[name] || n.Maintenance {
				continue
			}
			if at, ok := b.movedAt[name]; ok && now.Sub(at) < b.cfg.Cooldown {
				continue
			}
			if mv, ok := b.healMove(ctx, r, n, vm, n.Load.Guests[name], why, now.Sub(since), samples); ok {
				mv.StartAt = now.UTC()
				p.Moves = append(p.Moves, mv)
				busy[name] = true
			} else {
				p.Stuck = append(p.Stuck, api.BalanceStuck{Host: n.Name, Why: mv.Why})
			}
		}
	}
	for name := range b.badSince {
		if !bad[name] {
			delete(b.badSince, name)
		}
	}
}

// demand is the CPU a starved guest is counted at for placement. What it
// would use served well is unknown while it waits: its threads' waits
// overlap (a throttled cgroup stops them all at once) and a thread that
// waits long may need little once it runs, so use plus wait overstates
// it. It is counted at twice what it got (or its forecast peak), at most
// that use plus its wait.
func demand(g api.GuestLoad) float64 {
	return math.Min(g.CPU+g.Waiting, 2*math.Max(g.CPU, g.Peak))
}

// healMove picks where a guest served badly on host n goes; without a
// target, the move's Why says why none.
func (b *Balancer) healMove(ctx context.Context, r *leader.Round, n api.Node, vm api.VM, g api.GuestLoad, why string,
	lasted time.Duration, samples [][]byte) (api.BalanceMove, bool) {
	want := demand(g)
	to, no := r.View.Pick(placement.Request{Spec: vm.Spec, Live: &vm, CPU: want, CPUShare: b.cfg.Target})
	if to == "" {
		return api.BalanceMove{Why: fmt.Sprintf("%s is served badly (%s) but cannot move: %s", vm.Spec.Name, why, placement.Reasons(no))}, false
	}
	strategy := ""
	pred, total, ok := b.predictMove(ctx, r, &vm, n.Name, to, samples)
	if ok {
		strategy = pred.Chosen
	}
	r.View.Reserve(to, vm.Spec)
	r.View.ReserveCPU(to, want)
	return api.BalanceMove{VM: vm.Spec.Name, From: n.Name, To: to, CPU: want, PredictedS: total, Heal: true,
		Why: fmt.Sprintf("%s is served badly on %s: %s, for %s: moving it to %s, which has room for the %.2f CPUs it is counted at, predicted to take %.0f s by %s",
			vm.Spec.Name, n.Name, why, lasted.Round(time.Second), to, want, total, strategy)}, true
}
