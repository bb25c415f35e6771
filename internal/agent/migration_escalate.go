package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/qemu"
)

// escalation is a source's state of escalating a migration that does not
// converge.
type escalation struct {
	rounds  []migrate.RoundStat
	taken   []string // escalations taken, in order
	lastAt  int64    // the sync count at the last escalation
	verdict string   // why the migration was found not to converge
	// throttle is the CPU throttle last seen, rose when it last rose.
	throttle int64
	rose     time.Time
}

// escalateAfterSyncs is how many syncs an escalation is given to work
// before the next is taken.
const escalateAfterSyncs = 2

// grace is how long a rising CPU throttle holds off the next escalation:
// QEMU raises it when two syncs in a row (at least a second apart) saw
// heavy dirtying, so two and a half rounds, and at least 8 s.
func (e *escalation) grace() time.Duration {
	g := 8 * time.Second
	if n := len(e.rounds); n >= 3 {
		g = max(g, e.rounds[n-1].At.Sub(e.rounds[n-3].At)*5/4)
	}
	return g
}

// watchConvergence records a new sync and, when the migration does not
// converge (migrate.Converging), takes the next escalation the policy
// allows: the downtime limit raised to its allowed maximum, the guest's
// CPUs throttled, post-copy. Each is an event and in the timeline.
func (f *sourceFollower) watchConvergence(ctx context.Context, info qemu.MigrationInfo) {
	r := info.RAM
	e := &f.esc
	if e.rose.IsZero() {
		e.rose = time.Now() // a throttle starting from nothing gets its grace too
	}
	e.rounds = append(e.rounds, migrate.RoundStat{Round: r.DirtySyncCount, Remaining: r.Remaining,
		Rate: r.Mbps * 1e6 / 8, DirtyRate: float64(r.DirtyPagesRate * max(r.PageSize, 4096)), At: time.Now()})
	if f.plan.Postcopy || f.postcopyStarted {
		return
	}
	if info.CPUThrottle > e.throttle {
		e.throttle, e.rose = info.CPUThrottle, time.Now()
	}
	ok, why := migrate.Converging(e.rounds, time.Duration(f.maxDowntime)*time.Millisecond)
	if ok || (len(e.taken) > 0 && r.DirtySyncCount-e.lastAt < escalateAfterSyncs) {
		return
	}
	throttling := f.m.Options.Strategy == api.StrategyAutoConverge || slices.Contains(e.taken, api.EscalateThrottle)
	if throttling && int(e.throttle) < migrate.MaxThrottle(max(f.m.Options.AllowedDowntimeMS, f.m.Options.MaxDowntimeMS)) && time.Since(e.rose) < e.grace() {
		return // the throttle is still rising: give it its time
	}
	if e.verdict == "" {
		e.verdict = why
		f.a.log.Info("migration does not converge", "vm", f.m.VM, "why", why)
	}
	for _, kind := range f.m.Options.Escalations {
		if slices.Contains(e.taken, kind) {
			continue
		}
		detail, err := f.escalate(ctx, kind)
		if err != nil {
			f.a.log.Warn("escalating a migration", "vm", f.m.VM, "escalation", kind, "err", err)
			e.taken = append(e.taken, kind) // not again
			continue
		}
		if detail == "" {
			continue // not applicable to this migration
		}
		e.taken, e.lastAt = append(e.taken, kind), r.DirtySyncCount
		f.recordEscalation(ctx, api.MigrationEscalation{Kind: kind, Round: r.DirtySyncCount, Detail: why + "; " + detail, At: time.Now().UTC()})
		return
	}
}

