package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/qemu"
)

// migrateSource drives the outgoing side once the target is ready. It blocks
// this VM's reconcile until the migration ends, so nothing else touches the
// source QEMU meanwhile.
func (a *Agent) migrateSource(ctx context.Context, vm *api.VM, m *api.Migration, rev int64) error {
	if m.Phase == api.MigSwitchover {
		// Ownership has moved: only the target may finish it. Our part ends
		// when our QEMU completes (followed in the call that started it).
		a.mu.Lock()
		in := a.vms[m.VM]
		a.mu.Unlock()
		if in != nil && in.alive() && (in.migrationID == m.ID || a.inPostcopy(ctx, in)) {
			// Ours to follow to its end — also after an agent restart in
			// post-copy, when the target still needs our pages.
			in.migrationID = m.ID
			return a.followSource(ctx, in, m, rev)
		}
		if in != nil && in.alive() {
			// We restarted after the takeover: our copy must go.
			return a.stop(ctx, in, true, 0, "")
		}
		return nil
	}
	a.mu.Lock()
	in := a.vms[m.VM]
	a.mu.Unlock()
	if in == nil || !in.alive() {
		why := "the guest is not running on the source " + a.cfg.Node
		if in != nil {
			why += " (its QEMU has exited)"
		}
		a.log.Warn("migration refused", "vm", m.VM, "why", why, "known", len(a.vms))
		a.finishMigration(ctx, m.VM, api.MigFailed, why)
		return nil
	}
	if m.Cancel {
		in.closeTunnel()
		a.finishMigration(ctx, m.VM, api.MigCancelled, "cancelled before the copy started")
		return nil
	}
	switch m.Phase {
	case api.MigCopying:
		// We restarted mid-copy: QEMU's outgoing migration may still run;
		// follow it to its end.
		return a.followSource(ctx, in, m, rev)
	case api.MigPending:
		// While the target prepares, so that target-ready only has to
		// start the copy.
		if err := a.prepareSource(ctx, in, m); err != nil {
			in.closeTunnel()
			a.finishMigration(ctx, m.VM, api.MigFailed, "configuring the source: "+err.Error())
		}
		return nil
	case api.MigTargetReady:
	default:
		return nil
	}
	if in.preparedFor != m.ID {
		if err := a.prepareSource(ctx, in, m); err != nil {
			in.closeTunnel()
			a.finishMigration(ctx, m.VM, api.MigFailed, "configuring the source: "+err.Error())
			return nil
		}
	}
	return a.startCopy(ctx, in, m)
}

// startCopy starts QEMU's outgoing migration once the target is ready,
// records the copy as started and follows it.
func (a *Agent) startCopy(ctx context.Context, in *instance, m *api.Migration) error {
	uri := m.TargetURI
	in.mu.Lock()
	if s := in.srcTunnel; s != nil {
		s.SetTarget(strings.TrimPrefix(m.TargetURI, "tcp:"))
		uri = s.URI()
	}
	in.mu.Unlock()
	// QEMU flushes the disk while the guest is paused for switchover; flush
	// the host's cache of it now so little is left for that moment.
	a.rt.Flush(filepath.Join(a.cfg.StorageDir, m.VM, "disk0.qcow2"))
	in.migrationID = m.ID
	in.rec.MigrationID = m.ID
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := in.qmp.Migrate(cctx, uri)
	cancel()
	if err != nil {
		in.closeTunnel()
		a.finishMigration(ctx, m.VM, api.MigFailed, "starting the migration: "+err.Error())
		return nil
	}
	copyStart := time.Now()
	// Copying, unless a cancel (or a failure) got in first: then the copy
	// just begun is cancelled, and the guest, never paused, stays here.
	cur, rev, err := a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
		if cur.ID != m.ID || cur.Phase != api.MigTargetReady || cur.Cancel {
			return errors.New("migration changed before the copy started")
		}
		cur.Phase = api.MigCopying
		cur.Timeline = append(cur.Timeline, a.step("source configured", in.preparedAt), a.step("copy started", copyStart))
		return nil
	})
	if err != nil {
		if cur != nil {
			m = cur
		}
		a.cancelSource(ctx, in, m, "the migration changed before the copy started")
		return nil
	}
	m = cur
	if err := a.saveRecord(m.VM, in.rec); err != nil {
		a.log.Warn("saving runtime record", "vm", m.VM, "err", err)
	}
	a.log.Info("migration started", "vm", m.VM, "to", m.Target, "strategy", m.Options.Strategy)
	return a.followSource(ctx, in, m, rev)
}

// prepareSource tells the source QEMU the migration's capabilities and
// parameters and opens the stream's source end: everything but the copy.
func (a *Agent) prepareSource(ctx context.Context, in *instance, m *api.Migration) error {
	if in.preparedFor == m.ID {
		return nil
	}
	plan := m.Plan
	if plan == nil {
		return errors.New("the migration has no plan (recorded by an older Ferry)")
	}
	if why := migrate.NoLiveMigration(a.cfg.Accel, in.qmp.Version().String()); why != "" {
		return errors.New("the guest's QEMU on " + a.cfg.Node + " cannot live-migrate it: " + why)
	}
	caps := map[string]bool{}
	for k, v := range plan.Capabilities {
		caps[k] = v
	}
	for k, v := range plan.SourceCapabilities {
		caps[k] = v
	}
	params := map[string]any{}
	for k, v := range plan.Parameters {
		params[k] = v
	}
	for k, v := range plan.SourceParameters {
		params[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := in.qmp.SetMigrationCapabilities(cctx, caps); err != nil {
		return err
	}
	if err := in.qmp.SetMigrationParameters(cctx, params); err != nil {
		return err
	}
	if err := a.sendStream(cctx, in, m); err != nil {
		return err
	}
	in.preparedFor, in.preparedAt, in.steps = m.ID, time.Now(), nil
	return nil
}

// followSource polls the outgoing migration, reports progress, honours a
// cancel, and once QEMU completes waits for the target's takeover.
func (a *Agent) followSource(ctx context.Context, in *instance, m *api.Migration, rev int64) error {
	// The tunnel's source end lives until the migration ended here: by
	// then the target has everything (it took over) or nothing is needed.
	defer in.closeTunnel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	f := newSourceFollower(a, in, m)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-in.gone:
			return a.sourceLost(ctx, f.m)
		case <-in.migEvents:
		case <-tick.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := in.qmp.QueryMigrate(qctx)
		cancel()
		if err != nil {
			if !in.alive() {
				return a.sourceLost(ctx, f.m)
			}
			continue
		}
		// Re-read the record: a cancel may have arrived. Not while the
		// guest waits at pre-switchover: every millisecond there is
		// downtime, the record of the last poll is recent, and a cancel
		// that came since is still excluded by the target's takeover,
		// which compares the record.
		if info.Status != "pre-switchover" || f.continued {
			if cur, _, err := a.st.GetMigration(ctx, f.m.VM); err == nil && cur != nil && cur.ID == f.m.ID {
				f.m = cur
			}
		}
		if qemu.InPostcopy(info.Status) {
			a.followPostcopySource(ctx, in, f.m, info, &f.pc)
		}
		switch info.Status {
		case "pre-switchover":
			if done := f.atPreSwitchover(ctx); done {
				return nil
			}
			continue
		case "completed":
			doneAt := time.Now()
			return a.awaitTakeover(ctx, in, f.m, f.finalInfo(ctx, info), doneAt)
		case "failed", "cancelled":
			a.sourceFailed(ctx, in, f.m, info)
			return nil
		}
		if why := f.reasonToCancel(info); why != "" {
			a.cancelSource(ctx, in, f.m, why)
			return nil
		}
		f.tune(ctx, info)
		f.report(ctx, info)
	}
}

// sourceFollower is what followSource keeps between two polls of an
// outgoing migration.
type sourceFollower struct {
	a               *Agent
	in              *instance
	m               *api.Migration
	plan            *api.MigrationPlan
	lastWrite       time.Time
	lastBytes       int64
	lastProgress    time.Time
	postcopyStarted bool
	continued       bool // past pre-switchover
	pc              sourcePostcopy
	downtime        int64
	// maxDowntime caps the downtime limit: the operator's, or the policy's
	// allowed maximum once escalated.
	maxDowntime int64
	lastRound   int64
	esc         escalation
	// linkRate is the link's rate as the first pass measured it (bytes/s):
	// QEMU's own estimate sinks in later rounds, which send little, and
	// then it thinks the rest will not fit in the downtime limit.
	linkRate float64
	setLink  bool // avail-switchover-bandwidth is still to be set
}

func newSourceFollower(a *Agent, in *instance, m *api.Migration) *sourceFollower {
	plan := m.Plan
	if plan == nil {
		plan = &api.MigrationPlan{}
	}
	_, setLink := plan.SourceParameters["avail-switchover-bandwidth"]
	return &sourceFollower{a: a, in: in, m: m, plan: plan, lastBytes: -1, lastProgress: time.Now(),
		downtime: migrate.InitialDowntimeMS(m.Options.MaxDowntimeMS), maxDowntime: m.Options.MaxDowntimeMS, setLink: setLink}
}

// atPreSwitchover handles the guest stopped at pre-switchover: the target
// has its memory but not its device state, the last point at which a
// cancel needs no compare-and-swap against the target's takeover. It
// returns true when the migration ended here (cancelled).
func (f *sourceFollower) atPreSwitchover(ctx context.Context) bool {
	a, in := f.a, f.in
	if f.continued {
		return false
	}
	// After a pause (fault injection), read the record again.
	if failpoint.Sleep(ctx, a.log, a.cfg.FailpointFile, failpoint.PreSwitchover) {
		if cur, _, err := a.st.GetMigration(ctx, f.m.VM); err == nil && cur != nil && cur.ID == f.m.ID {
			f.m = cur
		}
	}
	if f.m.Cancel {
		a.cancelSource(ctx, in, f.m, "cancelled")
		return true
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := in.qmp.MigrateContinue(cctx)
	cancel()
	if err != nil {
		a.log.Warn("continuing at pre-switchover", "vm", f.m.VM, "err", err)
		return false // the next query tells what QEMU did
	}
	f.continued = true
	in.mu.Lock()
	stopped := in.stoppedAt
	in.mu.Unlock()
	in.steps = append(in.steps, a.step("guest paused on source (pre-switchover)", stopped), a.step("switchover continued", time.Now()))
	return false
}

// finalInfo is QEMU's last word on a completed migration: QEMU 7.2 reports
// "completed" a moment before it has computed the total time and downtime.
func (f *sourceFollower) finalInfo(ctx context.Context, info qemu.MigrationInfo) qemu.MigrationInfo {
	for i := 0; i < 20 && info.TotalTime == 0; i++ {
		time.Sleep(10 * time.Millisecond)
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if again, err := f.in.qmp.QueryMigrate(qctx); err == nil {
			info = again
		}
		cancel()
	}
	return info
}

// reasonToCancel says why the copy must end now: a cancel was asked for,
// or the stream made no progress for the stall limit.
func (f *sourceFollower) reasonToCancel(info qemu.MigrationInfo) string {
	if info.RAM != nil {
		if info.RAM.Transferred != f.lastBytes {
			f.lastBytes, f.lastProgress = info.RAM.Transferred, time.Now()
		} else if time.Since(f.lastProgress) > f.a.cfg.MigrationStall && f.m.Phase == api.MigCopying {
			return fmt.Sprintf("no progress for %s (link down?)", f.a.cfg.MigrationStall)
		}
	}
	if f.m.Cancel && f.m.Phase == api.MigCopying {
		return "cancelled"
	}
	if t := f.m.Options.TimeoutS; t > 0 && f.m.Phase == api.MigCopying && time.Since(f.m.Started) > time.Duration(t)*time.Second {
		return fmt.Sprintf("not done within the policy's %d s", t)
	}
	return ""
}

// tune adjusts QEMU between rounds: the switchover bandwidth from the first
// pass, a downtime limit that grows round by round up to the operator's,
// and the switch to post-copy when the plan asks for it.
func (f *sourceFollower) tune(ctx context.Context, info qemu.MigrationInfo) {
	a, in := f.a, f.in
	if info.Status != "active" || info.RAM == nil {
		return
	}
	set := func(params map[string]any, step string) bool {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := in.qmp.SetMigrationParameters(cctx, params); err != nil {
			return false
		}
		in.steps = append(in.steps, a.step(step, time.Now()))
		return true
	}
	if info.RAM.DirtySyncCount <= 1 {
		f.linkRate = max(f.linkRate, info.RAM.Mbps*1e6/8)
	}
	if f.setLink && info.RAM.DirtySyncCount >= 2 && f.linkRate > 0 {
		f.setLink = false
		rate, from := f.linkRate, "the first pass's"
		if l := f.measuredLink(); l > 0 && l < rate {
			// The first pass's rate counts zero pages as if sent whole:
			// a mostly empty guest's looks faster than the link, and QEMU
			// would then switch over with more than the limit left.
			rate, from = l, "the measured link's"
		}
		set(map[string]any{"avail-switchover-bandwidth": int64(rate)},
			fmt.Sprintf("switchover bandwidth set to %s %.0f MB/s", from, rate/1e6))
	}
	if info.RAM.DirtySyncCount > f.lastRound {
		// A new round: the guest did not fit in the downtime limit yet;
		// allow it more, up to the operator's limit.
		f.lastRound = info.RAM.DirtySyncCount
		if next := migrate.NextDowntimeMS(f.downtime, f.maxDowntime); f.lastRound >= 3 && next != f.downtime {
			if set(map[string]any{"downtime-limit": next}, fmt.Sprintf("round %d: downtime limit raised to %d ms", f.lastRound, next)) {
				f.downtime = next
			}
		}
		f.watchConvergence(ctx, info)
	}
	if f.plan.Postcopy && !f.postcopyStarted && info.RAM.DirtySyncCount >= 2 {
		f.startPostcopy(ctx)
	}
}

// report writes the migration's progress, at most twice a second.
func (f *sourceFollower) report(ctx context.Context, info qemu.MigrationInfo) {
	if time.Since(f.lastWrite) < 500*time.Millisecond {
		return
	}
	f.lastWrite = time.Now()
	p := progressOf(info, f.m.Progress)
	// The source's own reconcile of this guest waits for the move: its
	// bytes are counted here, as they are reported.
	seen := *f.m
	seen.Progress = p
	f.a.traffic.sawMigration(&seen, f.a.cfg.Node, f.lastWrite)
	id := f.m.ID
	f.a.st.UpdateMigration(ctx, f.m.VM, func(cur *api.Migration) error {
		if cur.ID != id || api.MigrationTerminal(cur.Phase) {
			return errors.New("done")
		}
		cur.Progress = p
		return nil
	})
}

func progressOf(info qemu.MigrationInfo, prev api.MigrationProgress) api.MigrationProgress {
	p := api.MigrationProgress{QEMUStatus: info.Status, ExpectedDowntime: info.ExpectedDowntime, CPUThrottle: info.CPUThrottle}
	if r := info.RAM; r != nil {
		p.TotalBytes, p.TransferredBytes, p.RemainingBytes = r.Total, r.Transferred, r.Remaining
		p.RateMbps, p.DirtyPagesRate, p.Round = r.Mbps, r.DirtyPagesRate, r.DirtySyncCount
		if r.Mbps > 0 {
			p.ETASeconds = float64(r.Remaining*8) / (r.Mbps * 1e6)
		}
	} else {
		p.TotalBytes, p.TransferredBytes = prev.TotalBytes, prev.TransferredBytes
	}
	return p
}

// cancelSource cancels the outgoing migration and makes sure the guest runs
// on the source again.
func (a *Agent) cancelSource(ctx context.Context, in *instance, m *api.Migration, why string) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	in.qmp.MigrateCancel(cctx)
	cancel()
	// Wait for QEMU to leave the migration, then resume if it is paused.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := in.qmp.QueryMigrate(qctx)
		cancel()
		if err != nil || qemu.Terminal(info.Status) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.resumeSource(ctx, in)
	// A cancel may have landed after our last read (it is what made the
	// handover transaction fail): read again to name the outcome right.
	if cur, _, err := a.st.GetMigration(ctx, m.VM); err == nil && cur != nil && cur.ID == m.ID {
		m = cur
	}
	phase := api.MigCancelled
	if !m.Cancel {
		phase = api.MigFailed
	} else {
		why = "cancelled"
	}
	a.finishMigration(ctx, m.VM, phase, why+"; the guest keeps running on "+a.cfg.Node)
	a.log.Info("migration ended on the source", "vm", m.VM, "phase", phase, "why", why)
}

func (a *Agent) sourceFailed(ctx context.Context, in *instance, m *api.Migration, info qemu.MigrationInfo) {
	owner, _, _ := a.st.Owner(ctx, m.VM)
	if owner != a.cfg.Node {
		// Failed after the handover: the guest may not run here any more.
		a.log.Error("migration failed after the handover; destroying the source copy", "vm", m.VM, "err", info.ErrorDesc)
		a.stop(ctx, in, true, 0, "")
		a.finishMigration(ctx, m.VM, api.MigFailed, "failed after switchover: "+info.ErrorDesc)
		return
	}
	a.resumeSource(ctx, in)
	phase, why := api.MigFailed, "QEMU: "+info.ErrorDesc
	if info.Status == "cancelled" {
		phase, why = api.MigCancelled, "cancelled"
	}
	a.finishMigration(ctx, m.VM, phase, why+"; the guest keeps running on "+a.cfg.Node)
}

// inPostcopy reports whether the guest's QEMU is the source of a migration
// in post-copy (its pages are still needed on the target).
func (a *Agent) inPostcopy(ctx context.Context, in *instance) bool {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := in.qmp.QueryMigrate(qctx)
	return err == nil && qemu.InPostcopy(info.Status)
}

// resumeSource runs the source guest again if the migration left it paused.
func (a *Agent) resumeSource(ctx context.Context, in *instance) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := in.qmp.QueryStatus(qctx)
	if err == nil && !st.Running {
		if err := a.mayRun(in); err != nil {
			a.log.Error("not resuming the source guest", "vm", in.name, "err", err)
			return
		}
		if err := in.qmp.Cont(qctx); err != nil {
			a.log.Error("resuming the source guest", "vm", in.name, "err", err)
		}
	}
}