// escalate takes one escalation; it returns what it did, or "" when the
// escalation does not apply (already at the limit, not readied in the
// plan).
func (f *sourceFollower) escalate(ctx context.Context, kind string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	qmp := f.in.qmp
	switch kind {
	case api.EscalateDowntime:
		// QEMU's limit covers the last pages; the pause the guest's
		// clients see adds the switchover's own.
		// A throttled guest's last sleep runs into the pause as well; and
		// the switchover's own part is counted twice, for its spread
		// (under TCG it was 250-650 ms).
		allowed := f.m.Options.AllowedDowntimeMS
		if p := f.m.Prediction; p != nil {
			allowed -= 2 * int64(p.SwitchoverMS)
		}
		if f.m.Options.Strategy == api.StrategyAutoConverge || slices.Contains(f.m.Options.Escalations, api.EscalateThrottle) {
			allowed -= migrate.ThrottleSleep(migrate.MaxThrottle(f.m.Options.AllowedDowntimeMS)).Milliseconds()
		}
		if allowed <= f.maxDowntime {
			return "", nil
		}
		if err := qmp.SetMigrationParameters(cctx, map[string]any{"downtime-limit": allowed}); err != nil {
			return "", err
		}
		old := f.maxDowntime
		f.maxDowntime, f.downtime = allowed, allowed
		return fmt.Sprintf("downtime limit raised from %d ms to %d ms (the policy allows a %d ms pause)", old, allowed, f.m.Options.AllowedDowntimeMS), nil
	case api.EscalateThrottle:
		if !f.plan.ThrottleReady {
			return "", nil
		}
		most := migrate.MaxThrottle(max(f.m.Options.AllowedDowntimeMS, f.m.Options.MaxDowntimeMS))
		if err := qmp.SetMigrationParameters(cctx, map[string]any{"cpu-throttle-initial": min(20, most), "cpu-throttle-increment": 10, "max-cpu-throttle": most}); err != nil {
			return "", err
		}
		return fmt.Sprintf("the guest's CPUs throttled (auto-converge: 20 %%, then 10 %% more every two high-dirtying seconds, up to %d %%, whose sleeps stay within half the allowed pause)", most), nil
	case api.EscalatePostcopy:
		if !f.plan.PostcopyReady {
			return "", nil
		}
		if !f.startPostcopy(ctx) {
			return "", errors.New("QEMU refused to switch to post-copy")
		}
		return "switched to post-copy: the guest runs on the target while its remaining pages follow", nil
	}
	return "", fmt.Errorf("unknown escalation %q", kind)
}

// recordEscalation adds an escalation to the migration's record and
// timeline and sends it as an event.
func (f *sourceFollower) recordEscalation(ctx context.Context, esc api.MigrationEscalation) {
	a, id := f.a, f.m.ID
	f.in.steps = append(f.in.steps, a.step("escalated: "+esc.Kind, esc.At))
	if m, _, err := a.st.UpdateMigration(ctx, f.m.VM, func(cur *api.Migration) error {
		if cur.ID != id || api.MigrationTerminal(cur.Phase) {
			return errors.New("done")
		}
		cur.Escalations = append(cur.Escalations, esc)
		return nil
	}); err == nil && m != nil {
		f.m = m
	}
	a.log.Info("migration escalated", "vm", f.m.VM, "escalation", esc.Kind, "round", esc.Round, "detail", esc.Detail)
	a.event(ctx, api.Event{Kind: "migration-escalated", VM: f.m.VM, Node: a.cfg.Node,
		Message: fmt.Sprintf("migration of %s to %s, %s: %s", f.m.VM, f.m.Target, esc.Kind, esc.Detail)})
}

// recordSample keeps a completed migration's predicted and actual figures
// for calibration, once the record is complete (the target finishes it).
func (a *Agent) recordSample(ctx context.Context, vm, id string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		m, _, err := a.st.GetMigration(ctx, vm)
		if err != nil || m == nil || m.ID != id || (api.MigrationTerminal(m.Phase) && m.Phase != api.MigCompleted) {
			return
		}
		if m.Phase == api.MigCompleted && m.TotalTimeMS > 0 && (!m.AnsweringAt.IsZero() || time.Now().After(deadline.Add(-15*time.Second))) {
			if pause := migrate.ServicePause(m); pause > 0 {
				a.st.UpdateMigration(ctx, vm, func(cur *api.Migration) error {
					if cur.ID != id {
						return errors.New("another migration")
					}
					cur.ServicePauseMS = pause.Milliseconds()
					return nil
				})
				m.ServicePauseMS = pause.Milliseconds()
			}
			if s, ok := migrate.SampleOf(m); ok {
				if err := a.st.PutMigSample(ctx, m.ID, m.Finished, s); err != nil {
					a.log.Warn("keeping a migration's figures for calibration", "vm", vm, "err", err)
				}
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