// sourceLost handles the source QEMU dying mid-migration.
func (a *Agent) sourceLost(ctx context.Context, m *api.Migration) error {
	a.finishMigration(ctx, m.VM, api.MigFailed, "the source QEMU exited during the migration; the guest must be restarted")
	a.queue.add(m.VM)
	return nil
}

// sourceTeardownDelay is how long a source keeps its stopped copy after the
// target took the guest over, before destroying it.
var sourceTeardownDelay = time.Second

// takeoverTimeout is how long a source whose stream completed waits for the
// target to take the guest over before it takes it back.
const takeoverTimeout = 10 * time.Second

// awaitTakeover runs once the source's QEMU has sent everything and stopped
// (postmigrate). The target takes ownership in one transaction and runs the
// guest; then the source destroys its copy. If the target does not, the
// source ends the migration with a compare-and-swap that excludes the
// target's transaction, and only then resumes its copy.
func (a *Agent) awaitTakeover(ctx context.Context, in *instance, m *api.Migration, info qemu.MigrationInfo, doneAt time.Time) error {
	deadline := time.Now().Add(takeoverTimeout)
	for {
		cur, _, err := a.st.GetMigration(ctx, m.VM)
		if err == nil && cur != nil && cur.ID == m.ID {
			switch {
			case cur.Phase == api.MigSwitchover || cur.Phase == api.MigCompleted:
				a.st.UpdateMigration(ctx, m.VM, func(c *api.Migration) error {
					if c.ID != m.ID {
						return errors.New("another migration")
					}
					c.TotalTimeMS, c.DowntimeMS = info.TotalTime, info.Downtime
					c.Progress = progressOf(info, c.Progress)
					if info.RAM != nil {
						c.BytesSent = info.RAM.Transferred
					}
					c.Timeline = append(append(c.Timeline, in.steps...), a.step("source completed", doneAt))
					return nil
				})
				a.log.Info("guest taken over by the target; destroying the source copy", "vm", m.VM,
					"total_ms", info.TotalTime, "downtime_ms", info.Downtime)
				go a.recordSample(context.WithoutCancel(ctx), m.VM, m.ID)
				// Not at once: tearing down a QEMU (freeing all its
				// memory) competes for the CPU with the guest warming up
				// on the target. The copy is stopped for good meanwhile:
				// it does not own the guest and is never continued.
				select {
				case <-ctx.Done():
				case <-in.gone:
				case <-time.After(sourceTeardownDelay):
				}
				return a.stop(ctx, in, true, 0, "")
			case api.MigrationTerminal(cur.Phase):
				a.resumeSource(ctx, in)
				return nil
			case cur.Cancel || time.Now().After(deadline):
				phase, why := api.MigCancelled, "cancelled after the copy"
				if !cur.Cancel {
					phase, why = api.MigFailed, fmt.Sprintf("the target did not take the guest over within %s", takeoverTimeout)
				}
				_, _, err := a.st.UpdateMigration(ctx, m.VM, func(c *api.Migration) error {
					if c.ID != m.ID || c.Phase != api.MigCopying {
						return errors.New("the target took over")
					}
					c.Phase, c.Error, c.Finished = phase, why+"; the guest keeps running on "+a.cfg.Node, time.Now().UTC()
					return nil
				})
				if err == nil {
					a.resumeSource(ctx, in)
					a.log.Info("migration ended after the copy; the guest stays here", "vm", m.VM, "phase", phase)
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
